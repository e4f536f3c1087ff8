"""A job's selections -> the exact ``Plan`` (see ``plan.py``), read-only.

Per step, the selection (``query`` and/or ``patient``/``study``/``series``/``modality``, ANDed;
values always SQL parameters) is resolved to the series and instances it names: SOP UID, SOP
class, ObjectFile and size on disk, in a stable order (patient, study, series UID; instances by
SOP UID).  The database is only read, through a connection that leaves no file behind, and the
job's own SQL runs under ``sqlcheck``'s authorizer.

Saved plans (``--plan-out``, ``--apply``) are ``savedplan.py``'s.
"""

from __future__ import annotations

__all__ = ["build_plan", "plan_selection", "plan_step", "step_target", "resolve_options",
           "replan_step"]

import os
import sqlite3
from contextlib import closing, contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from .backends.errors import database_errors, describe
from .db import (connect_reader, index_absolute, index_exists, index_label, is_postgres,
                 stream_rows)
from .errors import ArchiveError, JobError
from .fileflags import flag_tokens
from .plan import Plan, PlannedInstance, PlannedSeries, PlanStep
from .sqlcheck import CheckedQuery, QueryLimits, check_query, query_column, schema_of

_MODALITY, _SERIES_DESC, _SOP_CLASS = 0x00080060, 0x0008103E, 0x00080016
_STUDY_DATE = 0x00080020
_CHUNK = 500
_BULK = 200          # more series than this: read the images table in one pass


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _column(schema, table: str, tag: int, default: str) -> str:
    for c in schema.tables[table].columns:
        if c.tag == tag:
            return c.name
    return default


def _reader(archive):
    """A read-only connection that leaves no -wal/-shm files behind (for dry runs)."""
    return connect_reader(archive.database)


@contextmanager
def _reading(archive) -> Iterator[sqlite3.Connection]:
    """A reader on the archive's index; SQLite failures become a plain ArchiveError."""
    try:
        with closing(_reader(archive)) as conn:
            yield conn
    except database_errors() as exc:
        raise ArchiveError(f"cannot read the index: {describe(exc)} (is it a Conquest database "
                           "made from this dicom.sql?)", file=index_label(archive.database)
                           ) from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- options and targets ------------------------------------------------------------------------
def resolve_options(action: str, options: dict[str, Any],
                    nodes: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The options an action receives: a send's ``node: NAME`` filled in from ``nodes:``."""
    options = dict(options or {})
    if action == "send" and options.get("node") is not None:
        node = (nodes or {}).get(options["node"])
        if node is None:
            raise JobError(f"send.node {options['node']!r} is not declared under nodes:")
        for key in ("host", "port", "called_ae", "calling_ae"):
            if key in node and key not in options:
                options[key] = node[key]
    return options


def step_target(action: str, options: dict[str, Any], archive) -> str:
    """The human-readable target of a step (the send target is the journal key)."""
    if action == "copy":
        return str(options.get("destination", ""))
    if action == "dump":
        target = str(options.get("file", ""))
        return f"{target} (table {options['table']})" if options.get("table") else target
    if action == "delete":
        where = index_label(archive.database)
        if options.get("files") == "quarantine":
            return f"{where}, files to {archive.data_dir}/.quarantine"
        return f"{where} and the files in {archive.data_dir}" if options.get("files") is True \
            else f"{where} (files kept)"
    if action == "rebuild":
        return f"{index_label(archive.database)} from {archive.data_dir}"
    if action == "send":
        return f"{options.get('called_ae', '')}@{options.get('host', '')}:{options.get('port', '')}"
    if action == "retrieve":
        node = options.get("node") or {}
        return f"{archive.database} from {node.get('called_ae', '')}@{node.get('host', '')}:" \
               f"{node.get('port', '')}"
    return action


def _flags_join(conn, image_key: str) -> tuple[str, str]:
    """The select expression and join that read ``RTExtras.Flags`` (the index's findings about
    a file: ``syntax-mismatch``, ``no-pixel-data``, ...); NULL where the column is missing."""
    from .schema import EXTRAS_TABLE

    from .db import column_names
    columns = {c.lower() for c in column_names(conn, EXTRAS_TABLE)}
    if "flags" not in columns or "sopinstanc" not in columns:
        return "NULL", ""
    return "x.crun_flags", (f"LEFT JOIN (SELECT SOPInstanc AS crun_sop, max(Flags) AS crun_flags "
                            f"FROM {_q(EXTRAS_TABLE)} GROUP BY SOPInstanc) x "
                            f"ON x.crun_sop = {_q(image_key)}")


# -- resolving a selection ------------------------------------------------------------------------
class _Resolver:
    """Series and instances of one archive, read through one connection."""

    def __init__(self, archive, conn) -> None:
        self.archive = archive
        self.conn = conn
        schema = archive.schema
        self.se, self.st, self.im = schema.series, schema.studies, schema.images
        self.series_pat = schema.patient_column(self.se.name)
        self.modality = _column(schema, self.se.name, _MODALITY, "Modality")
        self.desc = _column(schema, self.se.name, _SERIES_DESC, "SeriesDesc")
        self.sop_class = _column(schema, self.im.name, _SOP_CLASS, "SOPClassUI")
        self.data_root = os.fspath(archive.data_dir)
        self.flags_join = _flags_join(conn, self.im.key)    # RTExtras.Flags, when indexed

    def patient_expr(self) -> str:
        study_pat = f"t.{_q(self.st.link)}"
        if self.series_pat:
            return f"coalesce({study_pat}, s.{_q(self.series_pat)})"
        return study_pat

    def series_rows(self, *, patient: Iterable[str] = (), study: Iterable[str] = (),
                    series: Iterable[str] = (), modality: Iterable[str] = (),
                    study_date: Any = None) -> list[tuple]:
        se, st = self.se, self.st
        where, params = [], []
        if study_date is not None:      # a studydate.DateRange over Conquest's YYYYMMDD text
            date = _column(self.archive.schema, st.name, _STUDY_DATE, "")
            if not date:
                raise ArchiveError(f"select.study_date: the study table {st.name} of this "
                                   "dicom.sql has no StudyDate column")
            for bound, op in ((study_date.low, ">="), (study_date.high, "<=")):
                if bound is not None:
                    where.append(f"substr(replace(t.{_q(date)}, '.', ''), 1, 8) {op} ?")
                    params.append(bound)
        for expr, values in ((self.patient_expr(), patient), (f"s.{_q(se.link)}", study),
                             (f"s.{_q(se.key)}", series), (f"s.{_q(self.modality)}", modality)):
            values = list(values)
            if values:
                where.append(f"{expr} IN ({', '.join('?' * len(values))})")
                params += values
        sql = (f"SELECT s.{_q(se.key)}, {self.patient_expr()}, s.{_q(se.link)}, "
               f"s.{_q(self.modality)}, s.{_q(self.desc)} FROM {_q(se.name)} s "
               f"LEFT JOIN {_q(st.name)} t ON t.{_q(st.key)} = s.{_q(se.link)}")
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self.conn.execute(sql, params).fetchall()

    def size_of(self, object_file: str | None) -> int | None:
        """Bytes on disk; None for a missing file or a path that leaves the data directory.

        The check here is lexical (absolute paths and '..' refused), which is enough for a size;
        the actions resolve every path fully before they read or remove it.
        """
        if not object_file:
            return None
        rel = os.path.normpath(object_file)
        if os.path.isabs(rel) or rel == ".." or rel.startswith(".." + os.sep) or \
                (len(rel) > 1 and rel[1] == ":"):
            return None
        try:
            return os.stat(os.path.join(self.data_root, rel)).st_size
        except OSError:
            return None

    def mtime_of(self, object_file: str | None) -> int | None:
        """st_mtime_ns of the file (None where ``size_of`` is None); ``--apply`` re-checks it."""
        if self.size_of(object_file) is None:
            return None
        try:
            return os.stat(os.path.join(self.data_root, os.path.normpath(object_file or ""))
                           ).st_mtime_ns
        except OSError:
            return None

    def all_instances(self, series: set[str]) -> dict[str, list[tuple]]:
        """Instance rows of many series in one pass over the images table."""
        im = self.im
        out: dict[str, list[tuple]] = {}
        for link, sop, cls, rel, flags in stream_rows(
                self.conn,
                f"SELECT {_q(im.link)}, {_q(im.key)}, {_q(self.sop_class)}, ObjectFile, "
                f"{self.flags_join[0]} FROM {_q(im.name)} {self.flags_join[1]} "
                f"ORDER BY {_q(im.key)}"):
            if link in series:
                out.setdefault(link, []).append((sop, cls, rel, flags))
        return out

    def instances(self, series_uid: str, sops: set[str] | None = None,
                  rows: list[tuple] | None = None) -> tuple[PlannedInstance, ...]:
        im = self.im
        if rows is None:
            rows = self.conn.execute(
                f"SELECT {_q(im.key)}, {_q(self.sop_class)}, ObjectFile, {self.flags_join[0]} "
                f"FROM {_q(im.name)} {self.flags_join[1]} "
                f"WHERE {_q(im.link)} = ? ORDER BY {_q(im.key)}", (series_uid,)).fetchall()
        out = []
        for sop, cls, rel, flags in rows:
            if sops is not None and sop not in sops:
                continue
            rel = (rel or "").replace("\\", "/")
            out.append(PlannedInstance(sop, cls, rel, self.size_of(rel),
                                       flag_tokens(flags),
                                       self.mtime_of(rel)))
        return tuple(out)

    def current_sops(self, series_uid: str) -> set[str]:
        return set(self.current_files(series_uid))

    def current_files(self, series_uid: str) -> dict[str, str]:
        """SOP instance UID -> ObjectFile ('/' separated) of a series, as indexed now."""
        im = self.im
        return {r[0]: (r[1] or "").replace("\\", "/") for r in self.conn.execute(
            f"SELECT {_q(im.key)}, ObjectFile FROM {_q(im.name)} WHERE {_q(im.link)} = ?",
            (series_uid,))}

    def series_of_sops(self, sops: set[str]) -> set[str]:
        im = self.im
        out: set[str] = set()
        uids = sorted(sops)
        for i in range(0, len(uids), _CHUNK):
            chunk = uids[i:i + _CHUNK]
            out.update(r[0] for r in self.conn.execute(
                f"SELECT DISTINCT {_q(im.link)} FROM {_q(im.name)} WHERE {_q(im.key)} IN "
                f"({', '.join('?' * len(chunk))})", chunk))
        return out

    def resolve(self, *, checked: CheckedQuery | None, uids: set[str] | None,
                patient: Iterable[str] = (), study: Iterable[str] = (),
                series: Iterable[str] = (), modality: Iterable[str] = (),
                study_date: Any = None) -> tuple[PlannedSeries, ...]:
        level = checked.level if checked is not None else "series"
        sops = uids if (checked is not None and level == "instance") else None
        wanted = uids if (checked is not None and level == "series") else None
        if sops is not None:
            wanted = self.series_of_sops(sops)
        rows = [r for r in self.series_rows(patient=patient, study=study, series=series,
                                            modality=modality, study_date=study_date)
                if wanted is None or r[0] in wanted]
        bulk = self.all_instances({r[0] for r in rows}) if len(rows) > _BULK else None
        out = []
        for uid, pid, study_uid, mod, desc in rows:
            insts = self.instances(uid, sops, None if bulk is None else bulk.get(uid, []))
            if sops is not None and not insts:
                continue
            out.append(PlannedSeries(uid, pid, study_uid, mod, desc, insts))
        out.sort(key=lambda s: (s.patient_id or "", s.study_uid or "", s.series_uid))
        return tuple(out)


def _query_uids(archive, checked: CheckedQuery, *, file: str | None, line: int | None,
                col: int | None, limits: QueryLimits = QueryLimits(),
                params: Any = ()) -> set[str]:
    with closing(_reader(archive)) as conn:
        if is_postgres(conn):
            from .backends.pgquery import selection_values
            return selection_values(conn, checked, file=file, line=line, col=col,
                                    params=params)
        return query_column(conn, checked, limits=limits, file=file, line=line, col=col,
                            params=params)


def _needs_series(action: str, options: dict[str, Any]) -> bool:
    return not (action == "rebuild" or (action == "dump" and options.get("table")))


def plan_step(archive, conn, *, index: int, name: str, action: str, options: dict[str, Any],
              select: dict[str, Any] | None, checked: CheckedQuery | None = None,
              line: int | None = None, file: str | None = None,
              query_line: int | None = None, query_col: int | None = None,
              limits: QueryLimits = QueryLimits(),
              nodes: dict[str, dict[str, Any]] | None = None, params: Any = ()) -> PlanStep:
    """One ``PlanStep`` from a selection (``select`` as in a job file) on an open connection;
    a remote selection (``select.remote``) is a C-FIND of that node (``remoteplan.py``);
    ``params``: the values of the query's ``:name`` parameters (job variables)."""
    from .jobs import Selection
    from .studydate import parse_study_date
    sel = Selection.from_dict(select) if select else Selection()
    if sel.remote is not None:
        from .remoteplan import plan_remote_step
        return plan_remote_step(archive, index=index, name=name, action=action,
                                options=options, sel=sel, nodes=nodes or {}, line=line,
                                file=file)
    try:
        dates = parse_study_date(sel.study_date) if sel.study_date is not None else None
    except ValueError as exc:
        raise JobError(f"select.study_date: {exc}", file=file, line=line) from None
    if sel.query is not None and checked is None:
        checked = check_query(sel.query, schema_of(archive), file=file, line=query_line or 1,
                              col=query_col or 1)
    resolver = _Resolver(archive, conn)
    if sel.empty and not _needs_series(action, options):
        series: tuple[PlannedSeries, ...] = ()
    else:
        uids = (_query_uids(archive, checked, file=file, line=query_line, col=query_col,
                            limits=limits, params=params) if checked is not None else None)
        series = resolver.resolve(checked=checked, uids=uids, patient=sel.patient,
                                  study=sel.study, series=sel.series, modality=sel.modality,
                                  study_date=dates)
    roi_options: dict[str, Any] = {}
    if sel.roi:                         # RTSTRUCT series by ROI name (engine/roiselect.py)
        from .roiselect import filter_by_roi
        series, roi_options = filter_by_roi(resolver, series, sel.roi, sel.with_referenced)
    level = checked.level if checked is not None else "series"
    options = dict(options, **roi_options)
    if action == "rebuild" and not sel.empty:
        # The patients a rebuild with a selection re-indexes: those it names (indexed or not
        # yet) and those of the series it found.  An empty list means nothing to do, never
        # "the whole archive".
        options["patients"] = sorted({str(p) for p in sel.patient}
                                     | {s.patient_id for s in series if s.patient_id})
    return PlanStep(index, name, action, options, step_target(action, options, archive),
                    action == "delete", level, series, sel.query, line,
                    select or None)


def _absolute(path: Any) -> str:
    return str(Path(path).absolute())


def build_plan(job, archive, *, schema=None, named=None,
               limits: QueryLimits = QueryLimits()) -> Plan:
    """The plan of a validated ``Job`` over ``archive`` (read-only; SQL checked again).

    ``named``: the archive the plan names (targets, paths) when ``archive`` is a stand-in, e.g.
    the temporary index of a dry run on an archive without a database yet.
    """
    from .jobs import check_step_query
    from .jobvars import bound_params
    schema = schema if schema is not None else schema_of(archive)   # + user tables
    named = named if named is not None else archive
    if not index_exists(archive.database):
        raise ArchiveError("database not found (index the archive first: conquest-run rebuild)",
                           file=index_label(archive.database))
    steps = []
    with _reading(archive) as conn:
        for step in job.steps:
            checked = check_step_query(job, step, schema)
            options = resolve_options(step.action, step.options, job.nodes)
            qpos = job.locate(step.path + ("select", "query"))
            planned = plan_step(
                archive, conn, index=step.index, name=step.name, action=step.action,
                options=options, select=step.select.to_dict() if step.select else None,
                checked=checked, line=step.line, file=job.path, query_line=qpos.line,
                query_col=qpos.column, limits=limits, nodes=job.nodes,
                params=bound_params(job.variables, step.select.query if step.select else None))
            if named is not archive:
                planned = replace(planned, target=step_target(step.action, planned.options,
                                                              named))
            _refuse_use_after_delete(job, step, planned, steps)
            steps.append(planned)
    return Plan(job.path, job.sha256, job.name, _absolute(named.data_dir),
                index_absolute(named.database),
                None if getattr(named, "dicom_sql", None) is None else _absolute(named.dicom_sql),
                tuple(steps), _now(), variables=dict(job.variables))


def _refuse_use_after_delete(job, step, planned: PlanStep, earlier: list[PlanStep]) -> None:
    """A step that acts on instances an earlier delete step removes would fail (files gone) or
    act on rows that are no longer there: refuse the job, located at the later step."""
    if planned.action == "rebuild" or not planned.series:
        return
    mine = {i.sop_uid for s in planned.series for i in s.instances}
    for before in earlier:
        if before.action != "delete":
            continue
        gone = mine & {i.sop_uid for s in before.series for i in s.instances}
        if gone:
            raise job.error(f"step {planned.index} ({planned.name}) would {planned.action} "
                            f"{len(gone)} instance{'s' if len(gone) != 1 else ''} that step "
                            f"{before.index} ({before.name}) deletes first; put it before the "
                            f"delete or narrow its select", step.path or ("action",))


def replan_step(archive, step: PlanStep) -> PlanStep:
    """A local step planned again on the index as it is now (after a retrieve brought series
    in): the same selection, action and options; its query checked again."""
    if step.remote is not None or step.select is None:
        return step
    with _reading(archive) as conn:
        planned = plan_step(archive, conn, index=step.index, name=step.name,
                            action=step.action, options=step.options, select=step.select,
                            line=step.line)
    return replace(planned, target=step.target)


def plan_selection(archive, select: dict[str, Any] | None, action: str,
                   options: dict[str, Any] | None = None, *, name: str | None = None,
                   job_name: str = "python-api") -> Plan:
    """A one-step plan for the Python API (``Archive`` methods): same rules as a job step."""
    options = dict(options or {})
    with _reading(archive) as conn:
        step = plan_step(archive, conn, index=1, name=name or action, action=action,
                         options=options, select=select)
    return Plan(job_name, "", job_name, _absolute(archive.data_dir),
                index_absolute(archive.database),
                None if getattr(archive, "dicom_sql", None) is None else _absolute(archive.dicom_sql),
                (step,), _now())
