"""The audit tables: migration of an older version's tables, run context, outcome facts."""

from __future__ import annotations

import json
import sqlite3

from conquest_run.audit import AuditLog, read_outcomes, read_runs
from conquest_run.report import Outcome

OLD_DDL = (
    "CREATE TABLE ConquestRunRuns (RunId varchar(64) PRIMARY KEY not null, JobPath text, "
    "JobSha256 varchar(64), JobName text, Started varchar(32), Ended varchar(32), Ok int, "
    "Summary text)",
    "CREATE TABLE ConquestRunAudit (RunId varchar(64), Step int, StepName text, "
    "Action varchar(16), Target text, SOPInstanc varchar(64), SeriesInst varchar(64), "
    "Status varchar(16), Reason text, Detail text, Time varchar(32))",
)


def _old_database(path):
    conn = sqlite3.connect(path)
    for stmt in OLD_DDL:
        conn.execute(stmt)
    conn.execute("INSERT INTO ConquestRunRuns VALUES ('old1', 'j.yml', 'x', 'j', "
                 "'2026-01-01T00:00:00.000+00:00', '2026-01-01T00:00:01.000+00:00', 1, '{}')")
    conn.execute("INSERT INTO ConquestRunRuns VALUES ('old2', 'j.yml', 'x', 'j', "
                 "'2026-01-02T00:00:00.000+00:00', NULL, NULL, NULL)")
    conn.execute("INSERT INTO ConquestRunAudit VALUES ('old1', 1, 'copy', 'copy', 'out', '1.2', "
                 "'1.2.0', 'done', '', NULL, '2026-01-01T00:00:00.500+00:00')")
    conn.commit()
    return conn


def test_old_tables_are_read_without_change_then_migrated(tmp_path):
    conn = _old_database(tmp_path / "c.db")
    runs = {r["run_id"]: r for r in read_runs(conn, limit=None)}
    assert runs["old1"]["state"] == "ok" and runs["old1"]["done"] == 1
    assert runs["old2"]["state"] == "unfinished"          # no pid kept: cannot know
    assert read_outcomes(conn, "old1")[0]["patient_id"] is None
    log = AuditLog(conn)                                  # migrates: ALTER TABLE ADD COLUMN
    columns = {r[1] for r in conn.execute("PRAGMA table_info(ConquestRunRuns)")}
    assert {"State", "Signal", "Pid", "Host", "User", "Version", "JobCommit",
            "Variables", "Error"} <= columns
    assert "PatientID" in {r[1] for r in conn.execute("PRAGMA table_info(ConquestRunAudit)")}
    AuditLog(conn)                                        # twice is harmless
    log.start_run("new", "j.yml", "x", "j", pid=1, host="elsewhere", user="u",
                  version="9", job_commit=None, variables={"who": "RT001"})
    log.record("new", 1, "send", "send", "A@h:1", Outcome("1.2", "1.2.0", "failed", "no"))
    log.end_run("new", False)
    runs = {r["run_id"]: r for r in read_runs(conn, limit=None)}
    assert runs["new"]["state"] == "failed" and runs["new"]["variables"] == {"who": "RT001"}
    assert runs["old1"]["state"] == "ok"
    assert [o["run_id"] for o in read_outcomes(conn, None, status="failed")] == ["new"]
    assert read_outcomes(conn, None, since="2026-01-01T00:00:00.600+00:00")[0]["run_id"] == "new"
    conn.close()


def test_outcomes_carry_the_planned_facts(tmp_path):
    from conquest_run.plan import Plan, PlannedInstance, PlannedSeries, PlanStep
    inst = PlannedInstance("1.2.3", None, "P1/x.dcm", 1234)
    step = PlanStep(1, "delete", "delete", {}, "archive", True, "series",
                    (PlannedSeries("1.2", "P1", "1", "CT", "", (inst,)),))
    plan = Plan("j.yml", "x", "j", "data", "c.db", None, (step,))
    conn = sqlite3.connect(tmp_path / "c.db")
    log = AuditLog(conn)
    log.know(plan)
    log.start_run("r", "j.yml", "x", "j")
    log.record("r", 1, "delete", "delete", "archive",
               Outcome("1.2.3", "1.2", "done", "", {"file_removed": True}))
    log.end_run("r", True)
    [o] = read_outcomes(conn, "r", patient="P1")
    assert o["detail"] == {"path": "P1/x.dcm", "bytes": 1234, "file_removed": True}
    assert o["series_uid"] == "1.2"
    assert json.loads(conn.execute("SELECT Detail FROM ConquestRunAudit").fetchone()[0])
    conn.close()


def test_job_commit_from_git(tmp_path):
    import shutil
    import subprocess

    import pytest

    from conquest_run.runcontext import job_commit, run_context
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    job = tmp_path / "repo" / "j.yml"
    job.parent.mkdir()
    job.write_text("version: 1\n")
    outside = tmp_path / "j.yml"
    outside.write_text("version: 1\n")
    env_args = ["-c", "user.name=t", "-c", "user.email=t@example.org"]
    git = ["git", "-C", str(job.parent)]
    subprocess.run(git + ["init", "-q"], check=True)
    assert job_commit(job) is None                        # no commit yet
    assert job_commit(outside) is None                    # not in a repository
    subprocess.run(git + ["add", "j.yml"], check=True)
    subprocess.run(git[:3] + env_args + ["commit", "-qm", "job"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert job_commit(job) == head
    job.write_text("version: 1\nname: x\n")
    assert job_commit(job) == head + "+modified"
    assert job_commit(tmp_path / "missing.yml") is None
    context = run_context(str(job), {"p": "1"})
    assert context["job_commit"] == head + "+modified" and context["variables"] == {"p": "1"}
    assert context["pid"] > 0 and context["host"] and context["version"]


def test_delete_outcomes_say_whether_the_file_went(tmp_path):
    import os
    import subprocess
    import sys

    from _jobs_support import sandbox
    root = sandbox(tmp_path)
    (root / "jobs" / "del.yml").write_text(
        "version: 1\nname: del\narchive: {data: examples/sample/data, database: c.db}\n"
        "select: {patient: RT001, modality: CT}\naction: {delete: {files: true}}\n")
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, "-m", "conquest_run", "--yes", "jobs/del.yml"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    conn = sqlite3.connect(root / "c.db")
    outcomes = read_outcomes(conn, None, action="delete")
    conn.close()
    assert outcomes and all(o["patient_id"] == "RT001" for o in outcomes)
    for o in outcomes:
        assert o["detail"]["file_removed"] is True and o["detail"]["bytes"] > 0
        assert not os.path.exists(o["detail"]["path"])
