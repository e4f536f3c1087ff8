"""The column names SQLite would print for a query, so that ``conquest-run query`` on a
PostgreSQL index shows the same header as on SQLite (SQLite names an expression by its text
as written, ``count(*)``, and a column as written, ``Modality``; PostgreSQL says ``count`` and
``modality``).

The statement is prepared against an empty in-memory SQLite database with the archive's
tables and views: no rows are read, only the cursor's description.
"""

from __future__ import annotations

__all__ = ["sqlite_header"]

import sqlite3
from contextlib import closing
from typing import Sequence


def sqlite_header(schema, sql: str, params: Sequence[object] = ()) -> list[str] | None:
    """The header SQLite gives ``sql`` (already checked read-only), or None when SQLite cannot
    prepare it without the real data (a user table, say)."""
    with closing(sqlite3.connect(":memory:")) as conn:
        try:
            for stmt in [*schema.conquest_ddl(), *schema.extras_ddl(), *schema.views_ddl()]:
                conn.execute(stmt)
            cur = conn.execute(sql, tuple(params))
        except sqlite3.Error:
            return None
        return [d[0] for d in cur.description or ()]
