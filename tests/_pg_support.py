"""A throwaway PostgreSQL cluster for the tests (fixtures ``pg_server`` and ``pg_url``, made
available to every test module by ``conftest.py``; ``pg_restartable``, a cluster of one test's
own that it may stop and restart, imported by the modules that use it).

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


class PgCluster:
    """A throwaway cluster in a temporary folder: ``start``, ``stop``, ``restart``, ``url``."""

    def __init__(self, pgbin: Path, *, fsync: bool = False) -> None:
        self.pgbin = pgbin
        self.root = Path(tempfile.mkdtemp(prefix="conquest-run-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.data, self.port = self.root / "cluster", free_port()
        self.host = "127.0.0.1"
        subprocess.run(_as_postgres([str(pgbin / "initdb"), "-D", str(self.data), "-A", "trust",
                                     "-U", "postgres", "-E", "UTF8", "--locale=C.UTF-8"]),
                       check=True, capture_output=True, timeout=60)
        self.opts = (f"-k {self.root} -p {self.port} -c listen_addresses=127.0.0.1 "
                     f"-c fsync={'on' if fsync else 'off'}")

    def _ctl(self, *args: str, check: bool = True) -> None:
        subprocess.run(_as_postgres([str(self.pgbin / "pg_ctl"), "-D", str(self.data), *args]),
                       check=check, capture_output=True, timeout=60)

    def start(self) -> None:
        self._ctl("-l", str(self.root / "log"), "-w", "-t", "30", "-o", self.opts, "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "stop", check=False)

    def restart(self, mode: str = "fast") -> None:
        self._ctl("-l", str(self.root / "log"), "-m", mode, "-w", "-t", "30", "-o", self.opts,
                  "restart")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{dbname}"

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def _cluster(fsync: bool = False) -> PgCluster:
    pgbin = _pg_bin()
    if pgbin is None:
        pytest.skip("the PostgreSQL server binaries (initdb, pg_ctl) are not installed: "
                    "apt-get install postgresql")
    cluster = PgCluster(pgbin, fsync=fsync)
    try:
        cluster.start()
    except BaseException:
        shutil.rmtree(cluster.root, ignore_errors=True)
        raise
    return cluster


@pytest.fixture(scope="session")
def pg_server():
    """(host, port) of a fresh cluster, trust authentication, user ``postgres``."""
    cluster = _cluster()
    try:
        yield cluster.host, cluster.port
    finally:
        cluster.remove()


@pytest.fixture
def pg_restartable():
    """A cluster of this test's own (a ``PgCluster``: it may be stopped and restarted), with
    an empty database ``t``: ``pg_restartable.url("t")``."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install '.[test]')")
    import psycopg
    cluster = _cluster()
    try:
        with psycopg.connect(cluster.url(), autocommit=True) as c:
            c.execute("CREATE DATABASE t")
        yield cluster
    finally:
        cluster.remove()


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
