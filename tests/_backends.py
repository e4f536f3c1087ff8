"""Both index backends under one fixture: ``index_db`` is parametrized ``sqlite`` /
``postgresql`` (a new database on the session's throwaway cluster, see ``_pg_support.py``),
so a test written once runs on both with identical expectations.

    def test_x(index_db):
        main(["rebuild", "--database", index_db.arg])
        assert index_db.rows("SELECT count(*) FROM DICOMImages") == [(5,)]

``rows`` takes SQLite-style SQL (``?`` parameters, mixed-case names) on both: on PostgreSQL
the names fold to dgate's lower case, as the engine's own statements do.
"""

from __future__ import annotations

__all__ = ["IndexDb", "index_db"]

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class IndexDb:
    backend: str          # "sqlite" | "postgresql"
    arg: str              # what --database / archive.database takes: a file path or a URL

    @property
    def on_postgres(self) -> bool:
        return self.backend == "postgresql"

    def exists(self) -> bool:
        """The SQLite file exists / the PostgreSQL database has Conquest's tables."""
        if not self.on_postgres:
            return Path(self.arg).is_file()
        return bool(self.rows("SELECT 1 FROM information_schema.tables WHERE table_name = "
                              "'dicomimages'"))

    def rows(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        if not self.on_postgres:
            conn = sqlite3.connect(f"file:{Path(self.arg).resolve()}?mode=ro", uri=True)
            try:
                return [tuple(r) for r in conn.execute(sql, tuple(params)).fetchall()]
            finally:
                conn.close()
        import psycopg

        from conquest_run.backends.postgres import fold_quoted_names
        text = fold_quoted_names(sql).replace("%", "%%").replace("?", "%s")
        with psycopg.connect(self.arg, autocommit=True) as conn:
            return [tuple(r) for r in conn.execute(text, list(params)).fetchall()]


@pytest.fixture(params=["sqlite", "postgresql"])
def index_db(request, tmp_path) -> IndexDb:
    """The index of a test on each backend: ``tmp_path/conquest.db``, or a new PostgreSQL
    database (skipped where the cluster cannot be started)."""
    if request.param == "sqlite":
        return IndexDb("sqlite", str(tmp_path / "conquest.db"))
    return IndexDb("postgresql", request.getfixturevalue("pg_url"))
