"""The send queue table on PostgreSQL and its statements (see the package notes for the
guarantee).  Every statement that settles a row checks the lease is still the caller's
(``leaseowner = ?``) and writes the row's ``ConquestRunAudit`` row in the same statement.

``conn`` is a :class:`~conquest_run.backends.postgres.PgConnection` (autocommit; one statement,
one transaction).  Table and column names are unquoted, so lower case on the server.
"""

from __future__ import annotations

__all__ = ["QUEUE_TABLE", "QueueItem", "QueuedRow", "ensure_queue", "enqueue", "lease",
           "renew", "confirm", "fail", "release", "progress", "outcomes", "confirmed",
           "items_of_step", "QUEUED", "LEASED", "SENT", "FAILED_STATE"]

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ...audit import _ADDED, _DDL, _INDEXES, AUDIT_TABLE, now_iso
from ...report import DONE, FAILED, Outcome
from ..settings import PeerSettings

QUEUE_TABLE = "conquestrunsendqueue"
QUEUED, LEASED, SENT, FAILED_STATE = "queued", "leased", "sent", "failed"
ACTION = "send"
_LOCK_KEY = 0x436F5351      # advisory lock while the tables are made (two workers at once)

_QUEUE_DDL = (
    f"CREATE TABLE IF NOT EXISTS {QUEUE_TABLE} ("
    "runid varchar(64) NOT NULL, step int NOT NULL, item int NOT NULL, stepname text, "
    "target text NOT NULL, sopinstanc varchar(64) NOT NULL, seriesinst varchar(64), "
    "patientid text, sopclassui varchar(64), objectfile text NOT NULL, flags text, "
    "host text NOT NULL, port int NOT NULL, calledae varchar(16) NOT NULL, "
    "callingae varchar(16) NOT NULL, timeout double precision NOT NULL, retries int NOT NULL, "
    "retrydelay double precision NOT NULL, "
    f"state varchar(8) NOT NULL DEFAULT '{QUEUED}' "
    f"CHECK (state IN ('{QUEUED}', '{LEASED}', '{SENT}', '{FAILED_STATE}')), "
    "leaseowner text, leaseexpires timestamptz, notbefore timestamptz, "
    "attempts int NOT NULL DEFAULT 0, status varchar(16), reason text, detail text, "
    "queued timestamptz NOT NULL DEFAULT now(), started timestamptz, ended timestamptz, "
    "PRIMARY KEY (runid, step, item))",
    f"CREATE INDEX IF NOT EXISTS {QUEUE_TABLE}_state ON {QUEUE_TABLE} (state, runid)",
    f"CREATE INDEX IF NOT EXISTS {QUEUE_TABLE}_target ON {QUEUE_TABLE} (target, state)",
)
_ROW_COLUMNS = ("runid", "step", "item", "sopinstanc", "seriesinst", "sopclassui", "objectfile",
                "flags", "host", "port", "calledae", "callingae", "timeout", "retries",
                "retrydelay", "target", "attempts")
_KEY = "runid = ? AND step = ? AND item = ?"
_MINE = f"{_KEY} AND leaseowner = ? AND state = '{LEASED}'"
_AUDIT_INSERT = (f"INSERT INTO {AUDIT_TABLE} (RunId, Step, StepName, Action, Target, SOPInstanc, "
                 "SeriesInst, Status, Reason, Detail, Time, PatientID) "
                 f"SELECT runid, step, stepname, '{ACTION}', target, sopinstanc, seriesinst, "
                 "status, reason, detail, ?, patientid FROM settled")


@dataclass(frozen=True)
class QueueItem:
    """One instance to enqueue: what the plan says of it (``path``: its ObjectFile)."""

    sop_uid: str
    series_uid: str | None
    path: str
    sop_class: str | None = None
    patient_id: str | None = None
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class QueuedRow:
    """A leased row: the instance and where it goes."""

    run_id: str
    step: int
    item: int
    sop_uid: str
    series_uid: str | None
    sop_class: str | None
    path: str
    flags: tuple[str, ...]
    peer: tuple[str, int, str, str, float, int, float]  # host, port, called, calling, ...
    target: str
    attempts: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.run_id, self.step, self.item)

    def settings(self) -> PeerSettings:
        """The sender's settings (one association: parallelism is more workers)."""
        host, port, called, calling, timeout, retries, delay = self.peer
        return PeerSettings(host=host, port=port, called_ae=called, calling_ae=calling,
                            associations=1, retries=retries, retry_delay=delay, timeout=timeout)


def ensure_queue(conn: Any) -> None:
    """Create the queue table and the audit table where missing (idempotent, under an advisory
    lock so that workers starting at once do not race on ``CREATE``)."""
    conn.execute("BEGIN")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(?)", (_LOCK_KEY,))
        for stmt in _QUEUE_DDL + (_DDL[1],):
            conn.execute(stmt)
        for name, kind in _ADDED[AUDIT_TABLE]:
            conn.execute(f"ALTER TABLE {AUDIT_TABLE} ADD COLUMN IF NOT EXISTS {name} {kind}")
        for stmt in _INDEXES:
            conn.execute(stmt)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def items_of_step(step: Any) -> list[QueueItem]:
    """The items of a send ``PlanStep``, in plan order."""
    return [QueueItem(inst.sop_uid, series.series_uid, inst.path, inst.sop_class,
                      series.patient_id, tuple(inst.flags))
            for series in step.series for inst in series.instances]


def enqueue(conn: Any, run_id: str, step: int, destination: PeerSettings,
            items: Iterable[QueueItem], *, target: str | None = None,
            step_name: str = ACTION) -> int:
    """Queue ``items`` (numbered 1.. in the order given) for ``destination``; the number of
    rows added.  Idempotent: an item already queued for this run and step is left as it is
    (whatever its state), so a second enqueue of the same step adds nothing."""
    s = destination
    rows = [(run_id, step, n, step_name, target or s.target, i.sop_uid, i.series_uid,
             i.patient_id, i.sop_class, i.path, " ".join(i.flags) or None, s.host, s.port,
             s.called_ae, s.calling_ae, float(s.timeout), int(s.retries), float(s.retry_delay))
            for n, i in enumerate(items, 1)]
    if not rows:
        return 0
    before = _count(conn, run_id, step)
    conn.executemany(
        f"INSERT INTO {QUEUE_TABLE} (runid, step, item, stepname, target, sopinstanc, "
        "seriesinst, patientid, sopclassui, objectfile, flags, host, port, calledae, callingae, "
        "timeout, retries, retrydelay) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
        "?, ?) ON CONFLICT (runid, step, item) DO NOTHING", rows)
    return _count(conn, run_id, step) - before


def _count(conn: Any, run_id: str, step: int) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {QUEUE_TABLE} WHERE runid = ? AND step = ?",
                            (run_id, step)).fetchone()[0])


def lease(conn: Any, worker: str, batch: int, lease_seconds: float, *,
          run_id: str | None = None, max_attempts: int = 3) -> list[QueuedRow]:
    """Lease up to ``batch`` rows (queued and due, or leased with the lease expired), in run,
    step and item order; rows another transaction holds are skipped, never waited for.  Rows
    whose lease expired ``max_attempts`` times are failed first."""
    now = now_iso()
    conn.execute(
        f"WITH gone AS (SELECT runid, step, item FROM {QUEUE_TABLE} WHERE state = '{LEASED}' "
        "AND leaseexpires < now() AND attempts >= ? AND (CAST(? AS text) IS NULL OR runid = ?) "
        f"FOR UPDATE SKIP LOCKED), settled AS (UPDATE {QUEUE_TABLE} q SET "
        f"state = '{FAILED_STATE}', status = '{FAILED}', reason = 'not sent: the lease expired ' "
        "|| q.attempts || ' times while a worker sent it (each worker died or stalled); it may "
        "kill the worker that sends it', ended = now() FROM gone WHERE q.runid = gone.runid AND "
        "q.step = gone.step AND q.item = gone.item RETURNING q.*) " + _AUDIT_INSERT,
        (max_attempts, run_id, run_id, now))
    rows = conn.execute(
        f"WITH picked AS (SELECT runid, step, item FROM {QUEUE_TABLE} "
        f"WHERE ((state = '{QUEUED}' AND (notbefore IS NULL OR notbefore <= now())) "
        f"OR (state = '{LEASED}' AND leaseexpires < now())) "
        "AND (CAST(? AS text) IS NULL OR runid = ?) "
        "ORDER BY runid, step, item LIMIT ? FOR UPDATE SKIP LOCKED) "
        f"UPDATE {QUEUE_TABLE} q SET state = '{LEASED}', leaseowner = ?, "
        "leaseexpires = now() + make_interval(secs => ?), attempts = q.attempts + 1, "
        "notbefore = NULL, started = coalesce(q.started, now()) FROM picked "
        "WHERE q.runid = picked.runid AND q.step = picked.step AND q.item = picked.item "
        f"RETURNING {', '.join('q.' + c for c in _ROW_COLUMNS)}",
        (run_id, run_id, int(batch), worker, float(lease_seconds))).fetchall()
    out = [QueuedRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], tuple((r[7] or "").split()),
                     (r[8], r[9], r[10], r[11], r[12], r[13], r[14]), r[15], r[16])
           for r in rows]
    return sorted(out, key=lambda r: r.key)


def renew(conn: Any, worker: str, lease_seconds: float) -> int:
    """Push the expiry of every lease ``worker`` still holds; how many.  Rows another statement
    has locked are skipped (being settled, or taken over), so a renewal never waits: with
    ``lease`` and the expired-row failing never waiting either, no two statements of the queue
    can deadlock."""
    return conn.execute(
        f"WITH mine AS (SELECT runid, step, item FROM {QUEUE_TABLE} WHERE leaseowner = ? AND "
        f"state = '{LEASED}' FOR UPDATE SKIP LOCKED) UPDATE {QUEUE_TABLE} q SET "
        "leaseexpires = now() + make_interval(secs => ?) FROM mine WHERE q.runid = mine.runid "
        "AND q.step = mine.step AND q.item = mine.item",
        (worker, float(lease_seconds))).rowcount


def _detail(outcome: Outcome, row: QueuedRow, worker: str) -> str:
    detail = dict(outcome.detail or {})
    detail.update({"path": row.path, "worker": worker, "attempts": row.attempts})
    return json.dumps(detail, sort_keys=True, default=str)


def confirm(conn: Any, worker: str, row: QueuedRow, outcome: Outcome) -> bool:
    """Mark ``row`` sent with the peer's answer, only while ``worker`` holds its lease; its
    audit row in the same statement.  False: the lease had passed to another worker (nothing
    changed)."""
    cur = conn.execute(
        f"WITH settled AS (UPDATE {QUEUE_TABLE} SET state = '{SENT}', status = ?, reason = ?, "
        f"detail = ?, ended = now(), leaseexpires = NULL WHERE {_MINE} RETURNING *) "
        + _AUDIT_INSERT,
        (DONE, outcome.reason, _detail(outcome, row, worker), *row.key, worker, now_iso()))
    return cur.rowcount == 1


def fail(conn: Any, worker: str, row: QueuedRow, outcome: Outcome, *, retry_after: float |
         None = None, max_attempts: int = 3) -> bool:
    """Settle a failed instance: with ``retry_after`` (seconds) and tries left, back to the
    queue, due then; otherwise ``failed`` for good, with its audit row.  Only while ``worker``
    holds the lease (False otherwise)."""
    if retry_after is not None and row.attempts < max_attempts:
        cur = conn.execute(
            f"UPDATE {QUEUE_TABLE} SET state = '{QUEUED}', leaseowner = NULL, "
            "leaseexpires = NULL, notbefore = now() + make_interval(secs => ?), reason = ?, "
            f"detail = ? WHERE {_MINE}",
            (float(retry_after), outcome.reason, _detail(outcome, row, worker), *row.key,
             worker))
        return cur.rowcount == 1
    cur = conn.execute(
        f"WITH settled AS (UPDATE {QUEUE_TABLE} SET state = '{FAILED_STATE}', status = ?, "
        f"reason = ?, detail = ?, ended = now(), leaseexpires = NULL WHERE {_MINE} "
        "RETURNING *) " + _AUDIT_INSERT,
        (FAILED, outcome.reason, _detail(outcome, row, worker), *row.key, worker, now_iso()))
    return cur.rowcount == 1


def release(conn: Any, worker: str, rows: Iterable[QueuedRow] | None = None) -> int:
    """Give leases back unsent (all of ``worker``'s when ``rows`` is None): queued again, the
    try not counted.  How many were released."""
    sql = (f"UPDATE {QUEUE_TABLE} SET state = '{QUEUED}', leaseowner = NULL, "
           "leaseexpires = NULL, attempts = greatest(attempts - 1, 0) ")
    if rows is None:
        return conn.execute(sql + f"WHERE leaseowner = ? AND state = '{LEASED}'",
                            (worker,)).rowcount
    return sum(conn.execute(sql + f"WHERE {_MINE}", (*r.key, worker)).rowcount for r in rows)


def progress(conn: Any, run_id: str, step: int | None = None) -> dict[str, int]:
    """Rows per state (``queued``, ``leased``, ``sent``, ``failed``) and ``total``."""
    counts = {QUEUED: 0, LEASED: 0, SENT: 0, FAILED_STATE: 0}
    for state, n in conn.execute(
            f"SELECT state, count(*) FROM {QUEUE_TABLE} WHERE runid = ? "
            "AND (CAST(? AS int) IS NULL OR step = ?) GROUP BY state",
            (run_id, step, step)).fetchall():
        counts[state] = int(n)
    counts["total"] = sum(counts.values())
    return counts


def outcomes(conn: Any, run_id: str, step: int) -> list[Outcome]:
    """The settled instances of a step as report outcomes, in item (plan) order."""
    rows = conn.execute(
        f"SELECT sopinstanc, seriesinst, status, reason, detail FROM {QUEUE_TABLE} "
        f"WHERE runid = ? AND step = ? AND state IN ('{SENT}', '{FAILED_STATE}') ORDER BY item",
        (run_id, step)).fetchall()
    return [Outcome(r[0], r[1], r[2], r[3], json.loads(r[4]) if r[4] else {}) for r in rows]


def confirmed(conn: Any, target: str) -> set[str]:
    """SOP instance UIDs any run's queue delivered to ``target`` (the send journal's key)."""
    return {r[0] for r in conn.execute(
        f"SELECT DISTINCT sopinstanc FROM {QUEUE_TABLE} WHERE target = ? AND state = '{SENT}'",
        (target,)).fetchall()}
