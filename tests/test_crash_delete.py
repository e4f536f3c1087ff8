"""A delete with files: true killed at random moments (kill -9), and a delete racing a receiver.

Each trial forks a process running the job (the real command line, ``cli.main``) on a fresh
copy of a small synthetic archive and kills it with SIGKILL after a seeded random delay (over
the whole run, or just after its delete journal was committed), then takes the natural next
step (the same job again, then ``rebuild``) and checks: index rows = files on disk, nothing
deleted comes back, the audit log says once, for every deleted instance, that its file was
removed, the journal is empty and ``PRAGMA integrity_check`` is ok.
"""

from __future__ import annotations

import json
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

from conquest_run.archive import Archive
from conquest_run.cli import main
from conquest_run.removals import REMOVALS_TABLE
from conquest_run.synthetic import write_patient

from _net_support import STORESCU, free_port, require, stop, wait_port

pytestmark = pytest.mark.timeout(120)

SEED = 14
TRIALS = 10
JOB = """version: 1
name: delete-gone
archive: {data: data, database: conquest.db}
select: {patient: "GONE"}
action: {delete: {files: true}}
"""


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """An indexed archive: patient KEEP (9 files) and patient GONE (43 files), and the job."""
    root = tmp_path_factory.mktemp("template")
    write_patient(root / "data", seed=SEED, patient_id="KEEP", ct_slices=6, mr_slices=0)
    write_patient(root / "data", seed=SEED, patient_id="GONE", ct_slices=40, mr_slices=0)
    Archive(root / "data", root / "conquest.db").rebuild()
    (root / "delete.yml").write_text(JOB)
    return root


def _fresh(template: Path, root: Path) -> Path:
    shutil.copytree(template, root)
    return root


def _sops(database: Path, patient: str | None = None) -> dict[str, str]:
    conn = sqlite3.connect(database)
    try:
        sql = "SELECT i.SOPInstanc, i.ObjectFile FROM DICOMImages i"
        if patient is None:
            return dict(conn.execute(sql))
        return dict(conn.execute(sql + " JOIN DICOMSeries s ON s.SeriesInst = i.SeriesInst "
                                 "JOIN DICOMStudies t ON t.StudyInsta = s.StudyInsta "
                                 "WHERE t.PatientID = ?", (patient,)))
    finally:
        conn.close()


def _files(data: Path) -> set[str]:
    """Every file under data/, hidden ones included (a left-over would show here)."""
    return {p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file()}


def _journal_rows(database: Path) -> int | None:
    try:
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=0.05)
        try:
            return conn.execute(f"SELECT count(*) FROM {REMOVALS_TABLE}").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def _fork_job(root: Path, args: list[str]) -> int:
    """A child process running ``conquest-run ARGS`` in ``root`` (streams to /dev/null)."""
    pid = os.fork()
    if pid == 0:                                  # the child never returns into pytest
        code = 70
        try:
            os.chdir(root)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            code = main(args)
        finally:
            os._exit(code)
    return pid


def _kill_after(pid: int, root: Path, delay: float, after_journal: bool) -> str:
    """SIGKILL the child after ``delay`` s (counted from its journal's commit when
    ``after_journal``); how it ended: 'killed' or 'exited'."""
    deadline = time.monotonic() + 20
    if after_journal:
        while (_journal_rows(root / "conquest.db") or 0) == 0:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                return "exited"
            assert time.monotonic() < deadline, "the delete never journaled"
            time.sleep(0.0005)
    until = time.monotonic() + delay
    while time.monotonic() < until:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "exited"
        time.sleep(min(0.001, max(0.0, until - time.monotonic())))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return "killed" if os.WIFSIGNALED(status) else "exited"


def _audit(database: Path) -> list[tuple]:
    conn = sqlite3.connect(database)
    try:
        return conn.execute("SELECT RunId, SOPInstanc, Status, Reason, Detail FROM "
                            "ConquestRunAudit WHERE Action = 'delete' AND SOPInstanc IS NOT "
                            "NULL").fetchall()
    finally:
        conn.close()


def _check(root: Path, gone: dict[str, str], keep: dict[str, str]) -> None:
    db, data = root / "conquest.db", root / "data"
    rows = _sops(db)
    assert set(rows.values()) == _files(data)            # index rows = files on disk
    assert set(rows) == set(keep)                        # nothing deleted came back
    assert not set(gone.values()) & _files(data)
    done = [(sop, json.loads(detail)) for _, sop, status, _, detail in _audit(db)
            if status == "done"]
    assert sorted(sop for sop, _ in done) == sorted(gone)   # each deleted instance once
    assert all(d["file_removed"] is True for _, d in done)
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute(f"SELECT count(*) FROM {REMOVALS_TABLE}").fetchone() == (0,)
    finally:
        conn.close()


def test_a_killed_delete_is_finished_by_the_next_command(template, tmp_path, monkeypatch,
                                                         capsys):
    gone, keep = _sops(template / "conquest.db", "GONE"), _sops(template / "conquest.db", "KEEP")
    assert len(gone) == 43 and len(keep) == 9
    # how long a whole run takes here, to spread the kills over it (after one run in this
    # process, so that the forked runs find every module imported, as the trials will)
    warm = _fresh(template, tmp_path / "warm")
    monkeypatch.chdir(warm)
    assert main(["--yes", "delete.yml"]) == 0
    _check(warm, gone, keep)
    calm = _fresh(template, tmp_path / "calm")
    started = time.monotonic()
    assert _kill_after(_fork_job(calm, ["--yes", "delete.yml"]), calm, 30, False) == "exited"
    whole = time.monotonic() - started
    _check(calm, gone, keep)

    rng = random.Random(SEED)
    finished_lines = 0
    ends = []
    for trial in range(TRIALS):
        root = _fresh(template, tmp_path / f"trial{trial}")
        after_journal = trial % 2 == 1
        delay = (0.0 if trial == 1 else rng.uniform(0, 0.01)) if after_journal \
            else rng.uniform(0.1 * whole, 0.7 * whole)
        ends.append(_kill_after(_fork_job(root, ["--yes", "delete.yml"]), root, delay,
                                after_journal))
        # the natural next step: the same job again (it finishes what the killed one left,
        # and then has nothing left to select, or does the whole delete), then a rebuild
        monkeypatch.chdir(root)
        capsys.readouterr()
        if trial % 4 == 3:
            # or another writing command first: a rebuild, which must not bring back what
            # the killed run deleted
            assert main(["rebuild"]) == 0
            err = capsys.readouterr().err
            deleted = {sop for _, sop, status, _, _ in _audit(root / "conquest.db")
                       if status == "done"}
            rows = _sops(root / "conquest.db")
            assert not deleted & set(rows)
            assert set(rows.values()) == _files(root / "data")
        else:
            err = ""
        code = main(["--yes", "delete.yml"])
        err += capsys.readouterr().err
        assert code in (0, 2), err
        if code == 2:
            assert "selected nothing to delete" in err
        if "finished" in err:
            finished_lines += 1
            assert re.search(r"(note|conquest-run): finished \d+ removals an interrupted "
                             r"delete left \(run [0-9a-f]{12}\): \d+ files removed", err), err
        Archive(root / "data", root / "conquest.db").rebuild()
        _check(root, gone, keep)
    assert ends.count("killed") >= 3, ends
    assert finished_lines >= 1                  # some trial was killed with removals pending


def test_a_store_of_the_same_instances_during_a_delete_keeps_the_new_copies(template,
                                                                            tmp_path, capsys):
    """The delete is frozen (SIGSTOP) right after its journal commit while the same instances
    are stored again (new files at the same paths), then killed; the next command must keep
    every new copy and its row."""
    gone = _sops(template / "conquest.db", "GONE")
    incoming = tmp_path / "incoming"
    shutil.copytree(template / "data" / "GONE", incoming)
    for attempt in range(5):         # the delete may finish between two looks: try again
        root = _fresh(template, tmp_path / f"race{attempt}")
        pid = _fork_job(root, ["--yes", "delete.yml"])
        deadline = time.monotonic() + 20
        exited = False
        while not (_journal_rows(root / "conquest.db") or 0):
            exited = os.waitpid(pid, os.WNOHANG) != (0, 0)
            if exited:
                break
            assert time.monotonic() < deadline
            time.sleep(0.0005)
        if not exited:
            break
    else:
        raise AssertionError("the delete never stayed journaled long enough to freeze it")
    _freeze_outside_a_transaction(pid, root / "conquest.db")
    try:
        pending = _journal_rows(root / "conquest.db")
        capsys.readouterr()
        archive = Archive(root / "data", root / "conquest.db")
        stored = archive.store([incoming])              # leaves the live delete's entries be
        assert not stored.bad and len(stored.stored) == len(gone)
        if pending:
            assert (f"conquest-run: {pending} removals of a delete still running left to it"
                    in capsys.readouterr().err)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    archive.rebuild(mode="refresh")                      # the next command finishes the rest
    rows = _sops(root / "conquest.db", "GONE")
    assert rows == gone                                  # every new copy indexed ...
    assert all((root / "data" / rel).is_file() for rel in rows.values())   # ... and on disk
    assert set(_sops(root / "conquest.db").values()) == _files(root / "data")
    kept = [r for r in _audit(root / "conquest.db") if "newer copy" in r[3]]
    settled_by_child = len(gone) - len(kept)
    assert settled_by_child >= 0 and all(r[2] == "skipped" for r in kept)


def _freeze_outside_a_transaction(pid: int, database: Path) -> None:
    """SIGSTOP the child at a moment it holds no write transaction (else the store waits)."""
    for _ in range(1000):
        os.kill(pid, signal.SIGSTOP)
        conn = sqlite3.connect(database, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.0005)
        finally:
            conn.close()
    raise AssertionError("the delete held its write lock all along")


def _acknowledged(output: str) -> list[str]:
    """The files storescu was told Success for (its -v log: 'Sending file: F' ... 'Received
    Store Response (Success)')."""
    ok, current = [], None
    for line in output.splitlines():
        if "Sending file:" in line:
            current = line.split("Sending file:", 1)[1].strip()
        elif "Received Store Response" in line and current is not None:
            if "(Success)" in line:
                ok.append(current)
            current = None
    return ok


def test_serve_receiving_during_a_delete_with_files_loses_no_acknowledged_instance(
        template, tmp_path, monkeypatch, capsys):
    require(STORESCU)
    root = _fresh(template, tmp_path / "served")
    gone = _sops(root / "conquest.db", "GONE")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for rel in sorted(gone.values())[:16]:          # 16 of the 43 deleted come in again
        shutil.copyfile(root / "data" / rel, incoming / Path(rel).name)
    sop_of = {f"{incoming}/{Path(rel).name}": sop for sop, rel in gone.items()}
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen([sys.executable, "-m", "conquest_run", "serve", "--port",
                              str(port), "--data", str(root / "data"), "--database",
                              str(root / "conquest.db")], stdout=subprocess.DEVNULL,
                             stderr=log)
    monkeypatch.chdir(root)
    try:
        wait_port(port, serve)
        for round_ in range(3):
            push = subprocess.Popen([STORESCU, "-v", "-R", "+sd", "+r", "-nh", "-aec",
                                     "CONQUEST", "127.0.0.1", str(port), str(incoming)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            time.sleep(0.15 * (round_ + 1))      # the delete plans while files arrive
            code = main(["--yes", "delete.yml"])
            out, _ = push.communicate(timeout=60)
            assert code in (0, 2), capsys.readouterr().err
            acked = {sop_of[f] for f in _acknowledged(out)}
            assert acked, out
            rows = _sops(root / "conquest.db")
            for sop in acked - set(rows):
                # acknowledged, then deleted by this round's delete: file and row both gone
                assert not (root / "data" / gone[sop]).exists()
            for sop, rel in rows.items():       # no acknowledged instance lost its file
                assert (root / "data" / rel).is_file(), (round_, sop)
            assert set(rows.values()) == {f for f in _files(root / "data")}
    finally:
        stop(serve)
        log.close()


def test_a_killed_quarantine_delete_is_finished_and_restores_whole(template, tmp_path,
                                                                   monkeypatch, capsys):
    """files: quarantine killed just after its journal's commit (seeded small delays): the
    next run finishes the moves, and restore then gives back every file and row."""
    before = _sops(template / "conquest.db")
    rng = random.Random(SEED + 9)
    for trial in range(4):
        root = _fresh(template, tmp_path / f"q{trial}")
        (root / "delete.yml").write_text(JOB.replace("files: true", "files: quarantine"))
        _kill_after(_fork_job(root, ["--yes", "delete.yml"]), root, rng.uniform(0, 0.006),
                    True)
        monkeypatch.chdir(root)
        assert main(["--yes", "delete.yml"]) in (0, 2)
        rows = _sops(root / "conquest.db")
        assert rows == _sops(template / "conquest.db", "KEEP")
        assert set(rows.values()) == {f for f in _files(root / "data")
                                      if not f.startswith(".quarantine/")}
        runs = [p.name for p in (root / "data" / ".quarantine").iterdir()]
        assert len(runs) == 1
        capsys.readouterr()
        assert main(["restore", runs[0]]) == 0, capsys.readouterr().err
        assert _sops(root / "conquest.db") == before
        assert set(before.values()) == _files(root / "data")   # nothing hidden left over
