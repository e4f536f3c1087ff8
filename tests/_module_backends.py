"""``index_db`` of ``_backends.py`` at module scope: one index per backend for a whole test
module (a module imports ``module_index_db`` from here), so an archive indexed once serves many
tests on each backend.  The PostgreSQL one is a new database on the session's cluster."""

from __future__ import annotations

__all__ = ["module_index_db", "new_pg_database"]

import uuid

import pytest

from _backends import IndexDb


def new_pg_database(host: str, port: int) -> str:
    """The URL of a new, empty database on the cluster at ``host:port``."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install "
                                                     "'.[test]' installs it)")
    name = f"m_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"postgresql://postgres@{host}:{port}/postgres", autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@{host}:{port}/{name}"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_index_db(request, tmp_path_factory) -> IndexDb:
    """A module's index on each backend: a SQLite file in a new folder, or a new PostgreSQL
    database (skipped where the cluster cannot be started)."""
    if request.param == "sqlite":
        return IndexDb("sqlite", str(tmp_path_factory.mktemp("index") / "conquest.db"))
    return IndexDb("postgresql", new_pg_database(*request.getfixturevalue("pg_server")))
