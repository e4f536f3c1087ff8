"""Passwords for a PostgreSQL index come from PGPASSWORD or ~/.pgpass, never from a job file or
the URL: a cluster with scram-sha-256 logins (its own, started and stopped by this module)
takes both, and a missing or wrong one is the "refused the login" sentence, exit 2, with no
password echoed."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from _net_support import free_port
from _pg_support import _as_postgres, _pg_bin
from conquest_run import synthetic
from conquest_run.cli import main

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install "
                                                 "'.[test]' installs it)")
SUPER_PW, ALICE_PW = "Sup3r-s3cret", "al1ce-Pw:with@odd/chars"


@pytest.fixture(scope="module")
def scram_server():
    """(host, port) of a cluster where every login needs its password (scram-sha-256), with
    a role ``alice`` owning a database ``pacs``."""
    pgbin = _pg_bin()
    if pgbin is None:
        pytest.skip("the PostgreSQL server binaries are not installed: apt-get install "
                    "postgresql")
    root = Path(tempfile.mkdtemp(prefix="conquest-run-pgpw-"))
    pwfile = root / "pw"
    pwfile.write_text(SUPER_PW + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    data, port = root / "cluster", free_port()
    subprocess.run(_as_postgres([str(pgbin / "initdb"), "-D", str(data), "-A", "scram-sha-256",
                                 "-U", "postgres", f"--pwfile={pwfile}", "-E", "UTF8",
                                 "--locale=C.UTF-8"]), check=True, capture_output=True,
                   timeout=60)
    opts = f"-k {root} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(_as_postgres([str(pgbin / "pg_ctl"), "-D", str(data), "-l",
                                 str(root / "log"), "-w", "-t", "30", "-o", opts, "start"]),
                   check=True, capture_output=True, timeout=60)
    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", password=SUPER_PW,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("CREATE ROLE alice LOGIN PASSWORD {}").format(
                psycopg.sql.Literal(ALICE_PW)))
            conn.execute("CREATE DATABASE pacs OWNER alice")
        yield "127.0.0.1", port
    finally:
        subprocess.run(_as_postgres([str(pgbin / "pg_ctl"), "-D", str(data), "-m",
                                     "immediate", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def archive(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))      # no ~/.pgpass of the machine's
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.delenv("PGPASSFILE", raising=False)
    (tmp_path / "home").mkdir()
    synthetic.write_patient(tmp_path / "data", seed=31, patient_id="PW1", ct_slices=2, rt=False)
    return tmp_path


def _images(host: str, port: int) -> int:
    with psycopg.connect(host=host, port=port, user="alice", password=ALICE_PW,
                         dbname="pacs") as conn:
        return conn.execute("SELECT count(*) FROM dicomimages").fetchone()[0]


def test_the_password_comes_from_pgpassword(scram_server, archive, monkeypatch, capsys):
    host, port = scram_server
    url = f"postgresql://alice@{host}:{port}/pacs"
    monkeypatch.setenv("PGPASSWORD", ALICE_PW)
    assert main(["rebuild", "--database", url]) == 0
    assert capsys.readouterr().out.startswith("2 files indexed")
    assert _images(host, port) == 2


def test_the_password_comes_from_pgpass(scram_server, archive, capsys):
    host, port = scram_server
    pgpass = archive / "home" / ".pgpass"
    escaped = ALICE_PW.replace("\\", "\\\\").replace(":", "\\:")
    pgpass.write_text(f"{host}:{port}:pacs:alice:{escaped}\n")
    pgpass.chmod(0o600)                                  # libpq ignores a readable one
    url = f"postgresql://alice@{host}:{port}/pacs"
    assert main(["summary", "--database", url]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("PW1\t")


@pytest.mark.parametrize("password", [None, "not-the-password"])
def test_a_missing_or_wrong_password_is_a_refused_login(scram_server, archive, monkeypatch,
                                                        capsys, password):
    host, port = scram_server
    if password is not None:
        monkeypatch.setenv("PGPASSWORD", password)
    url = f"postgresql://alice@{host}:{port}/pacs"
    assert main(["summary", "--database", url]) == 2
    err = capsys.readouterr().err
    assert "refused the login" in err and "PGPASSWORD or ~/.pgpass" in err
    assert f"alice@{host}:{port}/pacs" in err
    assert "Traceback" not in err and ALICE_PW not in err
    assert password is None or password not in err


def test_a_password_in_the_url_or_a_job_file_is_refused(scram_server, archive, capsys):
    host, port = scram_server
    url = f"postgresql://alice:{ALICE_PW.replace('@', '%40').replace('/', '%2F')}@{host}:{port}/pacs"
    assert main(["summary", "--database", url]) == 2
    err = capsys.readouterr().err
    assert "carries a password" in err and "PGPASSWORD" in err
    assert "al1ce" not in err and "***" in err
    (archive / "job.yml").write_text(
        "version: 1\nname: t\narchive: {data: data, database: '" + url + "'}\n"
        "select: {modality: CT}\naction: {dump: {file: x.csv}}\n")
    assert main(["--dry-run", "job.yml"]) == 2
    err = capsys.readouterr().err
    assert "carries a password" in err and "al1ce" not in err and "Traceback" not in err
