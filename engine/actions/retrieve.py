"""The ``retrieve`` action: pull the series a remote selection found into the archive.

Options (from the job): ``method`` (``move``, default, or ``get``), ``port`` (move: where the
job listens, under its calling AE title), ``bind`` (move: the address it listens on, default
0.0.0.0), ``timeout`` (seconds, default 60); the planner adds ``node`` (host, port, AE titles).

Each incoming C-STORE is stored and indexed exactly as ``serve`` stores it (the same receiver
and sink, ``net/qrscu.RetrieveStore``) and attributed to its series through its Move Originator
fields (C-MOVE) or the C-GET it came on.  Resumable: a series with as many local instances as
the node counts is skipped; of a partial one only the missing instances are asked for (an
IMAGE-level C-FIND, then a C-MOVE / C-GET of their UIDs), or the whole series from a node that
takes no UID list (what is here already is then rewritten in place, never duplicated: the index
is keyed by SOP Instance UID).  Outcomes: one per arrived
instance (done; skipped when it was already here), failed ones per instance where the node or
the store names them, otherwise per series; ``summary["series"]`` holds each series' completed,
failed and warning sub-operations.  A dry run touches no network (the C-FINDs were the plan).
"""

from __future__ import annotations

__all__ = ["run", "retrieve_series", "STATUS_MEANINGS"]

import sqlite3
from typing import TYPE_CHECKING, Any

from ..errors import ActionError, ArchiveError, NetworkError
from ..report import DONE, FAILED, SKIPPED, Outcome, StepReport
from ._local import StepRecorder, archive_facts, connect_reader, progress

if TYPE_CHECKING:
    from ..plan import PlannedSeries, PlanStep
    from . import ActionContext

ACTION = "retrieve"
STATUS_MEANINGS = {0x0000: "success", 0xB000: "warning: some sub-operations failed",
                   0xA701: "out of resources (cannot calculate matches)",
                   0xA702: "out of resources (cannot perform sub-operations)",
                   0xA801: "move destination unknown (the node does not know our AE title)",
                   0xA900: "identifier does not match the SOP class",
                   0xC000: "unable to process", 0xFE00: "cancelled"}


def _options(step: "PlanStep") -> tuple[dict[str, Any], str, int | None, str, float]:
    o = step.options or {}
    node = o.get("node")
    if not isinstance(node, dict) or "host" not in node:
        raise ActionError("retrieve: the step has no node (plan it from a job whose select "
                          "names remote: NODE)")
    method = o.get("method", "move")
    if method not in ("move", "get"):
        raise ActionError(f"retrieve: method must be move or get, not {method!r}")
    port = o.get("port")
    if method == "move" and not (isinstance(port, int) and 1 <= port <= 65535):
        raise ActionError("retrieve: method move needs port (1 to 65535), where this job "
                          "listens for the node's C-STOREs")
    timeout = o.get("timeout", 60.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or \
            not 0 < timeout <= 86400:
        raise ActionError(f"retrieve: timeout must be a number of seconds up to 86400, "
                          f"not {timeout!r}")
    return node, method, port, str(o.get("bind") or "0.0.0.0"), float(timeout)


def _local_sops(facts: Any, series: "tuple[PlannedSeries, ...]") -> dict[str, set[str]]:
    """SOP Instance UIDs each planned series has in the index now."""
    im = facts.schema.images
    out: dict[str, set[str]] = {s.series_uid: set() for s in series}
    from ..backends.errors import database_errors, describe
    from ..db import index_exists, index_label
    if not index_exists(facts.database):
        return out
    conn = connect_reader(facts.database)
    try:
        for uid in out:
            out[uid] = {r[0] for r in conn.execute(
                f'SELECT "{im.key}" FROM "{im.name}" WHERE "{im.link}" = ?', (uid,))}
    except database_errors() as exc:
        raise ArchiveError(f"cannot read the index: {describe(exc)}",
                           file=index_label(facts.database)) from None
    finally:
        conn.close()
    return out


def run(step: "PlanStep", ctx: "ActionContext") -> StepReport:
    rec = StepRecorder(step, ctx)
    facts = archive_facts(ctx.archive)
    try:
        node_settings, method, port, bind, timeout = _options(step)
        local = _local_sops(facts, step.series)
    except (ActionError, ArchiveError) as exc:
        return rec.fail_step(exc.message)
    from ..remoteplan import remote_node
    node = remote_node(node_settings, timeout)
    rec.report.summary.update(node=node.target, method=method, series=[])
    todo = []
    for s in step.series:
        have = len(local[s.series_uid])
        if s.remote_instances is not None and have >= s.remote_instances:
            rec.add(Outcome(None, s.series_uid, SKIPPED,
                            f"already here: {have} of {s.remote_instances} instances",
                            {"patient_id": s.patient_id}))
        elif ctx.dry_run:
            rec.add(Outcome(None, s.series_uid, DONE,
                            f"would retrieve by C-{method.upper()} ({have} of "
                            f"{s.remote_instances if s.remote_instances is not None else '?'}"
                            " instances here)", {"patient_id": s.patient_id}))
        else:
            todo.append(s)
    if not todo:
        return rec.finish()
    try:
        _retrieve(step, ctx, rec, node, method, port, bind, todo, local)
    except NetworkError as exc:
        return rec.fail_step(exc.message)
    return rec.finish()


def _retrieve(step: "PlanStep", ctx: "ActionContext", rec: StepRecorder, node: Any,
              method: str, port: int | None, bind: str, todo: list, local: dict) -> None:
    from ..net.qrscu import (RemoteSeries, RetrieveStore, find_instances, get_series,
                             move_series)

    by_uid = {s.series_uid: s for s in todo}
    wanted = [RemoteSeries(s.patient_id, s.study_uid or "", None, s.series_uid, s.modality,
                           s.description, s.remote_instances) for s in todo]
    only: dict[str, set[str]] = {}       # a partial series: only what is missing here
    for s in wanted:
        if local[s.series_uid]:
            only[s.series_uid] = find_instances(node, s) - local[s.series_uid]
    store = RetrieveStore(ctx.archive, node.calling_ae, port or 0, bind, node.timeout)
    hint = (f"; nothing arrived: does the node know {node.calling_ae} (this host, port "
            f"{port}) as a C-MOVE destination?" if method == "move" else "")
    with progress(ctx, len(todo), f"retrieve {node.target}") as advance:
        def on_result(result: Any) -> None:
            _record(rec, by_uid[result.series_uid], result, local[result.series_uid],
                    store.errors, hint)
            advance(1)
        try:
            if method == "move":
                store.start()
                move_series(node, wanted, store, on_result, only)
            else:
                get_series(node, wanted, store, on_result, only)
        finally:
            store.close()
            if store.refusals:
                rec.report.summary["refused"] = list(store.refusals)


def _record(rec: StepRecorder, s: "PlannedSeries", result: Any, before: set[str],
            store_errors: list[str], hint: str = "") -> None:
    base = {"patient_id": s.patient_id}
    stored, failed = 0, set()
    for a in result.arrivals:
        detail = dict(base, path=a.object_file, originator=a.originator) if a.originator \
            else dict(base, path=a.object_file)
        if a.status == 0:
            stored += 1
            if a.sop_uid in before:
                rec.add(Outcome(a.sop_uid, s.series_uid, SKIPPED,
                                "already here (sent again, rewritten in place)", detail))
            else:
                rec.add(Outcome(a.sop_uid, s.series_uid, DONE, "retrieved", detail))
        else:
            failed.add(a.sop_uid)
            why = store_errors[-1] if store_errors else ""
            rec.add(Outcome(a.sop_uid, s.series_uid, FAILED,
                            f"not stored here (0x{a.status:04X}){': ' + why if why else ''}",
                            dict(detail, status=a.status)))
    for uid in result.failed_uids:
        if uid not in failed:
            failed.add(uid)
            rec.add(Outcome(uid, s.series_uid, FAILED,
                            "the node reports this sub-operation failed", dict(base)))
    if result.error is not None:
        rec.add(Outcome(None, s.series_uid, FAILED, result.error, dict(base)))
    elif result.failed > len(failed):
        rec.add(Outcome(None, s.series_uid, FAILED,
                        f"{result.failed - len(failed)} sub-operations failed at the node "
                        "(it named no instances)", dict(base)))
    elif result.status not in (0x0000, 0xB000) and not failed:
        meaning = STATUS_MEANINGS.get(result.status, "failure")
        rec.add(Outcome(None, s.series_uid, FAILED,
                        f"the node answered 0x{result.status:04X} ({meaning})"
                        + (hint if not result.arrivals else ""),
                        dict(base, status=result.status)))
    rec.report.summary["series"].append({
        "series_uid": s.series_uid, "status": result.status, "completed": result.completed,
        "failed": result.failed, "warning": result.warning, "stored": stored,
        "remote_instances": s.remote_instances})


def retrieve_series(archive: Any, node: dict[str, Any], *, method: str = "move",
                    port: int | None = None, bind: str = "127.0.0.1", timeout: float = 60.0,
                    dry_run: bool = False, **keys: Any) -> StepReport:
    """Python API: C-FIND ``node`` (host, port, called_ae, calling_ae) with ``keys`` (patient,
    study, series, modality, study_date), then retrieve what it found, as a one-step job run:
    audited and resumable.  Raises ``NetworkError`` when the node cannot be asked or the whole
    retrieve fails; per-series failures are in the report."""
    import uuid

    from ..audit import AuditLog, now_iso
    from ..plan import Plan
    from ..remoteplan import plan_remote_step
    from . import ActionContext

    sel = remote_selection(node, keys)
    options = {"method": method, "timeout": timeout, "bind": bind,
               **({"port": port} if port is not None else {})}
    step = plan_remote_step(archive, index=1, name=ACTION, action=ACTION, options=options,
                            sel=sel, nodes={sel.remote: node})
    _options(step)                                  # ActionError before anything listens
    plan = Plan("<python>", "", "python-api", str(archive.data_dir), str(archive.database),
                None, (step,), now_iso())
    run_id = uuid.uuid4().hex
    conn = None if dry_run else archive.connect()
    try:
        audit = None
        if conn is not None:
            archive.data_dir.mkdir(parents=True, exist_ok=True)
            audit = AuditLog(conn)
            audit.start_run(run_id, plan.job_path, plan.job_sha256, plan.job_name)
        report = run(step, ActionContext(archive, plan, dry_run=dry_run, audit=audit,
                                         run_id=run_id))
        if audit is not None:
            audit.end_run(run_id, report.ok, {"totals": report.totals(), "error": report.error})
    finally:
        if conn is not None:
            conn.close()
    if report.error:
        raise NetworkError(report.error)
    return report


def remote_selection(node: Any, keys: dict[str, Any]) -> Any:
    """The ``Selection`` of ``Archive.find`` / ``Archive.retrieve`` keys on a node dict."""
    from ..jobs import Selection
    from ..studydate import study_date_problem

    if not isinstance(node, dict) or not {"host", "port", "called_ae"} <= set(node):
        raise ActionError("the node must be a dict with host, port and called_ae "
                          "(and calling_ae)")
    unknown = sorted(set(keys) - {"patient", "study", "series", "modality", "study_date"})
    if unknown:
        raise ActionError(f"unknown key {unknown[0]!r}: use patient, study, series, modality "
                          "or study_date")
    if (problem := study_date_problem(keys.get("study_date"))) is not None:
        raise ActionError(f"study_date {problem}")
    return Selection.from_dict({**keys, "remote": str(node.get("name") or "node")})
