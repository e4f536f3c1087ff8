"""The audit log: every real run, step and instance outcome, in the archive's own database.

Two tables beside Conquest's (which stay untouched):

* ``ConquestRunRuns``: one row per run (id, job path and SHA-256, start, end, ok).
* ``ConquestRunAudit``: one row per outcome (run, step, action, target, SOP/series UID, status,
  reason, time).

It is also the journal that makes ``send`` resumable: ``confirmed(action, target)`` gives the
SOP instances a peer already confirmed, and a re-run skips them.  Rows are committed as they are
recorded (``flush_every`` bounds what a crash can lose to a few outcomes; ``flush()`` forces it).
"""

from __future__ import annotations

__all__ = ["AuditLog", "RUNS_TABLE", "AUDIT_TABLE", "read_runs", "read_outcomes"]

import json
import sqlite3
import time
from datetime import datetime, timezone

from .report import DONE, Outcome

RUNS_TABLE = "ConquestRunRuns"
AUDIT_TABLE = "ConquestRunAudit"

_DDL = (
    f"CREATE TABLE IF NOT EXISTS {RUNS_TABLE} (RunId varchar(64) PRIMARY KEY not null, "
    "JobPath text, JobSha256 varchar(64), JobName text, Started varchar(32), Ended varchar(32), "
    "Ok int, Summary text)",
    f"CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} (RunId varchar(64), Step int, StepName text, "
    "Action varchar(16), Target text, SOPInstanc varchar(64), SeriesInst varchar(64), "
    "Status varchar(16), Reason text, Detail text, Time varchar(32))",
    f"CREATE INDEX IF NOT EXISTS audit_target ON {AUDIT_TABLE} (Action, Target, Status)",
    f"CREATE INDEX IF NOT EXISTS audit_run ON {AUDIT_TABLE} (RunId)",
)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class AuditLog:
    """Append-only log on a read-write connection to the archive database."""

    def __init__(self, conn: sqlite3.Connection, *, flush_every: float = 0.2) -> None:
        self.conn = conn
        self.flush_every = flush_every
        self._pending: list[tuple] = []
        self._last_flush = time.monotonic()
        for stmt in _DDL:
            conn.execute(stmt)

    # -- runs ------------------------------------------------------------------------------
    def start_run(self, run_id: str, job_path: str, job_sha256: str, job_name: str = "") -> None:
        with self.conn:
            self.conn.execute(
                f"INSERT INTO {RUNS_TABLE} (RunId, JobPath, JobSha256, JobName, Started) "
                "VALUES (?, ?, ?, ?, ?)", (run_id, job_path, job_sha256, job_name, now_iso()))

    def end_run(self, run_id: str, ok: bool, summary: dict | None = None) -> None:
        self.flush()
        with self.conn:
            self.conn.execute(
                f"UPDATE {RUNS_TABLE} SET Ended = ?, Ok = ?, Summary = ? WHERE RunId = ?",
                (now_iso(), int(ok), json.dumps(summary or {}, sort_keys=True), run_id))

    # -- outcomes --------------------------------------------------------------------------
    def record(self, run_id: str, step: int, step_name: str, action: str, target: str,
               outcome: Outcome) -> None:
        self._pending.append((run_id, step, step_name, action, target, outcome.sop_uid,
                              outcome.series_uid, outcome.status, outcome.reason,
                              json.dumps(outcome.detail, sort_keys=True, default=str)
                              if outcome.detail else None, now_iso()))
        if time.monotonic() - self._last_flush >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            with self.conn:
                self.conn.executemany(
                    f"INSERT INTO {AUDIT_TABLE} VALUES (?,?,?,?,?,?,?,?,?,?,?)", self._pending)
            self._pending.clear()
        self._last_flush = time.monotonic()

    # -- reading ---------------------------------------------------------------------------
    def confirmed(self, action: str, target: str) -> set[str]:
        """SOP instance UIDs whose ``action`` to ``target`` ended ``done`` in any run."""
        self.flush()
        rows = self.conn.execute(
            f"SELECT DISTINCT SOPInstanc FROM {AUDIT_TABLE} WHERE Action = ? AND Target = ? "
            "AND Status = ? AND SOPInstanc IS NOT NULL", (action, target, DONE))
        return {r[0] for r in rows}

    def runs(self, limit: int = 20) -> list[dict]:
        self.flush()
        cur = self.conn.execute(
            f"SELECT r.RunId, r.JobPath, r.JobName, r.JobSha256, r.Started, r.Ended, r.Ok, "
            f"(SELECT count(*) FROM {AUDIT_TABLE} a WHERE a.RunId = r.RunId AND a.Status = 'done'), "
            f"(SELECT count(*) FROM {AUDIT_TABLE} a WHERE a.RunId = r.RunId AND a.Status = 'skipped'), "
            f"(SELECT count(*) FROM {AUDIT_TABLE} a WHERE a.RunId = r.RunId AND a.Status = 'failed') "
            f"FROM {RUNS_TABLE} r ORDER BY r.Started DESC, r.rowid DESC LIMIT ?", (limit,))
        keys = ("run_id", "job_path", "job_name", "job_sha256", "started", "ended", "ok",
                "done", "skipped", "failed")
        return [dict(zip(keys, r)) for r in cur]


# -- reading without writing (``conquest-run history``) -----------------------------------------
_RUN_KEYS = ("run_id", "job_path", "job_name", "job_sha256", "started", "ended", "ok",
             "summary", "done", "skipped", "failed")


def _has_tables(conn: sqlite3.Connection) -> bool:
    names = {r[0].lower() for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    return RUNS_TABLE.lower() in names and AUDIT_TABLE.lower() in names


def read_runs(conn: sqlite3.Connection, limit: int | None = 20,
              run_id_prefix: str | None = None) -> list[dict]:
    """Past runs, newest first, with outcome totals; no DDL, so a read-only connection does.

    ``run_id_prefix`` keeps the runs whose id starts with it.  No audit tables: no runs.
    """
    if not _has_tables(conn):
        return []
    where, params = "", []
    if run_id_prefix:
        where = "WHERE substr(r.RunId, 1, ?) = ?"
        params = [len(run_id_prefix), run_id_prefix]
    sql = (f"SELECT r.RunId, r.JobPath, r.JobName, r.JobSha256, r.Started, r.Ended, r.Ok, "
           f"r.Summary, sum(a.Status = 'done'), sum(a.Status = 'skipped'), sum(a.Status = 'failed') "
           f"FROM {RUNS_TABLE} r LEFT JOIN {AUDIT_TABLE} a ON a.RunId = r.RunId {where} "
           f"GROUP BY r.RunId ORDER BY r.Started DESC, r.rowid DESC")
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    out = []
    for row in conn.execute(sql, params):
        d = dict(zip(_RUN_KEYS, row))
        for k in ("done", "skipped", "failed"):
            d[k] = d[k] or 0
        d["ok"] = None if d["ok"] is None else bool(d["ok"])
        d["summary"] = json.loads(d["summary"]) if d["summary"] else {}
        out.append(d)
    return out


def read_outcomes(conn: sqlite3.Connection, run_id: str) -> list[dict]:
    """Every outcome of one run, in the order recorded."""
    if not _has_tables(conn):
        return []
    keys = ("step", "step_name", "action", "target", "sop_uid", "series_uid", "status",
            "reason", "detail", "time")
    rows = conn.execute(
        f"SELECT Step, StepName, Action, Target, SOPInstanc, SeriesInst, Status, Reason, Detail, "
        f"Time FROM {AUDIT_TABLE} WHERE RunId = ? ORDER BY rowid", (run_id,))
    out = []
    for row in rows:
        d = dict(zip(keys, row))
        d["detail"] = json.loads(d["detail"]) if d["detail"] else {}
        out.append(d)
    return out
