"""The ``send`` action: C-STORE a plan's instances to a DICOM peer, resumably.

Options (from the job; the planner resolves ``node: NAME`` into host/port/called_ae):
``host``, ``port``, ``called_ae``, ``calling_ae`` (default CONQUEST_RUN), ``associations``
(1..8, default 1), ``retries`` (default 2), ``retry_delay`` (seconds, default 1, doubling),
``timeout`` (seconds, default 30), ``verify`` (C-ECHO first, default false), ``deidentify``
(a PS3.15 Annex E profile, as for copy: each file is de-identified into a private temporary
folder, sent from there, and the folder removed; the journal keeps the original SOP UIDs).

The audit log is the journal: instances a peer already confirmed for this target
(``CALLED_AE@host:port``) are skipped ("already sent") unless ``--force``; each outcome is
recorded as the peer answers.  A send never changes or deletes anything in the archive.
"""

from __future__ import annotations

__all__ = ["run", "peer_settings", "send_series"]

import hashlib
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..audit import AUDIT_TABLE, now_iso
from ..errors import ActionError, ArchiveError, NetworkError
from ..net import (MAX_ASSOCIATIONS, DicomTransport, DryTransport, PeerSettings, SendItem,
                   echo, group_associations, read_send_item)
from ..report import DONE, FAILED, SKIPPED, Outcome, StepReport
from ..deid import SecretError, open_export
from ..deid.export import deid_send_item
from ..modify import ModifyError, chain, journal_part, open_modify
from ._local import filesystem, progress

if TYPE_CHECKING:
    from ..plan import PlanStep
    from . import ActionContext

ACTION = "send"


def peer_settings(options: dict[str, Any]) -> PeerSettings:
    """Checked :class:`PeerSettings` from a send step's options (ActionError when unusable)."""
    if "node" in options and "host" not in options:
        raise ActionError(f"send: node {options['node']!r} was not resolved into host and port")

    def number(key: str, default: Any, kind: type, low: float, high: float) -> Any:
        value = options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (kind is int and not isinstance(value, int)) or not low <= value <= high:
            raise ActionError(f"send: {key} must be a{'n integer' if kind is int else ' number'}"
                              f" from {low} to {high}, not {value!r}")
        return kind(value)

    host = options.get("host")
    if not isinstance(host, str) or not host:
        raise ActionError("send: host is required")
    return PeerSettings(
        host=host,
        port=number("port", None, int, 1, 65535),
        called_ae=str(options.get("called_ae") or "ANY-SCP"),
        calling_ae=str(options.get("calling_ae") or "CONQUEST_RUN"),
        associations=number("associations", 1, int, 1, MAX_ASSOCIATIONS),
        retries=number("retries", 2, int, 0, 100),
        retry_delay=number("retry_delay", 1.0, float, 0, 3600),
        timeout=number("timeout", 30.0, float, 0.1, 86400),
    )


def run(step: "PlanStep", ctx: "ActionContext") -> StepReport:
    """A real send holds the (job, target) lock (``locks.py``): a second one at once fails."""
    if ctx.dry_run:
        return _run(step, ctx)
    from contextlib import ExitStack

    from ..locks import run_lock
    with ExitStack() as held:
        try:
            held.enter_context(run_lock(ctx.archive.database, ctx.plan.job_path, step.target,
                                        "send"))
        except ActionError as exc:   # another run holds it, or the lock file cannot be made
            report = StepReport(step.index, step.name, ACTION, step.target, ctx.dry_run,
                                started=now_iso())
            report.error = str(exc)
            report.ended = now_iso()
            return report
        return _run(step, ctx)


def _run(step: "PlanStep", ctx: "ActionContext") -> StepReport:
    report = StepReport(step.index, step.name, ACTION, step.target, ctx.dry_run, started=now_iso())
    try:
        settings = peer_settings(step.options)
    except ActionError as exc:
        report.error = str(exc)
        report.ended = now_iso()
        return report
    target = (journal_target(settings.target, step.options.get("deidentify"))
              + journal_part(step.options))
    report.summary["peer"] = settings.target
    try:
        deid = open_export(step.options, [s.patient_id or "" for s in step.series])
    except SecretError as exc:
        report.error = f"send: {exc}"
        report.ended = now_iso()
        return report
    try:
        writer, modify_summary = chain(deid, open_modify(step.options))
    except ModifyError as exc:
        report.error = f"send: {exc}"
        report.ended = now_iso()
        return report
    scratch = tempfile.TemporaryDirectory(prefix="conquest-run-deid-") if writer else None

    failures = [0]      # for the progress bar's running count
    with progress(ctx, step.instance_count, f"send {target}", lambda: failures[0]) as advance:
        def record(outcome: Outcome) -> None:
            report.outcomes.append(outcome)
            failures[0] += outcome.status == "failed"
            if ctx.audit is not None:
                ctx.audit.record(ctx.run_id, step.index, step.name, ACTION, target, outcome)
            advance(1)

        try:
            if (ctx.echo if ctx.dry_run else step.options.get("verify", False)):
                report.summary["echo_seconds"] = round(echo(settings), 4)
            confirmed = set() if ctx.force else _confirmed(ctx, target)
            items = _items(step, ctx, confirmed, record, writer,
                           Path(scratch.name) if scratch else None)
            batches = group_associations(items, parts=settings.associations)
            report.summary["associations"] = len(batches)
            report.summary["bytes"] = sum(i.size for i in items)
            transport = DryTransport() if ctx.dry_run else DicomTransport(settings)
            transport.send(batches, record)
        except (NetworkError, ArchiveError) as exc:
            report.error = str(exc)
        finally:
            if ctx.audit is not None:
                ctx.audit.flush()
            if scratch is not None:
                scratch.cleanup()
    if deid is not None:
        report.summary.update(deid.summary())
        report.summary["deidentification"] = deid.report.to_dict()["instances"]
        if not ctx.dry_run:
            deid.write_mapping(filesystem(False))
    report.summary.update(modify_summary())
    _in_plan_order(step, report)
    report.summary["warnings"] = sum(1 for o in report.outcomes
                                     if o.status == DONE and "warning" in o.reason)
    report.ended = now_iso()
    return report


def journal_target(peer: str, deidentify: Any) -> str:
    """The audit log's key of what a peer confirmed: a de-identified send delivers other
    instances than a plain one (and than one with other options), so each gets its own key
    (the options' digest; the secret's name, never its value)."""
    if not deidentify:
        return peer
    digest = hashlib.sha256(json.dumps(deidentify, sort_keys=True).encode()).hexdigest()[:12]
    return f"{peer} deidentified:{digest}"


def _confirmed(ctx: "ActionContext", target: str) -> set[str]:
    """What the journal says the peer already has (read-only in a dry run)."""
    if ctx.audit is not None:
        return ctx.audit.confirmed(ACTION, target)
    from ..db import connect_reader     # query_only, and leaves no -wal/-shm behind

    from ..db import index_exists
    database = ctx.plan.database
    if not index_exists(database):
        return set()
    conn = connect_reader(database)
    try:
        from ..db import table_names
        if AUDIT_TABLE.lower() not in table_names(conn):
            return set()
        rows = conn.execute(f"SELECT DISTINCT SOPInstanc FROM {AUDIT_TABLE} WHERE Action = ? "
                            "AND Target = ? AND Status = ? AND SOPInstanc IS NOT NULL",
                            (ACTION, target, DONE))
        return {r[0] for r in rows}
    finally:
        conn.close()


def _items(step: "PlanStep", ctx: "ActionContext", confirmed: set[str],
           record: Any, deid: Any = None, scratch: "Path | None" = None) -> list[SendItem]:
    data_dir = Path(getattr(ctx.archive, "data_dir", None) or ctx.plan.data_dir).resolve()
    items: list[SendItem] = []
    for series in step.series:
        for inst in series.instances:
            if inst.sop_uid in confirmed:
                record(Outcome(inst.sop_uid, series.series_uid, SKIPPED, "already sent"))
                continue
            path = (data_dir / inst.path).resolve()
            if not path.is_relative_to(data_dir):
                record(Outcome(inst.sop_uid, series.series_uid, FAILED,
                               "path outside the data directory", {"path": inst.path}))
                continue
            if deid is not None:
                got = deid_send_item(deid, path, scratch, inst.sop_uid, series.series_uid)
                if isinstance(got, Outcome):
                    got.detail["path"] = inst.path
                    record(got)
                else:
                    items.append(got)
                continue
            got = read_send_item(path, inst.sop_uid, series.series_uid, inst.sop_class,
                                 inst.flags)
            if isinstance(got, Outcome):
                got.detail["path"] = inst.path
                record(got)
            else:
                items.append(got)
    return items


def _in_plan_order(step: "PlanStep", report: StepReport) -> None:
    order = {inst.sop_uid: n for n, inst in
             enumerate(i for s in step.series for i in s.instances)}
    report.outcomes.sort(key=lambda o: order.get(o.sop_uid, len(order)))


def send_series(archive: Any, series_uids: "list[str] | tuple[str, ...] | None", host: str,
                port: int, called_ae: str, *, calling_ae: str = "CONQUEST_RUN",
                associations: int = 1, retries: int = 2, retry_delay: float = 1.0,
                timeout: float = 30.0, verify: bool = False, force: bool = False,
                dry_run: bool = False, deidentify: "dict[str, Any] | None" = None,
                modify: "dict[str, Any] | None" = None) -> StepReport:
    """Python API: send the named series (all when None) to ``called_ae@host:port``.

    The same path as a job's send step, audited and resumable: instances the peer confirmed
    before are skipped unless ``force``.  Raises ``NetworkError`` when the peer cannot be
    reached (nothing is sent); per-instance failures are in the returned report.
    """
    from ._local import api_run

    options = {"host": host, "port": port, "called_ae": called_ae, "calling_ae": calling_ae,
               "associations": associations, "retries": retries, "retry_delay": retry_delay,
               "timeout": timeout, "verify": verify}
    if deidentify is not None:
        options["deidentify"] = dict(deidentify)
    if modify is not None:
        options["modify"] = dict(modify)
    settings = peer_settings(options)               # ActionError before any reading
    return api_run(archive, ACTION, options, None if series_uids is None else list(series_uids),
                   dry_run=dry_run, force=force, target=settings.target, error=NetworkError)
