"""A throwaway PostgreSQL cluster for the tests (fixtures ``pg_server`` and ``pg_url``, made
available to every test module by ``conftest.py``).

The cluster is started once per session (initdb + pg_ctl, as the ``postgres`` user when run as
root, ``fsync=off``, trust authentication, a free port on 127.0.0.1) and stopped at the end.
A test that uses it is skipped only when psycopg or the PostgreSQL server binaries are not
installed (``pip install '.[test]'``; ``apt-get install postgresql``: ``.ci/run`` does both)."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from _net_support import free_port


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def pg_server():
    """(host, port) of a fresh cluster, trust authentication, user ``postgres``."""
    pgbin = _pg_bin()
    if pgbin is None:
        pytest.skip("the PostgreSQL server binaries (initdb, pg_ctl) are not installed: "
                    "apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="conquest-run-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "cluster", free_port()
    subprocess.run(_as_postgres([str(pgbin / "initdb"), "-D", str(data), "-A", "trust", "-U",
                                 "postgres", "-E", "UTF8", "--locale=C.UTF-8"]),
                   check=True, capture_output=True, timeout=60)
    opts = f"-k {root} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(_as_postgres([str(pgbin / "pg_ctl"), "-D", str(data), "-l",
                                 str(root / "log"), "-w", "-t", "30", "-o", opts, "start"]),
                   check=True, capture_output=True, timeout=60)
    try:
        yield "127.0.0.1", port
    finally:
        subprocess.run(_as_postgres([str(pgbin / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                     "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


_numbers = itertools.count()


@pytest.fixture
def pg_url(pg_server):
    """A new, empty database on the session's cluster."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install "
                                                     "'.[test]' installs it)")
    host, port = pg_server
    name = f"t{os.getpid()}_{next(_numbers)}"
    with psycopg.connect(f"postgresql://postgres@{host}:{port}/postgres", autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@{host}:{port}/{name}"
