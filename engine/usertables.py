"""Own data beside the archive (pyconquest's ``insert_dict`` and ``load_csv_to_table``).

:func:`insert_rows` appends dicts to a user table of the archive's database: created on the
first insert with a column per key (typed from the first value: INTEGER, REAL, TEXT, BLOB),
later keys added with ``ALTER TABLE ADD COLUMN``, all rows in one transaction.  Conquest's
tables (the layout's, ``UIDMODS``, and the usual others of a Conquest server), conquest-run's
own (``RTExtras``, ``ConquestRun*``), SQLite's and the views are refused as targets.  Table and
column names must be plain identifiers (letters, digits, ``_``; at most 63) and are quoted in
the statements; values are always parameters.  :func:`user_tables` lists such tables with their
columns, which the SQL check of jobs learns (:func:`with_user_tables`, :func:`schema_of`).  On a
PostgreSQL index the same, through ``backends/pgusertables.py`` (typed columns, widened as
values need; the tables of the connection's current schema).
"""

from __future__ import annotations

__all__ = ["insert_rows", "check_target", "with_user_tables", "schema_of", "user_tables", "name_problem", "csv_rows", "RESERVED_TABLES"]

import csv
import datetime
import re
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import ArchiveError
from .db import is_postgres, rollback_quietly

_INT64 = (-(1 << 63), (1 << 63) - 1)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")   # PostgreSQL keeps 63
# Tables a Conquest server or conquest-run owns, whatever the dicom.sql (lower case)
RESERVED_TABLES = frozenset(t.lower() for t in (
    "DICOMPatients", "DICOMStudies", "DICOMSeries", "DICOMImages", "DICOMWorkList",
    "DICOMAccessUpdates", "UIDMODS", "RTExtras", "v_series", "v_seriesRT"))
_RESERVED_PREFIXES = ("conquestrun", "sqlite_", "pg_")


def _reserved(name: str, schema: Any = None) -> bool:
    low = name.lower()
    if low in RESERVED_TABLES or low.startswith(_RESERVED_PREFIXES):
        return True
    return schema is not None and low in {t.lower() for t in schema.tables}


def name_problem(name: Any, what: str = "table") -> str | None:
    """Why ``name`` cannot name a user table (or column), or None."""
    if not isinstance(name, str) or not _IDENT.match(name):
        return (f"{what} name {name!r} must start with a letter or '_' and hold only letters, "
                "digits and '_' (at most 63)")
    return None


def user_tables(conn: sqlite3.Connection, schema: Any = None) -> dict[str, dict[str, str]]:
    """{table: {column: type}} of the tables in the database that are neither Conquest's nor
    conquest-run's: what ``insert_rows`` and ``load-csv`` made, or the user's own."""
    if is_postgres(conn):
        from .backends.pgusertables import user_tables as pg_user_tables
        return pg_user_tables(conn, lambda name: not _reserved(name, schema)
                              and bool(_IDENT.match(name)))
    out: dict[str, dict[str, str]] = {}
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
        if _reserved(name, schema) or not _IDENT.match(name):
            continue
        cols = conn.execute(f'PRAGMA table_info("{name}")').fetchall()
        out[name] = {c[1]: _sqlglot_type(c[2]) for c in cols}
    return out


def _sqlglot_type(declared: str) -> str:
    d = (declared or "").upper()
    return "INT" if "INT" in d else "REAL" if d in ("REAL", "FLOAT", "DOUBLE") else "TEXT"


def _value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if value is None or isinstance(value, (int, float, str, bytes)):
        return value
    if isinstance(value, (datetime.date, datetime.datetime, datetime.time)):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _sql_type(value: Any) -> str:
    if isinstance(value, int):
        return "INTEGER"
    if isinstance(value, float):
        return "REAL"
    if isinstance(value, bytes):
        return "BLOB"
    return "TEXT"


def check_target(table: Any, schema: Any = None) -> None:
    """ArchiveError when ``table`` cannot take own data (a bad name, or a table we keep)."""
    if problem := name_problem(table):
        raise ArchiveError(problem)
    if _reserved(table, schema):
        raise ArchiveError(f"{table} is one of Conquest's or conquest-run's tables; own data "
                           "goes into a table of its own")


def insert_rows(conn: sqlite3.Connection, table: str, rows: Iterable[dict[str, Any]],
                schema: Any = None) -> int:
    """Append ``rows`` to the user table ``table`` in one transaction; the number appended.

    ArchiveError (nothing written) for a refused table, a bad name, a row that is not a
    mapping or a value that is not text, a number, bytes, a date or None."""
    check_target(table, schema)
    checked: list[dict[str, Any]] = []
    columns: dict[str, str] = {}             # lower -> name as first given
    types: dict[str, str] = {}
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not row:
            raise ArchiveError(f"row {n}: must be a non-empty mapping of column to value")
        values: dict[str, Any] = {}
        lowered: set[str] = set()
        for key, value in row.items():
            if problem := name_problem(key, "column"):
                raise ArchiveError(f"row {n}: {problem}")
            try:
                values[key] = _value(value)
            except TypeError as exc:
                raise ArchiveError(f"row {n}: the value of {key} is a {exc}; give text, a "
                                   "number, bytes, a date or None") from None
            if isinstance(values[key], int) and not _INT64[0] <= values[key] <= _INT64[1]:
                raise ArchiveError(f"row {n}: the value of {key} is an integer beyond 64 bits, "
                                   "which the database cannot hold; give it as text")
            low = key.lower()
            if low in lowered:
                raise ArchiveError(f"row {n}: column {key} is given twice (names ignore case)")
            lowered.add(low)
            columns.setdefault(low, key)
            if values[key] is not None and low not in types:
                types[low] = _sql_type(values[key])
        checked.append(values)
    if not checked:
        return 0
    if is_postgres(conn):
        from .backends.pgusertables import insert_rows as pg_insert_rows
        return pg_insert_rows(conn, table, checked, columns)
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = ? "
                    "COLLATE NOCASE", (table,)).fetchone():
        raise ArchiveError(f"{table} is a view, not a table")
    conn.execute("BEGIN IMMEDIATE")
    try:
        have = {r[1].lower() for r in conn.execute(f'PRAGMA table_info("{table}")')}
        if not have:
            cols = ", ".join(f'"{name}" {types.get(low, "TEXT")}'
                             for low, name in columns.items())
            conn.execute(f'CREATE TABLE "{table}" ({cols})')
        else:
            for low, name in columns.items():
                if low not in have:
                    conn.execute(f'ALTER TABLE "{table}" ADD COLUMN "{name}" '
                                 f'{types.get(low, "TEXT")}')
        for values in checked:
            names = ", ".join(f'"{k}"' for k in values)
            conn.execute(f'INSERT INTO "{table}" ({names}) VALUES '
                         f'({", ".join("?" * len(values))})', list(values.values()))
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)          # never hides the error (a full disk) behind its own
        raise
    return len(checked)


_INT = re.compile(r"^-?(0|[1-9][0-9]{0,17})$")
_FLOAT = re.compile(r"^-?(0|[1-9][0-9]*)\.[0-9]+([eE][-+]?[0-9]+)?$")


def _typed(text: str) -> Any:
    """A CSV cell: None when empty, an int or float when written as one (no leading zeros,
    so IDs such as 00123 stay text), else the text."""
    if text == "":
        return None
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


def csv_rows(path: str | Path, *, as_text: bool = False) -> Iterator[dict[str, Any]]:
    """The rows of a CSV file with a header line, as dicts; ArchiveError ``PATH:LINE: ...``."""
    path = Path(path)
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ArchiveError(f"cannot read it: {exc.strerror or exc}", file=str(path)) from None
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if not header:
                raise ArchiveError("the CSV is empty (it needs a header line)", file=str(path),
                                   line=1)
            seen: set[str] = set()
            for col, name in enumerate(header, 1):
                if problem := name_problem(name, "column"):
                    raise ArchiveError(f"header field {col}: {problem}", file=str(path), line=1)
                if name.lower() in seen:
                    raise ArchiveError(f"header field {col}: column {name} is given twice",
                                       file=str(path), line=1)
                seen.add(name.lower())
            for cells in reader:
                if not cells:
                    continue
                if len(cells) != len(header):
                    raise ArchiveError(f"this row has {len(cells)} fields, the header "
                                       f"{len(header)}", file=str(path), line=reader.line_num)
                yield {k: None if v == "" else v if as_text else _typed(v)
                       for k, v in zip(header, cells)}
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ArchiveError(f"not a readable CSV: {exc}", file=str(path),
                               line=reader.line_num) from None


# -- the schema job SQL is checked against, with the user tables -------------------------------
class _WithUserTables:
    """A schema that also knows the user tables found in the database (read, never written)."""

    def __init__(self, schema, extra: dict[str, dict[str, str]]) -> None:
        self._schema = schema
        self._extra = extra

    def __getattr__(self, name: str) -> Any:
        return getattr(self._schema, name)

    def sqlglot_schema(self) -> dict[str, dict[str, str]]:
        out = dict(self._schema.sqlglot_schema())
        known = {t.lower() for t in out}
        out.update({t: cols for t, cols in self._extra.items() if t.lower() not in known})
        return out


def with_user_tables(schema, database) -> Any:
    """``schema`` plus the user tables of ``database`` (when it exists), so that job queries
    may read what ``Archive.insert_rows`` or ``conquest-run load-csv`` put there (re-exported
    by ``sqlcheck``)."""
    from .backends import is_postgres_url
    from .backends.errors import database_errors
    from .db import connect_reader
    if database is None or not (is_postgres_url(database) or Path(database).is_file()):
        return schema
    try:
        conn = connect_reader(database)         # on PostgreSQL a READ ONLY session
    except Exception:               # unreadable here: the run itself says why, later
        return schema
    try:
        extra = user_tables(conn, schema)
    except database_errors():
        return schema
    finally:
        conn.close()
    return _WithUserTables(schema, extra) if extra else schema


def schema_of(archive) -> Any:
    """The schema job SQL is checked against for ``archive``: its layout and its user tables."""
    return with_user_tables(archive.schema, getattr(archive, "database", None))
