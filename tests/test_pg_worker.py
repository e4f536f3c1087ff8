"""``conquest-run worker``: the send queue of a PostgreSQL index drained by worker processes
into real dcmtk storescp receivers (``+uf``: every arrival its own file, so a duplicate shows).

The kill test shows the one documented window of a second copy: a worker killed after the peer
stored an instance and before its confirm committed (with ``--sleep-after 1`` the peer stores
the instance in flight after the worker is gone); every instance a worker confirmed arrives
exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from _net_support import stop, storescp
from conquest_run import synthetic
from conquest_run.cli import main

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install "
                                                 "'.[test]' installs it)")
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def archive(tmp_path, pg_url, monkeypatch):
    """(data dir, URL) of a PostgreSQL index over 40 synthetic CT instances (two patients)."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    for n in range(2):
        synthetic.write_patient(data, seed=11, patient_id=f"Q{n}", ct_slices=20, rt=False)
    assert main(["rebuild", "--data", str(data), "--database", pg_url]) == 0
    return data, pg_url


def _rows(url: str, sql: str, params=()) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return [tuple(r) for r in conn.execute(sql, params).fetchall()]


def _enqueue(url: str, port: int, count: int | None = None, run_id: str = "run1") -> list:
    from conquest_run.backends.postgres import connect
    from conquest_run.net import PeerSettings
    from conquest_run.net.sendqueue import QueueItem, enqueue, ensure_queue
    with connect(url) as conn:
        ensure_queue(conn)
        rows = conn.execute("SELECT sopinstanc, seriesinst, objectfile, sopclassui, imagepat "
                            "FROM dicomimages ORDER BY sopinstanc").fetchall()
        items = [QueueItem(*r) for r in rows][:count]
        peer = PeerSettings("127.0.0.1", port, "STORESCP", retries=0, retry_delay=0.1,
                            timeout=10)
        assert enqueue(conn, run_id, 1, peer, items) == len(items)
        assert enqueue(conn, run_id, 1, peer, items) == 0          # idempotent
    return items


def _worker(url: str, data: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "conquest_run", "worker", "--database", url,
                             "--data", str(data), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 30) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc, signal.SIGKILL)
        raise
    return proc.returncode, out, err


def _arrivals(folder: Path) -> Counter:
    import pydicom
    return Counter(str(pydicom.dcmread(p, stop_before_pixels=True,
                                       specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
                   for p in folder.rglob("*") if p.is_file())


def _states(url: str) -> dict[str, str]:
    return dict(_rows(url, "SELECT sopinstanc, state FROM conquestrunsendqueue"))


def _wait_sent(url: str, pid: int, at_least: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _rows(url, "SELECT count(*) FROM conquestrunsendqueue WHERE state = 'sent' AND "
                      "leaseowner LIKE %s", (f"%:{pid}:%",))[0][0] >= at_least:
            return
        time.sleep(0.05)
    raise TimeoutError(f"worker {pid} did not confirm {at_least} instances in {timeout} s")


def test_two_workers_deliver_every_instance_exactly_once(archive, tmp_path):
    data, url = archive
    rx = tmp_path / "rx"
    with storescp(rx, None, "+uf") as (_, port):
        items = _enqueue(url, port)
        workers = [_worker(url, data, "--batch", "3", "--lease", "5") for _ in range(2)]
        results = [_finish(w) for w in workers]
        again = _finish(_worker(url, data))             # nothing left: sends nothing
    assert [r[0] for r in results] == [0, 0], [r[2] for r in results]
    assert len(items) == 40
    assert _arrivals(rx) == Counter({i.sop_uid: 1 for i in items}), results
    assert set(_states(url).values()) == {"sent"}, results
    sent = [int(r[1].split(": ")[1].split(" sent")[0]) for r in results]
    assert sum(sent) == 40, results
    assert again[0] == 0 and ": 0 sent, 0 failed" in again[1], again
    audit = _rows(url, "SELECT sopinstanc, status, action, target FROM conquestrunaudit")
    assert sorted(a[0] for a in audit) == sorted(i.sop_uid for i in items)
    assert {a[1:] for a in audit} == {("done", "send", f"STORESCP@127.0.0.1:{port}")}


def test_a_killed_worker_s_instances_are_sent_by_the_other_after_its_lease(archive, tmp_path):
    data, url = archive
    rx = tmp_path / "rx"
    with storescp(rx, None, "+uf", "--sleep-after", "1") as (_, port):    # 1 s per instance
        items = _enqueue(url, port, count=6)
        first, second = (_worker(url, data, "--batch", "3", "--lease", "2") for _ in range(2))
        _wait_sent(url, first.pid, 1)
        first.send_signal(signal.SIGKILL)
        assert _finish(first)[0] == -signal.SIGKILL
        mine = f"%:{first.pid}:%"
        confirmed_by_first = {r[0] for r in _rows(
            url, "SELECT sopinstanc FROM conquestrunsendqueue WHERE state = 'sent' AND "
                 "leaseowner LIKE %s", (mine,))}
        left_by_first = {r[0] for r in _rows(
            url, "SELECT sopinstanc FROM conquestrunsendqueue WHERE state = 'leased' AND "
                 "leaseowner LIKE %s", (mine,))}
        assert left_by_first                        # held until the lease expires
        code, out, err = _finish(second)
    assert code == 0, err
    assert set(_states(url).values()) == {"sent"}
    arrived = _arrivals(rx)
    assert set(arrived) == {i.sop_uid for i in items}
    for sop in confirmed_by_first:                  # confirmed: never sent again
        assert arrived[sop] == 1
    twice = [sop for sop, n in arrived.items() if n > 1]
    # the one window: the instance in flight when the worker died (stored by the peer, never
    # confirmed); the second worker sent it again, after the first one's lease expired
    assert len(twice) <= 1 and set(twice) <= left_by_first
    taken = _rows(url, "SELECT sopinstanc, attempts, leaseowner FROM conquestrunsendqueue "
                       "WHERE sopinstanc = ANY(%s)", (list(left_by_first),))
    assert {r[1] for r in taken} == {2}             # the dead worker's try counted
    assert all(f":{second.pid}:" in r[2] for r in taken)
    assert " sent, 0 failed" in out


def test_sigterm_finishes_the_instance_in_flight_and_gives_the_rest_back(archive, tmp_path):
    data, url = archive
    rx = tmp_path / "rx"
    with storescp(rx, None, "+uf", "--sleep-after", "1") as (_, port):
        items = _enqueue(url, port, count=4)
        proc = _worker(url, data, "--batch", "4", "--lease", "30")
        _wait_sent(url, proc.pid, 1)
        proc.send_signal(signal.SIGTERM)
        code, out, err = _finish(proc, timeout=10)
        assert code == 143, err
        assert "(stopped)" in out
        rows = _rows(url, "SELECT state, leaseowner, attempts FROM conquestrunsendqueue")
        sent = [r for r in rows if r[0] == "sent"]
        assert 1 <= len(sent) < 4
        assert {r for r in rows if r[0] != "sent"} == {("queued", None, 0)}
        assert _finish(_worker(url, data))[0] == 0       # another worker sends the rest
    assert _arrivals(rx) == Counter({i.sop_uid: 1 for i in items})


def test_a_refusing_destination_fails_the_items_with_its_reason(archive, tmp_path):
    data, url = archive
    with storescp(tmp_path / "rx", None, "--refuse") as (_, port):
        items = _enqueue(url, port, count=3)
        code, out, err = _finish(_worker(url, data, "--attempts", "2"))
    assert code == 1, err
    assert ": 0 sent, 3 failed" in out
    rows = _rows(url, "SELECT state, attempts, reason FROM conquestrunsendqueue")
    assert {r[:2] for r in rows} == {("failed", 2)}
    # storescp --refuse answers A-ASSOCIATE-RJ and closes: pynetdicom reads either first
    assert all("cannot send to STORESCP@" in r[2] and ("association rejected by the peer" in r[2]
               or "association aborted by the peer" in r[2]) for r in rows), rows
    audit = _rows(url, "SELECT sopinstanc, status, reason FROM conquestrunaudit")
    assert sorted(a[0] for a in audit) == sorted(i.sop_uid for i in items)
    assert {a[1] for a in audit} == {"failed"}


def test_bad_databases_are_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert main(["worker", "--database", "conquest.db"]) == 2
    assert "worker needs a PostgreSQL index" in capsys.readouterr().err
    assert main(["worker", "--database", "postgresql://u@127.0.0.1:x/db"]) == 2
    assert "cannot be parsed" in capsys.readouterr().err
    assert main(["worker", "--database", "postgresql://u:secret@127.0.0.1/db"]) == 2
    err = capsys.readouterr().err
    assert "secret" not in err and "carries a password" in err


def test_an_unreachable_server_is_one_sentence(tmp_path, capsys):
    from _net_support import free_port
    (tmp_path / "data").mkdir()
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/pacs"
    assert main(["worker", "--database", url, "--data", str(tmp_path / "data")]) == 2
    assert "cannot be reached" in capsys.readouterr().err


def test_sigint_ends_an_idle_worker_with_130(archive):
    data, url = archive
    proc = _worker(url, data, "--idle-exit", "60")
    deadline = time.monotonic() + 15
    while not _rows(url, "SELECT 1 FROM pg_stat_activity WHERE application_name = "
                         "'conquest-run' AND datname = current_database()"):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    code, out, err = _finish(proc, timeout=10)
    assert code == 130, err
    assert "0 sent" in out and "(stopped)" in out and "Traceback" not in err


def test_a_wrong_data_directory_gives_the_batch_back_and_says_so(archive, tmp_path):
    data, url = archive
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _enqueue(url, 1, count=3)
    code, out, err = _finish(_worker(url, elsewhere))
    assert code == 2 and "none of the 3 files of a leased batch exist under" in err, err
    assert "Traceback" not in err
    assert set(_rows(url, "SELECT state, attempts, leaseowner FROM conquestrunsendqueue")) == \
        {("queued", 0, None)}


def test_a_missing_data_directory_is_one_sentence(pg_url, tmp_path, capsys):
    assert main(["worker", "--database", pg_url, "--data", str(tmp_path / "nope")]) == 2
    assert "the data directory" in capsys.readouterr().err


# -- the queue's statements, on two connections at once ---------------------------------------

def _connect(url: str):
    from conquest_run.backends.postgres import connect
    return connect(url)


def test_lease_skips_rows_another_transaction_holds_without_waiting(archive):
    from conquest_run.net.sendqueue import lease
    data, url = archive
    _enqueue(url, 1, count=6)
    with _connect(url) as holder, _connect(url) as other:
        assert lease(other, "w1", 10, 30, run_id="another run") == []
        holder.execute("BEGIN")
        held = holder.execute("SELECT item FROM conquestrunsendqueue ORDER BY item LIMIT 2 "
                              "FOR UPDATE").fetchall()
        started = time.monotonic()
        got = lease(other, "w2", 10, 30)
        assert time.monotonic() - started < 2
        assert [r.item for r in got] == [3, 4, 5, 6]
        assert [r[0] for r in held] == [1, 2]
        holder.execute("ROLLBACK")
        assert [r.item for r in lease(other, "w3", 10, 30)] == [1, 2]
        assert lease(other, "w4", 10, 30) == []              # all leased and not expired


def test_a_worker_whose_lease_passed_on_cannot_confirm(archive):
    from conquest_run.net.sendqueue import confirm, lease, outcomes, progress, release
    from conquest_run.report import DONE, Outcome
    data, url = archive
    _enqueue(url, 1, count=2)
    with _connect(url) as conn:
        stale = lease(conn, "w1", 10, 0.2)
        time.sleep(0.3)
        fresh = lease(conn, "w2", 1, 30)                    # takes the expired lease
        assert [r.key for r in fresh] == [stale[0].key] and fresh[0].attempts == 2
        done = Outcome(stale[0].sop_uid, stale[0].series_uid, DONE, "sent")
        assert not confirm(conn, "w1", stale[0], done)      # no longer its lease
        assert confirm(conn, "w2", fresh[0], done)
        assert not confirm(conn, "w2", fresh[0], done)      # settled once
        assert confirm(conn, "w1", stale[1], done)          # still its own: nobody took it
        assert progress(conn, "run1", 1) == {"queued": 0, "leased": 0, "sent": 2,
                                             "failed": 0, "total": 2}
        assert release(conn, "w1") == 0
        assert [o.sop_uid for o in outcomes(conn, "run1", 1)] == [r.sop_uid for r in stale]
    owners = _rows(url, "SELECT leaseowner FROM conquestrunsendqueue ORDER BY item")
    assert owners == [("w2",), ("w1",)]
    assert len(_rows(url, "SELECT 1 FROM conquestrunaudit")) == 2


def test_an_empty_queue_with_idle_exit_polls_then_ends(archive):
    from conquest_run.net.sendqueue import drain
    data, url = archive
    started = time.monotonic()
    result = drain(lambda: _connect(url), data, idle_exit=0.5, poll=0.1)
    assert 0.5 <= time.monotonic() - started < 5
    assert (result.sent, result.batches, result.stopped) == (0, 0, False)


def test_an_instance_whose_lease_expired_max_attempts_times_fails(archive):
    from conquest_run.net.sendqueue import lease, renew
    data, url = archive
    _enqueue(url, 1, count=1)
    with _connect(url) as conn:
        assert [r.attempts for r in lease(conn, "w1", 5, 0.2, max_attempts=2)] == [1]
        assert renew(conn, "w1", 0.2) == 1 and renew(conn, "w2", 0.2) == 0
        time.sleep(0.3)
        assert [r.attempts for r in lease(conn, "w2", 5, 0.2, max_attempts=2)] == [2]
        time.sleep(0.3)
        assert lease(conn, "w3", 5, 0.2, max_attempts=2) == []
    (state, reason), = _rows(url, "SELECT state, reason FROM conquestrunsendqueue")
    assert state == "failed" and "the lease expired 2 times" in reason
    assert _rows(url, "SELECT status, reason FROM conquestrunaudit") == [("failed", reason)]
