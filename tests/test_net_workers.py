"""Parallel associations in worker processes (net_workers) against dcmtk storescp on 127.0.0.1:
the journal gets every outcome, a dead worker's instances fail "not sent", Ctrl-C stops after the
instances in flight, and the reactor hold (net.reactor_held) keeps a requestor's reactor paused."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

import pytest

from conquest_run.audit import AuditLog
from conquest_run.net import DicomTransport, PeerSettings, group_associations, read_send_item
from conquest_run.net.workers import can_fork
from conquest_run.report import DONE, FAILED, SKIPPED

from _net_support import (audit_rows, free_port, killing_journal, make_archive, received_sops,
                          run_send, send_step, storescp)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("workers") / "archive", patients=4)


def _options(port, **extra):
    return {"host": "127.0.0.1", "port": port, "called_ae": "STORESCP", "retries": 0,
            "retry_delay": 0.05, "timeout": 10, **extra}


def _batches(archive, step, parts):
    items = [read_send_item(archive.data_dir / i.path, i.sop_uid, s.series_uid)
             for s in step.series for i in s.instances]
    return items, group_associations(items, parts=parts)


def test_parallel_associations_run_in_worker_processes_and_journal_everything(archive,
                                                                              tmp_path):
    assert can_fork()                    # the test process has one thread: the process path
    senders: set[int] = set()

    class Spy(AuditLog):
        def record(self, *args):
            super().record(*args)
            senders.update(p.pid for p in multiprocessing.active_children())

    rx = tmp_path / "rx"
    with storescp(rx, None, "--fork") as (_, port):
        plan, step = send_step(archive, _options(port, associations=3))
        report = run_send(archive, plan, step, audit_class=Spy, run_id="w1")
    planned = {i.sop_uid for s in step.series for i in s.instances}
    assert report.ok and report.summary["associations"] >= 3
    assert len(senders) >= 2 and os.getpid() not in senders
    assert set(received_sops(rx)) == planned
    rows = audit_rows(archive.database)
    assert sorted(r[0] for r in rows if r[1] == DONE and r[0] in planned) == sorted(planned)
    assert not multiprocessing.active_children()       # every worker was joined


def test_with_another_thread_running_the_threads_path_is_used(archive, tmp_path):
    release = threading.Event()
    other = threading.Thread(target=release.wait, daemon=True)
    other.start()
    try:
        assert not can_fork()
        with storescp(tmp_path / "rx") as (_, port):
            plan, step = send_step(archive, _options(port, associations=2))
            items, batches = _batches(archive, step, 2)
            got = []
            DicomTransport(PeerSettings("127.0.0.1", port, called_ae="STORESCP",
                                        associations=2, retries=0)).send(batches, got.append)
    finally:
        release.set()
        other.join(5)
    assert sorted(o.sop_uid for o in got if o.status == DONE) == sorted(i.sop_uid for i in items)


def test_a_worker_killed_mid_send_fails_its_unreported_instances_and_a_rerun_sends_them(
        archive, tmp_path):
    killed: list[int] = []

    def on_outcome(outcome):
        got.append(outcome)
        if not killed and len(got) >= 3:
            victim = multiprocessing.active_children()[0]
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(victim.pid)

    got: list = []
    with storescp(tmp_path / "rx", None, "--fork") as (_, port):
        plan, step = send_step(archive, _options(port))
        items, batches = _batches(archive, step, 2)
        DicomTransport(PeerSettings("127.0.0.1", port, called_ae="STORESCP", associations=2,
                                    retries=0)).send(batches, on_outcome)
    assert killed
    by_sop = {o.sop_uid: o for o in got}
    assert set(by_sop) == {i.sop_uid for i in items}       # one outcome per instance
    assert len(got) == len(items)
    lost = [o for o in got if o.status == FAILED]
    assert lost and all(o.reason == "not sent: the worker process ended unexpectedly"
                        for o in lost)
    assert any(o.status == DONE for o in got)


def test_ctrl_c_stops_the_workers_after_the_instances_in_flight(archive, tmp_path):
    seen: list = []

    class Interrupt(AuditLog):
        """The journal; Ctrl-C (KeyboardInterrupt in the parent) after 4 recorded outcomes."""

        def record(self, *args):
            super().record(*args)
            seen.append(args[-1])
            if len(seen) == 4:
                raise KeyboardInterrupt

    rx = tmp_path / "rx"
    with storescp(rx, None, "--fork") as (_, port):
        plan, step = send_step(archive, _options(port, associations=2))
        with pytest.raises(KeyboardInterrupt):
            run_send(archive, plan, step, audit_class=Interrupt, run_id="c1", force=True)
        assert not multiprocessing.active_children()
        confirmed = {o.sop_uid for o in seen if o.status == DONE}
        journaled = {r[0] for r in audit_rows(archive.database) if r[1] == DONE}
        assert confirmed <= journaled
        assert 4 <= len(seen) < step.instance_count
        rx2 = tmp_path / "rx2"
        with storescp(rx2, None, "--fork") as (_, port2):
            plan2, step2 = send_step(archive, _options(port2, associations=2))
            first = run_send(archive, plan2, step2, run_id="c2")
    assert first.ok


def test_unreachable_peer_with_several_associations_is_one_error_and_nothing_journaled(
        tmp_path):
    archive = make_archive(tmp_path / "a", patients=2)
    port = free_port()
    plan, step = send_step(archive, _options(port, associations=3))
    report = run_send(archive, plan, step)
    assert report.error is not None and f"127.0.0.1:{port}" in report.error
    assert report.outcomes == [] and audit_rows(archive.database) == []
    assert not multiprocessing.active_children()


def test_rerun_after_a_parallel_send_skips_everything(archive, tmp_path):
    with storescp(tmp_path / "rx", None, "--fork") as (_, port):
        plan, step = send_step(archive, _options(port, associations=3))
        first = run_send(archive, plan, step, run_id="r1")
        second = run_send(archive, plan, step, run_id="r2")
    assert first.totals()[DONE] == step.instance_count
    assert second.totals() == {DONE: 0, SKIPPED: step.instance_count, FAILED: 0}


def test_reactor_held_pauses_the_reactor_for_the_requests_and_lets_it_go(tmp_path):
    from pynetdicom import AE

    from conquest_run.net import reactor_held

    with storescp(tmp_path / "rx") as (_, port):
        ae = AE(ae_title="T")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", port)
        try:
            with reactor_held(assoc) as held:
                assert held and assoc._is_paused is True
                for n in range(50):             # no response lost to the reactor
                    assert assoc.send_c_echo(msg_id=n + 1).Status == 0
                assert assoc._is_paused is True     # pynetdicom's set() did not wake it
            deadline = 200
            while assoc._is_paused and deadline:
                threading.Event().wait(0.005)
                deadline -= 1
            assert assoc._is_paused is False        # running again after the block
        finally:
            assoc.release()
        assert assoc.is_released


def test_peer_killed_during_a_parallel_send_then_rerun_sends_only_the_rest(tmp_path):
    archive = make_archive(tmp_path / "a", patients=3)

    KillAfter = killing_journal(after=5)

    with storescp(tmp_path / "rx1") as (proc, port):
        plan, step = send_step(archive, _options(port, associations=2))
        KillAfter.peer = proc
        first = run_send(archive, plan, step, audit_class=KillAfter, run_id="k1")
    confirmed = {o.sop_uid for o in first.outcomes if o.status == DONE}
    everything = {i.sop_uid for s in step.series for i in s.instances}
    assert 5 <= len(confirmed) < len(everything)
    assert {o.sop_uid for o in first.outcomes} == everything      # every instance accounted
    assert all(o.reason.startswith("not sent") for o in first.outcomes if o.status == FAILED)
    assert not multiprocessing.active_children()
    rx2 = tmp_path / "rx2"
    with storescp(rx2, port, "--fork"):
        second = run_send(archive, plan, step, run_id="k2")
    assert second.ok
    assert {o.sop_uid for o in second.outcomes if o.status == SKIPPED} == confirmed
    assert set(received_sops(rx2)) == everything - confirmed


def _journal(database) -> list[tuple]:
    import sqlite3

    conn = sqlite3.connect(database)
    try:
        return conn.execute("SELECT RunId, SOPInstanc, Status FROM ConquestRunAudit "
                            "WHERE Action = 'send'").fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("associations", [1, 3])
def test_sigint_to_the_cli_journals_exactly_what_the_peer_got(tmp_path, associations):
    """A real Ctrl-C (SIGINT to the process group) in the middle of a send: exit 130 at once,
    every instance the peer received is journaled once as done, nothing else is; the rerun
    sends exactly the rest."""
    import subprocess
    import sys
    import time

    from conquest_run.archive import Archive
    from conquest_run.synthetic import generate_files

    generate_files(tmp_path / "data", 400, seed=9, size=8, per_patient=100)
    Archive(tmp_path / "data", tmp_path / "conquest.db").rebuild()
    rx = tmp_path / "rx"
    with storescp(rx, None, "--fork") as (_, port):
        job = tmp_path / "send.yml"
        job.write_text(
            "version: 1\nname: sigint\n"
            f"archive: {{data: '{tmp_path / 'data'}', database: '{tmp_path / 'conquest.db'}'}}\n"
            "select: {modality: [CT, MR, RTSTRUCT, RTPLAN, RTDOSE]}\n"
            f"action:\n  send: {{host: 127.0.0.1, port: {port}, called_ae: STORESCP, "
            f"associations: {associations}, retries: 0, timeout: 10}}\n")
        cmd = [sys.executable, "-m", "conquest_run", str(job)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 30
            while len(list(rx.iterdir())) < 20 and proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.005)
            os.killpg(proc.pid, signal.SIGINT)
            started = time.monotonic()
            _, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        assert proc.returncode == 130, err
        assert time.monotonic() - started < 5
        received = set(received_sops(rx))
        done = [sop for _, sop, status in _journal(tmp_path / "conquest.db") if status == DONE]
        assert len(done) == len(set(done))                 # each outcome journaled once
        assert set(done) == received and 20 <= len(received) < 400
        for f in rx.iterdir():                  # the rerun goes to the same peer (target)
            f.unlink()
        rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    everything = {sop for _, sop, _ in _journal(tmp_path / "conquest.db")}
    assert len(everything) == 400 and set(received_sops(rx)) == everything - received
