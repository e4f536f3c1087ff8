"""Job SQL on a PostgreSQL index, until ``sqlrun`` runs it in PostgreSQL's dialect
(``backends/pgdialect.py``): the one place a plan's selection runs its query there
(``selection_values``, called by ``planner._query_uids``) and the names a dump's query
gives its CSV (``written_names``).  The query is run as ``sqlcheck`` passed it, in the
reader's READ ONLY session, streamed through a server-side cursor; a refusal is one located
sentence; ``:name`` parameters are refused there in this version.
"""

from __future__ import annotations

__all__ = ["selection_values", "written_names"]

from typing import Any

import sqlglot
from sqlglot import exp

from ..db import stream_query
from ..errors import SqlCheckError
from .errors import database_errors, describe


def selection_values(conn, checked: Any, *, file: str | None,
                     line: int | None, col: int | None, params: Any) -> set[str]:
    """A selection's query on PostgreSQL, as checked and written, in the reader's READ ONLY
    session.  The one place a plan runs job SQL there, until ``sqlrun.query_column`` runs it
    in PostgreSQL's dialect (``backends/pgdialect.py``); a refusal is one located sentence."""
    if isinstance(params, dict) and params:
        raise SqlCheckError("a query with :name parameters does not run on a PostgreSQL index "
                            "in this version", file=file, line=line, column=col)
    try:
        names, rows = stream_query(conn, checked.sql, () if isinstance(params, dict)
                                   else params)
        names = [n.lower() for n in names]
        if checked.column.lower() not in names:
            raise SqlCheckError(f"the query returned no {checked.column} column (it returned "
                                f"{', '.join(names) or 'nothing'})", file=file, line=line,
                                column=col)
        index = names.index(checked.column.lower())
        return {str(r[index]) for r in rows if r[index] is not None}
    except database_errors() as exc:
        raise SqlCheckError(f"PostgreSQL refused the query: {describe(exc)}", file=file,
                            line=line, column=col) from None


def written_names(sql: str, names: list[str]) -> list[str]:
    """A query's column names as its SELECT list writes them (PostgreSQL folds them to lower
    case; SQLite keeps them), when the list has no ``*``."""
    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
    except sqlglot.errors.ParseError:
        return names
    if any(isinstance(e, exp.Star) or isinstance(getattr(e, "this", None), exp.Star)
           for e in getattr(tree, "expressions", ())):
        return names
    written = list(tree.named_selects)
    return [w or n for w, n in zip(written, names)] if len(written) == len(names) else names
