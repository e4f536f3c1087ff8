"""Database errors of either backend, caught and said the same way.

``database_errors()`` is the tuple to catch where the shared code caught ``sqlite3.Error``:
``sqlite3.Error`` plus ``psycopg.Error`` once psycopg is loaded (a PostgreSQL connection was
made; before that no psycopg error can happen, so psycopg is never imported for SQLite runs).
``is_database_error`` and ``describe`` turn one into the sentence the user reads: SQLite's own
words, or PostgreSQL's primary message with its SQLSTATE (never a traceback).
"""

from __future__ import annotations

__all__ = ["database_errors", "is_database_error", "describe", "is_postgres_error"]

import sqlite3
import sys


def _psycopg_error() -> type | None:
    module = sys.modules.get("psycopg")
    return getattr(module, "Error", None) if module is not None else None


def database_errors() -> tuple[type, ...]:
    """``(sqlite3.Error,)``, with ``psycopg.Error`` when psycopg is loaded."""
    pg = _psycopg_error()
    return (sqlite3.Error,) if pg is None else (sqlite3.Error, pg)


def is_postgres_error(exc: BaseException) -> bool:
    pg = _psycopg_error()
    return pg is not None and isinstance(exc, pg)


def is_database_error(exc: BaseException) -> bool:
    return isinstance(exc, database_errors())


def describe(exc: BaseException) -> str:
    """One line: ``psycopg``'s primary message and SQLSTATE, or SQLite's message."""
    if is_postgres_error(exc):
        diag = getattr(exc, "diag", None)
        primary = getattr(diag, "message_primary", None) or str(exc)
        state = getattr(exc, "sqlstate", None)
        text = " ".join(str(primary).split())
        return f"{text} (SQLSTATE {state})" if state else text
    return " ".join(str(exc).split()) or type(exc).__name__
