"""Job files: YAML -> JSON Schema -> references -> SQL, every error located ``file:line:col``.

``load_job(path)`` reads and checks a job without any database (YAML, the schema in
``schemas/job.schema.json``, references such as AE titles, hosts, node names and
``delete: {files: true}``).  ``check_job_sql(job, schema)`` checks each ``select.query`` with
``sqlcheck`` against the tables of a dicom.sql.  ``validate_job`` does both.  Every stage reports
all its errors at once (``JobErrors``), sorted by position.
"""

from __future__ import annotations

__all__ = ["Job", "Step", "Selection", "ArchiveSpec", "JobErrors", "load_job", "parse_job",
           "validate_job", "check_job_sql", "check_step_query", "job_schema", "job_from_source",
           "SELECT_KEYS", "AE_TITLE_MAX"]

import difflib
import ipaddress
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConquestRunError, JobError
from .jobschema import (_ACTIONS, SELECT_KEYS, _dotted, _get, _Humanizer,  # noqa: F401
                        _kind, _schema_errors, job_schema)
from .net import AE_TITLE_MAX, ae_title_problem
from .source import PathKey, Position, Source, load_source, parse_source

_SINGLE_KEYS = ("study_date", "remote")     # one string each, not a list
_TRUE_TEXTS = ("true", "True", "TRUE")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


# -- the result ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Selection:
    """What a step selects; the keys narrow each other (AND), the values of one key are ORed."""

    query: str | None = None
    patient: tuple[str, ...] = ()
    study: tuple[str, ...] = ()
    series: tuple[str, ...] = ()
    modality: tuple[str, ...] = ()
    study_date: str | None = None       # YYYYMMDD, or a range (studydate.py)
    remote: str | None = None           # a node name: C-FIND there instead of the local index
    roi: tuple[str, ...] = ()           # ROI name globs of RTSTRUCT series (roiselect.py)
    with_referenced: bool = False       # with roi: also the plans, doses and images they go with

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Selection":
        d = d or {}

        def many(v: Any) -> tuple[str, ...]:
            if v is None:
                return ()
            return (v,) if isinstance(v, str) else tuple(v)
        return cls(d.get("query"), many(d.get("patient")), many(d.get("study")),
                   many(d.get("series")), many(d.get("modality")), d.get("study_date"),
                   d.get("remote"), many(d.get("roi")), d.get("with_referenced") is True)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.query is not None:
            out["query"] = self.query
        for k in SELECT_KEYS[1:]:
            if getattr(self, k):
                out[k] = getattr(self, k) if k in _SINGLE_KEYS else list(getattr(self, k))
        if self.with_referenced:
            out["with_referenced"] = True
        return out

    @property
    def empty(self) -> bool:
        return not self.to_dict()


@dataclass(frozen=True)
class Step:
    index: int                      # 1-based
    name: str
    action: str
    options: dict[str, Any]
    select: Selection | None
    line: int | None = None         # where the step (or the job's action) is written
    path: PathKey = ()              # JSON path of the step in the job file ('steps', i) or ()


@dataclass(frozen=True)
class ArchiveSpec:
    """The job's ``archive:`` as written (None: not given)."""

    data: str | None = None
    database: str | None = None
    dicom_sql: str | None = None


@dataclass(frozen=True)
class Job:
    path: str
    sha256: str
    name: str
    description: str
    archive: ArchiveSpec
    nodes: dict[str, dict[str, Any]]
    steps: tuple[Step, ...]
    version: int = 1
    source: Source | None = field(default=None, compare=False, repr=False)
    variables: dict[str, Any] = field(default_factory=dict)     # the values used (jobvars)
    var_specs: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    project: Any = field(default=None, compare=False, repr=False)  # project.Project or None

    def locate(self, path: PathKey, *, key: bool = False) -> Position:
        if self.source is None:
            return Position(1, 1, 0)
        return self.source.key_at(path) if key else self.source.value_at(path)

    def error(self, message: str, path: PathKey, *, key: bool = False) -> JobError:
        pos = self.locate(path, key=key)
        return JobError(message, file=self.path, line=pos.line, column=pos.column)


class JobErrors(JobError):
    """Several located errors of one job, reported together (one per line)."""

    def __init__(self, errors: list[ConquestRunError]) -> None:
        self.errors = sorted(errors, key=lambda e: (e.file or "", e.line or 0, e.column or 0))
        super().__init__("\n".join(str(e) for e in self.errors))

    def __str__(self) -> str:  # no location of its own: each line carries one
        return self.message


# -- references (the schema's own checks: jobschema.py) ---------------------------------------------
def _ae_problem(value: str) -> str | None:
    return ae_title_problem(value)


def _host_problem(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    if _HOSTNAME.match(value) and not value.replace(".", "").isdigit():
        return None
    return "is not a host name or IP address"


def _path_problem(value: str) -> str | None:
    if "\x00" in value:
        return "contains a NUL character"
    if any(ord(c) < 32 for c in value):
        return "contains a control character"
    return None


def _template_problem(value: str) -> str | None:
    try:
        fields = list(string.Formatter().parse(value))
    except ValueError as exc:
        return f"is not a valid template: {exc}"
    for _, name, spec, conv in fields:
        if name is None:
            continue
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            return f"has the field {{{name}}}: fields must be plain column names"
        if conv:
            return f"has a conversion (!{conv}) in {{{name}}}: not allowed"
        if spec and not re.fullmatch(r"[<>^=]?[0-9]*", spec):
            return f"has the format {{{name}:{spec}}}: only widths like {{{name}:04}} are allowed"
    parts = value.replace("\\", "/").split("/")
    if value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value):
        return "must be a relative path"
    if ".." in parts:
        return "must not contain '..'"
    return None


def _whole_output(step: Step) -> str | None:
    """The one file a step writes whole: a copy's manifest, a dump's file (not per instance)."""
    opts = step.options
    if step.action == "copy" and isinstance(opts.get("destination"), str):
        return os.path.join(opts["destination"], f"manifest.{opts.get('manifest', 'json')}")
    if step.action == "dump" and isinstance(opts.get("file"), str) \
            and not opts.get("per_instance"):
        return opts["file"]
    return None


def _url_problem(value: str) -> str | None:
    """Why a PostgreSQL URL cannot be a job's database (a password in it, above all: passwords
    come from PGPASSWORD or ~/.pgpass, never from a job file kept in git); None for a path."""
    from .backends import is_postgres_url
    if not is_postgres_url(value):
        return None
    from .backends.postgres import PgUrlError, parse_url
    try:
        parse_url(value)
    except PgUrlError as exc:
        return exc.message
    return None


def _reference_errors(job: Job) -> list[JobError]:
    src = job.source
    errs: list[JobError] = []
    for key in ("data", "database", "dicom_sql"):
        value = getattr(job.archive, key)
        if key == "database" and value is not None and (p := _url_problem(value)):
            errs.append(job.error(f"archive.database: {p}", ("archive", key)))
        elif value is not None and (p := _path_problem(value)):
            errs.append(job.error(f"archive.{key} {p}", ("archive", key)))
    for name, node in job.nodes.items():
        errs += _peer_errors(job, ("nodes", name), node)
    names: dict[str, Step] = {}
    written: dict[str, Step] = {}     # a file a step writes whole -> the first step writing it
    for step in job.steps:
        base = step.path + ("action", step.action)
        opts = step.options
        if (output := _whole_output(step)) is not None:
            where = base + (("destination",) if step.action == "copy" else ("file",))
            key = os.path.normcase(os.path.abspath(output))
            if key in written:
                first = written[key]
                errs.append(job.error(
                    f"{_dotted(where)}: this step writes {output}, which step {first.index} "
                    f"({first.name}) writes too; the later one would replace it (give each "
                    f"step its own {'destination' if step.action == 'copy' else 'file'})",
                    where))
            written.setdefault(key, step)
        if step.path and "name" in (src.data["steps"][step.path[1]] if src else {}):
            if step.name in names:
                errs.append(job.error(f"step name {step.name!r} is used twice (first in step "
                                      f"{names[step.name].index})", step.path + ("name",)))
            names.setdefault(step.name, step)
        if step.action in ("copy", "send") and isinstance(opts.get("deidentify"), dict):
            errs += _deidentify_errors(job, base + ("deidentify",), opts["deidentify"])
        if step.select is not None and step.select.with_referenced and not step.select.roi:
            errs.append(job.error("select.with_referenced adds what ROI-matched structure sets "
                                  "reference; it needs select.roi",
                                  step.path + ("select", "with_referenced"), key=True))
        if step.action in ("copy", "send") and isinstance(opts.get("modify"), dict):
            from .modify import check_block     # keyword, VR and value of each edit
            errs += [job.error(message, base + ("modify",) + where)
                     for where, message in check_block(opts["modify"])]
        if step.action == "copy":
            if p := _path_problem(opts["destination"]):
                errs.append(job.error(f"{_dotted(base + ('destination',))} {p}", base + ("destination",)))
            elif job.archive.data is not None or job.archive.database is not None:
                from .actions.copy import destination_problem
                if p := destination_problem(opts["destination"], job.archive.data,
                                            job.archive.database):
                    errs.append(job.error(f"{_dotted(base + ('destination',))} {p}",
                                          base + ("destination",)))
            layout = opts.get("layout")
            if layout is not None and layout not in ("patient", "series", "flat"):
                if p := _template_problem(layout):
                    errs.append(job.error(f"{_dotted(base + ('layout',))} {p}", base + ("layout",)))
        elif step.action == "dump":
            if p := _path_problem(opts["file"]):
                errs.append(job.error(f"{_dotted(base + ('file',))} {p}", base + ("file",)))
            if opts.get("per_instance") and opts.get("format", "csv") == "csv":
                errs.append(job.error(f"{_dotted(base + ('per_instance',))} needs format: json or text "
                                      "(a CSV is one file)", base + ("per_instance",), key=True))
            if opts.get("table") is not None and step.select is not None:
                errs.append(job.error(f"{_dotted(base + ('table',))} dumps a whole table: leave select: out, or "
                                      "drop table: to dump the selection",
                                      base + ("table",), key=True))
        elif step.action == "delete":
            if opts.get("files") is True and src is not None:
                info = src.scalars.get(base + ("files",))
                if info is not None and (info.style is not None or info.text not in _TRUE_TEXTS):
                    errs.append(job.error(
                        f"{_dotted(base + ('files',))}: {info.text} is read as true; deleting files must be "
                        "written explicitly as files: true", base + ("files",)))
        elif step.action == "rebuild":
            if opts.get("only_missing") and opts.get("refresh"):
                errs.append(job.error(f"{_dotted(base)}: choose only_missing or refresh, not both",
                                      base + ("refresh",), key=True))
        elif step.action == "send":
            node = opts.get("node")
            if node is not None and node not in job.nodes:
                known = (f"known: {', '.join(job.nodes)}" if job.nodes
                         else "the job has no nodes:")
                errs.append(job.error(f"{_dotted(base + ('node',))} {node!r} is not declared under nodes: "
                                      f"({known})", base + ("node",)))
            errs += _peer_errors(job, base, opts)
        from .remoteplan import remote_select_errors
        errs += remote_select_errors(job, step)
    return errs


def _deidentify_errors(job: Job, base: PathKey, block: dict[str, Any]) -> list[JobError]:
    """Options the standard excludes together, a bad pseudonym pattern or mapping path."""
    from .deid.profile import check_settings
    _, problems = check_settings(block)
    errs = [job.error(message, base + where) for where, message in problems]
    if isinstance(block.get("mapping"), str) and (p := _path_problem(block["mapping"])):
        errs.append(job.error(f"{_dotted(base + ('mapping',))} {p}", base + ("mapping",)))
    return errs


def _show(value: str) -> str:
    """A value quoted for a message: as written, or as a Python literal if it has controls."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return repr(value)
    return f"'{value}'"


def _peer_errors(job: Job, base: PathKey, opts: dict[str, Any]) -> list[JobError]:
    errs = []
    label = _dotted(base)
    if isinstance(opts.get("host"), str) and (p := _host_problem(opts["host"])):
        errs.append(job.error(f"{label}.host {_show(opts['host'])} {p}", base + ("host",)))
    for key in ("called_ae", "calling_ae"):
        if isinstance(opts.get(key), str) and (p := _ae_problem(opts[key])):
            errs.append(job.error(f"{label}.{key} {_show(opts[key])} {p} (an AE title has 1 to "
                                  f"{AE_TITLE_MAX} characters, no backslash or control "
                                  "characters)", base + (key,)))
    return errs


# -- building -------------------------------------------------------------------------------------
def _steps(data: dict[str, Any], source: Source) -> tuple[Step, ...]:
    raw: list[tuple[PathKey, dict[str, Any]]]
    if "steps" in data:
        raw = [(("steps", i), s) for i, s in enumerate(data["steps"])]
    else:
        raw = [((), data)]
    steps = []
    for i, (path, s) in enumerate(raw, 1):
        action, options = next(iter(s["action"].items()))
        options = dict(options or {})
        line = source.key_at(path + ("action",) if not path else path).line
        steps.append(Step(i, (s.get("name") if path else None) or action, action, options,
                          Selection.from_dict(s["select"]) if "select" in s else None,
                          line, path))
    return tuple(steps)


def job_from_source(source: Source, given=None, *, validating: bool = False,
                    project=None) -> Job:
    """Check a parsed job (schema, variables, then references) and build the ``Job``.

    ``given``: variable values (``jobvars.GivenValue`` by name); ``validating``: a variable
    without a value takes a stand-in of its type instead of being an error; ``project``: the
    ``project.Project`` whose archive and nodes the job inherits."""
    data = source.data
    if not isinstance(data, dict):
        pos = source.value_at(())
        what = "empty" if data is None else _kind(data)
        raise source.error(f"a job file must be a mapping (version:, select:, action: ...), "
                           f"not {what}", pos)
    errors = _schema_errors(source)
    if errors:
        raise JobErrors(errors)
    from .jobvars import bind_job_vars
    data, var_specs, variables = bind_job_vars(source, given, validating=validating)
    if project is not None:
        from .project import inherit
        data = inherit(data, project)
    arch = data.get("archive") or {}
    name = data.get("name") or Path(source.path).stem
    job = Job(source.path, source.sha256, name, data.get("description", ""),
              ArchiveSpec(arch.get("data"), arch.get("database"), arch.get("dicom_sql")),
              {k: dict(v) for k, v in (data.get("nodes") or {}).items()},
              _steps(data, source), data["version"], source, variables, var_specs, project)
    errors = _reference_errors(job)
    if errors:
        raise JobErrors(errors)
    return job


def load_job(path: str | Path, *, display: str | None = None, given=None,
             validating: bool = False, project: Any = "find") -> Job:
    """Read a job file and check YAML, schema and references (no database needed).

    ``project="find"``: the nearest ``conquest-run.yml`` (``project.find_project``), if any."""
    source = load_source(path, display=display)
    if project == "find":
        from .project import find_project, load_project
        found = find_project(path)
        project = load_project(found) if found is not None else None
    return job_from_source(source, given, validating=validating, project=project)


def parse_job(text: str, path: str = "<job>", given=None, *, validating: bool = False) -> Job:
    return job_from_source(parse_source(text, path), given, validating=validating)


def check_job_sql(job: Job, schema) -> None:
    """Check each step's ``select.query`` against ``schema``; raise ``JobErrors`` with all."""
    errors: list[ConquestRunError] = []
    for step in job.steps:
        if step.select is not None and step.select.query is not None:
            try:
                check_step_query(job, step, schema)
            except ConquestRunError as exc:
                errors.append(exc)
        if step.action == "copy" and isinstance(step.options.get("layout"), str):
            from .layoutcheck import layout_errors
            errors += layout_errors(job, step, schema)
        if step.action == "dump" and step.options.get("table") is not None:
            table = step.options["table"]
            known = {t.lower(): t for t in schema.sqlglot_schema()}
            if table.lower() not in known:
                close = difflib.get_close_matches(table.lower(), list(known), n=1, cutoff=0.6)
                hint = (f"did you mean {known[close[0]]}?" if close else
                        f"known: {', '.join(sorted(known.values()))}")
                errors.append(job.error(
                    f"{_dotted(step.path + ('action', 'dump', 'table'))} {table!r} is not a table or view of {schema.source} ({hint})",
                    step.path + ("action", "dump", "table")))
    if errors:
        raise JobErrors(errors)


def check_step_query(job: Job, step: Step, schema):
    """The ``CheckedQuery`` of a step's ``select.query`` (errors located in the job file)."""
    from .sqlcheck import check_query
    qpath = step.path + ("select", "query")
    sql = step.select.query if step.select else None
    if sql is None:
        return None
    src = job.source

    def locate(offset: int) -> tuple[int, int]:
        if src is None:
            return (1, 1)
        pos = src.locate_in_scalar(qpath, sql, offset)
        return (pos.line, pos.column)
    start = job.locate(qpath)
    return check_query(sql, schema, file=job.path, line=start.line, col=start.column,
                       locate=locate)


def validate_job(path: str | Path, schema=None, *, display: str | None = None,
                 dicom_sql: str | Path | None = None, given=None) -> Job:
    """``load_job`` plus the SQL checks, with the schema from ``dicom_sql`` / the job / built-in."""
    job = load_job(path, display=display, given=given, validating=True)
    if schema is None:
        from .schema import load_schema
        sql_path = dicom_sql if dicom_sql is not None else job.archive.dicom_sql
        if dicom_sql is None and sql_path is not None and not Path(sql_path).is_file():
            raise job.error(f"archive.dicom_sql: {sql_path} not found (relative paths are from "
                            "the current directory)", ("archive", "dicom_sql"))
        if sql_path is None and Path("dicom.sql").is_file():
            sql_path = "dicom.sql"
        schema = load_schema(sql_path)
        if job.archive.database is not None:        # its user tables, when it exists
            from .sqlcheck import with_user_tables
            schema = with_user_tables(schema, job.archive.database)
    check_job_sql(job, schema)
    return job
