"""The audit log: every real run, step and instance outcome, in the archive's own database.

Two tables beside Conquest's (which stay untouched):

* ``ConquestRunRuns``: one row per run: id, job path and SHA-256, start, end, final ``State``
  (``running`` while it runs, then ``ok | failed | interrupted | crashed``), the ``Signal`` that
  interrupted it, the process (``Pid``, ``Host``), ``User``, conquest-run ``Version``, the job's
  git ``JobCommit``, the ``Variables`` used and the run's ``Error``.
* ``ConquestRunAudit``: one row per outcome (run, step, action, target, SOP/series UID, patient,
  status, reason, detail, time).  A whole-step failure is a row without a SOP UID whose detail
  says ``{"scope": "step"}``.

Databases made by older versions get the new columns on first use (``ALTER TABLE ... ADD
COLUMN``).  It is also the journal that makes ``send`` resumable: ``confirmed(action, target)``
gives the SOP instances a peer already confirmed, and a re-run skips them.  Rows are committed as
they are recorded (``flush_every`` bounds what a crash can lose to a few outcomes).
"""

from __future__ import annotations

__all__ = ["AuditLog", "RUNS_TABLE", "AUDIT_TABLE", "read_runs", "read_outcomes", "now_iso",
           "RUNNING", "OK", "FAILED_RUN", "INTERRUPTED", "CRASHED"]

import json
import sqlite3
import time
from datetime import datetime, timezone
from typing import Any

from .db import column_names
from .report import DONE, Outcome

RUNS_TABLE = "ConquestRunRuns"
AUDIT_TABLE = "ConquestRunAudit"
RUNNING, OK, FAILED_RUN, INTERRUPTED, CRASHED = "running", "ok", "failed", "interrupted", "crashed"

_DDL = (
    f"CREATE TABLE IF NOT EXISTS {RUNS_TABLE} (RunId varchar(64) PRIMARY KEY not null, "
    "JobPath text, JobSha256 varchar(64), JobName text, Started varchar(32), Ended varchar(32), "
    "Ok int, Summary text)",
    f"CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} (RunId varchar(64), Step int, StepName text, "
    "Action varchar(16), Target text, SOPInstanc varchar(64), SeriesInst varchar(64), "
    "Status varchar(16), Reason text, Detail text, Time varchar(32))",
)
# columns added after the first release: added to existing tables when missing
_ADDED = {
    RUNS_TABLE: (("State", "varchar(16)"), ("Signal", "varchar(16)"), ("Pid", "int"),
                 ("Host", "text"), ("User", "text"), ("Version", "varchar(32)"),
                 ("JobCommit", "text"), ("Variables", "text"), ("Error", "text")),
    AUDIT_TABLE: (("PatientID", "text"),),
}
_INDEXES = (
    f"CREATE INDEX IF NOT EXISTS audit_target ON {AUDIT_TABLE} (Action, Target, Status)",
    f"CREATE INDEX IF NOT EXISTS audit_run ON {AUDIT_TABLE} (RunId)",
)
_OUTCOME_COLUMNS = ("RunId", "Step", "StepName", "Action", "Target", "SOPInstanc", "SeriesInst",
                    "Status", "Reason", "Detail", "Time", "PatientID")
# the run facts ``start_run`` accepts as keywords, by column
_CONTEXT_COLUMNS = {"pid": "Pid", "host": "Host", "user": "User", "version": "Version",
                    "job_commit": "JobCommit", "variables": "Variables"}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def migrate(conn: sqlite3.Connection) -> None:
    """Create the audit tables, or add the columns an older version's tables lack."""
    with conn:
        for stmt in _DDL:
            conn.execute(stmt)
        for table, columns in _ADDED.items():
            have = {c.lower() for c in column_names(conn, table)}
            for name, kind in columns:
                if name.lower() not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
        for stmt in _INDEXES:
            conn.execute(stmt)


class AuditLog:
    """Append-only log on a read-write connection to the archive database.

    ``know(plan)`` lets every outcome carry the facts of its planned instance (patient, file,
    bytes) even when the action that reports it does not repeat them.
    """

    def __init__(self, conn: sqlite3.Connection, *, flush_every: float = 0.2) -> None:
        self.conn = conn
        self.flush_every = flush_every
        self._pending: list[tuple] = []
        self._last_flush = time.monotonic()
        self._planned: dict[str, tuple[str | None, str, int | None]] = {}
        migrate(conn)

    def know(self, plan: Any) -> None:
        """Remember each planned instance's patient, path and size (from a ``Plan``)."""
        for step in plan.steps:
            for series in step.series:
                for inst in series.instances:
                    self._planned[inst.sop_uid] = (series.patient_id, inst.path, inst.size)

    # -- runs ------------------------------------------------------------------------------
    def start_run(self, run_id: str, job_path: str, job_sha256: str, job_name: str = "",
                  **context: Any) -> None:
        """Open a run row (state ``running``); ``context``: pid, host, user, version,
        job_commit, variables (a dict, stored as JSON)."""
        columns = ["RunId", "JobPath", "JobSha256", "JobName", "Started", "State"]
        values: list[Any] = [run_id, job_path, job_sha256, job_name, now_iso(), RUNNING]
        for key, value in context.items():
            columns.append(_CONTEXT_COLUMNS[key])
            values.append(json.dumps(value, sort_keys=True) if isinstance(value, dict) else value)
        with self.conn:
            self.conn.execute(f"INSERT INTO {RUNS_TABLE} ({', '.join(columns)}) VALUES "
                              f"({', '.join('?' * len(values))})", values)

    def end_run(self, run_id: str, ok: bool, summary: dict | None = None, *,
                state: str | None = None, signal: str | None = None,
                error: str | None = None) -> None:
        """Close the run row with its final state (``ok``/``failed`` from ``ok`` by default)."""
        state = state or (OK if ok else FAILED_RUN)
        self.flush()
        with self.conn:
            self.conn.execute(
                f"UPDATE {RUNS_TABLE} SET Ended = ?, Ok = ?, Summary = ?, State = ?, Signal = ?, "
                "Error = ? WHERE RunId = ?",
                (now_iso(), int(ok and state == OK), json.dumps(summary or {}, sort_keys=True),
                 state, signal, error, run_id))

    # -- outcomes --------------------------------------------------------------------------
    def record(self, run_id: str, step: int, step_name: str, action: str, target: str,
               outcome: Outcome) -> None:
        detail = dict(outcome.detail or {})
        patient = detail.get("patient_id")
        planned = self._planned.get(outcome.sop_uid or "")
        if planned is not None:
            patient, path, size = planned
            detail.setdefault("path", path)
            if size is not None:
                detail.setdefault("bytes", size)
        self._pending.append((run_id, step, step_name, action, target, outcome.sop_uid,
                              outcome.series_uid, outcome.status, outcome.reason,
                              json.dumps(detail, sort_keys=True, default=str) if detail else None,
                              now_iso(), patient))
        if time.monotonic() - self._last_flush >= self.flush_every:
            self.flush()

    def record_step_error(self, run_id: str, step: int, step_name: str, action: str,
                          target: str, error: str) -> None:
        """A whole-step failure (peer not reachable, ...): a failed row without a SOP UID."""
        self.record(run_id, step, step_name, action, target,
                    Outcome(None, None, "failed", error, {"scope": "step"}))
        self.flush()

    def flush(self) -> None:
        if self._pending:
            with self.conn:
                self.conn.executemany(
                    f"INSERT INTO {AUDIT_TABLE} ({', '.join(_OUTCOME_COLUMNS)}) VALUES "
                    f"({', '.join('?' * len(_OUTCOME_COLUMNS))})", self._pending)
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
        return read_runs(self.conn, limit)


def read_runs(conn: sqlite3.Connection, limit: int | None = 20,
              run_id_prefix: str | None = None, **filters: Any) -> list[dict]:
    """Past runs, newest first, with outcome totals (see ``history.read_runs``)."""
    from .history import read_runs as _read
    return _read(conn, limit, run_id_prefix, **filters)


def read_outcomes(conn: sqlite3.Connection, run_id: str | None, **filters: Any) -> list[dict]:
    """Outcomes of one run (or, with ``run_id=None``, of all runs), in the order recorded."""
    from .history import read_outcomes as _read
    return _read(conn, run_id, **filters)
