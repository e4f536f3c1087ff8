"""How the CLI shows a path or a database in its output: short where that stays clear."""

from __future__ import annotations

__all__ = ["shown", "shown_database"]

import os


def shown(path: str | os.PathLike) -> str:
    """A path as short as it is clear: relative to the current directory when below it."""
    text = os.fspath(path)
    try:
        rel = os.path.relpath(text)
    except ValueError:
        return text
    return text if rel.startswith("..") else rel


def shown_database(database: str | os.PathLike) -> str:
    """A SQLite path as ``shown``; a PostgreSQL URL with any password masked."""
    from ..backends import is_postgres_url
    from ..db import index_label
    text = os.fspath(database)
    return index_label(text) if is_postgres_url(text) else shown(text)
