"""Carry out a plan: each step's action in order, audited, stopping at the first failed step.

A real run opens the audit log (``audit.AuditLog`` on a read-write connection), records the run's
start and end, and hands it to the actions, which record their own per-instance outcomes as they
go (so a send's journal is current even if the run is killed).  A dry run opens nothing
read-write and creates no file: the actions walk the same code with ``ctx.dry_run`` set.

``archive_for_job`` and ``indexed`` prepare the archive a job runs on: the job's ``archive:``
with the command line's overrides, indexed first when the database does not exist yet (into a
temporary database for a dry run, so that nothing is written).
"""

from __future__ import annotations

__all__ = ["run_plan", "archive_for_job", "indexed", "job_identity", "NOT_RUN", "RunInterrupted",
           "sigterm_interrupts"]

import os
import signal
import tempfile
import uuid
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

from .audit import CRASHED, INTERRUPTED, AuditLog, now_iso
from .errors import ArchiveError, ConquestRunError
from .plan import Plan, PlanStep
from .report import RunReport, StepReport

NOT_RUN = "not run: an earlier step failed"


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by a signal other than SIGINT (SIGTERM): handled like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While inside, SIGTERM raises ``RunInterrupted`` (in the main thread), so a run that is
    told to stop records that it was interrupted, as for Ctrl-C, before the process exits."""
    owner = os.getpid()

    def on_term(signum: int, frame: object) -> None:
        if os.getpid() != owner:    # a forked send worker: die of it, as it did before
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise RunInterrupted(signum)
    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:       # not the main thread: leave the signal alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back while the run row is closed (a second Ctrl-C must not
    leave it half-written); delivered afterwards."""
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def archive_for_job(job, *, data: str | None = None, database: str | None = None,
                    dicom_sql: str | None = None):
    """The ``Archive`` of a job: command line flags override the job's ``archive:``.

    Relative paths are from the current directory (not the job file's folder).
    """
    from .archive import Archive
    spec = job.archive if job is not None else None
    data = data if data is not None else (spec.data if spec and spec.data else "data")
    database = database if database is not None else (
        spec.database if spec and spec.database else "conquest.db")
    dicom_sql = dicom_sql if dicom_sql is not None else (spec.dicom_sql if spec else None)
    if dicom_sql is not None and not Path(dicom_sql).is_file():
        if job is not None and spec is not None and dicom_sql == spec.dicom_sql:
            raise job.error(f"archive.dicom_sql: {dicom_sql} not found (relative paths are "
                            "from the current directory)", ("archive", "dicom_sql"))
        raise ArchiveError("dicom.sql not found", file=str(dicom_sql))
    return Archive(data, database, dicom_sql)


@contextmanager
def indexed(archive, *, dry_run: bool, notice: Callable[[str], None] = lambda s: None,
            progress: bool = False, rebuilds: bool = False,
            pulls: bool = False) -> Iterator[Any]:
    """The archive to plan on: indexed first when its database does not exist.

    A real run indexes into the archive's own database (with a notice).  A dry run indexes into
    a temporary database that is deleted afterwards, so nothing is written next to the archive.
    ``rebuilds``: the job only rebuilds the index, so it is not indexed first (its own rebuild
    would index everything a second time); the plan is made on an empty index.  ``pulls``: the
    job begins with a retrieve, so an archive that does not exist yet (no data directory, no
    database) is made for it (an empty one; a dry run plans on a temporary one).
    """
    from .archive import Archive
    from .indexer import data_dir_error
    data = Path(archive.data_dir)
    if os.path.lexists(data) and not data.is_dir():
        raise data_dir_error(data)
    if archive.on_postgres:
        with _indexed_on_postgres(archive, dry_run=dry_run, notice=notice, progress=progress,
                                  rebuilds=rebuilds, pulls=pulls) as arc:
            yield arc
        return
    database = Path(archive.database)
    if database.is_dir():
        raise ArchiveError("the database is a folder, not a file", file=str(database))
    if database.is_file():
        if not dry_run:
            archive.recover()          # what a killed writer left, before planning on it
        yield archive
        return
    if not data.is_dir() and pulls:
        if not dry_run:
            notice(f"the archive does not exist yet: making {archive.data_dir} and "
                   f"{archive.database} for the retrieve")
            data.mkdir(parents=True)
            archive.connect().close()
            yield archive
            return
        notice(f"the archive does not exist yet: a real run makes {archive.data_dir} and "
               f"{archive.database} for the retrieve; this dry run plans on a temporary, "
               "empty one (nothing is written)")
        with tempfile.TemporaryDirectory(prefix="conquest-run-dry-") as tmp:
            (Path(tmp) / "data").mkdir()
            temp = Archive(Path(tmp) / "data", Path(tmp) / "conquest.db", archive.dicom_sql)
            temp.connect().close()
            yield temp
        return
    if not data.is_dir():
        raise ArchiveError("neither the database nor the data directory exists",
                           file=str(archive.database))
    if rebuilds:
        notice(f"{archive.database} does not exist: the job's rebuild creates it"
               + (" (in this dry run, a temporary one)" if dry_run else ""))
    if not dry_run:
        if rebuilds:
            archive.connect().close()       # an empty index with the schema: the job fills it
        else:
            notice(f"{archive.database} does not exist: indexing {archive.data_dir} first")
            archive.rebuild(progress=progress)
        yield archive
        return
    if not rebuilds:
        notice(f"the index {archive.database} does not exist: a real run would index "
               f"{archive.data_dir} into it first; this dry run indexes it into a temporary "
               "database for this dry run instead, deleted afterwards (nothing is written "
               "beside the archive)")
    with tempfile.TemporaryDirectory(prefix="conquest-run-dry-") as tmp:
        temp = Archive(archive.data_dir, Path(tmp) / "conquest.db", archive.dicom_sql)
        if rebuilds:
            temp.connect().close()
        else:
            temp.rebuild(progress=progress)
        yield temp


@contextmanager
def _indexed_on_postgres(archive, *, dry_run: bool, notice: Callable[[str], None],
                         progress: bool, rebuilds: bool, pulls: bool) -> Iterator[Any]:
    """``indexed`` on a PostgreSQL index: a database without Conquest's tables is what a
    missing SQLite file is; a dry run never writes to the server, so it refuses one."""
    from .db import index_exists, index_label
    from .indexer import data_dir_error
    data, shown = Path(archive.data_dir), index_label(archive.database)
    if index_exists(archive.database, archive.schema):
        if not dry_run:
            archive.recover()
        yield archive
        return
    if dry_run:
        first = ("its rebuild fills it" if rebuilds else "it makes the tables for the retrieve"
                 if pulls else f"it indexes {archive.data_dir} first")
        raise ArchiveError(f"the PostgreSQL database {shown} has no Conquest tables yet and a "
                           f"dry run writes nothing to the server: run the job for real ({first}) "
                           "or conquest-run rebuild --database URL, then plan again")
    if pulls and not data.is_dir():
        notice(f"the archive does not exist yet: making {archive.data_dir} and the tables in "
               f"{shown} for the retrieve")
        data.mkdir(parents=True)
    if not data.is_dir():
        raise data_dir_error(data)
    if rebuilds or pulls:
        archive.connect().close()            # the tables, empty: the job fills them
    else:
        notice(f"{shown} has no Conquest tables yet: indexing {archive.data_dir} first")
        archive.rebuild(progress=progress)
    yield archive


def _replanned(step: PlanStep, archive, dry_run: bool) -> tuple[StepReport | None, PlanStep]:
    """The step planned on the index as a retrieve left it; a report when that fails."""
    from .planner import replan_step
    try:
        return None, replan_step(archive, step)
    except ConquestRunError as exc:
        return StepReport(step.index, step.name, step.action, step.target, dry_run,
                          started=now_iso(), ended=now_iso(),
                          error=f"planning it again after the retrieve failed: {exc}"), step


def _not_run(step: PlanStep, dry_run: bool, why: str = NOT_RUN) -> StepReport:
    return StepReport(step.index, step.name, step.action, step.target, dry_run, error=why,
                      summary={"not_run": True})


def _run_step(step: PlanStep, ctx) -> StepReport:
    from .actions import get_action
    try:
        action = get_action(step.action)
    except KeyError:
        return _not_run(step, ctx.dry_run, f"unknown action {step.action!r}")
    except ImportError as exc:
        return _not_run(step, ctx.dry_run,
                        f"the {step.action} action is not available in this installation "
                        f"({exc})")
    started = now_iso()
    try:
        report = action(step, ctx)
    except ConquestRunError as exc:
        report = StepReport(step.index, step.name, step.action, step.target, ctx.dry_run,
                            started=started, ended=now_iso(), error=str(exc))
    except Exception as exc:  # a bug in an action must not lose the audit of the others
        report = StepReport(step.index, step.name, step.action, step.target, ctx.dry_run,
                            started=started, ended=now_iso(),
                            error=f"internal error in the {step.action} action: "
                                  f"{type(exc).__name__}: {exc}")
    if report is None:
        report = StepReport(step.index, step.name, step.action, step.target, ctx.dry_run,
                            started=started, ended=now_iso(),
                            error=f"the {step.action} action returned no report")
    return report


def run_plan(plan: Plan, archive, *, dry_run: bool, force: bool = False, echo: bool = False,
             progress: bool = False, run_id: str | None = None,
             variables: dict[str, Any] | None = None) -> RunReport:
    """Execute (or, with ``dry_run``, walk) every step of ``plan``; the run's report.

    The run row ends ``ok`` or ``failed``; ``interrupted`` (with the signal) when a
    ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM under ``sigterm_interrupts``) stops it, which is
    then re-raised; ``crashed`` (with the error) when anything else escapes.
    """
    from .actions import ActionContext
    from .deid import check_plan_secrets
    from .runcontext import run_context
    check_plan_secrets(plan)    # a de-identifying step's secret, before anything is exported
    run_id = run_id or uuid.uuid4().hex
    from .errorlog import log_step, mark_run
    mark_run(run_id, plan.job_path)     # the error log's lines carry this run id from here
    report = RunReport(run_id, plan.job_path, plan.job_sha256, dry_run, started=now_iso())
    conn = None
    audit = None
    if not dry_run:
        conn = archive.connect()
        if archive.on_postgres:       # one run of a job at a time (a session advisory lock)
            from .backends.pglocks import job_lock
            try:
                job_lock(conn, job_identity(plan), run_id, plan.job_path)
            except BaseException:
                conn.close()
                raise
        archive.recover(conn)          # what a killed writer left (once: indexed() did it)
        audit = AuditLog(conn)
        audit.know(plan)
        if variables is None:
            variables = getattr(plan, "variables", None)
        audit.start_run(run_id, plan.job_path, plan.job_sha256, plan.job_name,
                        **run_context(plan.job_path, variables))
    ending: dict[str, Any] = {}
    current: PlanStep | None = None
    try:
        ctx = ActionContext(archive=archive, plan=plan, dry_run=dry_run, force=force, echo=echo,
                            audit=audit, run_id=run_id, progress=progress)
        failed = False
        retrieved = False       # local steps after a real retrieve are planned again
        for step in plan.steps:
            if failed:
                report.steps.append(_not_run(step, dry_run))
                continue
            current = step
            if retrieved and step.remote is None and step.select is not None:
                step_report, step = _replanned(step, archive, dry_run)
                if step_report is not None:
                    report.steps.append(step_report)
                    failed = True
                    continue
                if audit is not None:
                    audit.know(replace(plan, steps=(step,)))
            retrieved = retrieved or (step.action == "retrieve" and not dry_run)
            step_report = _run_step(step, ctx)
            current = None
            report.steps.append(step_report)
            log_step(step_report)       # its errors and failed outcomes, to the error log
            if audit is not None and step_report.error:
                audit.record_step_error(run_id, step.index, step.name, step.action, step.target,
                                        step_report.error)
            failed = not step_report.ok
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        ending = {"state": INTERRUPTED, "signal": signal.Signals(signum).name,
                  "error": f"interrupted by {signal.Signals(signum).name}"
                           + (f" during step {current.index} ({current.name})"
                              if current is not None else "")}
        raise
    except BaseException as exc:
        ending = {"state": CRASHED, "error": f"{type(exc).__name__}: {exc}"}
        raise
    finally:
        report.ended = now_iso()
        if audit is not None and conn is not None:
            with _signals_held(), closing(conn):
                audit.end_run(run_id, report.ok and not ending, _summary(report), **ending)
    return report


def job_identity(plan: Plan) -> str:
    """What makes two runs the same job for the PostgreSQL run lock: the job file's resolved
    path (symlinks followed) when it exists, else the job's name (a saved plan whose file has
    gone, the Python API)."""
    path = plan.job_path
    if path and not path.startswith("<") and os.path.isfile(path):
        return "path:" + os.path.realpath(path)
    return "name:" + (plan.job_name or path or "")


def _summary(report: RunReport) -> dict[str, Any]:
    return {"steps": [{"index": s.index, "name": s.name, "action": s.action, "target": s.target,
                       "totals": s.totals(), "error": s.error} for s in report.steps]}
