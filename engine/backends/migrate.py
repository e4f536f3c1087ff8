"""Copy a SQLite index into PostgreSQL: Conquest's tables (made as dgate makes them there),
RTExtras, UIDMODS and conquest-run's own tables (audit log, runs, removals journal: made from
their SQLite columns), then row counts and a checksum per table on both sides.

* Resumable and idempotent: a table with a primary key is copied in committed batches of
  ``BATCH`` rows with ``ON CONFLICT DO NOTHING``, so a second run (or one after a kill) adds only
  what is missing; a table without one is copied again whole, in one transaction, unless both
  sides already agree.
* The checksum is order-independent: the sum (mod 2**64) of the first 8 bytes of each row's
  SHA-256 over its values as JSON, after the type each PostgreSQL column gives them (text for
  text, trailing blanks of ``char(n)`` dropped).  A value longer than its PostgreSQL column is
  cut, with a notice, as on indexing; that table's checksums then differ, as they should.
"""

from __future__ import annotations

__all__ = ["TableResult", "migrate", "BATCH"]

import hashlib
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ArchiveError
from ..schema import Schema
from .pgschema import ensure_schema
from .postgres import PgConnection

BATCH = 5000
_MASK = (1 << 64) - 1


@dataclass
class TableResult:
    table: str
    source_rows: int
    target_rows: int
    source_checksum: str
    target_checksum: str
    copied: int = 0             # rows added by this run
    truncated: int = 0

    @property
    def ok(self) -> bool:
        return (self.source_rows == self.target_rows
                and self.source_checksum == self.target_checksum)

    def line(self) -> str:
        state = "ok" if self.ok else "DIFFERS"
        extra = f", {self.truncated} values truncated" if self.truncated else ""
        return (f"{self.table.lower()}: sqlite {self.source_rows} rows {self.source_checksum}, "
                f"postgresql {self.target_rows} rows {self.target_checksum}: {state} "
                f"({self.copied} rows copied now{extra})")


def _pg_type(declared: str) -> str:
    """SQLite's declared type -> the PostgreSQL type of conquest-run's own tables' columns."""
    d = declared.upper()
    if "INT" in d:
        return "bigint"
    if any(w in d for w in ("REAL", "FLOA", "DOUB")):
        return "double precision"
    if "BLOB" in d:
        return "bytea"
    return "text"


def _quoted(name: str) -> str:
    return '"' + name.lower().replace('"', '""') + '"'


def _sqlite_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _source_tables(src: sqlite3.Connection) -> dict[str, list[tuple]]:
    """table -> PRAGMA table_info rows, for every ordinary table of the SQLite index."""
    names = [r[0] for r in src.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name")]
    return {n: src.execute(f"PRAGMA table_info({_sqlite_name(n)})").fetchall() for n in names}


def _target_columns(dst: PgConnection, table: str) -> list[tuple[str, str, int | None]]:
    """(column, data type, character width) of a PostgreSQL table, in order."""
    return [tuple(r) for r in dst.execute(
        "SELECT column_name, data_type, character_maximum_length FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
        (table.lower(),)).fetchall()]


def _target_key(dst: PgConnection, table: str) -> list[str]:
    return [r[0] for r in dst.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(?) AND i.indisprimary",
        (_quoted(table),)).fetchall()]


def _make_own_table(dst: PgConnection, table: str, info: list[tuple]) -> None:
    cols = [f"{_quoted(c[1])} {_pg_type(c[2] or '')}" for c in info]
    key = [c[1] for c in sorted(info, key=lambda c: c[5]) if c[5]]
    if key:
        cols.append(f"PRIMARY KEY ({', '.join(_quoted(k) for k in key)})")
    dst.execute(f"CREATE TABLE IF NOT EXISTS {_quoted(table)} ({', '.join(cols)})")


def _converter(types: list[tuple[str, str, int | None]]) -> Callable[[tuple], tuple]:
    """Source values as the target columns hold them (text as text, char(n) unpadded)."""
    def text(v: Any) -> Any:
        if v is None or isinstance(v, str):
            return v
        if isinstance(v, bytes):
            return v.decode("latin-1")
        return str(v)

    def same(v: Any) -> Any:
        return v
    funcs = [text if t in ("character varying", "text", "character") else same
             for _, t, _ in types]

    def convert(row: tuple) -> tuple:
        return tuple(f(v) for f, v in zip(funcs, row))
    return convert


def _row_hash(row: tuple) -> int:
    canon = json.dumps([v.hex() if isinstance(v, (bytes, memoryview)) else v for v in row],
                       ensure_ascii=False, default=str)
    return int.from_bytes(hashlib.sha256(canon.encode("utf-8")).digest()[:8], "big")


def _checksum(rows, types: list[tuple[str, str, int | None]]) -> tuple[int, str]:
    blank = [t == "character" for _, t, _ in types]
    total, count = 0, 0
    for row in rows:
        row = tuple(v.rstrip(" ") if b and isinstance(v, str) else v for b, v in zip(blank, row))
        total = (total + _row_hash(row)) & _MASK
        count += 1
    return count, f"{total:016x}"


def _cut(row: tuple, widths: list[int | None], table: str, names: list[str],
         notices: list[str]) -> tuple[tuple, int]:
    out, cut = [], 0
    for v, w, n in zip(row, widths, names):
        if w is not None and isinstance(v, str) and len(v) > w:
            notices.append(f"***Truncated {table.lower()}.{n} from {len(v)} to {w} characters")
            v, cut = v[:w], cut + 1
        out.append(v)
    return tuple(out), cut


def _copy_table(src: sqlite3.Connection, dst: PgConnection, table: str,
                source_cols: list[str]) -> TableResult:
    types = [t for t in _target_columns(dst, table) if t[0] in {c.lower() for c in source_cols}]
    names = [t[0] for t in types]
    by_lower = {c.lower(): c for c in source_cols}
    select = (f"SELECT {', '.join(_sqlite_name(by_lower[n]) for n in names)} "
              f"FROM {_sqlite_name(table)}")
    convert = _converter(types)
    widths = [w for _, _, w in types]
    key = _target_key(dst, table)
    insert = (f"INSERT INTO {_quoted(table)} ({', '.join(_quoted(n) for n in names)}) "
              f"VALUES ({', '.join('?' * len(names))})")
    source_rows, source_sum = _checksum((convert(r) for r in src.execute(select)), types)
    target_select = f"SELECT {', '.join(_quoted(n) for n in names)} FROM {_quoted(table)}"
    copied = truncated = 0
    if key:
        insert += f" ON CONFLICT ({', '.join(_quoted(k) for k in key)}) DO NOTHING"
        cur = src.execute(select + " ORDER BY rowid")
        while batch := cur.fetchmany(BATCH):
            rows = []
            for r in batch:
                row, cut = _cut(convert(r), widths, table, names, dst.notices)
                rows.append(row)
                truncated += cut
            dst.execute("BEGIN")
            copied += max(dst.executemany(insert, rows).rowcount, 0)    # conflicts add none
            dst.execute("COMMIT")
    else:
        rows_now, sum_now = _checksum(dst.execute(target_select), types)
        if (rows_now, sum_now) != (source_rows, source_sum):
            dst.execute("BEGIN")
            dst.execute(f"DELETE FROM {_quoted(table)}")
            rows = []
            for r in src.execute(select):
                row, cut = _cut(convert(r), widths, table, names, dst.notices)
                rows.append(row)
                truncated += cut
            dst.executemany(insert, rows)
            dst.execute("COMMIT")
            copied = len(rows)
    target_rows, target_sum = _checksum(dst.execute(target_select), types)
    return TableResult(table, source_rows, target_rows, source_sum, target_sum, copied,
                       truncated)


def migrate(src: sqlite3.Connection, dst: PgConnection, schema: Schema) -> list[TableResult]:
    """Copy every table of ``src`` into ``dst`` (see the module's text); one result per table."""
    ensure_schema(dst, schema)
    tables = _source_tables(src)
    if not tables:
        raise ArchiveError("the SQLite database holds no tables: nothing to migrate")
    known = {t.lower() for t in schema.tables} | {"rtextras", "uidmods"}
    results = []
    for table, info in tables.items():
        if table.lower() not in known:
            _make_own_table(dst, table, info)
        results.append(_copy_table(src, dst, table, [c[1] for c in info]))
    return results
