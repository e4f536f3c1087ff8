"""``rebuild``, ``store``, ``summary`` and ``query`` on a PostgreSQL index (``--database
postgresql://USER@HOST:PORT/DBNAME``); ``cli/archive.py`` hands these over.

The same indexer, writer rules and file placing as on SQLite, through ``backends.postgres``.
A full rebuild (every patient) goes through ``backends.pgbulk``: COPY into temporary tables and
one merge, in one transaction (atomic); the incremental modes write row by row.  A connection
lost midway is made again and the lost transaction done again (``PgConnection.retrying``).
Not yet on PostgreSQL: crash recovery's intent journal.  Any psycopg error met midway is one sentence naming the masked URL (exit 2).
"""

from __future__ import annotations

__all__ = ["run"]

import argparse
import sys
from contextlib import closing

from ..archive import Archive, SeriesInfo, _column
from ..backends.pgschema import ensure_schema
from ..backends.postgres import PgConnection, connect, mask_url
from ..errors import ArchiveError
from ..fileflags import flag_tokens, flags_cell
from ..schema import EXTRAS_TABLE

_MODALITY, _SERIES_DESC, _SERIES_DATE, _STUDY_DATE = 0x00080060, 0x0008103E, 0x00080021, 0x00080020


def _print_notices(conn: PgConnection) -> None:
    for line in conn.notices:
        print(f"note: {line}", file=sys.stderr)
    conn.notices.clear()


def _writable(archive: Archive, url: str) -> PgConnection:
    conn = connect(url)
    try:
        ensure_schema(conn, archive.schema)
    except BaseException:
        conn.close()
        raise
    return conn


def _rebuild(archive: Archive, url: str, args: argparse.Namespace) -> int:
    from ..indexer import Indexer, data_dir_error
    from .archive import _report
    if args.workers < 1:
        print("conquest-run rebuild: --workers must be at least 1", file=sys.stderr)
        return 2
    if not archive.data_dir.is_dir():
        raise data_dir_error(archive.data_dir)
    mode = "missing" if args.only_missing else "refresh" if args.refresh else "all"
    with closing(_writable(archive, url)) as conn:
        if mode == "all" and args.patient is None:
            from ..backends.pgbulk import rebuild_all
            result = rebuild_all(conn, archive.schema, archive.data_dir, workers=args.workers)
        else:
            result = Indexer(conn, archive.schema, archive.data_dir).run(
                mode=mode, patients=args.patient, workers=args.workers)
        _print_notices(conn)
    return _report(args, "rebuild", result.summary(), result.bad, result.flagged,
                   {"indexed": result.indexed, "unchanged": result.unchanged,
                    "removed": result.removed, "skipped": result.skipped})


def _store(archive: Archive, url: str, args: argparse.Namespace) -> int:
    from ..indexer import FlaggedFile
    from ..store import store
    from .archive import _report
    if archive.data_dir.is_dir():    # as on SQLite: a new index has the folder indexed first
        Archive(args.data, url, args.dicom_sql).ensure_indexed()
    with closing(_writable(archive, url)) as conn:
        result = store(conn, archive.schema, archive.data_dir, args.paths, move=args.move)
        _print_notices(conn)
    flagged = [FlaggedFile(s.source, s.flags) for s in result.flagged]
    return _report(args, "store", result.summary(), result.bad, flagged,
                   {"stored": len(result.stored), "replaced": result.replaced,
                    "files": [{"path": s.source, "object_file": s.object_file,
                               "sop_uid": s.sop_uid, "replaced": s.replaced,
                               "flags": list(flag_tokens(s.flags))} for s in result.stored]})


def series_summary(archive: Archive, conn: PgConnection) -> list[SeriesInfo]:
    """``Archive.series_summary`` on PostgreSQL: the same rows, in the same (C) order."""
    sc = archive.schema
    se, st, im, ex = sc.series, sc.studies, sc.images, EXTRAS_TABLE

    def col(table: str, tag: int) -> str:
        name = _column(sc, table, tag)
        return f"{table}.{name}" if name else "NULL"
    date = _column(sc, se.name, _SERIES_DATE)
    date_sql = (f"COALESCE({se.name}.{date}, {col(st.name, _STUDY_DATE)})" if date
                else col(st.name, _STUDY_DATE))
    keys = [f"{st.name}.{st.link}", f"{se.name}.{se.link}", f"{se.name}.{se.key}"]
    order = ", ".join(f'{k} COLLATE "C" NULLS FIRST' for k in keys)    # SQLite's order
    sql = (f"SELECT {', '.join(keys)}, {col(se.name, _MODALITY)}, {col(se.name, _SERIES_DESC)}, "
           f"{date_sql}, count({im.name}.{im.key}), sum({ex}.FileSize), "
           f"string_agg(DISTINCT {ex}.Flags, ','), "
           f"count({im.name}.{im.key}) - count({ex}.SOPInstanc) "
           f"FROM {se.name} LEFT JOIN {st.name} ON {se.name}.{se.link} = {st.name}.{st.key} "
           f"LEFT JOIN {im.name} ON {im.name}.{im.link} = {se.name}.{se.key} "
           f"LEFT JOIN {ex} ON {ex}.SOPInstanc = {im.name}.{im.key} "
           f"GROUP BY {se.name}.{se.key}, {st.name}.{st.key} "
           f"ORDER BY {order}")
    out = []
    lacking = 0
    for *head, instances, size, flags, without in conn.execute(sql).fetchall():
        lacking += without
        out.append(SeriesInfo(*head, instances, None if instances and size is None
                              else int(size or 0),
                              flags_cell(t for f in (flags or "").split(",")
                                         for t in flag_tokens(f))))
    if lacking:
        print(f"note: {conn.shown}: {lacking} indexed instances have no conquest-run facts "
              "(sizes, hashes, flags; rows a Conquest server wrote); their bytes and flags show "
              "blank. Run 'conquest-run rebuild --only-missing' to fill them", file=sys.stderr)
    return out


def _require_index(archive: Archive, conn: PgConnection) -> None:
    """Refuse (a sentence) a database without Conquest's tables: nothing is indexed there."""
    found = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = "
                         "current_schema() AND table_name = ?",
                         (archive.schema.series.name.lower(),)).fetchone()[0]
    if not found:
        raise ArchiveError(f"{conn.shown} holds no Conquest tables yet; index the data into it "
                           f"first: conquest-run rebuild --database URL")


def _summary(archive: Archive, url: str) -> int:
    from .archive import _print_table
    with closing(connect(url, read_only=True)) as conn:
        _require_index(archive, conn)
        rows = series_summary(archive, conn)
    header = ["PatientID", "Study", "Series", "Modality", "Description", "Date",
              "Instances", "Bytes", "Flags"]
    _print_table(f"{len(rows)} series in {mask_url(url)}", header,
                 [(s.patient_id, s.study_uid, s.series_uid, s.modality, s.description,
                   s.date, s.instances, s.bytes, s.flags) for s in rows])
    return 0


def _query(archive: Archive, url: str, args: argparse.Namespace) -> int:
    """The same check as on SQLite, then sqlglot's PostgreSQL text of the statement, run in a
    READ ONLY session with a statement timeout."""
    import sqlglot
    from sqlglot import exp

    from ..sqlcheck import check_query, with_user_tables
    from .archive import _print_table
    checked = check_query(args.sql, with_user_tables(archive.schema, url), file="SQL",
                          require_column=False)         # + the user tables there
    tree = sqlglot.parse_one(checked.sql, read="sqlite")
    written = list(tree.named_selects) if not any(
        isinstance(e, exp.Star) or isinstance(getattr(e, "this", None), exp.Star)
        for e in getattr(tree, "expressions", ())) else []
    text = tree.transform(_doubled_percent).transform(_sqlite_like).sql(dialect="postgres")
    timeout_ms = int(args.query_timeout * 1000)
    with closing(connect(url, read_only=True, statement_timeout_ms=timeout_ms)) as conn:
        import psycopg
        _require_index(archive, conn)
        try:
            cur = conn.raw.execute(text, list(args.param))
            header = [d.name for d in cur.description or ()]
            from ..backends.sqliteheader import sqlite_header
            named = sqlite_header(archive.schema, checked.sql, list(args.param))
            if named is not None and len(named) == len(header):   # as SQLite names them
                header = named
            elif len(written) == len(header):
                header = [w or h for w, h in zip(written, header)]
            rows = [tuple(r) for r in cur.fetchall()]
        except psycopg.errors.QueryCanceled:
            raise ArchiveError(f"SQL: the query ran longer than {args.query_timeout:g} s and "
                               "was stopped (--query-timeout)") from None
        except psycopg.Error as exc:
            raise ArchiveError(f"SQL: PostgreSQL refused the query: "
                               f"{str(exc).strip().splitlines()[0]}") from None
    _print_table(f"{len(rows)} rows", header, rows, not args.no_header)
    return 0


def _sqlite_like(node):
    """SQLite's LIKE (ASCII case-insensitive, no escape character) in PostgreSQL's words."""
    from sqlglot import exp
    if isinstance(node, exp.Like):
        return exp.Escape(this=exp.ILike(this=node.this, expression=node.expression),
                          expression=exp.Literal.string(""))
    return node


def _doubled_percent(node):
    """'%' doubled in a literal or a name: psycopg reads the text for its %s parameters."""
    from sqlglot import exp
    if isinstance(node, exp.Literal) and node.is_string and "%" in node.this:
        return exp.Literal.string(node.this.replace("%", "%%"))
    if isinstance(node, exp.Identifier) and "%" in node.this:
        return exp.Identifier(this=node.this.replace("%", "%%"), quoted=node.quoted)
    return node


def _recorded(name: str, archive: Archive, command) -> int:
    """``command()`` inside the ConquestRunRuns row of ``commandlog.recorded_command``."""
    from ..commandlog import recorded_command
    with recorded_command(archive, name, "") as finish:
        code = command()
        finish(code == 0, {"exit_code": code})
    return code


def run(name: str, args: argparse.Namespace) -> int:
    url = args.database
    archive = Archive(args.data, "postgresql", args.dicom_sql)
    try:
        import psycopg
    except ImportError:
        raise ArchiveError(f"{mask_url(url)}: PostgreSQL needs psycopg: "
                           "pip install 'conquest-run[postgres]'") from None
    try:
        if name in ("rebuild", "store"):        # a run record, as on SQLite (commandlog)
            return _recorded(name, Archive(args.data, url, args.dicom_sql),
                             lambda: (_rebuild if name == "rebuild" else _store)(
                                 archive, url, args))
        if name == "summary":
            return _summary(archive, url)
        if name == "query":
            return _query(archive, url, args)
    except psycopg.Error as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArchiveError(f"the PostgreSQL index {mask_url(url)} failed: {detail}") from None
    raise AssertionError(name)
