"""Running a checked user query, bounded: the second wall behind ``sqlcheck``.

* ``authorizer``: SQLite may only SELECT, read, recurse and call ``ALLOWED_FUNCTIONS``;
* ``limited``: the progress handler stops a statement past ``QueryLimits`` (wall time, VM steps);
* ``run_query`` (rows, optionally capped) and ``query_column`` (a job's selection: the distinct
  values of one column, streamed, so a row explosion does not fill memory).

The reader connections of ``db`` cap every string or blob at ``db.MAX_VALUE_BYTES``.
"""

from __future__ import annotations

__all__ = ["ALLOWED_FUNCTIONS", "DEFAULT_QUERY_TIMEOUT", "QueryLimits", "authorizer", "limited",
           "run_query", "query_column"]

import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from .errors import SqlCheckError

if TYPE_CHECKING:
    from .sqlcheck import CheckedQuery

# SQLite's own names of the functions a job query may call (the authorizer sees these).
ALLOWED_FUNCTIONS = frozenset("""
abs avg count group_concat string_agg max min sum total
coalesce ifnull iif nullif likely unlikely likelihood typeof
length octet_length lower upper trim ltrim rtrim substr substring replace instr printf format
char unicode hex quote concat concat_ws soundex glob like
round sign trunc floor ceil ceiling exp ln log log10 log2 pow power sqrt mod pi random
date time datetime julianday strftime unixepoch timediff
row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value
json json_extract json_array_length json_type json_valid json_quote
""".split())

DEFAULT_QUERY_TIMEOUT = 30.0  # seconds, for --query-timeout
_PROGRESS_EVERY = 10_000      # SQLite VM steps between two calls of the progress handler


@dataclass(frozen=True)
class QueryLimits:
    """What one user query may cost: ``timeout`` seconds, ``max_steps`` SQLite VM steps,
    ``max_rows`` result rows (None: no cap)."""

    timeout: float = DEFAULT_QUERY_TIMEOUT
    max_steps: int = 5_000_000_000
    max_rows: int | None = None

    def describe(self) -> str:
        return f"{self.timeout:g} s (--query-timeout)"


@contextmanager
def limited(conn: sqlite3.Connection, limits: QueryLimits) -> Iterator[list[str]]:
    """Abort any statement on ``conn`` past the limits; yields a list that names the limit
    that stopped it (empty if none did)."""
    deadline = time.monotonic() + limits.timeout
    calls = [0]
    hit: list[str] = []

    def progress() -> int:
        calls[0] += 1
        if time.monotonic() > deadline:
            hit.append(f"it ran longer than {limits.describe()}")
            return 1
        if calls[0] * _PROGRESS_EVERY > limits.max_steps:
            hit.append(f"it took more than {limits.max_steps} SQLite steps")
            return 1
        return 0
    conn.set_progress_handler(progress, _PROGRESS_EVERY)
    try:
        yield hit
    finally:
        conn.set_progress_handler(None, 0)


def authorizer(action: int, arg1: str | None, arg2: str | None, db: str | None,
               trigger: str | None) -> int:
    """SQLite authorizer for job queries: SELECT, READ and allow-listed functions only."""
    if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ,
                  getattr(sqlite3, "SQLITE_RECURSIVE", 33)):
        return sqlite3.SQLITE_OK
    if action == getattr(sqlite3, "SQLITE_FUNCTION", 31):
        return sqlite3.SQLITE_OK if (arg2 or "").lower() in ALLOWED_FUNCTIONS else sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_DENY


def _failed(exc: Exception, hit: list[str], file, line, col) -> SqlCheckError:
    if hit:
        return SqlCheckError(f"the query was stopped: {hit[0]}; narrow it (or raise "
                             "--query-timeout)", file=file, line=line, column=col)
    reason = str(exc)
    if "too big" in reason:
        reason += " (a value may be at most the reader's size limit)"
    return SqlCheckError(f"the query failed: {reason}", file=file, line=line, column=col)


def run_query(conn: sqlite3.Connection, checked: CheckedQuery, *,
              params: Any = (), limits: QueryLimits = QueryLimits(),
              file: str | None = None, line: int | None = None,
              col: int | None = None) -> tuple[list[str], list[tuple]]:
    """Run a checked query under the authorizer and ``limits``; (column names, rows).

    Use a fresh read-only connection (``db.connect_readonly``): SQLite consults the authorizer
    when it prepares a statement, and a connection's statement cache could skip that.
    """
    conn.set_authorizer(authorizer)
    rows: list[tuple] = []
    try:
        with limited(conn, limits) as hit:
            try:
                cur = conn.execute(checked.sql, params)
                names = [d[0] for d in cur.description or ()]
                for row in cur:
                    rows.append(row)
                    if limits.max_rows is not None and len(rows) > limits.max_rows:
                        raise SqlCheckError(f"the query returned more than {limits.max_rows} "
                                            "rows; narrow it or add a LIMIT", file=file,
                                            line=line, column=col)
            except (sqlite3.Error, sqlite3.Warning) as exc:
                raise _failed(exc, hit, file, line, col) from None
    finally:
        conn.set_authorizer(None)
    return names, rows


def query_column(conn: sqlite3.Connection, checked: CheckedQuery, *,
                 limits: QueryLimits = QueryLimits(), file: str | None = None,
                 line: int | None = None, col: int | None = None,
                 params: Any = ()) -> set[str]:
    """The distinct non-null values of ``checked.column``, streamed (a job's selection);
    ``params``: the job variables the query binds (``:name``)."""
    conn.set_authorizer(authorizer)
    out: set[str] = set()
    try:
        with limited(conn, limits) as hit:
            try:
                cur = conn.execute(checked.sql, params)
                names = [d[0].lower() for d in cur.description or ()]
                if checked.column.lower() not in names:
                    raise SqlCheckError(f"the query returned no {checked.column} column (it "
                                        f"returned {', '.join(names) or 'nothing'})",
                                        file=file, line=line, column=col)
                index = names.index(checked.column.lower())
                for row in cur:
                    if row[index] is not None:
                        out.add(str(row[index]))
            except (sqlite3.Error, sqlite3.Warning) as exc:
                raise _failed(exc, hit, file, line, col) from None
    finally:
        conn.set_authorizer(None)
    return out
