"""Atomic rebuild: readers see the old index or the new one, never a part of it.

An incremental run (``missing``, ``refresh``, or some patients) with at most ``HOLD_LIMIT`` files
to read reads their headers first and then makes all its changes in one transaction on the live
index (``Indexer.run(one_transaction=...)``): the write lock is held only while rows are
written.  A full rebuild, or a bigger incremental one, goes through a shadow database:

* The shadow is ``.<database>.rebuild-<pid>`` beside the database (hidden, left out of the
  walk), made with the live tables' own DDL (Conquest's four levels and ``RTExtras``) and filled
  without a journal on disk.  A full rebuild starts it empty; ``missing``, ``refresh`` and a
  rebuild of some patients start from a copy of the live rows.  The ``Indexer`` runs on it
  unchanged, in batches: the live database is not locked meanwhile, so ``serve`` and ``store``
  go on storing and committing.
* The swap attaches the live database, takes its write lock (``BEGIN IMMEDIATE``), catches up
  with what was written meanwhile (files whose rows appeared or were rewritten in the live
  index after the rebuild started are read again; rows a delete removed meanwhile go when their
  file is gone), replaces the five tables' rows and commits.  The audit tables
  (``ConquestRunRuns``, ...) and ``UIDMODS`` are never touched.
* Killed at any moment, the live index is the previous one (the swap is one transaction); the
  next rebuild removes shadows whose process is gone.
"""

from __future__ import annotations

__all__ = ["rebuild_atomically", "shadow_path", "remove_stale_shadows"]

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from .db import BUSY_TIMEOUT_MS, write_refused
from .errors import ArchiveError
from .indexer import Indexer, IndexResult, TooManyToHold
from .indexwalk import BadFile, read_one
from .indexwriter import DEVICE_NAME, Writer
from .schema import EXTRAS_TABLE, Schema
from .procs import pid_alive

_SUFFIX = ".rebuild-"
HOLD_LIMIT = 20_000    # files an incremental rebuild reads into memory before its one transaction


def shadow_path(database: Path, pid: int | None = None) -> Path:
    return database.parent / f".{database.name}{_SUFFIX}{os.getpid() if pid is None else pid}"




def remove_stale_shadows(database: Path) -> list[Path]:
    """Remove the shadows (and their journals) of rebuilds whose process is gone."""
    removed = []
    prefix = f".{database.name}{_SUFFIX}"
    try:
        names = os.listdir(database.parent or ".")
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit() or (int(pid_text) != os.getpid() and pid_alive(int(pid_text))):
            continue
        path = database.parent / name
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def _tables(schema: Schema) -> list[str]:
    return [schema.patients.name, schema.studies.name, schema.series.name, schema.images.name,
            EXTRAS_TABLE]


def _unlink_shadow(path: Path) -> None:
    for p in (path, Path(f"{path}-journal"), Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _open_shadow(live: sqlite3.Connection, path: Path, schema: Schema) -> sqlite3.Connection:
    """The shadow database with the live tables' DDL (tables and their indexes)."""
    _unlink_shadow(path)
    names = [t.lower() for t in _tables(schema)]
    ddl = [sql for (sql, tbl, kind) in live.execute(
        "SELECT sql, tbl_name, type FROM sqlite_master WHERE type IN ('table', 'index') "
        "AND sql IS NOT NULL ORDER BY type = 'index'") if tbl.lower() in names]
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                           timeout=BUSY_TIMEOUT_MS / 1000, uri=False)
    try:
        conn.execute("PRAGMA journal_mode = MEMORY")   # disposable: nothing on disk to recover
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        for stmt in ddl:
            conn.execute(stmt)
    except BaseException:
        conn.close()
        raise
    return conn


def _attach_live(conn: sqlite3.Connection, database: Path) -> None:
    conn.execute("ATTACH DATABASE ? AS live", (str(database.resolve()),))
    conn.execute("PRAGMA live.synchronous = FULL")


def _object_files(conn: sqlite3.Connection, schema_name: str, schema: Schema,
                  with_time: bool = False) -> dict[str, tuple]:
    im = schema.images
    cols = f"ObjectFile, {im.key}" + (", AccessTime" if with_time else "")
    out: dict[str, tuple] = {}
    for row in conn.execute(f"SELECT {cols} FROM {schema_name}.{im.name} "
                            "WHERE DeviceName = ? OR DeviceName IS NULL", (DEVICE_NAME,)):
        if row[0]:
            out[row[0].replace("\\", "/")] = row[1:]
    return out


def _stat_key(st: os.stat_result) -> tuple:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _catch_up(conn: sqlite3.Connection, indexer: Indexer, data_dir: Path, started: float,
              at_start: dict[str, tuple], walked: dict[str, os.stat_result]) -> int:
    """Inside the swap transaction: bring the shadow up to what the live index gained or lost
    while it was built.  Returns the number of files read again."""
    schema = indexer.schema
    live = _object_files(conn, "live", schema, with_time=True)
    shadow = _object_files(conn, "main", schema)
    since = int(started) - 1
    again: list[str] = []
    for rel, (sop, access) in live.items():
        rewritten = isinstance(access, (int, float)) and access >= since
        if rel in shadow and not rewritten:
            continue
        try:
            st = os.stat(data_dir / rel)
        except OSError:
            continue          # its file is gone: the new index is right to leave it out
        seen = walked.get(rel)
        if not rewritten and seen is not None and _stat_key(seen) == _stat_key(st):
            continue          # walked, read and refused (bad, duplicate): stays out
        again.append(rel)     # stored or rewritten meanwhile: read as it is now
    gone = []
    for rel, (sop,) in ((r, v) for r, v in at_start.items() if r not in live and r in shadow):
        if not os.path.lexists(data_dir / rel):
            gone.append(shadow[rel][0])   # removed meanwhile (a delete with files)
    writer = Writer(conn, schema, int(time.time()))
    if gone:
        writer.delete_images(gone)
    for rel in sorted(again):
        item = read_one(str(data_dir), rel, indexer.spec)
        if not isinstance(item, BadFile):
            writer.add(item)
    writer.flush()
    writer.cascade()
    return len(again)


def _swap(conn: sqlite3.Connection, schema: Schema) -> None:
    for name in reversed(_tables(schema)):
        conn.execute(f"DELETE FROM live.{name}")
    for name in _tables(schema):
        conn.execute(f"INSERT INTO live.{name} SELECT * FROM main.{name}")


def rebuild_atomically(live: sqlite3.Connection, database: Path, schema: Schema,
                       data_dir: Path, *, mode: str, patients, workers: int,
                       progress: Callable[[int, int], None] | None,
                       hold_limit: int = HOLD_LIMIT) -> IndexResult:
    """Re-index atomically (see the module): an incremental run (``missing``, ``refresh``,
    some patients) of at most ``hold_limit`` files to read in one transaction on the live
    index, anything bigger through a shadow database swapped in."""
    database = Path(database)
    if mode != "all" or patients is not None:
        try:
            return Indexer(live, schema, data_dir, exclude=[database]).run(
                mode=mode, patients=patients, workers=workers, progress=progress,
                one_transaction=hold_limit)
        except TooManyToHold:
            pass
    started = time.time()
    clock = time.perf_counter()
    remove_stale_shadows(database)
    path = shadow_path(database)
    at_start = _object_files(live, "main", schema)
    try:
        shadow = _open_shadow(live, path, schema)
    except BaseException:
        _unlink_shadow(path)
        raise
    try:
        _attach_live(shadow, database)
        if mode != "all" or patients is not None:
            shadow.execute("BEGIN")
            for name in _tables(schema):
                shadow.execute(f"INSERT INTO main.{name} SELECT * FROM live.{name}")
            shadow.execute("COMMIT")
            at_start = _object_files(shadow, "main", schema)
        indexer = Indexer(shadow, schema, data_dir, exclude=[database, path])
        result = indexer.run(mode=mode, patients=patients, workers=workers, progress=progress)
        try:
            shadow.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise ArchiveError(write_refused(exc), file=str(database)) from None
        try:
            _catch_up(shadow, indexer, data_dir, started, at_start, indexer.walked)
            _swap(shadow, schema)
            shadow.execute("COMMIT")
        except BaseException:
            if shadow.in_transaction:
                try:
                    shadow.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
        shadow.execute("DETACH DATABASE live")
        result.seconds = time.perf_counter() - clock      # the copy and the swap included
        return result
    finally:
        shadow.close()
        _unlink_shadow(path)
