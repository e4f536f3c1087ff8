"""The delete journal: what a delete removes, written in the same transaction as its row changes.

A ``delete`` step records one ``ConquestRunRemovals`` row per index row it deletes (in the very
transaction that deletes it), with what is to become of the file (``keep``, ``remove`` or
``quarantine``) and the file's identity when the transaction looked at it (size, mtime_ns,
inode).  After the commit ``carry_out`` settles the entries in batches: each file is first
renamed to a holding name (a hidden name beside it, or its place in ``data/.quarantine/<run
id>/``), its identity is compared with the journal's, and only then is it unlinked (or left in
quarantine).  A file that differs (a later store replaced it), or whose SOP instance is indexed
again at that path, is put back and reported, never removed.  Each batch's audit outcomes are
written and its journal rows cleared in one transaction, so the audit log says exactly what
happened to every deleted row.

``finish_pending(conn, data_dir)`` settles what a killed delete left (its run is not running any
more), recording the outcomes under that run's id; ``finish_at_start(archive)`` is what every
command that writes the archive calls first, printing one line when it finished something.
"""

from __future__ import annotations

__all__ = ["REMOVALS_TABLE", "QUARANTINE_DIR", "KEEP", "REMOVE", "QUARANTINE", "Removal",
           "FinishSummary", "ensure_table", "journal", "identity", "carry_out", "finish_pending",
           "finish_at_start", "quarantine_root", "journal_lock", "hold_path", "checked_path",
           "outcome_of", "failed_removal"]

import fcntl
import json
import os
import sqlite3
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .audit import AUDIT_TABLE, migrate, now_iso
from .db import column_names, committing, is_postgres
from .errors import ActionError
from .removalfiles import (KEEP, QUARANTINE, QUARANTINE_DIR, REMOVE, TAKING, Removal,
                           checked_path, failed_removal, fsync_dirs, hold_path, identity,
                           outcome_of, quarantine_root, settle)
from .report import FAILED, Outcome

REMOVALS_TABLE = "ConquestRunRemovals"
BATCH = 64                      # entries settled (and cleared) per transaction

_DDL = (f"CREATE TABLE IF NOT EXISTS {REMOVALS_TABLE} (RunId varchar(64) not null, Step int, "
        "StepName text, Action varchar(16), Target text, SOPInstanc varchar(64) not null, "
        "SeriesInst varchar(64), PatientID text, ObjectFile text, Files varchar(16), "
        "Size bigint, MtimeNs bigint, Inode bigint, Bytes bigint, State varchar(16), "
        "Journaled varchar(32), "
        "PRIMARY KEY (RunId, SOPInstanc))")
_COLUMNS = ("RunId", "Step", "StepName", "Action", "Target", "SOPInstanc", "SeriesInst",
            "PatientID", "ObjectFile", "Files", "Size", "MtimeNs", "Inode", "Bytes", "State")
_AUDIT_COLUMNS = ("RunId", "Step", "StepName", "Action", "Target", "SOPInstanc", "SeriesInst",
                  "Status", "Reason", "Detail", "Time", "PatientID")


@dataclass
class FinishSummary:
    """What ``finish_pending`` settled, by kind, and what it left to a run still going."""

    counts: Counter = field(default_factory=Counter)
    runs: list[str] = field(default_factory=list)
    left_running: int = 0

    @property
    def finished(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        kinds = ", ".join(f"{n} {what}" for what, n in sorted(self.counts.items()))
        runs = ", ".join(r[:12] for r in self.runs)
        text = (f"finished {self.finished} removals an interrupted delete left "
                f"(run {runs}): {kinds}" if self.finished else "")
        if self.left_running:
            text += ("; " if text else "") + (f"{self.left_running} removals of a delete still "
                                               "running left to it")
        return text


# -- the table -----------------------------------------------------------------------------
def ensure_table(conn: sqlite3.Connection) -> None:
    """Create the journal table (and the audit tables it reports into) where missing."""
    migrate(conn)
    with committing(conn):
        conn.execute(_DDL)


def _has_table(conn: sqlite3.Connection) -> bool:
    from .db import table_names
    return REMOVALS_TABLE.lower() in table_names(conn)


def journal(conn: sqlite3.Connection, removals: Iterable[Removal]) -> None:
    """Record the removals, inside the caller's open transaction (the one deleting the rows)."""
    conn.executemany(
        f"INSERT INTO {REMOVALS_TABLE} ({', '.join(_COLUMNS)}, Journaled) VALUES "
        f"({', '.join('?' * len(_COLUMNS))}, ?) ON CONFLICT (RunId, SOPInstanc) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in (*_COLUMNS, "Journaled")
                    if c not in ("RunId", "SOPInstanc")),
        [(r.run_id, r.step, r.step_name, r.action, r.target, r.sop_uid, r.series_uid,
          r.patient_id, r.object_file, r.files, r.size, r.mtime_ns, r.inode, r.bytes, r.state,
          now_iso()) for r in removals])


def _database_of(conn: sqlite3.Connection) -> str:
    if is_postgres(conn):
        return conn.url
    for _, name, path in conn.execute("PRAGMA database_list"):
        if name == "main":
            return path
    return ""


@contextmanager
def journal_lock(database: str | os.PathLike, exclusive: bool = False) -> Iterator[bool]:
    """A delete holds this shared while it has journal entries outstanding; ``finish_pending``
    tries it exclusively (without waiting) to know that no delete is running.  Yields whether
    the lock was taken.  On PostgreSQL, an advisory lock of the server's
    (``backends.pglocks.removals_lock``)."""
    from .backends import is_postgres_url
    if is_postgres_url(database):
        from .backends.pglocks import removals_lock
        with removals_lock(str(database), exclusive) as taken:
            yield taken
        return
    db = Path(os.path.abspath(database))
    path = db.parent / f".{db.name}.lock-removals"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        raise ActionError(f"cannot create the lock file {path}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX | fcntl.LOCK_NB) if exclusive else fcntl.LOCK_SH)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One explicit transaction (the connections are in autocommit mode)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _audit_row(r: Removal, o: Outcome) -> tuple:
    detail = dict(o.detail or {})
    if r.bytes is not None:
        detail.setdefault("bytes", r.bytes)
    return (r.run_id, r.step, r.step_name, r.action, r.target, r.sop_uid, r.series_uid,
            o.status, o.reason, json.dumps(detail, sort_keys=True, default=str), now_iso(),
            r.patient_id)


def carry_out(conn: sqlite3.Connection, data_dir: str | os.PathLike,
              removals: list[Removal], *, schema: Any = None, audit: bool = True,
              note: str = "", advance: Callable[[int], None] | None = None
              ) -> list[tuple[Removal, Outcome]]:
    """Settle journaled removals in batches: files taken, checked and removed (or kept),
    then the batch's audit outcomes written and its entries cleared in one transaction."""
    data_dir = Path(data_dir)
    out: list[tuple[Removal, Outcome]] = []
    for start in range(0, len(removals), BATCH):
        batch = removals[start:start + BATCH]
        keys = [(r.run_id, r.sop_uid) for r in batch]
        with _transaction(conn):
            conn.executemany(f"UPDATE {REMOVALS_TABLE} SET State = '{TAKING}' WHERE RunId = ? "
                             "AND SOPInstanc = ?", keys)
        touched: set[Path] = set()
        done = []
        for r in batch:
            o = settle(conn, data_dir, r, schema, touched)
            if note:
                o = replace(o, reason=f"{o.reason} ({note})")
            done.append((r, o))
        fsync_dirs(touched)
        with _transaction(conn):
            if audit:
                conn.executemany(
                    f"INSERT INTO {AUDIT_TABLE} ({', '.join(_AUDIT_COLUMNS)}) VALUES "
                    f"({', '.join('?' * len(_AUDIT_COLUMNS))})", [_audit_row(r, o)
                                                                    for r, o in done])
            conn.executemany(f"DELETE FROM {REMOVALS_TABLE} WHERE RunId = ? AND SOPInstanc = ?",
                             keys)
        out.extend(done)
        if advance is not None:
            advance(len(batch))
    return out


# -- at the next start ---------------------------------------------------------------------
def _pending(conn: sqlite3.Connection) -> list[Removal]:
    rows = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM {REMOVALS_TABLE} "
                        "ORDER BY RunId, Step, SOPInstanc").fetchall()
    return [Removal(*row) for row in rows]


def _runs_still_going(conn: sqlite3.Connection, run_ids: set[str]) -> set[str]:
    """The runs whose process may still be settling its own entries."""
    from .audit import RUNS_TABLE
    from .history import run_state
    going = set()
    have = {c.lower() for c in column_names(conn, RUNS_TABLE)}
    for run_id in run_ids:
        row = None
        if {"state", "pid", "host"} <= have:
            row = conn.execute(f"SELECT State, Pid, Host, Ended, Ok FROM {RUNS_TABLE} "
                               "WHERE RunId = ?", (run_id,)).fetchone()
        if row is None:
            going.add(run_id)          # no process to ask: only the lock can tell
            continue
        state = run_state({"state": row[0], "pid": row[1], "host": row[2], "ended": row[3],
                           "ok": row[4]})
        if state in ("running", "unfinished"):
            going.add(run_id)
    return going


def finish_pending(conn: sqlite3.Connection, data_dir: str | os.PathLike, *,
                   schema: Any = None) -> FinishSummary:
    """Settle the journal entries a killed delete left, recording their outcomes under that
    delete's run.  Entries of a delete still running are left to it.  ``schema`` (the archive's)
    lets it keep a file whose instance was indexed again since."""
    summary = FinishSummary()
    if not _has_table(conn):
        return summary
    pending = _pending(conn)
    if not pending:
        return summary
    with journal_lock(_database_of(conn), exclusive=True) as no_delete_running:
        if not no_delete_running:
            going = _runs_still_going(conn, {r.run_id for r in pending})
            summary.left_running = sum(1 for r in pending if r.run_id in going)
            pending = [r for r in pending if r.run_id not in going]
        if not pending:
            return summary
        migrate(conn)
        outcomes = carry_out(conn, data_dir, pending, schema=schema,
                             note="finished after the delete was interrupted")
    summary.runs = sorted({r.run_id for r in pending})
    for _, o in outcomes:
        summary.counts[_kind(o)] += 1
    return summary


def _kind(o: Outcome) -> str:
    detail = o.detail or {}
    if o.status == FAILED:
        return "failed (see history)"
    if detail.get("newer_copy"):
        return "files kept (a newer copy)"
    if detail.get("quarantined"):
        return "files quarantined"
    if detail.get("file_removed"):
        return "files removed"
    return "rows recorded"


def finish_at_start(archive: Any, conn: sqlite3.Connection | None = None,
                    notice: Callable[[str], None] | None = None) -> FinishSummary | None:
    """What every command that writes the archive does first: settle what an interrupted
    delete left, with one line (``notice``, stderr by default) when it settled anything.
    Nothing is created or written when there is nothing to finish."""
    if conn is None:
        from . import db
        if not db.index_exists(archive.database):
            return None
        own = db.connect(archive.database)
    else:
        own = None
    try:
        summary = finish_pending(own or conn, archive.data_dir, schema=archive.schema)
    finally:
        if own is not None:
            own.close()
    text = summary.line()
    if text:
        (notice or (lambda s: print(f"conquest-run: {s}", file=sys.stderr, flush=True)))(text)
    return summary
