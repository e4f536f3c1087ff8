"""Atomic rebuild (issue 14): killed with SIGKILL at random moments, ``rebuild --refresh`` leaves
the previous index or the new one, never a part; a reader during a rebuild sees the old count or
the new one; what ``serve`` acknowledges during a rebuild is in the index afterwards; the audit
tables survive."""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conquest_run import Archive, synthetic
from conquest_run.indexswap import shadow_path
from conquest_run.net.receiver import listen

from _net_support import NODELAY, STORESCU, free_port, require

pytestmark = pytest.mark.timeout(120)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "conquest_run", *args]


def _index(db: Path) -> set[tuple[str, str]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return set(conn.execute("SELECT ObjectFile, SOPInstanc FROM DICOMImages"))
    finally:
        conn.close()


def _integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def _on_disk(data: Path) -> set[str]:
    return {p.relative_to(data).as_posix() for p in data.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def _runs(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT count(*) FROM ConquestRunRuns").fetchone()[0]
    finally:
        conn.close()


def _mutate(data: Path, spare: Path, rng: random.Random) -> None:
    """Some files vanish, some new ones arrive, some change (as a refresh finds them)."""
    files = sorted(p for p in data.rglob("*.dcm"))
    for p in rng.sample(files, min(len(files) // 4, 8)):
        p.unlink()
    new = sorted(spare.rglob("*.dcm"))
    for p in rng.sample(new, min(len(new), rng.randint(5, 15))):
        target = data / p.relative_to(spare)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
    for p in rng.sample(sorted(data.rglob("*.dcm")), 3):
        os.utime(p, ns=(time.time_ns(), time.time_ns() + rng.randint(1, 10**9)))


def test_killed_refresh_leaves_the_old_or_the_new_index_and_the_next_run_agrees(tmp_path):
    """10 seeded trials: kill -9 at a random moment of ``rebuild --refresh`` (once its shadow
    run record exists), then the natural next step (the same command): index = files on disk, no shadow
    left, integrity ok, the run records kept."""
    data, db, spare = tmp_path / "data", tmp_path / "conquest.db", tmp_path / "spare"
    synthetic.generate_files(data, 40, seed="crash")
    synthetic.generate_files(spare, 60, seed="spare")
    assert subprocess.run(_cli("rebuild", "--data", str(data), "--database", str(db)),
                          capture_output=True).returncode == 0
    outcomes = set()
    for trial in range(10):
        rng = random.Random(trial)
        before, runs = _index(db), _runs(db)
        _mutate(data, spare, rng)
        proc = subprocess.Popen(_cli("rebuild", "--refresh", "--data", str(data),
                                     "--database", str(db)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20     # its run record is written as the rebuild starts
        while _runs(db) == runs and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.08))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        after = _index(db)
        assert _integrity(db) == "ok"
        killed_state = "old" if after == before else "new"
        if killed_state == "new":     # the swap committed: exactly the files on disk
            assert {f for f, _ in after} == _on_disk(data), f"trial {trial}: partial index"
        outcomes.add(killed_state)
        runs = _runs(db)                # with the killed run's own row, if it got that far
        result = Archive(data, db).rebuild(mode="refresh")   # what the user runs next
        assert not result.bad
        assert {f for f, _ in _index(db)} == _on_disk(data), f"trial {trial}"
        assert not list(tmp_path.glob(".conquest.db.rebuild-*")), f"trial {trial}: shadow left"
        assert _integrity(db) == "ok"
        assert _runs(db) == runs        # the audit tables survive the swap
    assert "old" in outcomes                # the trials did kill rebuilds midway


def test_a_big_refresh_through_the_shadow_gives_the_same_index(tmp_path):
    """A refresh with more files to read than it may hold goes through the shadow database:
    the same rows as the one-transaction refresh, no shadow left, the run records kept."""
    import sqlite3 as sq
    from conquest_run.audit import AuditLog
    from conquest_run.indexswap import rebuild_atomically

    data, db, spare = tmp_path / "data", tmp_path / "conquest.db", tmp_path / "spare"
    synthetic.generate_files(data, 20, seed="shadow")
    synthetic.generate_files(spare, 30, seed="shadow-spare")
    archive = Archive(data, db)
    archive.rebuild()
    _mutate(data, spare, random.Random(7))
    copy = tmp_path / "copy.db"
    shutil.copy(db, copy)
    archive.rebuild(mode="refresh")                 # few files: one transaction
    live = sq.connect(copy, isolation_level=None)
    AuditLog(live).start_run("r1", "a run before the rebuild", "")
    result = rebuild_atomically(live, copy, archive.schema, data, mode="refresh",
                                patients=None, workers=1, progress=None, hold_limit=0)
    live.close()
    assert result.indexed > 0 and result.removed > 0
    assert _index(copy) == _index(db)
    assert {f for f, _ in _index(copy)} == _on_disk(data)
    assert not list(tmp_path.glob(".copy.db.rebuild-*"))
    assert _runs(copy) == 1                         # the audit tables are kept


def test_a_reader_during_a_rebuild_sees_the_old_count_or_the_new_one(tmp_path):
    data, db = tmp_path / "data", tmp_path / "conquest.db"
    synthetic.generate_files(data, 30, seed="reader")
    Archive(data, db).rebuild()
    synthetic.generate_files(tmp_path / "more", 150, seed="reader-more")
    for p in (tmp_path / "more").rglob("*.dcm"):
        target = data / p.relative_to(tmp_path / "more")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(p, target)
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, os\n"
        "db, stop = sys.argv[1:3]\n"
        "seen = set()\n"
        "conn = sqlite3.connect(f'file:{db}?mode=ro', uri=True, timeout=30)\n"
        "while not os.path.exists(stop):\n"
        "    seen.add(conn.execute('SELECT count(*) FROM DICOMImages').fetchone()[0])\n"
        "seen.add(conn.execute('SELECT count(*) FROM DICOMImages').fetchone()[0])\n"
        "print(sorted(seen))\n"), str(db), str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        for mode in ("all", "refresh", "all"):
            Archive(data, db).rebuild(mode=mode)
        stop.touch()
        out, _ = reader.communicate(timeout=20)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert eval(out) == [30, 180]


def _responses(text: str) -> dict[str, str]:
    out, current = {}, None
    for line in text.splitlines():
        if "Sending file: " in line:
            current = Path(line.split("Sending file: ", 1)[1].strip()).stem
        elif "Received Store Response" in line and current is not None:
            out[current] = line.split("Received Store Response", 1)[1].strip()
            current = None
    return out


def test_what_serve_acknowledges_during_a_rebuild_is_in_the_index_afterwards(tmp_path):
    require(STORESCU)
    data, db = tmp_path / "data", tmp_path / "conquest.db"
    synthetic.generate_files(data, 250, seed="serve-base")
    Archive(data, db).rebuild()
    incoming = tmp_path / "incoming"
    synthetic.generate_files(incoming, 20, seed="serve-incoming")
    files = sorted(incoming.rglob("*.dcm"))
    acknowledged: dict[str, str] = {}
    during = 0
    with listen(data, free_port(), database=db) as rx:
        proc = subprocess.Popen(_cli("rebuild", "--data", str(data), "--database", str(db)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        shadow = shadow_path(db, proc.pid)
        deadline = time.monotonic() + 20
        while not shadow.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        for f in files:
            running = proc.poll() is None
            done = subprocess.run([STORESCU, "-v", "-nh", "-aec", "CONQUEST", "127.0.0.1",
                                   str(rx.port), str(f)], env=NODELAY, capture_output=True,
                                  text=True, timeout=60)
            for sop, status in _responses(done.stdout + done.stderr).items():
                if status == "(Success)":
                    acknowledged[sop] = status
                    during += running and proc.poll() is None
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert during >= 1, "no C-STORE was acknowledged while the rebuild ran"
    sops = {s for _, s in _index(db)}
    assert set(acknowledged) <= sops
    assert {f for f, _ in _index(db)} == _on_disk(data)
