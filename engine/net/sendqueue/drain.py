"""One worker's loop over the send queue: lease a batch, send it through ``DicomTransport``
(one association per destination in the batch), settle each instance as the peer answers it,
renew the leases meanwhile, and give back what was not sent when told to stop.

``conn_factory()`` returns a new :class:`~conquest_run.backends.postgres.PgConnection`; the
loop uses two: one for leasing and settling (the sender's outcome thread writes on it while the
loop waits), one for the heartbeat thread that renews the leases.
"""

from __future__ import annotations

__all__ = ["drain", "DrainResult", "worker_id"]

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ArchiveError, ConquestRunError, NetworkError
from ...report import DONE, FAILED, Outcome
from ..items import read_send_item
from ..sender import DicomTransport
from .queue import (LEASED, QUEUE_TABLE, QUEUED, QueuedRow, confirm, ensure_queue, fail, lease,
                    release, renew)

INTERRUPTED = "not sent: interrupted"     # the sender's reason for what it did not try
MAX_BACKOFF_S = 300.0


def worker_id() -> str:
    """``host:pid:random``: who holds a lease (unique even when a pid is reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class DrainResult:
    """What one worker did."""

    worker: str
    sent: int = 0
    failed: int = 0
    retried: int = 0        # put back in the queue for a later try (peer unreachable)
    released: int = 0       # given back unsent (stopped, or the lease could not be renewed)
    lost: int = 0           # sent, but the lease had passed to another worker meanwhile
    batches: int = 0
    stopped: bool = False   # the stop event ended it (a signal)

    def line(self) -> str:
        extra = f", {self.lost} sent after their lease passed on" if self.lost else ""
        return (f"worker {self.worker}: {self.sent} sent, {self.failed} failed, "
                f"{self.retried} to retry, {self.released} given back in {self.batches} "
                f"batches{extra}" + (" (stopped)" if self.stopped else ""))


class _Heartbeat:
    """Renews the worker's leases every third of the lease time on its own connection, and
    sets ``halt`` (the sender stops before its next instance) when the caller's ``stop`` is
    set or no renewal succeeded for most of a lease time."""

    def __init__(self, conn_factory: Callable[[], Any], worker: str, lease_s: float,
                 stop: threading.Event, log: Callable[[str], None]) -> None:
        self.conn_factory, self.worker, self.lease_s = conn_factory, worker, lease_s
        self.stop, self.log = stop, log
        self.halt = threading.Event()
        self.valid_until = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)
        self._conn: Any = None

    def __enter__(self) -> "_Heartbeat":
        self._conn = self.conn_factory()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5)
        self._conn.close()

    def leased(self, since: float) -> None:
        """A lease was taken at ``since`` (monotonic, before the statement): a new batch."""
        if not self.stop.is_set():
            self.halt.clear()
        self.valid_until = since + self.lease_s

    def _run(self) -> None:
        every = self.lease_s / 3
        margin = min(1.0, self.lease_s * 0.1)
        next_renew = time.monotonic() + every
        while not self._done.wait(min(0.1, every)):
            now = time.monotonic()
            if self.stop.is_set():
                self.halt.set()
            if now >= next_renew:
                next_renew = now + every
                try:
                    renew(self._conn, self.worker, self.lease_s)
                    self.valid_until = max(self.valid_until, now + self.lease_s)
                except Exception as exc:        # lost connection: the lease runs out
                    self.log(f"cannot renew the leases of {self.worker}: "
                             f"{' '.join(str(exc).split())}")
            if self.valid_until and now >= self.valid_until - margin and not self.halt.is_set():
                self.log(f"the leases of {self.worker} could not be renewed in time: "
                         "no further instance is sent on them")
                self.halt.set()


def drain(conn_factory: Callable[[], Any], data_dir: str | Path, run_id: str | None = None,
          *, batch: int = 10, lease_seconds: float = 30.0, idle_exit: float | None = None,
          max_attempts: int = 3, poll: float = 0.5, stop: threading.Event | None = None,
          worker: str | None = None, log: Callable[[str], None] | None = None) -> DrainResult:
    """Send queued instances (of ``run_id``, or of every run) until no row is queued or
    leased any more; with ``idle_exit`` (seconds), keep polling for new work and end after that
    long with nothing to lease.  ``stop`` (set from a signal handler) ends it after the
    instance in flight; every lease still held is given back before returning."""
    stop = stop or threading.Event()
    log = log or (lambda line: None)
    result = DrainResult(worker or worker_id())
    data_root = Path(data_dir).resolve()
    conn = conn_factory()
    try:
        ensure_queue(conn)
        with _Heartbeat(conn_factory, result.worker, lease_seconds, stop, log) as beat:
            idle_since: float | None = None
            while not stop.is_set():
                since = time.monotonic()
                rows = lease(conn, result.worker, batch, lease_seconds, run_id=run_id,
                             max_attempts=max_attempts)
                if rows:
                    beat.leased(since)
                    idle_since = None
                    result.batches += 1
                    _send_rows(conn, rows, data_root, beat.halt, result, max_attempts, log)
                    continue
                if idle_exit is None:
                    if not _pending(conn, run_id):
                        break
                else:
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since >= idle_exit:
                        break
                stop.wait(min(poll, lease_seconds / 4))
        result.stopped = stop.is_set()
    finally:
        try:
            result.released += release(conn, result.worker)
        except Exception:       # the connection is gone: the leases expire on their own
            pass
        conn.close()
    return result


def _pending(conn: Any, run_id: str | None) -> bool:
    return conn.execute(
        f"SELECT 1 FROM {QUEUE_TABLE} WHERE state IN ('{QUEUED}', '{LEASED}') "
        "AND (CAST(? AS text) IS NULL OR runid = ?) LIMIT 1", (run_id, run_id)).fetchone() \
        is not None


def _backoff(row: QueuedRow) -> float:
    delay = max(0.5, row.peer[6])
    return min(MAX_BACKOFF_S, delay * 2 ** max(0, row.attempts - 1))


def _send_rows(conn: Any, rows: list[QueuedRow], data_root: Path, halt: threading.Event,
               result: DrainResult, max_attempts: int, log: Callable[[str], None]) -> None:
    """Send one leased batch: a group (and association) per destination, run and step."""
    groups: dict[tuple, list[QueuedRow]] = {}
    for row in rows:
        groups.setdefault((row.peer, row.run_id, row.step), []).append(row)

    def settle(row: QueuedRow, outcome: Outcome) -> None:
        if outcome.status == DONE:
            if confirm(conn, result.worker, row, outcome):
                result.sent += 1
            else:
                result.lost += 1
                log(f"{row.sop_uid} ({row.run_id} step {row.step}) was sent after its lease "
                    "had passed to another worker: the peer may receive it twice")
            return
        if halt.is_set() and outcome.reason == INTERRUPTED:
            result.released += release(conn, result.worker, [row])
        elif outcome.reason.startswith("not sent:") and \
                not (outcome.detail or {}).get("association_lost"):
            _retry_or_fail(conn, row, outcome, result, max_attempts)
        elif fail(conn, result.worker, row, outcome):
            result.failed += 1

    read = {row.key: _read(row, data_root) for row in rows}
    missing = [r for r in rows if isinstance(read[r.key], Outcome)
               and read[r.key].reason == "file missing"]
    if len(rows) > 1 and len(missing) == len(rows):     # given back by drain()
        raise ArchiveError(f"none of the {len(rows)} files of a leased batch exist under "
                           f"{data_root} (e.g. {rows[0].path}): is --data the archive's data "
                           "directory as this host sees it?")
    for members in groups.values():
        if halt.is_set():
            break
        pending: dict[str, QueuedRow] = {}
        items = []
        for row in members:
            if row.sop_uid in pending:          # one instance twice in a step: later
                result.released += release(conn, result.worker, [row])
                continue
            got = read[row.key]
            if isinstance(got, Outcome):
                settle(row, got)
                continue
            pending[row.sop_uid] = row
            items.append(got)
        if not items:
            continue
        try:
            settings = members[0].settings()
        except ConquestRunError as exc:         # a destination row nobody could use
            for row in pending.values():
                settle(row, Outcome(row.sop_uid, row.series_uid, FAILED, f"cannot send: {exc}"))
            continue

        def on_outcome(outcome: Outcome) -> None:
            row = pending.pop(outcome.sop_uid or "", None)
            if row is not None:
                settle(row, outcome)

        try:
            DicomTransport(settings, stop=halt).send([items], on_outcome)
        except NetworkError as exc:     # the peer cannot be reached at all: nothing was sent
            for row in list(pending.values()):
                _retry_or_fail(conn, row, Outcome(row.sop_uid, row.series_uid, FAILED,
                                                  f"not sent: {exc}"), result, max_attempts)
            pending.clear()
        if pending:                     # never reported (stopped before it was tried)
            result.released += release(conn, result.worker, pending.values())
    if halt.is_set():                   # groups not started, or the leases ran out
        result.released += release(conn, result.worker)


def _read(row: QueuedRow, data_root: Path) -> Any:
    """The row's ``SendItem``, or its failed ``Outcome`` (missing, unreadable, outside)."""
    path = (data_root / row.path).resolve()
    if not path.is_relative_to(data_root):
        return Outcome(row.sop_uid, row.series_uid, FAILED, "path outside the data directory",
                       {"path": row.path})
    return read_send_item(path, row.sop_uid, row.series_uid, row.sop_class, row.flags)


def _retry_or_fail(conn: Any, row: QueuedRow, outcome: Outcome, result: DrainResult,
                   max_attempts: int) -> None:
    if row.attempts < max_attempts:
        if fail(conn, result.worker, row, outcome, retry_after=_backoff(row),
                max_attempts=max_attempts):
            result.retried += 1
    elif fail(conn, result.worker, row, outcome):
        result.failed += 1
