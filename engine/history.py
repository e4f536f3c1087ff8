"""Reading the audit log (``conquest-run history``): runs and outcomes, filtered; no DDL, so a
read-only connection does, and a database without audit tables simply has no runs.

A run's ``state`` is the one recorded (``ok | failed | interrupted | crashed``), except that a run
still marked ``running`` whose process is gone (same host, its pid no longer alive) is shown as
``crashed``: nothing can close the row of a process that was killed outright.
"""

from __future__ import annotations

__all__ = ["read_runs", "read_outcomes", "run_state", "OUTCOME_KEYS", "RUN_KEYS"]

import json
import socket
import sqlite3
from typing import Any, Iterable

from .audit import AUDIT_TABLE, CRASHED, FAILED_RUN, OK, RUNNING, RUNS_TABLE, row_order
from .procs import pid_alive

RUN_KEYS = ("run_id", "job_path", "job_name", "job_sha256", "started", "ended", "ok",
            "summary", "state", "signal", "pid", "host", "user", "version", "job_commit",
            "variables", "error", "done", "skipped", "failed")
_RUN_COLUMNS = ("r.RunId", "r.JobPath", "r.JobName", "r.JobSha256", "r.Started", "r.Ended",
                "r.Ok", "r.Summary", "r.State", "r.Signal", "r.Pid", "r.Host", 'r."User"',
                "r.Version", "r.JobCommit", "r.Variables", "r.Error")
OUTCOME_KEYS = ("run_id", "job_path", "step", "step_name", "action", "target", "patient_id",
                "sop_uid", "series_uid", "status", "reason", "detail", "time")
_OUTCOME_COLUMNS = ("a.RunId", "r.JobPath", "a.Step", "a.StepName", "a.Action", "a.Target",
                    "a.PatientID", "a.SOPInstanc", "a.SeriesInst", "a.Status", "a.Reason",
                    "a.Detail", "a.Time")


def _columns(conn: sqlite3.Connection, table: str) -> set[str] | None:
    from .db import column_names
    have = column_names(conn, table)
    return {c.lower() for c in have} if have else None


def _select(columns: Iterable[str], have: set[str]) -> str:
    """The columns, NULL for those an old table lacks (read-only: no migration here)."""
    return ", ".join(c if c.split(".")[1].strip('"').lower() in have else "NULL"
                     for c in columns)




def run_state(row: dict[str, Any], host: str | None = None) -> str:
    """The state to show: the recorded one, ``crashed`` for a gone process, ``unfinished`` when
    it cannot be known (another host, or a row from a version that kept no pid)."""
    state = row.get("state")
    if state and state != RUNNING:
        return state
    if not state and row.get("ended"):
        return OK if row.get("ok") else FAILED_RUN
    host = host or socket.gethostname()
    pid = row.get("pid")
    if pid and row.get("host") == host:
        return RUNNING if pid_alive(int(pid)) else CRASHED
    return RUNNING if pid else "unfinished"


def read_runs(conn: sqlite3.Connection, limit: int | None = 20,
              run_id_prefix: str | None = None, *, job: str | None = None,
              since: str | None = None, state: str | None = None) -> list[dict]:
    """Past runs, newest first, with outcome totals.

    ``run_id_prefix`` keeps the runs whose id starts with it, ``job`` those whose job path or
    name is it, ``since`` those started at or after it (ISO date or time), ``state`` those shown
    in that state.
    """
    runs_cols = _columns(conn, RUNS_TABLE)
    audit_cols = _columns(conn, AUDIT_TABLE)
    if runs_cols is None or audit_cols is None:
        return []
    where, params = [], []
    if run_id_prefix:
        where.append("substr(r.RunId, 1, ?) = ?")
        params += [len(run_id_prefix), run_id_prefix]
    if job:
        where.append("(r.JobPath = ? OR r.JobName = ?)")
        params += [job, job]
    if since:
        where.append("r.Started >= ?")
        params.append(since)
    counts = ", ".join(f"sum(CASE WHEN a.Status = '{s}' THEN 1 ELSE 0 END)"
                       for s in ("done", "skipped", "failed"))
    sql = (f"SELECT {_select(_RUN_COLUMNS, runs_cols)}, {counts} FROM {RUNS_TABLE} r "
           f"LEFT JOIN {AUDIT_TABLE} a ON a.RunId = r.RunId "
           + (f"WHERE {' AND '.join(where)} " if where else "")
           + f"GROUP BY r.RunId ORDER BY r.Started DESC, r.{row_order(conn)} DESC")
    if limit is not None and state is None:
        sql += " LIMIT ?"
        params.append(limit)
    host = socket.gethostname()
    out = []
    for row in conn.execute(sql, params):
        d = dict(zip(RUN_KEYS, row))
        for k in ("done", "skipped", "failed"):
            d[k] = d[k] or 0
        d["ok"] = None if d["ok"] is None else bool(d["ok"])
        d["summary"] = json.loads(d["summary"]) if d["summary"] else {}
        d["variables"] = json.loads(d["variables"]) if d["variables"] else {}
        d["state"] = run_state(d, host)
        if state is not None and d["state"] != state:
            continue
        out.append(d)
    return out if limit is None else out[:limit]


def read_outcomes(conn: sqlite3.Connection, run_id: str | None = None, *,
                  patient: str | None = None, series: str | None = None,
                  sop: str | None = None, job: str | None = None, action: str | None = None,
                  status: str | None = None, since: str | None = None,
                  limit: int | None = None) -> list[dict]:
    """Outcomes in the order recorded: of one run, or with ``run_id=None`` of every run; each
    filter keeps the outcomes equal to it (``since``: recorded at or after it); ``limit``: only
    the newest that many."""
    runs_cols = _columns(conn, RUNS_TABLE)
    audit_cols = _columns(conn, AUDIT_TABLE)
    if runs_cols is None or audit_cols is None:
        return []
    where, params = [], []
    for column, value in (("a.RunId", run_id), ("a.SeriesInst", series), ("a.SOPInstanc", sop),
                          ("a.Action", action), ("a.Status", status)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if patient is not None:
        if "patientid" not in audit_cols:
            return []
        where.append("a.PatientID = ?")
        params.append(patient)
    if job is not None:
        where.append("(r.JobPath = ? OR r.JobName = ?)")
        params += [job, job]
    if since is not None:
        where.append("a.Time >= ?")
        params.append(since)
    sql = (f"SELECT {_select(_OUTCOME_COLUMNS[:1], audit_cols)}, "
           f"{_select(_OUTCOME_COLUMNS[1:2], runs_cols)}, "
           f"{_select(_OUTCOME_COLUMNS[2:], audit_cols)} FROM {AUDIT_TABLE} a "
           f"LEFT JOIN {RUNS_TABLE} r ON r.RunId = a.RunId"
           + (f" WHERE {' AND '.join(where)}" if where else ""))
    if limit is not None:                    # the newest ``limit``, still oldest first
        sql += f" ORDER BY a.{row_order(conn)} DESC LIMIT ?"
        params.append(limit)
    else:
        sql += f" ORDER BY a.{row_order(conn)}"
    rows = conn.execute(sql, params).fetchall()
    if limit is not None:
        rows.reverse()
    out = []
    for row in rows:
        d = dict(zip(OUTCOME_KEYS, row))
        d["detail"] = json.loads(d["detail"]) if d["detail"] else {}
        out.append(d)
    return out
