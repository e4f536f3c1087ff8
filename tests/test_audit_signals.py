"""Honest run records: a real SIGINT or SIGTERM to a ``conquest-run`` process during a copy and
during a send (to dcmtk's storescp) is recorded as ``interrupted`` with its signal; a process
killed outright leaves a row ``history`` shows as ``crashed``; a whole-step failure is stored
and counted."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _net_support import free_port, make_archive, storescp

BIG = 96 * 1024 * 1024      # a sparse tail that makes one copy last long enough to interrupt


def _start(*args: str, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, "-m", "conquest_run", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(check, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended ({proc.returncode}) before the signal: "
                                 f"{proc.stderr.read()}")
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("the run never reached the point to interrupt")


def _runs(database: Path) -> list[tuple]:
    conn = sqlite3.connect(database)
    try:
        return conn.execute("SELECT RunId, State, Signal, Ok, Ended, Pid, Host, Error "
                            "FROM ConquestRunRuns").fetchall()
    finally:
        conn.close()


def _history(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "conquest_run", "history", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60)


def _copy_archive(root: Path) -> Path:
    archive = make_archive(root, patients=1, ct_slices=6)
    conn = sqlite3.connect(archive.database)
    last = conn.execute(         # the last in plan order: study, series, then SOP UID
        "SELECT i.ObjectFile FROM DICOMImages i JOIN DICOMSeries s ON s.SeriesInst = "
        "i.SeriesInst ORDER BY s.StudyInsta DESC, s.SeriesInst DESC, i.SOPInstanc DESC "
        "LIMIT 1").fetchone()[0]
    conn.close()
    with open(archive.data_dir / last, "r+b") as f:       # the last file copied is big
        f.truncate(BIG)
    (root / "copy.yml").write_text(
        "version: 1\nname: copy-all\narchive: {data: data, database: conquest.db}\n"
        "select: {patient: NET000}\naction:\n  copy: {destination: out, layout: flat}\n")
    return root / "conquest.db"


def _big_file_in_progress(out: Path) -> bool:
    """A temporary .dcm file being written in ``out`` (not the manifest's) is over 1 MB."""
    if not out.is_dir():
        return False
    for p in out.iterdir():
        if p.name.endswith(".tmp") and ".dcm." in p.name:
            try:
                if p.stat().st_size > 1 << 20:
                    return True
            except FileNotFoundError:       # renamed meanwhile
                pass
    return False


@pytest.mark.parametrize("sig, codes", [(signal.SIGINT, {130}), (signal.SIGTERM, {143, 130})])
def test_signal_during_copy_is_recorded_as_interrupted(tmp_path, sig, codes):
    database = _copy_archive(tmp_path)
    out = tmp_path / "out"
    proc = _start("copy.yml", cwd=tmp_path)
    # the big file is being written (its temporary file is there): interrupt now
    _wait_for(lambda: _big_file_in_progress(out), proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in codes, err
    [(run_id, state, signame, ok, ended, pid, host, error)] = _runs(database)
    assert (state, signame, ok) == ("interrupted", sig.name, 0)
    assert ended and pid == proc.pid and host
    assert "during step 1 (copy)" in error
    shown = _history("--json", cwd=tmp_path)
    [run] = json.loads(shown.stdout)
    assert run["state"] == "interrupted" and run["signal"] == sig.name
    copied = [p for p in out.iterdir() if p.suffix == ".dcm"]
    conn = sqlite3.connect(database)
    total = conn.execute("SELECT count(*) FROM DICOMImages").fetchone()[0]
    conn.close()
    # the small files were copied (and recorded) before the signal, the big one was not
    assert 0 < run["done"] == len(copied) == total - 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not (out / "manifest.json").exists()


def _send_job(root: Path, port: int) -> Path:
    make_archive(root, patients=1, ct_slices=6)
    (root / "send.yml").write_text(
        "version: 1\nname: send-all\narchive: {data: data, database: conquest.db}\n"
        "select: {patient: NET000}\naction:\n"
        f"  send: {{host: 127.0.0.1, port: {port}, called_ae: STORESCP, retries: 0}}\n")
    return root / "conquest.db"


def _sent(database: Path) -> int:
    try:
        conn = sqlite3.connect(database)
        try:
            return conn.execute("SELECT count(*) FROM ConquestRunAudit WHERE Action = 'send' "
                                "AND Status = 'done'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


@pytest.mark.parametrize("sig, codes", [(signal.SIGINT, {130}), (signal.SIGTERM, {143, 130})])
def test_signal_during_send_is_recorded_as_interrupted(tmp_path, sig, codes):
    with storescp(tmp_path / "peer", None, "--sleep-during", "1") as (_, port):
        database = _send_job(tmp_path, port)
        proc = _start("send.yml", cwd=tmp_path)
        _wait_for(lambda: _sent(database) >= 1, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode in codes, err
    [(run_id, state, signame, ok, *_)] = _runs(database)
    assert (state, signame, ok) == ("interrupted", sig.name, 0)
    shown = _history("--run", run_id[:8], cwd=tmp_path)
    assert f"interrupted ({sig.name})" in shown.stdout
    assert "not sent: interrupted" in shown.stdout
    assert "ok" not in shown.stdout.split("\n")[0].split()


def test_killed_run_shows_as_crashed(tmp_path):
    with storescp(tmp_path / "peer", None, "--sleep-during", "1") as (_, port):
        database = _send_job(tmp_path, port)
        proc = _start("send.yml", cwd=tmp_path)
        _wait_for(lambda: _sent(database) >= 1, proc)
        proc.kill()
        proc.communicate(timeout=30)
    [(run_id, state, *_)] = _runs(database)
    assert state == "running"                 # nothing could close the row...
    [run] = json.loads(_history("--json", cwd=tmp_path).stdout)
    assert run["state"] == "crashed"          # ...but its process is gone
    assert "crashed" in _history(cwd=tmp_path).stdout


def test_send_to_a_closed_port_counts_and_shows_the_step_failure(tmp_path):
    database = _send_job(tmp_path, free_port())
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, "-m", "conquest_run", "send.yml"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    row = next(line for line in done.stdout.splitlines() if line.strip().startswith("1 send"))
    assert row.split()[4:7] == ["0", "0", "1"], row     # done, skipped, failed
    [(run_id, state, *_)] = _runs(database)
    assert state == "failed"
    shown = _history("--run", run_id, cwd=tmp_path)
    assert "(whole step)" in shown.stdout and "cannot send to" in shown.stdout
    [run] = json.loads(_history("--json", cwd=tmp_path).stdout)
    assert run["failed"] == 1 and run["state"] == "failed"
