"""Index backends: SQLite (the embedded default, ``engine/db.py``) and PostgreSQL.

``--database`` chooses: a ``postgresql://`` (or ``postgres://``) libpq URL selects PostgreSQL
(``postgres.py`` connections, ``pgschema.py`` dgate's DDL, ``pgwriter.py`` the upserts,
``pgcommands.py`` the archive commands); anything else is a SQLite file as before.
"""

from __future__ import annotations

__all__ = ["is_postgres_url"]

_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(database: object) -> bool:
    """Whether ``--database`` names a PostgreSQL server rather than a SQLite file."""
    return isinstance(database, str) and database.lower().startswith(_SCHEMES)
