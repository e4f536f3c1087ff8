"""Two real sends of the same job to the same peer at once (issue 15, item 9): the lock per
(job, target) lets one send; the other says that one is already running; nothing goes twice."""

from __future__ import annotations

import subprocess
import sys
import os
from pathlib import Path

import pytest

from _net_support import audit_rows, make_archive, received_sops, storescp

pytestmark = pytest.mark.timeout(120)


def _send_job(root: Path, port: int) -> Path:
    job = root / "send.yml"
    job.write_text("version: 1\nname: send-all\narchive: {data: data, database: conquest.db}\n"
                   "select: {modality: [CT, RTSTRUCT, RTPLAN, RTDOSE]}\n"
                   f"action: {{send: {{host: 127.0.0.1, port: {port}, called_ae: STORESCP, "
                   "associations: 1}}\n")
    return job


def _cli(root: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200", PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, "-m", "conquest_run", *args], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_concurrent_sends_of_one_job_send_each_instance_once(tmp_path):
    archive = make_archive(tmp_path, patients=4, ct_slices=47)
    total = len(archive.query("select SOPInstanc from DICOMImages"))
    assert total >= 200
    received = tmp_path / "received"
    with storescp(received) as (_, port):
        job = _send_job(tmp_path, port)
        runs = [_cli(tmp_path, str(job)) for _ in range(2)]
        results = [(p.wait(timeout=100), *p.communicate()) for p in runs]
    done = [r for r in audit_rows(tmp_path / "conquest.db") if r[1] == "done"]
    assert len(done) == total, results
    assert len({r[0] for r in done}) == total
    assert len(received_sops(received)) == total
    codes = sorted(code for code, _, _ in results)
    assert codes[0] == 0, results
    # the other one either found the lock held, or ran after and found everything journaled
    loser = [r for r in results if r[0] != 0]
    assert all(code == 1 and "already running" in out + err for code, out, err in loser), loser


def test_a_send_while_the_lock_is_held_sends_nothing_and_says_so(tmp_path):
    from conquest_run.locks import run_lock
    make_archive(tmp_path, patients=1, ct_slices=2)
    received = tmp_path / "received"
    with storescp(received) as (_, port):
        job = _send_job(tmp_path, port)
        target = f"STORESCP@127.0.0.1:{port}"
        with run_lock(tmp_path / "conquest.db", str(job), target):
            proc = _cli(tmp_path, str(job))
            code = proc.wait(timeout=60)
            out, err = proc.communicate()
    assert code == 1, out + err
    assert "already running" in out + err
    assert received_sops(received) == {} if received.exists() else True
    assert [r for r in audit_rows(tmp_path / "conquest.db") if r[1] == "done"] == []
