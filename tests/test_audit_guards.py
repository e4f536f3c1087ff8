"""Guard rails: a destructive step asks on a terminal (driven here through a pseudo-terminal),
needs --yes without one; expect: bounds refuse a plan before anything runs, located at the
bound; a delete that selects nothing is refused; other actions say they selected nothing."""

from __future__ import annotations

import os
import pty
import select
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _jobs_support import cli, sandbox

DELETE = ("version: 1\nname: del\narchive: {data: examples/sample/data, database: c.db}\n"
          "select: {patient: RT001, modality: RTPLAN}\naction: {delete: {files: true}}\n")


def _rtplan_files(root: Path) -> list[Path]:
    return sorted((root / "examples" / "sample" / "data" / "RT001").glob("*"))


def _count(root: Path, sql: str) -> int:
    conn = sqlite3.connect(root / "c.db")
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def _on_a_terminal(args: list[str], cwd: Path, answer: str | None,
                   timeout: float = 60) -> tuple[int, str]:
    """Run conquest-run with a pseudo-terminal as stdin/stdout/stderr; type ``answer`` at the
    prompt (None: expect no prompt).  The exit code and everything the terminal showed."""
    master, slave = pty.openpty()
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", PYTHONWARNINGS="ignore", TERM="dumb")
    proc = subprocess.Popen([sys.executable, "-m", "conquest_run", *args], cwd=cwd, env=env,
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    shown = b""
    typed = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:        # the other side closed: the process ended
                    break
                if not chunk:
                    break
                shown += chunk
                if not typed and answer is not None and b"Type yes to go on:" in shown:
                    os.write(master, answer.encode() + b"\n")
                    typed = True
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)
    return code, shown.decode("utf-8", "replace").replace("\r\n", "\n")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = sandbox(tmp_path)
    (root / "jobs" / "del.yml").write_text(DELETE)
    done = cli("--dry-run", "jobs/del.yml", cwd=root)      # index once (temporary); no change
    assert done.returncode == 0, done.stderr
    return root


def _planned_count(root: Path) -> int:
    from conquest_run.archive import Archive
    Archive(root / "examples" / "sample" / "data", root / "c.db").rebuild()
    return _count(root, "select count(*) from DICOMSeries where Modality = 'RTPLAN' and "
                        "SeriesPat = 'RT001'")


def test_the_prompt_shows_the_removal_and_yes_goes_on(root):
    n = _planned_count(root)
    assert n >= 1
    code, shown = _on_a_terminal(["jobs/del.yml"], root, "yes")
    assert code == 0, shown
    assert f"removes 1 patient, {n} series" in shown and "deletes" in shown
    assert "all done" in shown
    assert _count(root, "select count(*) from DICOMSeries where Modality = 'RTPLAN' and "
                        "SeriesPat = 'RT001'") == 0


def test_no_at_the_prompt_does_nothing(root):
    n = _planned_count(root)
    before = sorted(p.name for p in (root / "examples" / "sample" / "data").rglob("*"))
    code, shown = _on_a_terminal(["jobs/del.yml"], root, "no")
    assert code == 1, shown
    assert "not confirmed: nothing was done" in shown
    assert sorted(p.name for p in (root / "examples" / "sample" / "data").rglob("*")) == before
    assert _count(root, "select count(*) from DICOMSeries where Modality = 'RTPLAN' and "
                        "SeriesPat = 'RT001'") == n
    assert _count(root, "select count(*) from sqlite_master where name = 'ConquestRunRuns'") == 0


def test_yes_flag_skips_the_prompt(root):
    _planned_count(root)
    code, shown = _on_a_terminal(["--yes", "jobs/del.yml"], root, None)
    assert code == 0, shown
    assert "Type yes" not in shown and "all done" in shown


def test_without_a_terminal_a_delete_needs_yes(root):
    _planned_count(root)
    done = cli("jobs/del.yml", cwd=root)
    assert done.returncode == 2
    assert "Pass --yes to confirm" in done.stderr and "nothing was done" in done.stderr
    assert _count(root, "select count(*) from DICOMSeries where Modality = 'RTPLAN' and "
                        "SeriesPat = 'RT001'") > 0
    assert cli("--yes", "jobs/del.yml", cwd=root).returncode == 0


def _job(root: Path, body: str) -> str:
    (root / "jobs" / "x.yml").write_text(
        "version: 1\nname: x\narchive: {data: examples/sample/data, database: c.db}\n" + body)
    return "jobs/x.yml"


@pytest.mark.parametrize("expect, ok", [
    ("{patients: 1}", True), ("{patients: 2}", False), ("{series: {min: 1, max: 20}}", True),
    ("{series: {min: 50}}", False), ("{instances: {max: 0}}", False),
    ("{instances: {max: 5000}}", True)])
def test_expect_bounds(root, expect, ok):
    _planned_count(root)
    job = _job(root, "select: {patient: RT001, modality: RTPLAN}\n"
                     f"expect: {expect}\naction: {{copy: {{destination: out}}}}\n")
    done = cli(job, cwd=root)
    if ok:
        assert done.returncode == 0, done.stderr
        assert (root / "out").is_dir()
    else:
        assert done.returncode == 2
        assert done.stderr.startswith("jobs/x.yml:5:"), done.stderr
        assert "but the plan has" in done.stderr and "nothing was done" in done.stderr
        assert not (root / "out").exists()


def test_expect_in_steps_is_located_at_the_step(root):
    _planned_count(root)
    job = _job(root, "steps:\n  - select: {patient: RT001}\n    action: {dump: {file: a.csv}}  \n"
                     "  - select: {modality: RTPLAN}\n    expect:\n      patients: 1\n"
                     "    action: {copy: {destination: out}}\n")
    done = cli(job, cwd=root)
    assert done.returncode == 2
    assert done.stderr.startswith("jobs/x.yml:9:17: step 2 (copy) expects exactly 1 patients"), \
        done.stderr
    assert not (root / "a.csv").exists()


def test_a_bad_expect_is_a_schema_error(root):
    job = _job(root, "select: {patient: RT001}\nexpect: {patients: -1, studies: 2}\n"
                     "action: {copy: {destination: out}}\n")
    done = cli("--validate", job, cwd=root)
    assert done.returncode == 2 and "jobs/x.yml:5:" in done.stderr


def test_an_empty_delete_is_refused_unless_expected(root):
    _planned_count(root)
    job = _job(root, "select: {patient: RT001, modality: ct}\naction: {delete: {files: true}}\n")
    done = cli("--yes", job, cwd=root)
    assert done.returncode == 2
    assert done.stderr.startswith("jobs/x.yml:4:9: step 1 (delete) selected nothing to delete")
    assert "modality is case-sensitive" in done.stderr
    job = _job(root, "select: {patient: RT001, modality: ct}\nexpect: {instances: 0}\n"
                     "action: {delete: {files: true}}\n")
    done = cli("--yes", job, cwd=root)
    assert done.returncode == 0, done.stderr


def test_other_actions_say_they_selected_nothing(root):
    _planned_count(root)
    job = _job(root, "select: {patient: NOBODY}\naction: {copy: {destination: out}}\n")
    done = cli(job, cwd=root)
    assert done.returncode == 0
    assert "step 1 (copy) selected nothing" in done.stderr
