"""Crash consistency of ``store --move`` and ``serve``: seeded ``kill -9`` trials at random
moments, then the natural next step (store again; restart serve and push again), then the
archive is checked: the files under data/ are exactly the index rows, no original is lost, every
instance storescu was told Success for is indexed, no temporary file or journal is left, and
``PRAGMA integrity_check`` says ok.  Also ``recovery.recover`` on a journal and temporary
files a dead process left."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _net_support import NODELAY, STORESCU, free_port, require, wait_port
from conquest_run.archive import Archive
from conquest_run.cli import main
from conquest_run.synthetic import generate_files

TRIALS = 10
FILES = 30


class Forked:
    """``conquest-run ARGS`` in a forked child of this (already importing) process: a real
    process, killed for real, without paying the interpreter's start-up in every trial."""

    def __init__(self, *argv: str) -> None:
        self.returncode: int | None = None
        self.pid = os.fork()
        if self.pid == 0:                      # the child: quiet, then the command, then out
            code = 99
            try:
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                sys.stdout = sys.stderr = open(os.devnull, "w")
                code = main(list(argv))
            finally:
                os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


def kill_when(proc: Forked, ready, timeout: float = 30.0) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` is true (or it ended by itself); reaped.
    Whether it was killed (rather than done)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.0005)
    alive = proc.poll() is None
    proc.kill()
    return alive


def dcm_count(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*.dcm") if not p.name.startswith("."))


def check_consistent(data: Path, database: Path, live: bool = False) -> set[str]:
    """Files on disk = index rows, nothing temporary left, integrity ok; the indexed SOP UIDs.
    ``live``: a receiver of this process runs (its own journal may be there, empty)."""
    on_disk = {p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file()}
    with sqlite3.connect(database) as conn:
        rows = conn.execute("SELECT ObjectFile, SOPInstanc FROM DICOMImages").fetchall()
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert on_disk == {o for o, _ in rows}, "files on disk differ from the index"
    leftovers = [p.name for p in database.parent.iterdir()
                 if ".intents-" in p.name or ".tmp-" in p.name]
    if live:
        leftovers = [n for n in leftovers if f".intents-{os.getpid()}-" not in n]
    assert leftovers == []
    return {s for _, s in rows}


def synthetic_files(folder: Path, count: int) -> Path:
    """``count`` small synthetic files (3 patients), made once per test and copied per trial."""
    if not folder.exists():
        generate_files(folder, count, seed=14, per_patient=10)
    return folder


def fresh_copy(template: Path, root: Path) -> tuple[Path, set[str]]:
    incoming = root / "in"
    shutil.copytree(template, incoming)
    return incoming, {p.stem for p in incoming.rglob("*.dcm")}


def store_trial(template: Path, root: Path, rng: random.Random, capsys) -> tuple[str, bool]:
    data, database = root / "data", root / "c.db"
    incoming, sops = fresh_copy(template, root)
    data.mkdir()
    Archive(data, database).rebuild()
    how, k = rng.choice(["in data", "originals gone", "temporary"]), rng.randint(1, FILES - 1)
    proc = Forked("store", "--move", str(incoming), "--data", str(data), "--database",
                  str(database))
    ready = {"in data": lambda: dcm_count(data) >= k,
             "originals gone": lambda: dcm_count(incoming) <= FILES - k,
             "temporary": lambda: any(".tmp-" in p.name for p in data.rglob(".*"))}[how]
    killed = kill_when(proc, ready)
    # no original lost at the kill: each is at its source or in data/
    at_source = {p.stem for p in incoming.rglob("*.dcm")}
    in_data = {p.stem for p in data.rglob("*.dcm")}
    assert sops <= at_source | in_data
    capsys.readouterr()
    code = main(["store", "--move", str(incoming), "--data", str(data),
                 "--database", str(database)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert check_consistent(data, database) == sops
    assert dcm_count(incoming) == 0
    return err, killed


def test_store_move_killed_then_run_again(tmp_path, capsys):
    rng = random.Random(14)
    template = synthetic_files(tmp_path / "template", FILES)
    recovered = killed = 0
    for trial in range(TRIALS):
        err, was_killed = store_trial(template, tmp_path / f"t{trial}", rng, capsys)
        recovered += "were in the data directory but not in the index" in err
        killed += was_killed
    assert killed >= TRIALS // 2  # most trials were killed mid-way, not done already
    assert recovered >= 1        # some kills fell between the renames and the commit


_SENT = re.compile(r"Sending file: (.+)$")


def told_success(output: str) -> set[str]:
    """The SOP UIDs (the file names) storescu -v was answered Success for."""
    ok, current = set(), None
    for line in output.splitlines():
        sent = _SENT.search(line)
        if sent:
            current = Path(sent.group(1).strip()).stem
        elif "Received Store Response (Success)" in line and current:
            ok.add(current)
    return ok


def push(port: int, folder: Path) -> subprocess.Popen:
    return subprocess.Popen([STORESCU, "-v", "+sd", "+r", "-nh", "-aec", "CONQUEST",
                             "127.0.0.1", str(port), str(folder)], env=NODELAY,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def serve_trial(template: Path, root: Path, rng: random.Random, restart: bool) -> int:
    data, database = root / "data", root / "c.db"
    incoming, sops = fresh_copy(template, root)
    port = free_port()
    server = Forked("serve", "--port", str(port), "--data", str(data), "--database",
                    str(database))
    try:
        wait_port(port, timeout=20)
        k = rng.randint(1, len(sops))
        sender = push(port, incoming)
        kill_when(server, lambda: dcm_count(data) >= k)
        output, _ = sender.communicate(timeout=30)
    finally:
        server.kill()
    acknowledged = told_success(output)
    assert acknowledged <= sops
    # the next writing command reconciles at its start: serve itself, or a store
    if restart:
        with Archive(data, database).listen(port=0, log=lambda m: None):
            indexed = check_consistent(data, database, live=True)
    else:
        assert main(["store", str(root / "nothing"), "--data", str(data),
                     "--database", str(database)]) == 1      # "no such file or folder"
        indexed = check_consistent(data, database)
    assert acknowledged <= indexed, "an instance storescu was told Success for is missing"
    assert indexed <= sops
    return len(acknowledged)


def test_serve_killed_under_a_storescu_push(tmp_path, capsys):
    require(STORESCU)
    rng = random.Random(1414)
    template = synthetic_files(tmp_path / "template", 20)
    acknowledged = [serve_trial(template, tmp_path / f"t{trial}", rng, restart=trial % 2 == 0)
                    for trial in range(TRIALS)]
    assert any(0 < n < 20 for n in acknowledged)   # some kills fell inside the push


def test_recover_indexes_renamed_files_and_removes_dead_temps(tmp_path, capsys):
    from conquest_run.recovery import recover

    data, database = tmp_path / "data", tmp_path / "c.db"
    rels = generate_files(data, 3, seed=5)
    dead = subprocess.Popen(["true"])
    dead.wait()
    folder = data / Path(rels[0]).parent
    stale = folder / f".x.dcm.tmp-{dead.pid}-0a1b2c3d"
    stale.write_bytes(b"half")
    live = folder / f".y.dcm.tmp-{os.getpid()}-0a1b2c3d"
    live.write_bytes(b"being written")
    # the journal of the dead process: two files renamed in, one of them never written
    (tmp_path / f".c.db.intents-{dead.pid}-00ff00ff").write_text(
        f"{rels[0]}\n{rels[1]}\nNOPE/never.dcm\n../../outside.dcm\n")
    archive = Archive(data, database)
    conn = archive.connect()
    try:
        result = recover(conn, archive.schema, data, database)
    finally:
        conn.close()
    assert sorted(result.indexed) == sorted(rels[:2])
    assert result.temp_removed == [stale.relative_to(data).as_posix()]
    assert live.exists() and not stale.exists()
    assert result.line() == (f"recovered what an interrupted run (process {dead.pid}) left: "
                             "2 files that were in the data directory but not in the index "
                             "are indexed now; 1 temporary files removed")
    assert not list(tmp_path.glob(".c.db.intents-*"))
    assert archive.recover().line() is None        # done once: nothing the second time
    live.unlink()
    assert sorted(archive.query("SELECT ObjectFile FROM DICOMImages", column=0)) == \
        sorted(rels[:2])


def test_a_live_writers_journal_is_left_alone(tmp_path):
    data, database = tmp_path / "data", tmp_path / "c.db"
    rels = generate_files(data, 1, seed=6)
    journal = tmp_path / f".c.db.intents-{os.getpid()}-00ff00ff"
    journal.write_text(rels[0] + "\n")
    archive = Archive(data, database)
    assert archive.recover().line() is None
    assert journal.exists()
    assert archive.query("SELECT count(*) FROM DICOMImages", column=0) == [0]
    shutil.rmtree(data)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("command", ["rebuild --only-missing", "store", "job"])
def test_every_writing_command_recovers_first(tmp_path, capsys, command):
    data, database = tmp_path / "data", tmp_path / "c.db"
    data.mkdir()
    Archive(data, database).rebuild()
    rels = generate_files(data, 2, seed=8)       # renamed in by a process killed before commit
    (tmp_path / f".c.db.intents-{dead_pid()}-0badf00d").write_text("\n".join(rels) + "\n")
    flags = ["--data", str(data), "--database", str(database)]
    if command == "job":
        job = tmp_path / "dump.yml"
        job.write_text("version: 1\nname: dump\nselect: {modality: CT}\n"
                       f"action: {{dump: {{file: {tmp_path / 'out.csv'}}}}}\n")
        argv = [str(job), *flags]
    else:
        argv = [*command.split(), *([str(tmp_path / "none")] if command == "store" else []),
                *flags]
    capsys.readouterr()
    main(argv)
    err = capsys.readouterr().err
    assert "2 files that were in the data directory but not in the index are indexed now" in err
    assert check_consistent(data, database) == {Path(r).stem for r in rels}


def test_rebuild_sweeps_temporaries_that_no_journal_names(tmp_path, capsys):
    data, database = tmp_path / "data", tmp_path / "c.db"
    rels = generate_files(data, 2, seed=9)
    pid = dead_pid()
    stale = data / Path(rels[0]).parent / f".{Path(rels[0]).name}.tmp-{pid}-00c0ffee"
    stale.write_bytes(b"left by an older version")
    live = data / f".z.dcm.tmp-{os.getpid()}-00c0ffee"
    live.write_bytes(b"")
    capsys.readouterr()
    assert main(["rebuild", "--data", str(data), "--database", str(database)]) == 0
    err = capsys.readouterr().err
    assert f"(process {pid}) left: 1 temporary files removed" in err
    assert not stale.exists() and live.exists()
