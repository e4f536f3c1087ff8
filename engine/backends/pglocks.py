"""Advisory locks on a PostgreSQL index: what the ``flock`` files beside a SQLite index do.

* ``job_lock(conn, identity, run_id)``: one real run of a job at a time.  A session-level
  ``pg_try_advisory_lock`` on ``advisory_key("job", identity)``, held by the run's own
  read-write connection, so the server drops it when that session ends (a killed run never
  blocks the next).  The session's ``application_name`` carries the run id, so the second run
  is told which run holds the lock (``pg_locks`` joined with ``pg_stat_activity``).
* ``session_lock(url, kind, text)``: ``locks.run_lock`` (a send's (job, target)) there.
* ``store_batch(conn)`` / ``exclude_store_batches(conn)``: what the intent journal and
  ``BEGIN IMMEDIATE`` give a delete on SQLite.  A ``store`` batch holds the index's store key
  shared from before its renames into ``data/`` until its rows are committed; a delete's row
  transaction takes it exclusively (transaction-level) before it reads what it deletes, so no
  file is renamed in whose rows are still to come while the delete decides.
* ``removals_lock(url, exclusive)``: ``removals.journal_lock`` on PostgreSQL: a delete holds it
  shared while it has journal entries outstanding, ``finish_pending`` tries it exclusively.

Keys are the first 8 bytes of SHA-256 of ``conquest-run\\0KIND\\0TEXT`` as a signed 64-bit
number: stable across processes, hosts and versions, and no user text reaches SQL.
"""

from __future__ import annotations

__all__ = ["advisory_key", "job_lock", "removals_lock", "session_lock", "store_batch",
           "exclude_store_batches", "JobLocked"]

import hashlib
from contextlib import contextmanager
from typing import Iterator

from ..errors import ArchiveError

APPLICATION_PREFIX = "conquest-run run "


class JobLocked(ArchiveError):
    """Another run of the same job holds its lock (exit 2)."""


def advisory_key(kind: str, text: str) -> int:
    digest = hashlib.sha256(f"conquest-run\0{kind}\0{text}".encode("utf-8",
                                                                 "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _holder(conn, key: int) -> tuple[str | None, int | None]:
    """(run id, server pid) of the session holding ``key``, as far as the server says."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    row = conn.execute(
        "SELECT a.application_name, a.pid FROM pg_locks l JOIN pg_stat_activity a "
        "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
        "AND l.classid = ?::bigint::oid AND l.objid = ?::bigint::oid "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (unsigned >> 32, unsigned & 0xFFFFFFFF)).fetchone()
    if row is None:
        return None, None
    name, pid = row
    run = name[len(APPLICATION_PREFIX):] if name and name.startswith(APPLICATION_PREFIX) \
        else None
    return run, pid


def job_lock(conn, identity: str, run_id: str, job: str) -> None:
    """Take the job's lock on ``conn``'s session (kept until it closes), or ``JobLocked``
    naming the run that holds it."""
    key = advisory_key("job", identity)
    if conn.execute("SELECT pg_try_advisory_lock(?)", (key,)).fetchone()[0]:
        conn.execute("SELECT set_config('application_name', ?, false)",
                     (APPLICATION_PREFIX + run_id,))
        return
    run, pid = _holder(conn, key)
    who = (f"run {run}" if run else "another session") + \
        (f", server process {pid}" if pid else "")
    raise JobLocked(f"{job} is already running on this PostgreSQL index ({who}); nothing was "
                    "done, run it again when that run has finished")


@contextmanager
def store_batch(conn) -> Iterator[None]:
    """A store batch's renames and commit, shared with other stores (see the module)."""
    key = advisory_key("store", "batch")
    conn.execute("SELECT pg_advisory_lock_shared(?)", (key,))
    try:
        yield
    finally:
        try:
            conn.execute("SELECT pg_advisory_unlock_shared(?)", (key,))
        except Exception:      # a broken session: its locks go with it, the first error told
            pass


def exclude_store_batches(conn) -> None:
    """Inside a delete's transaction, before its first read: wait for the store batches
    under way, hold new ones off until the commit.  Taken before the delete locks tables
    (a store batch holding the key may still need its rows' locks)."""
    conn.execute("SELECT pg_advisory_xact_lock(?)", (advisory_key("store", "batch"),))


@contextmanager
def session_lock(url: str, kind: str, text: str) -> Iterator[bool]:
    """An exclusive advisory lock on a connection of its own, tried without waiting; yields
    whether it was taken (released as the connection closes)."""
    from .postgres import connect
    conn = connect(url)
    try:
        yield bool(conn.execute("SELECT pg_try_advisory_lock(?)",
                                (advisory_key(kind, text),)).fetchone()[0])
    finally:
        conn.close()


@contextmanager
def removals_lock(url: str, exclusive: bool = False) -> Iterator[bool]:
    """The delete journal's lock (see the module); yields whether it was taken."""
    from .postgres import connect
    key = advisory_key("removals", "journal")
    conn = connect(url)
    try:
        if exclusive:
            taken = bool(conn.execute("SELECT pg_try_advisory_lock(?)", (key,)).fetchone()[0])
        else:
            conn.execute("SELECT pg_advisory_lock_shared(?)", (key,))
            taken = True
        yield taken
    finally:
        conn.close()                   # the session's locks go with it
