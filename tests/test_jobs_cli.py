"""The ``conquest-run JOB.yml`` command: example jobs, dry runs that change nothing, JSON,
saved plans, exit codes, and errors without tracebacks."""

from __future__ import annotations

import json
import socket
import sqlite3
import sys
from pathlib import Path

import pytest

from _jobs_support import REPO, cli, index, sandbox, tree_state

MY_JOBS = ["export_rtplans.yml", "dump_rt_summary.yml", "delete_patient.yml",
           "rebuild_missing.yml"]
DB = Path("examples/sample/conquest.db")


@pytest.fixture
def root(tmp_path):
    return sandbox(tmp_path)


def test_every_job_in_the_repository_validates():
    jobs = sorted(p.name for p in (REPO / "jobs").glob("*.yml"))
    assert set(MY_JOBS) <= set(jobs)
    proc = cli("--validate", *[f"jobs/{j}" for j in jobs], cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(": valid (") == len(jobs)


@pytest.mark.parametrize("name", MY_JOBS)
def test_example_job_dry_run_without_a_database_changes_nothing(root, name):
    before = tree_state(root)
    proc = cli("--dry-run", f"jobs/{name}", cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "into a temporary database for this dry run" in proc.stderr
    assert "Plan for jobs/" in proc.stdout and "all done" in proc.stdout
    assert tree_state(root) == before        # no database, no export, no -wal/-shm file


def test_dry_runs_on_an_indexed_archive_leave_every_byte_alone(root):
    index(root / "examples" / "sample" / "data", root / DB)
    before = tree_state(root)
    proc = cli("--dry-run", *[f"jobs/{j}" for j in MY_JOBS], cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert tree_state(root) == before
    assert (root / DB).read_bytes()  # still there, and (above) byte-identical


def test_json_dry_run_gives_the_plan_and_report(root):
    db = index(root / "examples" / "sample" / "data", root / DB)
    proc = cli("--dry-run", "--json", "jobs/export_rtplans.yml", cwd=root)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    conn = sqlite3.connect(db.database)
    plans = {r[0] for r in conn.execute("select SeriesInst from DICOMSeries where Modality = 'RTPLAN'")}
    conn.close()
    step = doc["plan"]["steps"][0]
    assert {s["series_uid"] for s in step["series"]} == plans
    assert step["instance_count"] == sum(len(s["instances"]) for s in step["series"])
    assert doc["report"]["dry_run"] is True and doc["report"]["ok"] is True


def test_the_readme_job_exports_the_rt_plans(root):
    proc = cli("jobs/export_rtplans.yml", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "indexing examples/sample/data first" in proc.stderr
    conn = sqlite3.connect(root / DB)
    files = [r[0] for r in conn.execute(
        "select i.ObjectFile from DICOMImages i join DICOMSeries s on s.SeriesInst = i.SeriesInst "
        "where s.Modality = 'RTPLAN'")]
    runs = conn.execute("select JobPath, Ok from ConquestRunRuns").fetchall()
    conn.close()
    exported = sorted(p for p in (root / "exports" / "rtplans").rglob("*.dcm"))
    assert len(exported) == len(files) > 0
    sources = sorted((root / "examples/sample/data" / f).read_bytes() for f in files)
    assert sorted(p.read_bytes() for p in exported) == sources
    assert runs == [("jobs/export_rtplans.yml", 1)]


def test_plan_out_then_apply_and_the_refusal_when_the_archive_changed(root):
    index(root / "examples" / "sample" / "data", root / DB)
    proc = cli("--plan-out", "p.json", "jobs/export_rtplans.yml", cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert not (root / "exports").exists()          # saving a plan runs nothing
    saved = json.loads((root / "p.json").read_text())
    series = saved["steps"][0]["series"][0]

    conn = sqlite3.connect(root / DB)
    with conn:
        conn.execute("insert into DICOMImages (SOPInstanc, SeriesInst, ObjectFile) "
                     "values ('9.9.9', ?, 'x.dcm')", (series["series_uid"],))
    conn.close()
    proc = cli("--apply", "p.json", cwd=root)
    assert proc.returncode == 2
    assert proc.stderr.startswith("p.json: the archive changed since the plan was made")
    assert series["series_uid"] in proc.stderr and "Traceback" not in proc.stderr
    assert not (root / "exports").exists()

    conn = sqlite3.connect(root / DB)
    with conn:
        conn.execute("delete from DICOMImages where SOPInstanc = '9.9.9'")
    conn.close()
    proc = cli("--apply", "p.json", "--json", cwd=root)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["report"]
    assert report["ok"] and report["steps"][0]["totals"]["done"] == saved["steps"][0]["instance_count"]
    assert len(list((root / "exports").rglob("*.dcm"))) == saved["steps"][0]["instance_count"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_failed_step_stops_the_job_with_exit_1(root):
    port = _free_port()   # nobody listens there
    (root / "jobs" / "two.yml").write_text(
        "version: 1\narchive: {data: examples/sample/data, database: examples/sample/conquest.db}\n"
        "steps:\n"
        f"  - select: {{modality: RTPLAN}}\n    action: {{send: {{host: 127.0.0.1, port: {port}, "
        "called_ae: NOBODY, retries: 0, timeout: 2}}\n"
        "  - select: {modality: RTPLAN}\n    action: {copy: {destination: exports/after}}\n")
    proc = cli("--json", "jobs/two.yml", cwd=root)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)["report"]
    assert report["ok"] is False
    assert report["steps"][0]["ok"] is False
    assert report["steps"][1]["summary"] == {"not_run": True}
    assert not (root / "exports" / "after").exists()


@pytest.mark.parametrize("args, message", [
    ([], "give one or more job files"),
    (["--apply", "p.json", "jobs/export_rtplans.yml"], "give no job files with it"),
    (["--plan-out", "p.json", "jobs/export_rtplans.yml", "jobs/delete_patient.yml"],
     "exactly one job"),
    (["--echo", "jobs/export_rtplans.yml"], "--echo goes with --dry-run"),
    (["jobs/nothing.yml"], "jobs/nothing.yml: job file not found"),
    (["--data", "nowhere", "--database", "none.db", "jobs/export_rtplans.yml"],
     "none.db: neither the database nor the data directory exists"),
    (["--dicom-sql", "missing.sql", "jobs/export_rtplans.yml"], "missing.sql: dicom.sql not found"),
])
def test_usage_and_archive_errors_exit_2_without_traceback(root, args, message):
    proc = cli(*args, cwd=root)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_archive_flags_override_the_job(root, tmp_path):
    other = tmp_path / "elsewhere"
    import shutil
    shutil.copytree(root / "examples/sample/data/RT001", other / "data" / "RT001")
    proc = cli("--dry-run", "--json", "--data", str(other / "data"), "--database",
               str(other / "c.db"), "jobs/export_rtplans.yml", cwd=root)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)["plan"]
    assert plan["data_dir"] == str(other / "data")
    assert {s["patient_id"] for s in plan["steps"][0]["series"]} == {"RT001"}
    assert not (other / "c.db").exists()


def test_a_missing_action_module_is_a_step_error_not_a_traceback(root, monkeypatch):
    from conquest_run.plan import Plan, PlanStep
    from conquest_run.runner import run_plan
    arc = index(root / "examples" / "sample" / "data", root / DB)
    monkeypatch.setitem(sys.modules, "conquest_run.actions.copy", None)  # as if not installed
    plan = Plan("j.yml", "", "j", str(arc.data_dir), str(arc.database), None, (
        PlanStep(1, "copy", "copy", {"destination": "o"}, "o", False, "series", ()),
        PlanStep(2, "dump", "dump", {"file": "o.csv"}, "o.csv", False, "series", ())))
    report = run_plan(plan, arc, dry_run=True)
    assert not report.ok
    assert "the copy action is not available" in report.steps[0].error
    assert report.steps[1].summary == {"not_run": True}


def test_a_database_without_conquest_tables_is_a_plain_error(root):
    (root / "empty.db").write_bytes(b"")
    proc = cli("--dry-run", "--database", "empty.db", "jobs/delete_patient.yml", cwd=root)
    assert proc.returncode == 2
    assert proc.stderr.startswith("empty.db: cannot read the index: no such table")
    assert "Traceback" not in proc.stderr
    assert (root / "empty.db").read_bytes() == b""


def test_dry_run_on_a_rollback_journal_database_keeps_its_header(root):
    """A database a Conquest server made (not WAL) must not be switched to WAL by a dry run."""
    index(root / "examples" / "sample" / "data", root / DB)
    conn = sqlite3.connect(root / DB)
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()
    before = tree_state(root)
    proc = cli("--dry-run", *[f"jobs/{j}" for j in MY_JOBS], cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert tree_state(root) == before
    assert (root / DB).read_bytes()[18:20] == b"\x01\x01"   # header: legacy (not WAL) mode


def test_version_and_no_arguments(capsys):
    from conquest_run.cli import main
    from conquest_run import __version__
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"conquest-run {__version__}"
    assert main([]) == 2
    assert "give one or more job files" in capsys.readouterr().err
