"""Each local action run from a job file through ``conquest_run.cli.main`` on the sample
archive, then ``conquest-run history``."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from _actions_support import tree_state

from conquest_run.actions._local import connect_reader
from conquest_run.cli import main
from conquest_run.db import connect

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def here(sample_archive, tmp_path, monkeypatch):
    """The sample archive in tmp_path/data, indexed into tmp_path/conquest.db; cwd tmp_path."""
    monkeypatch.chdir(tmp_path)
    assert main(["rebuild", "--data", "data", "--database", "conquest.db"]) == 0
    return tmp_path


def _run(job: Path | str, *flags: str) -> int:
    return main([str(job), "--data", "data", "--database", "conquest.db", *flags])


def _write_job(path: Path, text: str) -> Path:
    path.write_text("version: 1\n" + text, encoding="utf-8")
    return path


def _rows(sql: str, *params) -> list[tuple]:
    conn = connect_reader(Path("conquest.db"))
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_export_rtplans_job_copies_and_prints_the_manifest(here, capsys):
    job = REPO / "jobs/export_rtplans.yml"
    before = tree_state(here)
    assert _run(job, "--dry-run") == 0
    assert tree_state(here) == before
    capsys.readouterr()

    assert _run(job) == 0
    out = capsys.readouterr().out
    assert "manifest: exports/rtplans/manifest.json" in out
    doc = json.loads((here / "exports/rtplans/manifest.json").read_text())
    assert doc["job"] == "export-rtplans" and doc["count"] == 4
    assert doc["job_sha256"] == hashlib.sha256(job.read_bytes()).hexdigest()
    planned = dict(_rows("SELECT i.SOPInstanc, i.ObjectFile FROM DICOMImages i JOIN DICOMSeries s "
                         "ON s.SeriesInst = i.SeriesInst WHERE s.Modality = 'RTPLAN'"))
    assert sorted(planned) == sorted(e["sop_uid"] for e in doc["instances"])
    for e in doc["instances"]:
        copied = here / "exports/rtplans" / e["path"]
        assert copied.read_bytes() == (here / "data" / planned[e["sop_uid"]]).read_bytes()
    # the escaped PatientID folder is made safe like Conquest's
    assert any(e["path"].startswith("RT_002_A_B/") for e in doc["instances"])

    assert _run(job) == 0
    again = json.loads((here / "exports/rtplans/manifest.json").read_text())
    assert again["instances"] == doc["instances"]


def test_dump_job_writes_csv_that_round_trips(here):
    assert _run(REPO / "jobs/dump_rt_summary.yml") == 0
    with open(here / "exports/audit/rt_objects.csv", newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    assert header[:4] == ["SOPInstanc", "SeriesInst", "PatientID", "Modality"]
    expected = _rows("select SOPInstanc, SeriesInst, PatientID, Modality, SeriesDesc, "
                     "ElementCount, ElementList, Nfractions from v_seriesRT "
                     "order by PatientID, Modality")
    assert rows == [["" if v is None else str(v) for v in r] for r in expected]
    with open(here / "exports/audit/patients.csv", newline="", encoding="utf-8") as f:
        patients = list(csv.DictReader(f))
    assert {p["PatientID"] for p in patients} == {r[0] for r in _rows(
        "SELECT PatientID FROM DICOMPatients")}


def test_delete_job_with_files_then_history(here, capsys):
    job = _write_job(here / "delete.yml", """\
name: forget-pat003-plans
select: {patient: "PAT003", modality: RTPLAN}
action:
  delete:
    files: true
""")
    files = [here / "data" / r[0] for r in _rows(
        "SELECT i.ObjectFile FROM DICOMImages i JOIN DICOMSeries s ON s.SeriesInst = "
        "i.SeriesInst WHERE s.SeriesPat = 'PAT003' AND s.Modality = 'RTPLAN'")]
    assert len(files) == 2 and all(f.is_file() for f in files)
    before = tree_state(here)
    assert _run(job, "--dry-run") == 0
    assert tree_state(here) == before
    assert _run(job) == 2                 # no terminal to ask on: a delete needs --yes
    assert all(f.is_file() for f in files)
    assert _run(job, "--yes") == 0
    assert not any(f.exists() for f in files)
    assert _rows("SELECT count(*) FROM DICOMSeries WHERE SeriesPat = 'PAT003' AND "
                 "Modality = 'RTPLAN'") == [(0,)]
    assert _rows("SELECT count(*) FROM DICOMPatients WHERE PatientID = 'PAT003'") == [(1,)]
    capsys.readouterr()

    assert main(["history", "--database", "conquest.db", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert runs[0]["job_name"] == "forget-pat003-plans" and runs[0]["done"] == 2
    assert runs[0]["ok"] is True
    assert main(["history", "--database", "conquest.db", "--run", runs[0]["run_id"][:8],
                 "--json"]) == 0
    detail = json.loads(capsys.readouterr().out)
    assert sorted(o["detail"]["path"] for o in detail["outcomes"]) == sorted(
        str(f.resolve()) for f in files)
    assert main(["history", "--database", "conquest.db"]) == 0
    assert "forget-pat003-plan" in capsys.readouterr().out
    assert main(["history", "--database", "conquest.db", "--run", "nope"]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


def test_rebuild_job_indexes_files_missing_from_the_index(here):
    count = _rows("SELECT count(*) FROM DICOMImages")[0][0]
    # a file dropped from the index but still on disk comes back with only_missing
    sop, = _rows("SELECT SOPInstanc FROM DICOMImages WHERE ImagePat = 'RT001' LIMIT 1")[0]
    conn = connect("conquest.db")
    with conn:
        conn.execute("DELETE FROM DICOMImages WHERE SOPInstanc = ?", (sop,))
    conn.close()
    assert _run(REPO / "jobs/rebuild_missing.yml") == 0
    assert _rows("SELECT count(*) FROM DICOMImages")[0][0] == count
    assert _rows("SELECT count(*) FROM DICOMImages WHERE SOPInstanc = ?", sop) == [(1,)]
