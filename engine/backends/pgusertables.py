"""User tables (``usertables.insert_rows``, ``load-csv``, ``image-stats --table``) on a
PostgreSQL index.

The same names as on SQLite (checked identifiers, quoted; PostgreSQL's lower case, as the
connection folds every quoted name), the same refusals, one transaction.  SQLite keeps any
value in any column; PostgreSQL's columns are typed, so a column takes the kind of its values:
``bigint`` for integers, ``double precision`` once a decimal comes, ``text`` once text comes
(the column is widened with ``ALTER COLUMN ... TYPE``, its values kept), ``bytea`` for bytes
(bytes and other values in one column are refused in a sentence, as is a NUL character in text,
which PostgreSQL cannot hold).  A table is created, widened and written under an advisory lock
of its name, so two writers of one new table at once both succeed.  A connection lost midway
is made again and the transaction done again (``PgConnection.retrying``).
"""

from __future__ import annotations

__all__ = ["insert_rows", "user_tables", "kind_of"]

from typing import Any, Callable

from ..errors import ArchiveError

_LOCK_NAMESPACE = 0x55545342          # pg_advisory_xact_lock(namespace, hashtext(table))
# kinds a column can hold, narrow to wide; bytea stands apart
_WIDTH = {"bigint": 0, "double precision": 1, "text": 2}
_FAMILY = {"bigint": "bigint", "integer": "bigint", "smallint": "bigint",
           "double precision": "double precision", "real": "double precision",
           "numeric": "double precision", "text": "text", "character varying": "text",
           "character": "text", "bytea": "bytea"}
_SQLGLOT = {"bigint": "INT", "double precision": "REAL"}


def kind_of(value: Any) -> str | None:
    """The PostgreSQL column type a (checked) value needs; None for None."""
    if value is None:
        return None
    if isinstance(value, int):
        return "bigint"
    if isinstance(value, float):
        return "double precision"
    if isinstance(value, bytes):
        return "bytea"
    return "text"


def _wider(have: str | None, new: str | None) -> str | None:
    if have is None or new is None or have == new:
        return have or new
    if "bytea" in (have, new):
        return ""                           # cannot hold both: said by the caller
    return have if _WIDTH[have] >= _WIDTH[new] else new


def _said(kind: str) -> str:
    return "bytes" if kind == "bytea" else "numbers or text"


def _kinds(rows: list[dict[str, Any]], columns: dict[str, str]) -> dict[str, str]:
    """lower column name -> the type every value of the batch fits; ArchiveError (row, column)
    for bytes beside other values or a NUL character."""
    kinds: dict[str, str] = {}
    for n, row in enumerate(rows, 1):
        for key, value in row.items():
            if isinstance(value, str) and "\x00" in value:
                raise ArchiveError(f"row {n}: the value of {key} holds a NUL character, "
                                   "which PostgreSQL text cannot hold")
            low = key.lower()
            wider = _wider(kinds.get(low), kind_of(value))
            if wider == "":
                raise ArchiveError(f"row {n}: column {columns[low]} mixes bytes with other "
                                   "values, which one PostgreSQL column cannot hold")
            if wider is not None:
                kinds[low] = wider
    return kinds


def _columns(conn, table: str) -> dict[str, str]:
    """lower column name -> data_type, of ``table`` in the current schema ({} if none)."""
    return {name.lower(): data_type for name, data_type in conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = ? ORDER BY ordinal_position",
        (table.lower(),)).fetchall()}


def _is_view(conn, table: str) -> bool:
    return bool(conn.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND "
        "table_name = ? AND table_type <> 'BASE TABLE'", (table.lower(),)).fetchone())


def _write(conn, table: str, rows: list[dict[str, Any]], columns: dict[str, str],
           kinds: dict[str, str]) -> None:
    """One transaction: lock, create or widen, insert."""
    from ..db import rollback_quietly
    conn.execute("BEGIN")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(?, hashtext(?))",
                     (_LOCK_NAMESPACE, table.lower()))
        if _is_view(conn, table):
            raise ArchiveError(f"{table} is a view, not a table")
        have = _columns(conn, table)
        if not have:
            cols = ", ".join(f'"{name}" {kinds.get(low, "text")}'
                             for low, name in columns.items())
            conn.execute(f'CREATE TABLE "{table}" ({cols})')
        for low, name in columns.items():
            want = kinds.get(low, "text")
            if low not in have:
                if have:
                    conn.execute(f'ALTER TABLE "{table}" ADD COLUMN "{name}" {want}')
                continue
            family = have[low] if have[low] in _WIDTH or have[low] == "bytea" else None
            if low not in kinds or family is None or family == want:
                continue     # no values, or a type of the user's own table: PostgreSQL casts
            wider = _wider(family, want)
            if wider == "":
                raise ArchiveError(f"column {name} of {table} holds {_said(family)} and "
                                   f"these rows give it {_said(want)}: one PostgreSQL column "
                                   "cannot hold both")
            if wider != family:
                conn.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{name}" TYPE {wider} '
                             f'USING "{name}"::{wider}')
        start = 0
        while start < len(rows):          # runs of rows with the same keys: one executemany
            keys = list(rows[start])
            end = start + 1
            while end < len(rows) and list(rows[end]) == keys:
                end += 1
            names = ", ".join(f'"{k}"' for k in keys)
            conn.executemany(f'INSERT INTO "{table}" ({names}) VALUES '
                             f'({", ".join("?" * len(keys))})',
                             [list(r.values()) for r in rows[start:end]])
            start = end
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise


def insert_rows(conn, table: str, rows: list[dict[str, Any]], columns: dict[str, str]) -> int:
    """Append the checked ``rows`` (``columns``: lower name -> name as first given) to
    ``table`` in one transaction, done again whole if the connection is lost."""
    import psycopg

    from .errors import describe
    kinds = _kinds(rows, columns)
    try:
        conn.retrying(lambda: _write(conn, table, rows, columns, kinds))
    except psycopg.Error as exc:         # a value the user's own column types refuse, say
        raise ArchiveError(f"{conn.shown}: PostgreSQL refused the rows for {table}, none "
                           f"written: {describe(exc)}") from None
    return len(rows)


def user_tables(conn, keep: Callable[[str], bool]) -> dict[str, dict[str, str]]:
    """{table: {column: sqlglot type}} of the base tables of the current schema that ``keep``
    accepts and that the folded names can reach (lower case)."""
    out: dict[str, dict[str, str]] = {}
    for table, column, data_type in conn.execute(
            "SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c "
            "JOIN information_schema.tables t ON t.table_schema = c.table_schema AND "
            "t.table_name = c.table_name WHERE c.table_schema = current_schema() AND "
            "t.table_type = 'BASE TABLE' ORDER BY c.table_name, c.ordinal_position").fetchall():
        if table != table.lower() or not keep(table):
            continue
        if column != column.lower():
            continue                       # a quoted mixed-case name: unreachable folded
        out.setdefault(table, {})[column] = _SQLGLOT.get(_FAMILY.get(data_type, ""), "TEXT")
    return out
