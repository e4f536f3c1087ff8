"""dump: the selection, a query's result or a whole table as CSV; instance headers as JSON/text.

Options:

* ``file`` (required): the output file, relative to the current directory (with
  ``per_instance: true``, the folder that receives one file per instance).
* ``format``: ``csv`` (default), ``json`` (DICOM JSON model of each selected instance's header,
  no pixel data, bulk data as a ``BulkDataURI``) or ``text`` (a readable, dcmdump-like header
  dump).
* ``table``: dump this whole table or view as CSV instead of the selection (it must exist).
* ``per_instance``: json/text only; one file per instance, named by SOP Instance UID.

CSV content: with the step's ``select.query``, the query's own columns and rows (run on a
read-only connection behind an SQLite authorizer); otherwise one row per planned series with its
study and patient columns, in plan order.  Rows are streamed from the cursor through
``csv.writer`` into a temporary file that is renamed at the end: memory does not grow with rows.
"""

from __future__ import annotations

__all__ = ["run", "FORMATS", "dump_csv", "header_text", "readonly_rows"]

import csv
import json
import os
import sqlite3
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence
from urllib.parse import quote

from ..backends.errors import database_errors, describe
from ..errors import ActionError, ArchiveError, ConquestRunError, JobError
from ..report import DONE, FAILED, Outcome, StepReport
from ..sqlcheck import authorizer
from ..db import is_postgres
from ._local import (StepRecorder, archive_facts, connect_reader, filesystem, inside,
                     is_database_file, os_reason,
                     progress, safe_component, source_path)

if TYPE_CHECKING:
    from ..plan import PlanStep
    from ..report import StepReport as _StepReport
    from . import ActionContext

FORMATS = ("csv", "json", "text")
FETCH = 2000      # rows fetched from the cursor at a time
SERIES_CHUNK = 500  # series UIDs per IN (...) query
BULK_THRESHOLD = 1024

def readonly_rows(conn: sqlite3.Connection, sql: str,
                  params: Sequence[Any] = ()) -> tuple[list[str], Iterator[tuple]]:
    """Column names and a streaming row iterator of ``sql`` behind the job-query authorizer
    (``sqlcheck.authorizer``: SELECT, READ and allow-listed functions only) on a connection
    that cannot write.  Use a fresh connection: the authorizer acts when statements are
    prepared.  On PostgreSQL the session is READ ONLY and the rows come from a server-side
    cursor (``db.stream_query``)."""
    from ..backends.errors import database_errors, describe
    from ..db import is_postgres, stream_query
    if is_postgres(conn):
        # job SQL on PostgreSQL: this is the one place a dump runs it (as checked by sqlcheck)
        if isinstance(params, dict):
            if params:
                raise ActionError("dump: a query with :name parameters does not run on a "
                                  "PostgreSQL index in this version")
            params = ()
        try:
            return stream_query(conn, sql, params, itersize=FETCH)
        except database_errors() as exc:
            raise ActionError(f"dump: the query failed: {describe(exc)}") from None
    conn.set_authorizer(authorizer)
    try:
        cur = conn.execute(sql, params if isinstance(params, dict) else tuple(params))
    except sqlite3.DatabaseError as exc:
        raise ActionError(f"dump: the query failed: {exc}") from None
    cur.arraysize = FETCH
    names = [d[0] for d in cur.description or ()]

    def rows() -> Iterator[tuple]:
        while True:
            batch = cur.fetchmany()
            if not batch:
                return
            yield from batch
    return names, rows()


def _cell_row(row: tuple) -> tuple:
    if any(type(v) is bytes for v in row):
        return tuple(v.hex() if type(v) is bytes else v for v in row)
    return row


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table_name(conn: sqlite3.Connection, table: str) -> str:
    from ..db import table_names
    names = table_names(conn, views=True)
    hit = names.get(str(table).lower())
    if hit is None:
        raise JobError(f"dump: there is no table or view {table!r} in the database; known: "
                       + ", ".join(sorted(v for k, v in names.items()
                                          if not k.startswith("sqlite_"))))
    return hit


def _as_in_schema(names: list[str], schema) -> list[str]:
    """Column names spelt as dicom.sql (and RTExtras) spell them: PostgreSQL gives them in
    lower case; on SQLite they already are."""
    from ..schema import EXTRAS_COLUMNS
    spelt = {n.lower(): n for n, _ in EXTRAS_COLUMNS}
    for table in schema.tables.values():
        spelt.update((c.lower(), c) for c in table.column_names())
    def spell(name: str) -> str:
        base, colon, rest = name.partition(":")      # a view's second StudyInsta: studyinsta:1
        return spelt.get(base, base) + colon + rest if name == name.lower() else name
    return [spell(n) for n in names]


def _series_rows(conn: sqlite3.Connection, step: "PlanStep",
                 schema) -> tuple[list[str], Iterator[tuple]]:
    """One row per planned series: its columns, then its study's, then its patient's."""
    se, st, pa = schema.series, schema.studies, schema.patients
    seen: set[str] = set()
    cols: list[tuple[str, str]] = []
    for alias, table in (("s", se), ("t", st), ("p", pa)):
        for c in table.column_names():
            if c.lower() not in seen:
                seen.add(c.lower())
                cols.append((alias, c))
    select = ", ".join(f"{a}.{_quote_ident(c)}" for a, c in cols)
    base = (f"SELECT s.{_quote_ident(se.key)}, {select} FROM {_quote_ident(se.name)} s "
            f"LEFT JOIN {_quote_ident(st.name)} t ON t.{_quote_ident(st.key)} = "
            f"s.{_quote_ident(se.link)} "
            f"LEFT JOIN {_quote_ident(pa.name)} p ON p.{_quote_ident(pa.key)} = "
            f"t.{_quote_ident(st.link)} WHERE s.{_quote_ident(se.key)} IN ")
    from ..db import is_postgres
    if not is_postgres(conn):
        conn.set_authorizer(authorizer)

    def rows() -> Iterator[tuple]:
        uids = [s.series_uid for s in step.series]
        for i in range(0, len(uids), SERIES_CHUNK):
            chunk = uids[i:i + SERIES_CHUNK]
            sql = base + "(" + ", ".join("?" * len(chunk)) + ")"
            found = {r[0]: r[1:] for r in conn.execute(sql, chunk)}
            for uid in chunk:
                if uid in found:
                    yield found[uid]
    return [c for _, c in cols], rows()


def _write_csv(fs, path: Path, names: list[str], rows: Iterable[tuple], advance) -> int:
    count = 0
    with fs.atomic_open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\r\n")
        w.writerow(names)
        for row in rows:
            w.writerow(_cell_row(row))
            count += 1
            if count % FETCH == 0:
                advance(FETCH)
    return count


# -- headers -------------------------------------------------------------------------------
def _read_header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError
    try:
        with warnings.catch_warnings():  # pydicom's warnings about odd values in real files
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise ActionError(f"cannot read the DICOM header: {exc}") from None


def _json_header(ds, rel: str) -> dict[str, Any]:
    def bulk(elem) -> str:
        return f"{quote(rel)}#{elem.tag:08X}"
    return ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=bulk,
                           suppress_invalid_tags=True)


def _value_text(elem) -> str:
    if elem.VR in ("OB", "OW", "OD", "OF", "OL", "OV", "UN") or isinstance(elem.value, bytes):
        raw = elem.value or b""
        if not isinstance(raw, (bytes, bytearray)):
            return f"[{raw!s}]"
        shown = " ".join(f"{b:02x}" for b in raw[:16])
        return f"[{shown}{' ...' if len(raw) > 16 else ''}] ({len(raw)} bytes)"
    value = elem.value
    if value is None or value == "":
        return "(no value)"
    if elem.VM > 1 and not isinstance(value, (str, bytes)):
        return "[" + "\\".join(str(v) for v in value) + "]"
    return f"[{value}]"


def header_text(ds, rel: str) -> str:
    """A readable dump of a header, one element a line, as dcmdump prints them."""
    lines = [f"# {rel}"]

    def walk(dataset, depth: int) -> None:
        pad = "  " * depth
        for elem in dataset:
            tag = f"({elem.tag.group:04x},{elem.tag.element:04x})"
            name = elem.keyword or elem.name
            if elem.VR == "SQ":
                lines.append(f"{pad}{tag} SQ (Sequence with {len(elem.value)} items)"
                             f"  # {name}")
                for n, item in enumerate(elem.value, 1):
                    lines.append(f"{pad}  (fffe,e000) na (Item #{n})")
                    walk(item, depth + 2)
            else:
                lines.append(f"{pad}{tag} {elem.VR} {_value_text(elem)}  # {elem.VM}, {name}")

    meta = getattr(ds, "file_meta", None)
    if meta:
        lines.append("# file meta information")
        walk(meta, 0)
        lines.append("# dataset")
    walk(ds, 0)
    return "\n".join(lines) + "\n"


def _instance_dump(fmt: str, src: Path, rel: str) -> str:
    ds = _read_header(src)
    with warnings.catch_warnings():  # values are read lazily: odd ones warn here
        warnings.simplefilter("ignore")
        try:
            if fmt == "json":
                return json.dumps(_json_header(ds, rel), ensure_ascii=False, sort_keys=True)
            return header_text(ds, rel)
        except Exception as exc:     # a corrupt element, met only as it is decoded
            raise ActionError(f"cannot read the DICOM header: {type(exc).__name__}: "
                              f"{exc}") from None


def _dump_instances(step: "PlanStep", ctx: "ActionContext", rec: StepRecorder, fs, out: Path,
                    fmt: str, per_instance: bool, data_dir: Path) -> dict[str, Any]:
    ext = "json" if fmt == "json" else "txt"
    written = 0
    with progress(ctx, step.instance_count, f"dump {fmt}") as advance:
        if per_instance:
            fs.makedirs(out)
            for series in step.series:
                for inst in series.instances:
                    try:
                        text = _instance_dump(fmt, source_path(data_dir, inst.path), inst.path)
                        name = f"{safe_component(inst.sop_uid)}.{ext}"
                        with fs.atomic_open(out / name, "w", encoding="utf-8",
                                            newline="\n") as f:
                            f.write(text + ("\n" if fmt == "json" else ""))
                    except (ActionError, OSError) as exc:
                        rec.add(Outcome(inst.sop_uid, series.series_uid, FAILED,
                                        getattr(exc, "message", None) or str(exc),
                                        {"source": inst.path}))
                    else:
                        written += 1
                        rec.add(Outcome(inst.sop_uid, series.series_uid, DONE, "",
                                        {"path": str(out / name)}))
                    advance(1)
            return {"folder": str(out), "files": written}
        fs.makedirs(out.parent)
        with fs.atomic_open(out, "w", encoding="utf-8", newline="\n") as f:
            if fmt == "json":
                f.write("[")
            for series in step.series:
                for inst in series.instances:
                    try:
                        text = _instance_dump(fmt, source_path(data_dir, inst.path), inst.path)
                    except (ActionError, OSError) as exc:
                        rec.add(Outcome(inst.sop_uid, series.series_uid, FAILED,
                                        getattr(exc, "message", None) or str(exc),
                                        {"source": inst.path}))
                    else:
                        if fmt == "json":
                            f.write(("," if written else "") + "\n" + text)
                        else:
                            f.write(("\n" if written else "") + text)
                        written += 1
                        rec.add(Outcome(inst.sop_uid, series.series_uid, DONE, "",
                                        {"path": str(out)}))
                    advance(1)
            if fmt == "json":
                f.write("\n]\n")
    return {"file": str(out), "instances": written}


# -- the action ----------------------------------------------------------------------------
def _options(step: "PlanStep") -> tuple[Path, str, str | None, bool, tuple]:
    o = step.options or {}
    out = o.get("file")
    if not isinstance(out, str) or not out.strip():
        raise JobError("dump: option file (where to write) is required")
    fmt = o.get("format", "csv")
    if fmt not in FORMATS:
        raise JobError(f"dump: format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    table = o.get("table")
    per_instance = bool(o.get("per_instance", False))
    if table is not None and fmt != "csv":
        raise JobError("dump: a table is dumped as CSV only (format: csv)")
    if per_instance and fmt == "csv":
        raise JobError("dump: per_instance applies to format json or text")
    return Path(out), fmt, table, per_instance, tuple(o.get("params", ()))


def run(step: "PlanStep", ctx: "ActionContext") -> StepReport:
    rec = StepRecorder(step, ctx)
    facts = archive_facts(ctx.archive)
    try:
        out, fmt, table, per_instance, params = _options(step)
    except JobError as exc:
        return rec.fail_step(exc.message)
    if inside(facts.data_dir, Path(os.path.abspath(out))):
        return rec.fail_step(f"dump: {out} is inside the archive's data directory; write it "
                             "somewhere else")
    if is_database_file(out, facts.database):
        return rec.fail_step(f"dump: {out} is the archive's database; write the dump "
                             "somewhere else")
    if not per_instance and os.path.isdir(out):
        return rec.fail_step(f"dump: {out} is a folder; action.dump.file names the file to "
                             "write")
    fs = filesystem(ctx.dry_run)
    if step.remote is not None:         # a remote selection: its C-FIND results
        return _dump_remote(step, ctx, rec, fs, out)
    if fmt != "csv":
        try:
            summary = _dump_instances(step, ctx, rec, fs, out, fmt, per_instance,
                                      facts.data_dir)
        except OSError as exc:
            return rec.fail_step(f"dump: cannot write {out}: {os_reason(exc)}")
        return rec.finish(format=fmt, **summary)
    try:
        conn = connect_reader(facts.database)
    except ArchiveError as exc:
        return rec.fail_step(str(exc))
    try:
        if table is not None:
            name = _table_name(conn, table)
            names, rows = readonly_rows(conn, f"SELECT * FROM {_quote_ident(name)}")
            if is_postgres(conn):
                names = _as_in_schema(names, facts.schema)
            source = f"table {name}"
        elif step.query:
            if not params:
                from ..jobvars import bound_params
                params = bound_params(ctx.plan.variables, step.query)
            names, rows = readonly_rows(conn, step.query, params)
            if is_postgres(conn):
                from ..backends.pgquery import written_names
                names = written_names(step.query, names)
            source = "query"
        else:
            names, rows = _series_rows(conn, step, facts.schema)
            source = "series"
        fs.makedirs(out.parent)
        with progress(ctx, len(step.series) if source == "series" else 0,
                      "dump csv") as advance:
            count = _write_csv(fs, out, names, rows, advance)
    except ConquestRunError as exc:
        return rec.fail_step(exc.message)
    except OSError as exc:
        return rec.fail_step(f"dump: cannot write {out}: {os_reason(exc)}")
    except database_errors() as exc:
        return rec.fail_step(f"dump: reading the database failed: {describe(exc)}")
    finally:
        conn.close()
    rec.add(Outcome(None, None, DONE, "", {"path": str(out), "rows": count,
                                           "columns": len(names)}))
    return rec.finish(format="csv", file=str(out), rows=count, columns=len(names),
                      source=source)


def _dump_remote(step: "PlanStep", ctx: "ActionContext", rec: StepRecorder, fs,
                 out: Path) -> StepReport:
    names = ["PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
             "SeriesDescription", "NumberOfSeriesRelatedInstances"]
    rows = ((s.patient_id, s.study_uid, s.series_uid, s.modality, s.description,
             s.remote_instances) for s in step.series)
    try:
        fs.makedirs(out.parent)
        count = _write_csv(fs, out, names, rows, lambda n: None)
    except OSError as exc:
        return rec.fail_step(f"dump: cannot write {out}: {os_reason(exc)}")
    rec.add(Outcome(None, None, DONE, "", {"path": str(out), "rows": count,
                                           "columns": len(names)}))
    return rec.finish(format="csv", file=str(out), rows=count, columns=len(names),
                      source=f"C-FIND of {step.remote}")


def dump_csv(archive: Any, out: str | os.PathLike, query: str | None = None,
             params: Sequence[Any] = (), table: str | None = None,
             dry_run: bool = False) -> "_StepReport":
    """Python API: a query's rows (``params`` bound to its ``?``), a whole table/view, or every
    series with its study and patient columns, as CSV in ``out`` (written atomically)."""
    from ._local import api_run
    options: dict[str, Any] = {"file": os.fspath(out), "format": "csv",
                               "params": list(params)}
    if table is not None:
        options["table"] = table
    series_uids: list[str] | None = [] if (query or table) else None
    return api_run(archive, "dump", options, series_uids, query=query, dry_run=dry_run,
                   target=os.fspath(out))
