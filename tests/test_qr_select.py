"""``select.study_date`` on the local index, and what a remote selection refuses (located,
before any network): no database or peer is needed here."""

from __future__ import annotations

import re
import sqlite3

import pytest

from conquest_run.cli import main
from conquest_run.jobs import parse_job
from conquest_run.planner import build_plan
from conquest_run.studydate import parse_study_date
from conquest_run.synthetic import write_patient

NODES = "nodes:\n  pacs: {host: 127.0.0.1, port: 104, called_ae: PACS}\n"


@pytest.fixture(scope="module")
def dated(tmp_path_factory):
    """Three patients whose studies are dated 20231215, 20240110 and 20240620."""
    from conquest_run.archive import Archive

    root = tmp_path_factory.mktemp("dated")
    for pid in ("D1", "D2", "D3"):
        write_patient(root / "data", seed=3, patient_id=pid, ct_slices=2, rt=False)
    archive = Archive(root / "data", root / "conquest.db")
    archive.rebuild()
    conn = sqlite3.connect(archive.database)
    with conn:
        for pid, date in (("D1", "20231215"), ("D2", "20240110"), ("D3", "20240620")):
            conn.execute("UPDATE DICOMStudies SET StudyDate = ? WHERE PatientID = ?", (date, pid))
    conn.close()
    return archive


@pytest.mark.parametrize("value, patients", [
    ("20240110", ["D2"]),
    ("20240101-20241231", ["D2", "D3"]),
    ("20240111-", ["D3"]),
    ("-20240110", ["D1", "D2"]),
    ("20250101-", []),
])
def test_study_date_selects_on_conquests_yyyymmdd_text(dated, value, patients):
    job = parse_job(f'version: 1\nselect: {{study_date: "{value}", modality: CT}}\n'
                    "action: {dump: {file: out.csv}}\n", "job.yml")
    plan = build_plan(job, dated)
    assert sorted(s.patient_id for s in plan.steps[0].series) == patients


def test_a_date_range_matches_acr_nema_dotted_dates_too():
    assert parse_study_date("20240101-20240131").matches("2024.01.15")
    assert not parse_study_date("20240101-20240131").matches(None)


@pytest.mark.parametrize("value, message", [
    ('"2024-01-01"', "'2024-01-01' has more than one '-'"),
    ('"20240230"', "the date '20240230' is not a day of the calendar"),
    ('"20241231-20240101"', "the range '20241231-20240101' ends before it starts"),
    ('"2024013"', "the date '2024013' is not a date written YYYYMMDD"),
    ('"-"', "'-' alone names no dates"),
    ("20240101", 'select.study_date is a number; quote it: "20240101"'),
])
def test_a_bad_study_date_is_a_located_error(tmp_path, capsys, value, message):
    (tmp_path / "job.yml").write_text(f"version: 1\nselect: {{study_date: {value}}}\n"
                                      "action: {dump: {file: out.csv}}\n")
    assert main(["--validate", str(tmp_path / "job.yml")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"job\.yml:2:22: .*" + re.escape(message), err), err


@pytest.mark.parametrize("steps, where, message", [
    ('  - select: {remote: pacs, patient: "P1"}\n    action: {copy: {destination: out}}\n',
     "4:14", "steps[0].action.copy: a remote selection (select.remote: pacs) allows only "
             "retrieve, or dump (the C-FIND results as CSV); not copy"),
    ("  - select: {remote: pacs}\n    action: {delete: {files: true}}\n",
     "4:14", "allows only retrieve, or dump"),
    ("  - select: {remote: pacs, query: select SeriesInst from DICOMSeries}\n"
     "    action: {retrieve: {method: get}}\n",
     "3:28", "a remote selection cannot use query:"),
    ("  - select: {remote: elsewhere}\n    action: {retrieve: {method: get}}\n",
     "3:22", "select.remote 'elsewhere' is not declared under nodes: (known: pacs)"),
    ("  - select: {patient: P1}\n    action: {retrieve: {method: get}}\n",
     "4:14", "steps[0].action.retrieve needs select.remote: NODE"),
    ("  - select: {remote: pacs}\n    action: {retrieve: {method: move}}\n",
     "4:14", "with method: move needs port:"),
    ("  - select: {remote: pacs}\n    action: {dump: {file: x, format: json}}\n",
     "4:14", "a dump of a remote selection writes the C-FIND results as CSV"),
    ("  - select: {remote: pacs}\n    action: {retrieve: {method: fetch}}\n",
     "4:33", "must be one of move, get; not 'fetch'"),
])
def test_what_a_remote_selection_refuses_is_located(tmp_path, capsys, steps, where, message):
    text = f"version: 1\n{NODES}steps:\n{steps}"
    # the positions are given within the steps; version and nodes take the first three lines
    line, col = (int(x) for x in where.split(":"))
    (tmp_path / "job.yml").write_text(text)
    assert main(["--validate", str(tmp_path / "job.yml")]) == 2
    err = capsys.readouterr().err
    assert f"job.yml:{line + 2}:{col}: " in err and message in err, err


def test_a_remote_node_that_is_down_fails_the_plan_with_its_step(tmp_path, capsys):
    from _net_support import free_port

    (tmp_path / "data").mkdir()
    (tmp_path / "job.yml").write_text(
        f"version: 1\nnodes:\n  pacs: {{host: 127.0.0.1, port: {free_port()}, called_ae: "
        "PACS}\nsteps:\n  - name: pull\n    select: {remote: pacs}\n"
        "    action: {retrieve: {method: get}}\n")
    code = main(["--dry-run", "--data", str(tmp_path / "data"), "--database",
                 str(tmp_path / "conquest.db"), str(tmp_path / "job.yml")])
    err = capsys.readouterr().err
    assert code == 1
    assert "job.yml:5: step 1 (pull): C-FIND at PACS@127.0.0.1" in err
    assert "no DICOM node listening" in err and "Traceback" not in err


def test_a_delete_after_a_retrieve_is_refused(tmp_path, capsys):
    (tmp_path / "job.yml").write_text(
        f"version: 1\n{NODES}steps:\n  - select: {{remote: pacs}}\n"
        "    action: {retrieve: {method: get}}\n  - select: {modality: CT}\n"
        "    action: {delete: {files: true}}\n")
    assert main(["--validate", str(tmp_path / "job.yml")]) == 2
    assert "job.yml:8:14: steps[1].action.delete: a delete after a retrieve would be planned" \
        in capsys.readouterr().err


def test_expect_and_selected_nothing_leave_steps_after_a_retrieve_alone():
    from conquest_run.expect import check_expectations, selected_nothing
    from conquest_run.plan import Plan, PlannedSeries, PlanStep

    job = parse_job(f"version: 1\n{NODES}steps:\n  - select: {{remote: pacs}}\n"
                    "    action: {retrieve: {method: get}}\n  - select: {modality: RTPLAN}\n"
                    "    expect: {series: {min: 1}}\n"
                    "    action: {copy: {destination: out}}\n", "job.yml")
    pulled = PlanStep(1, "retrieve", "retrieve", {}, "t", False, "series",
                      (PlannedSeries("1.2.3", "P", "1.2", "RTPLAN", None, (), 1),), None, 5,
                      {"remote": "pacs"})
    export = PlanStep(2, "copy", "copy", {}, "out", False, "series", (), None, 7,
                      {"modality": ["RTPLAN"]})
    plan = Plan("job.yml", "", "j", "data", "db", None, (pulled, export))
    check_expectations(job, plan)          # the export is planned again after the pull
    assert selected_nothing(job, plan) == []
