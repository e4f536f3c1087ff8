"""What the local actions (copy, dump, delete, rebuild) share.

* ``FileSystem`` / ``DryFileSystem``: every file side effect (mkdir, atomic write, verified copy,
  remove) goes through one of these; the dry one walks the same calls and writes nothing.
* ``StepRecorder``: collects a step's outcomes and records each into the audit log as it happens.
* ``inside`` / ``source_path``: paths from the index or the job never leave their root.
* ``progress``: a rich progress bar on a terminal, nothing otherwise.
* ``connect_reader`` (from ``db``): a query-only connection that leaves no ``-wal``/``-shm``.
* ``api_run``: the Python API's one-step plans (``copy_series``, ``delete_series``, ``dump_csv``).
"""

from __future__ import annotations

__all__ = ["FileSystem", "DryFileSystem", "filesystem", "StepRecorder", "inside", "source_path",
           "remove_stale_temp_files", "current_umask",
           "progress", "sha256_file", "archive_facts", "ArchiveFacts", "CHUNK", "safe_component",
           "safe_patient_dir", "plan_series", "api_run", "connect_reader", "os_reason",
           "is_database_file"]

import errno
import hashlib
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator, Sequence

from ..audit import now_iso
from ..db import connect_reader
from ..errors import ActionError
from ..report import Outcome, StepReport
from ..store import safe_component, safe_patient_dir
from ..procs import pid_alive

if TYPE_CHECKING:
    from ..plan import PlannedSeries, PlanStep
    from ..schema import Schema
    from . import ActionContext

CHUNK = 1 << 20  # bytes read at a time when copying or hashing


# -- paths ---------------------------------------------------------------------------------
def inside(root: Path, path: Path) -> bool:
    """Whether ``path`` (fully resolved, symlinks followed) lies strictly below ``root``."""
    root_r = Path(os.path.realpath(root))
    path_r = Path(os.path.realpath(path))
    return path_r != root_r and path_r.is_relative_to(root_r)


def source_path(data_dir: Path, rel: str) -> Path:
    """The file an ``ObjectFile`` names; refuses absolute paths and ``..`` that leave data/."""
    rel_norm = os.path.normpath(rel.replace("\\", "/"))
    if os.path.isabs(rel_norm) or rel_norm == ".." or rel_norm.startswith("../") \
            or rel_norm == ".":
        raise ActionError(f"the index names a file outside the data directory: {rel!r}")
    return data_dir / rel_norm


def is_database_file(path: Path, database: "Path | str") -> bool:
    """Whether ``path`` is the archive's database or one of SQLite's files beside it (never,
    for a PostgreSQL index)."""
    from ..backends import is_postgres_url
    if is_postgres_url(database):
        return False
    target = os.path.realpath(path)
    base = os.path.realpath(database)
    return target in {base, base + "-wal", base + "-shm", base + "-journal"}


def os_reason(exc: OSError) -> str:
    """An OSError as a sentence that names its file: ``Permission denied: out/x.csv``; a full
    disk says so first (``the disk is full: No space left on device: out/x.csv``)."""
    text = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else \
        exc.strerror or str(exc)
    return f"the disk is full: {text}" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else text


def current_umask() -> int:
    """The process umask, read without changing it (``/proc/self/status``; elsewhere the
    set-and-restore of ``os.umask``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_TEMP_MARK = ".tmp"


def _temp_prefix(path: Path) -> str:
    """Temporary files are ``.<name>.<pid>-<random>.tmp``: the pid tells a later run whether
    the process that made one is gone (its file is then stale and removed)."""
    return f".{path.name}.{os.getpid()}-"




def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Remove the temporary files (``.<name>.<pid>-<random>.tmp``) that a killed copy or dump
    left in ``folder``; those of running processes stay."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(".") and name.endswith(_TEMP_MARK)):
            continue
        stem = name[:-len(_TEMP_MARK)]
        dot = stem.rfind(".")
        pid_text = stem[dot + 1:].split("-", 1)[0] if dot > 0 else ""
        if not pid_text.isdigit() or "-" not in stem[dot + 1:]:
            continue
        pid = int(pid_text)
        if pid == os.getpid() or pid_alive(pid) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def _check_folder_path(path: Path) -> None:
    """Refuse (as ``mkdir -p`` would) a folder path where a part already exists as a file."""
    for part in (path, *path.parents):
        if os.path.lexists(part):
            if not part.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"{part} exists and is not a folder")
            return


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


# -- reading the database -----------------------------------------------------------------
# -- the archive ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ArchiveFacts:
    data_dir: Path
    database: "Path | str"        # a SQLite file, or a postgresql:// URL as given
    schema: "Schema"


def archive_facts(archive: Any) -> ArchiveFacts:
    """The data directory, database (path, or URL) and schema of an ``Archive``."""
    from ..backends import is_postgres_url
    database = archive.database
    return ArchiveFacts(Path(archive.data_dir),
                        database if is_postgres_url(database) else Path(database),
                        archive.schema)


# -- file side effects ---------------------------------------------------------------------
class _NullWriter:
    """A write-only sink that keeps only the count of what was written (dry runs)."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: Any) -> int:
        self.written += len(data)
        return len(data)

    def flush(self) -> None:
        pass


class FileSystem:
    """The real file system: the only place the local actions change files.

    Files are written under a temporary name and renamed; they get the mode the umask gives
    (``0o666 & ~umask``, as ``open`` would), not the 0600 of a temporary file, so that an
    import service running as another user can read an export.  The first write into a
    folder removes the temporary files a killed run left there."""

    dry_run = False

    def __init__(self) -> None:
        self.mode = 0o666 & ~current_umask()
        self.cleaned: set[Path] = set()

    def makedirs(self, path: Path) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            _check_folder_path(path)
            raise

    @contextmanager
    def atomic_open(self, path: Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
        """Write to a temporary file beside ``path``; rename over it only when all went well."""
        if path.parent not in self.cleaned:
            remove_stale_temp_files(path.parent)
            self.cleaned.add(path.parent)
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path),
                                       suffix=_TEMP_MARK)
        except OSError as exc:       # name the folder, not the temporary file
            raise type(exc)(exc.errno, exc.strerror, str(path.parent)) from None
        try:
            os.fchmod(fd, self.mode)
            with os.fdopen(fd, mode, **kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def copy_verified(self, src: Path, dst: Path) -> tuple[str, int]:
        """Copy ``src`` to ``dst`` atomically; the written bytes are re-read and must hash the
        same as the bytes read.  Returns (SHA-256, size)."""
        h = hashlib.sha256()
        size = 0
        with open(src, "rb") as fin, self.atomic_open(dst, "w+b") as fout:
            for block in iter(lambda: fin.read(CHUNK), b""):
                h.update(block)
                size += len(block)
                fout.write(block)
            fout.flush()
            fout.seek(0)
            back = hashlib.sha256()
            for block in iter(lambda: fout.read(CHUNK), b""):
                back.update(block)
            digest = h.hexdigest()
            if back.hexdigest() != digest:
                raise OSError(f"the copy of {src} does not read back identical")
        return digest, size

    def remove(self, path: Path) -> None:
        os.unlink(path)


class DryFileSystem(FileSystem):
    """Walks the same calls, reads what the real one reads, changes nothing."""

    dry_run = True

    def makedirs(self, path: Path) -> None:
        _check_folder_path(path)  # what mkdir would refuse, refused here too

    @contextmanager
    def atomic_open(self, path: Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
        yield _NullWriter()  # type: ignore[misc]

    def copy_verified(self, src: Path, dst: Path) -> tuple[str, int]:
        size = os.path.getsize(src)
        return sha256_file(src), size

    def remove(self, path: Path) -> None:
        # what unlink would refuse, refused here too
        if not os.path.lexists(path):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        if os.path.isdir(path) and not os.path.islink(path):
            raise IsADirectoryError(21, "Is a directory", str(path))


def filesystem(dry_run: bool) -> FileSystem:
    return DryFileSystem() if dry_run else FileSystem()


# -- outcomes ------------------------------------------------------------------------------
class StepRecorder:
    """A step's report in the making; each outcome goes to the audit log as it is added."""

    def __init__(self, step: "PlanStep", ctx: "ActionContext") -> None:
        self.step = step
        self.ctx = ctx
        self.report = StepReport(step.index, step.name, step.action, step.target, ctx.dry_run,
                                 started=now_iso())
        self.failures = 0           # failed outcomes so far (shown by the progress bar)

    def add(self, outcome: Outcome, recorded: bool = False) -> Outcome:
        """Add an outcome; ``recorded``: already in the audit log (the delete journal writes
        its outcomes in the transaction that clears its entries)."""
        self.report.outcomes.append(outcome)
        self.failures += outcome.status == "failed"
        if self.ctx.audit is not None and not self.ctx.dry_run and not recorded:
            self.ctx.audit.record(self.ctx.run_id, self.step.index, self.step.name,
                                  self.step.action, self.step.target, outcome)
        return outcome

    def fail_step(self, message: str) -> StepReport:
        self.report.error = message
        return self.finish()

    def finish(self, **summary: Any) -> StepReport:
        self.report.summary.update(summary)
        self.report.ended = now_iso()
        if self.ctx.audit is not None and not self.ctx.dry_run:
            self.ctx.audit.flush()
        return self.report


# -- progress ------------------------------------------------------------------------------
@contextmanager
def progress(ctx: "ActionContext", total: int, label: str,
             recorder: "StepRecorder | Callable[[], int] | None" = None
             ) -> Iterator[Callable[[int], None]]:
    """``advance(n)`` for a progress bar on stderr when ``ctx.progress``; a no-op otherwise.
    The bar shows the rate and, with ``recorder`` (a StepRecorder, or a function giving the
    count), a running count of failed outcomes."""
    if not ctx.progress or total < 2:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn)
    bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                   MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                   TextColumn("{task.fields[failed]}", style="red"),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=True)

    def fields(task_id) -> dict[str, str]:
        speed = bar.tasks[0].speed if bar.tasks else None
        failed = (0 if recorder is None else recorder() if callable(recorder)
                  else recorder.failures)
        return {"rate": f"{speed:.1f}/s" if speed else "",
                "failed": f"{failed} failed" if failed else ""}
    with bar:
        task = bar.add_task(label, total=total, rate="", failed="")

        def advance(n: int = 1) -> None:
            bar.advance(task, n)
            bar.update(task, **fields(task))
        yield advance


# -- the Python API: one-step plans --------------------------------------------------------
def plan_series(archive: Any, series_uids: "Sequence[str] | None",
                level: str = "series") -> "tuple[PlannedSeries, ...]":
    """The named series (all when None) with their instances, in the planner's stable order.

    With ``level="instance"`` the UIDs are SOP Instance UIDs and each series carries only the
    named instances.
    """
    from ..plan import PlannedInstance, PlannedSeries

    facts = archive_facts(archive)
    se, st, im = facts.schema.series, facts.schema.studies, facts.schema.images
    q = _quote_ident
    conn = connect_reader(facts.database)
    try:
        series_pat = facts.schema.patient_column(se.name) or st.link
        sql = (f"SELECT s.{q(se.key)}, coalesce(t.{q(st.link)}, s.{q(series_pat)}), "
               f"s.{q(se.link)}, s.Modality, s.SeriesDesc FROM {q(se.name)} s "
               f"LEFT JOIN {q(st.name)} t ON t.{q(st.key)} = s.{q(se.link)}")
        wanted: set[str] | None = None
        sops: set[str] | None = None
        if level == "instance":
            sops = set(series_uids or ())
            wanted = set()
            uids = list(sops)
            for i in range(0, len(uids), 500):
                chunk = uids[i:i + 500]
                wanted.update(r[0] for r in conn.execute(
                    f"SELECT DISTINCT {q(im.link)} FROM {q(im.name)} WHERE {q(im.key)} IN "
                    f"({', '.join('?' * len(chunk))})", chunk))
        elif series_uids is not None:
            wanted = set(series_uids)
        out = []
        for uid, pid, study, modality, desc in conn.execute(sql).fetchall():   # series only
            if wanted is not None and uid not in wanted:
                continue
            insts = []
            for sop, cls, rel in conn.execute(
                    f"SELECT {q(im.key)}, SOPClassUI, ObjectFile FROM {q(im.name)} "
                    f"WHERE {q(im.link)} = ? ORDER BY {q(im.key)}", (uid,)):
                if sops is not None and sop not in sops:
                    continue
                try:
                    size: int | None = os.path.getsize(source_path(facts.data_dir, rel or ""))
                except (OSError, ActionError):
                    size = None
                insts.append(PlannedInstance(sop, cls, rel or "", size))
            out.append(PlannedSeries(uid, pid, study, modality, desc, tuple(insts)))
    finally:
        conn.close()
    out.sort(key=lambda s: (s.patient_id or "", s.study_uid or "", s.series_uid))
    return tuple(out)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def api_run(archive: Any, action: str, options: dict[str, Any],
            uids: "Sequence[str] | None", *, level: str = "series", query: str | None = None,
            dry_run: bool = False, force: bool = False, target: str = "",
            name: str = "python-api", error: type[ActionError] | type[Any] = ActionError
            ) -> StepReport:
    """Run one action over the named series as a one-step plan, audited like a job run.

    A whole-step failure raises ``error`` (``ActionError``; ``NetworkError`` for send);
    per-instance failures are in the report.  An empty list of UIDs plans nothing.
    """
    import uuid

    from ..audit import AuditLog
    from ..db import connect
    from ..plan import Plan, PlanStep
    from . import ActionContext, get_action

    facts = archive_facts(archive)
    if not dry_run and action in ("delete", "rebuild"):
        from ..removals import finish_at_start
        finish_at_start(archive)        # what an interrupted delete left, before planning
    if level == "series" and (uids is None or len(uids) > 0):
        # the planner's own rules and order, as for a job's ``select: {series: [...]}``
        from ..planner import plan_selection
        select = None if uids is None else {"series": [str(u) for u in uids]}
        series = plan_selection(archive, select, action, options, job_name=name).steps[0].series
    else:  # nothing named, or instances (which a job names through a query)
        series = plan_series(archive, uids or (), level)
    step = PlanStep(1, action, action, dict(options), target or action, action == "delete",
                    level, series, query, None)
    plan = Plan("<python>", "", name, str(facts.data_dir), str(facts.database), None,
                (step,), now_iso())
    run_id = uuid.uuid4().hex
    conn = None
    log = None
    if not dry_run:
        conn = connect(facts.database)
        log = AuditLog(conn)
        from ..runcontext import run_context    # user, host, pid, version: as a CLI run
        log.start_run(run_id, plan.job_path, plan.job_sha256, plan.job_name,
                      **run_context(None))
    try:
        ctx = ActionContext(archive, plan, dry_run=dry_run, force=force, audit=log,
                            run_id=run_id)
        report = get_action(action)(step, ctx)
        if log is not None:
            log.end_run(run_id, report.ok, {"totals": report.totals(), "error": report.error})
    finally:
        if conn is not None:
            conn.close()
    if report.error:
        raise error(report.error)
    return report
