"""The audit record of ``conquest-run serve``: one ``ConquestRunRuns`` row for the server's
life, and in ``ConquestRunAudit``:

* one ``associate`` row per association (calling and called AE titles, the peer's address, the
  instances it stored and failed to store, its queries and retrieves, released or aborted);
* one ``find`` row per C-FIND (who asked, the model, level and keys, the matches returned,
  cancelled or not);
* one ``move`` / ``get`` row per sub-operation (which instance went where, its status) and one
  summary row per request (who asked, the keys, the destination, the counts).

Written on its own WAL connection from the associations' threads, under a lock.
"""

from __future__ import annotations

__all__ = ["ServeAudit", "peer_of"]

import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

from ..audit import AuditLog
from ..errors import ArchiveError
from ..report import DONE, FAILED, Outcome

STEP = (1, "serve")


def peer_of(assoc: Any) -> tuple[str, str, str]:
    """(calling AE, called AE, "host:port") of an acceptor association."""
    requestor = getattr(assoc, "requestor", None)
    calling = str(getattr(requestor, "ae_title", "") or "").strip()
    called = str(getattr(getattr(assoc, "acceptor", None), "ae_title", "") or "").strip()
    address = f"{getattr(requestor, 'address', '?')}:{getattr(requestor, 'port', '?')}"
    return calling, called, address


class _Association:
    def __init__(self, assoc: Any) -> None:
        self.calling, self.called, self.address = peer_of(assoc)
        self.stored = 0
        self.failed = 0
        self.requests: dict[str, int] = {}
        self.ended = "released"


class ServeAudit:
    """Thread-safe writer of serve's audit rows (see the module notes)."""

    def __init__(self, database: str | Path, what: str) -> None:
        from ..db import connect
        from ..runcontext import run_context

        self.run_id = uuid.uuid4().hex
        self.conn = connect(database)
        self.log = AuditLog(self.conn, flush_every=0.5)
        self.lock = threading.Lock()
        self.open: dict[int, _Association] = {}
        self.associations = 0
        self.done = False                  # closed: late events write nothing
        context = {k: v for k, v in run_context(None).items() if k != "job_commit"}
        self.log.start_run(self.run_id, f"conquest-run serve {what}".strip(), "", "serve",
                           **context)
        from ..errorlog import mark_run
        mark_run(self.run_id, f"serve {what}".strip())     # the error log's run id

    # -- associations ----------------------------------------------------------------------
    def handlers(self) -> list[tuple[Any, Any]]:
        from pynetdicom import evt

        return [(evt.EVT_ACCEPTED, self.accepted), (evt.EVT_ABORTED, self.aborted),
                (evt.EVT_CONN_CLOSE, self.closed)]

    def accepted(self, event: Any) -> None:
        with self.lock:
            self.open[id(event.assoc)] = _Association(event.assoc)

    def aborted(self, event: Any) -> None:
        with self.lock:
            a = self.open.get(id(event.assoc))
            if a is not None:
                a.ended = "aborted"

    def closed(self, event: Any) -> None:
        with self.lock:
            a = self.open.pop(id(event.assoc), None)
            if a is None:
                return
            self.associations += 1
            detail = {"calling_ae": a.calling, "called_ae": a.called, "peer": a.address,
                      "instances": a.stored, "failed": a.failed, "ended": a.ended,
                      **{f"{k}_requests": v for k, v in sorted(a.requests.items())}}
            reason = f"{a.ended}: {a.stored} instance(s) stored" + (
                f", {a.failed} failed" if a.failed else "") + "".join(
                f", {v} C-{k.upper()}" for k, v in sorted(a.requests.items()))
            self._record("associate", f"{a.calling}@{a.address}",
                         Outcome(None, None, DONE if a.ended == "released" else FAILED, reason,
                                 detail))
            if not self.done:
                try:
                    self.log.flush()
                except sqlite3.Error:       # a full disk: kept, written by close() or lost
                    pass

    def stored(self, assoc: Any, ok: bool) -> None:
        with self.lock:
            a = self.open.get(id(assoc))
            if a is not None:
                if ok:
                    a.stored += 1
                else:
                    a.failed += 1

    def _count(self, assoc: Any, kind: str) -> str:
        a = self.open.get(id(assoc))
        if a is None:
            calling, _, address = peer_of(assoc)
            return f"{calling}@{address}"
        a.requests[kind] = a.requests.get(kind, 0) + 1
        return f"{a.calling}@{a.address}"

    # -- requests --------------------------------------------------------------------------
    def find(self, assoc: Any, model: str, keys: dict[str, str], matches: int,
             status: str) -> None:
        with self.lock:
            who = self._count(assoc, "find")
            self._record("find", who, Outcome(None, None, DONE if status == "ok" else FAILED,
                                              f"C-FIND {model}: {matches} match(es), {status}",
                                              {"requested_by": who, "model": model,
                                               "keys": keys, "matches": matches}))
            if not self.done:
                self.log.flush()

    def sub_operation(self, kind: str, destination: str, outcome: Outcome,
                      requested_by: str) -> None:
        detail = dict(outcome.detail or {})
        detail["requested_by"] = requested_by
        with self.lock:
            self._record(kind, destination, Outcome(outcome.sop_uid, outcome.series_uid,
                                                    outcome.status, outcome.reason, detail))

    def retrieve(self, assoc: Any, kind: str, destination: str, keys: dict[str, str],
                 counts: dict[str, int], status: str) -> None:
        with self.lock:
            who = self._count(assoc, kind)
            failed = counts.get("failed", 0) or status not in ("ok",)
            self._record(kind, destination, Outcome(
                None, None, FAILED if failed else DONE,
                f"C-{kind.upper()} for {who} to {destination}: {status}; "
                + ", ".join(f"{k} {v}" for k, v in counts.items()),
                {"requested_by": who, "keys": keys, **counts, "scope": "request"}))
            if not self.done:
                self.log.flush()

    def _record(self, action: str, target: str, outcome: Outcome) -> None:
        if self.done:
            return
        self.log.record(self.run_id, *STEP, action, target, outcome)

    # -- the end ---------------------------------------------------------------------------
    def close(self, received: int, failed: int, error: str | None = None) -> None:
        """End the run: ``ok``, or ``failed`` with ``error`` (it could not listen)."""
        with self.lock:
            if self.done:
                return
            self.done = True
            try:
                self.log.end_run(self.run_id, error is None,
                                 {"associations": self.associations, "received": received,
                                  "failed": failed}, error=error)
            except sqlite3.Error as exc:
                from ..db import disk_full_message, is_disk_full
                why = disk_full_message(exc) if is_disk_full(exc) else str(exc)
                raise ArchiveError(f"the audit log of this serve run could not be closed: "
                                   f"{why}") from None
            finally:
                self.conn.close()
