"""What a killed writer leaves behind, and putting it right at the next start.

Every process that renames files into ``data/`` and indexes them (``store``, ``serve``, the
Python API's store methods) keeps an **intent journal**: a small file beside the database,
``.<database name>.intents-<PID>-<token>``.  Before a batch of files is renamed into ``data/``
their paths (relative to the data directory, one a line) are appended to it in one write;
once the batch's index rows are committed the journal is emptied (``ftruncate``), and it is
removed when the writer closes.  Each append is ``fdatasync``ed before the renames it
announces, and the index commits with ``synchronous = FULL``: after a power loss as after a
kill, a file renamed into ``data/`` has its rows or its intent.

``recover(conn, schema, data_dir, database)`` runs at the start of every command that writes the
archive.  It takes over the journals of processes that are no longer alive (by renaming them, so
two recoveries at once never handle the same one), and for each path in them:

* removes the temporary files (``.NAME.tmp-PID-hex``) of dead processes in that folder;
* indexes the file if it is in ``data/`` but its index row is missing or names another file
  (removing the older copy the row named, as ``store`` would have);

then deletes the journals.  A journal entry whose rows were committed just before the kill
finds them in place and costs only a header read.  ``stale_temp_owner(name)`` tells whether a
file name is such a temporary file of a dead process; ``sweep_stale_temps`` walks the whole data
directory for them (``conquest-run rebuild``, which walks it anyway, so that temporary files an
older version left without a journal go too).  The result's ``line()`` is the one sentence to print (None when nothing was recovered).
"""

from __future__ import annotations

__all__ = ["IntentJournal", "Recovery", "recover", "sweep_stale_temps", "stale_temp_owner",
           "pid_alive"]

import os
import re
import secrets
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from .durable import fsync_path
from .errors import ArchiveError
from .indexwalk import BadFile
from .schema import Schema
from .procs import pid_alive

_TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+$")
_JOURNAL_NAME = re.compile(r"\.intents-(\d+)-[0-9a-f]+$")




def stale_temp_owner(name: str) -> int | None:
    """The PID of the dead process a ``.NAME.tmp-PID-hex`` file belongs to; None when the name
    is not such a file or its process still runs."""
    match = _TEMP_NAME.match(name)
    if match is None:
        return None
    pid = int(match.group(1))
    return None if pid_alive(pid) else pid


def _journal_prefix(database: Path) -> str:
    return f".{database.name}.intents-"


def database_file(conn: sqlite3.Connection) -> Path | None:
    """The file of the connection's main database (None for an in-memory one)."""
    for _, name, file in conn.execute("PRAGMA database_list"):
        if name == "main":
            return Path(file) if file else None
    return None


def pending_stores(database: Path) -> set[str]:
    """The data-relative paths that a live writer has announced (or renamed into place) but
    whose rows it has not committed yet: every live process's intent journal beside the
    database.  Read inside a writing transaction, the set cannot grow by a commit meanwhile."""
    database = Path(database).absolute()
    out: set[str] = set()
    prefix = _journal_prefix(database)
    try:
        entries = list(os.scandir(database.parent))
    except OSError:
        return out
    for entry in entries:
        match = _JOURNAL_NAME.search(entry.name)
        if not entry.name.startswith(prefix) or match is None or \
                not pid_alive(int(match.group(1))):
            continue
        try:
            text = Path(entry.path).read_bytes().decode("utf-8", "surrogateescape")
        except OSError:
            continue
        out.update(line.replace("\\", "/") for line in text.splitlines() if line)
    return out


class IntentJournal:
    """This process's journal of files renamed into ``data/`` whose rows are not committed yet.

    ``intend(rels)`` before the renames (one append for the batch), ``clear()`` after the
    commit, ``close()`` at the end (removes the file unless intents are still open, e.g. after
    a failed commit: the next start recovers them)."""

    def __init__(self, database: Path | None) -> None:
        self.path = None if database is None else database.absolute().parent / (
            f"{_journal_prefix(database)}{os.getpid()}-{secrets.token_hex(4)}")
        self._fd: int | None = None
        self.open_intents = 0

    @classmethod
    def for_connection(cls, conn: sqlite3.Connection) -> "IntentJournal":
        return cls(database_file(conn))

    def intend(self, rels: list[str]) -> None:
        if self.path is None or not rels:
            return
        data = "".join(f"{r}\n" for r in rels).encode("utf-8", "surrogateescape")
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            fsync_path(self.path.parent)             # the journal's name outlives a power loss
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fdatasync(self._fd)      # on disk before the renames it announces, as their commit
        self.open_intents += len(rels)

    def clear(self) -> None:
        if self._fd is not None and self.open_intents:
            os.ftruncate(self._fd, 0)
            self.open_intents = 0

    def close(self) -> None:
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        if not self.open_intents and self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass


@dataclass
class Recovery:
    """What ``recover`` found and did."""

    journals: int = 0                        # journals of dead processes taken over
    indexed: list[str] = field(default_factory=list)     # files in data/ that had no row
    temp_removed: list[str] = field(default_factory=list)
    bad: list[BadFile] = field(default_factory=list)     # in data/, still not indexable
    processes: set[int] = field(default_factory=set)

    def line(self) -> str | None:
        parts = []
        if self.indexed:
            parts.append(f"{len(self.indexed)} files that were in the data directory but not "
                         f"in the index are indexed now")
        if self.temp_removed:
            parts.append(f"{len(self.temp_removed)} temporary files removed")
        if self.bad:
            first = self.bad[0]
            parts.append(f"{len(self.bad)} files could not be indexed (first: {first.path}: "
                         f"{first.reason})")
        if not parts:
            return None
        pids = ", ".join(str(p) for p in sorted(self.processes))
        return (f"recovered what an interrupted run (process {pids}) left: "
                + "; ".join(parts))


def _take_over(folder: Path, prefix: str) -> list[tuple[Path, int]]:
    """The journals of dead processes in ``folder``, each renamed to this process's name."""
    taken = []
    try:
        entries = [e.name for e in os.scandir(folder) if e.name.startswith(prefix)]
    except OSError:
        return []
    for name in entries:
        match = _JOURNAL_NAME.search(name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        mine = folder / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.rename(folder / name, mine)
        except OSError:              # another recovery took it first
            continue
        taken.append((mine, int(match.group(1))))
    return taken


def _remove_stale_temps(folder: Path, root: Path, result: Recovery) -> None:
    try:
        names = [e.name for e in os.scandir(folder) if e.name.startswith(".")]
    except OSError:
        return
    for name in names:
        pid = stale_temp_owner(name)
        if pid is None:
            continue
        try:
            os.unlink(folder / name)
        except OSError:
            continue
        result.temp_removed.append((folder / name).relative_to(root).as_posix())
        result.processes.add(pid)


def recover(conn: sqlite3.Connection, schema: Schema, data_dir: str | Path,
            database: str | Path | None = None) -> Recovery:
    """Reconcile what killed writers left (see the module docstring); ``conn`` read-write."""
    from .indexer import Indexer
    from .indexwalk import read_one
    from .store import _Placer, resolve_inside

    result = Recovery()
    database = Path(database) if database is not None else database_file(conn)
    if database is None:
        return result
    taken = _take_over(database.absolute().parent, _journal_prefix(database))
    if not taken:
        return result
    data_dir = Path(data_dir)
    root = data_dir.resolve()
    rels: dict[str, None] = {}
    for path, pid in taken:
        result.journals += 1
        result.processes.add(pid)
        try:
            text = path.read_bytes().decode("utf-8", "surrogateescape")
        except OSError:
            continue
        rels.update(dict.fromkeys(r for r in text.split("\n") if r))
    folders: dict[Path, None] = {}
    files: list[str] = []
    for rel in rels:
        try:
            target = resolve_inside(root, *rel.split("/"))
        except ArchiveError:         # a damaged line: nothing of ours
            continue
        folders[target.parent] = None
        if target.is_file():
            files.append(target.relative_to(root).as_posix())
    for folder in folders:
        _remove_stale_temps(folder, root, result)
    placer = _Placer(conn, schema, data_dir)
    spec = Indexer(conn, schema, data_dir).spec
    records = []
    for rel in files:
        item = read_one(str(root), rel, spec)
        if isinstance(item, BadFile):
            result.bad.append(item)
            continue
        previous = placer.previous(item.sop_uid)
        if previous != rel:          # else committed just before the process died
            records.append((item, previous))
    if records:
        rejected = Indexer(conn, schema, data_dir).add_records([r for r, _ in records])
        refused = {b.path for b in rejected}
        result.bad += rejected
        for record, previous in records:
            if record.object_file not in refused:
                placer.drop_old_copy(previous, record.object_file)   # as store would have
                result.indexed.append(record.object_file)
    for path, _ in taken:
        try:
            os.unlink(path)
        except OSError:
            pass
    return result


def sweep_stale_temps(data_dir: str | Path, result: Recovery | None = None) -> Recovery:
    """Remove every temporary file of a dead process anywhere under ``data_dir``."""
    result = result if result is not None else Recovery()
    root = Path(data_dir).resolve()
    for folder, dirs, _ in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        _remove_stale_temps(Path(folder), root, result)
    return result

