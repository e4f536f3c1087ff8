"""delete: {files: quarantine} and conquest-run restore RUN; rows re-checked against the plan;
the Python API's runs carry the same context as the command line's."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import sqlite3
from pathlib import Path

import pytest
from _actions_support import run_action, tree_state

from conquest_run import __version__
from conquest_run.archive import Archive
from conquest_run.cli import main
from conquest_run.indexer import Indexer
from conquest_run.planner import plan_selection
from conquest_run.synthetic import write_patient

QUARANTINE_JOB = """version: 1
name: quarantine-gone
archive: {data: data, database: conquest.db}
select: {patient: "GONE"}
action: {delete: {files: quarantine}}
"""


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    write_patient(tmp_path / "data", seed=9, patient_id="KEEP", ct_slices=3, mr_slices=0)
    write_patient(tmp_path / "data", seed=9, patient_id="GONE", ct_slices=4, mr_slices=0)
    Archive(tmp_path / "data", tmp_path / "conquest.db").rebuild()
    (tmp_path / "q.yml").write_text(QUARANTINE_JOB)
    (tmp_path / "d.yml").write_text(QUARANTINE_JOB.replace("files: quarantine", "files: true"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _sql(root: Path, sql: str, *params) -> list[tuple]:
    conn = sqlite3.connect(root / "conquest.db")
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _images(root: Path) -> set[tuple]:
    return set(_sql(root, "SELECT i.SOPInstanc, i.ObjectFile, i.SeriesInst, e.FileSize, "
                          "e.hash, e.FileMtime FROM DICOMImages i LEFT JOIN RTExtras e USING (SOPInstanc)"))


def _last_run(root: Path, job: str) -> str:
    return _sql(root, "SELECT RunId FROM ConquestRunRuns WHERE JobName = ? ORDER BY Started "
                      "DESC LIMIT 1", job)[0][0]


def _on_disk(data: Path) -> set[str]:
    return {p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file()}


def test_quarantine_then_restore_puts_files_and_rows_back(root, capsys):
    before = _images(root)
    gone = {rel for _, rel, *_ in before if rel.startswith("GONE/")}
    assert len(gone) == 7
    assert main(["--yes", "q.yml"]) == 0
    run_id = _last_run(root, "quarantine-gone")
    folder = root / "data" / ".quarantine" / run_id
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} == gone
    assert {r[1] for r in _images(root)} == {rel for rel in _on_disk(root / "data")
                                            if not rel.startswith(".quarantine/")}
    outcomes = _sql(root, "SELECT Status, Reason, Detail FROM ConquestRunAudit WHERE RunId = ? "
                          "AND SOPInstanc IS NOT NULL", run_id)
    assert len(outcomes) == 7 and {o[:2] for o in outcomes} == {
        ("done", "row deleted, file quarantined")}
    for *_, detail in outcomes:
        d = json.loads(detail)
        assert d["file_removed"] is False and Path(d["quarantined"]).is_file()
    # rebuild never looks inside data/.quarantine/: nothing comes back
    assert main(["rebuild"]) == 0
    assert not any(rel.startswith("GONE/") for _, rel, *_ in _images(root))

    capsys.readouterr()
    assert main(["restore", run_id[:8]]) == 0
    out = capsys.readouterr().out
    assert f"restored 7 files of run {run_id}" in out and "all indexed" in out
    assert _images(root) == before                      # same files, same rows, same facts
    assert not (root / "data" / ".quarantine").exists()
    restore_run = _last_run(root, "restore")
    assert _sql(root, "SELECT State, User FROM ConquestRunRuns WHERE RunId = ?",
                restore_run) == [("ok", getpass.getuser())]
    restored = _sql(root, "SELECT Status, Reason, PatientID FROM ConquestRunAudit WHERE "
                          "RunId = ?", restore_run)
    assert restored == [("done", "restored from quarantine", "GONE")] * 7
    # a second restore has nothing to put back
    assert main(["restore", run_id]) == 2
    assert "has no quarantine" in capsys.readouterr().err


def test_restore_refuses_without_a_quarantine_and_names_what_it_would_overwrite(root, capsys):
    assert main(["restore", "../etc"]) == 2
    assert "'../etc' is not a run id" in capsys.readouterr().err
    assert main(["--yes", "d.yml"]) == 0                # files: true keeps no quarantine
    removed = _last_run(root, "quarantine-gone")
    capsys.readouterr()
    assert main(["restore", removed]) == 2
    assert f"run {removed} has no quarantine in " in capsys.readouterr().err

    write_patient(root / "data", seed=9, patient_id="GONE", ct_slices=4, mr_slices=0)
    assert main(["rebuild"]) == 0
    assert main(["--yes", "q.yml"]) == 0
    run_id = _last_run(root, "quarantine-gone")
    folder = root / "data" / ".quarantine" / run_id
    # one instance is stored again (a newer copy): restoring would overwrite it
    newer = sorted(folder.rglob("*.dcm"))[0]
    incoming = root / "incoming"
    incoming.mkdir()
    shutil.copyfile(newer, incoming / "again.dcm")
    assert main(["store", "incoming"]) == 0
    held = tree_state(root / "data")
    capsys.readouterr()
    assert main(["restore", run_id]) == 1
    err = capsys.readouterr().err
    assert f"restore of run {run_id} refused: 1 of 7 files would overwrite newer ones" in err
    assert f"GONE/{newer.name}: a file is there again" in err and "nothing was restored" in err
    assert tree_state(root / "data") == held            # nothing moved
    assert _sql(root, "SELECT State FROM ConquestRunRuns WHERE RunId = ?",
                _last_run(root, "restore")) == [("failed",)]
    # the same SOP instance indexed again under another file is refused too
    (root / "data" / "GONE" / newer.name).rename(root / "data" / "GONE" / "moved.dcm")
    assert main(["rebuild"]) == 0
    assert main(["restore", run_id]) == 1
    assert "is in the archive again (as GONE/moved.dcm)" in capsys.readouterr().err


def test_a_restore_killed_halfway_is_finished_by_running_it_again(root, capsys):
    """What an interrupted restore leaves: some files linked back into place, one of them
    indexed, their quarantined names still there."""
    before = _images(root)
    assert main(["--yes", "q.yml"]) == 0
    run_id = _last_run(root, "quarantine-gone")
    folder = root / "data" / ".quarantine" / run_id
    back = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.dcm"))[:3]
    for rel in back:
        os.link(folder / rel, root / "data" / rel)
    archive = Archive(root / "data", root / "conquest.db")
    conn = archive.connect()
    try:
        assert not Indexer(conn, archive.schema, archive.data_dir).index_files(back[:1]).bad
    finally:
        conn.close()
    assert len(_images(root)) == len(before) - 7 + 1
    capsys.readouterr()
    assert main(["restore", run_id]) == 0, capsys.readouterr().err
    assert _images(root) == before
    assert not (root / "data" / ".quarantine").exists()


def test_a_dry_run_of_a_quarantine_delete_changes_nothing(root, capsys):
    before = tree_state(root)
    assert main(["--dry-run", "--json", "q.yml"]) == 0
    dry = json.loads(capsys.readouterr().out)["report"]["steps"][0]
    assert tree_state(root) == before
    assert main(["--yes", "--json", "q.yml"]) == 0
    real = json.loads(capsys.readouterr().out)["report"]["steps"][0]
    def seen(step: dict) -> list[tuple]:     # the quarantine folder is named after each run
        return [(o["sop_uid"], o["status"], o["reason"], o["detail"]["path"],
                 Path(o["detail"]["quarantined"]).relative_to(
                     Path(step["summary"]["quarantine"]))) for o in step["outcomes"]]
    assert seen(dry) == seen(real) and len(seen(real)) == 7
    assert real["summary"]["files_quarantined"] == 7


def test_a_row_stored_again_since_the_plan_is_kept_with_its_file(root):
    archive = Archive(root / "data", root / "conquest.db")
    uids = archive.query("SELECT SeriesInst FROM DICOMSeries WHERE Modality = 'CT' AND "
                         "SeriesPat = 'GONE'", column=0)
    step = plan_selection(archive, {"series": uids}, "delete", {"files": True}).steps[0]
    first = step.series[0].instances[0]
    # a newer copy of one planned instance arrives (other bytes, same SOP instance and path)
    import pydicom
    ds = pydicom.dcmread(root / "data" / first.path)
    ds.SeriesDescription = "stored again, a little longer than before"
    incoming = root / "incoming"
    incoming.mkdir()
    ds.save_as(incoming / "again.dcm")
    assert not archive.store([incoming]).bad
    report, run_id = run_action(archive, step)
    outcome = {o.sop_uid: o for o in report.outcomes}[first.sop_uid]
    assert outcome.status == "skipped" and "changed since the plan" in outcome.reason
    assert (root / "data" / first.path).is_file()
    assert archive.query("SELECT SeriesDesc FROM DICOMSeries WHERE SeriesInst = ?",
                         (step.series[0].series_uid,), column=0) == [ds.SeriesDescription]
    others = [i for i in step.series[0].instances if i.sop_uid != first.sop_uid]
    assert others and not any((root / "data" / i.path).exists() for i in others)
    assert report.summary["changed_since_plan"] == [first.sop_uid]


def test_python_api_runs_record_user_host_pid_and_version(root):
    archive = Archive(root / "data", root / "conquest.db")
    uids = archive.query("SELECT SeriesInst FROM DICOMSeries WHERE SeriesPat = 'GONE'",
                         column=0)
    report = archive.delete_series(uids, files="quarantine")
    assert report.ok and report.summary["files_quarantined"] == 7
    rows = _sql(root, "SELECT JobPath, User, Host, Pid, Version, State FROM ConquestRunRuns")
    assert rows == [("<python>", getpass.getuser(), socket.gethostname(), os.getpid(),
                     __version__, "ok")]


def test_the_job_schema_takes_quarantine_and_refuses_other_words(root, capsys):
    assert main(["--validate", "q.yml"]) == 0
    (root / "bad.yml").write_text(QUARANTINE_JOB.replace("files: quarantine",
                                                         "files: quarantin"))
    capsys.readouterr()
    assert main(["--validate", "bad.yml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bad.yml:5:") and "quarantin" in err
