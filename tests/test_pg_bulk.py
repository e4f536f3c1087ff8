"""The full rebuild on PostgreSQL by COPY and one merge (backends/pgbulk.py), and lost
connections (PgConnection.retrying): the same cells as the row-by-row writer and as SQLite
across batches, atomic under kill -9, a terminated backend or a restarted server midway gives
the rows of a clean rebuild, a server that stays down is one sentence."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from _pg_support import pg_restartable  # noqa: F401  (a cluster of the test's own)
from conquest_run import synthetic
from conquest_run.cli import main
from conquest_run.schema import EXTRAS_COLUMNS, EXTRAS_TABLE, load_schema

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install "
                                                 "'.[test]' installs it)")
pydicom = pytest.importorskip("pydicom")

SCHEMA = load_schema()
TABLES = [(t.name, [c for c in t.column_names() if c != "AccessTime"])
          for t in SCHEMA.tables.values()] + [(EXTRAS_TABLE, [n for n, _ in EXTRAS_COLUMNS])]


def _pg_tables(url: str) -> dict[str, list]:
    with psycopg.connect(url) as conn:
        return {name: sorted((tuple(r) for r in conn.execute(
            f"SELECT {', '.join(cols)} FROM {name}").fetchall()), key=repr)
            for name, cols in TABLES}


def _lite_tables(path: Path) -> dict[str, list]:
    conn = sqlite3.connect(path)
    try:
        return {name: sorted(conn.execute(f"SELECT {', '.join(cols)} FROM {name}").fetchall(),
                             key=repr) for name, cols in TABLES}
    finally:
        conn.close()


@pytest.fixture(scope="module")
def shared_tree(tmp_path_factory):
    """150 synthetic files of three patients (BENCH00000..2), made once for the module."""
    data = tmp_path_factory.mktemp("tree") / "data"
    synthetic.generate_files(data, 150, seed="bulk")
    return data


@pytest.fixture
def tree(shared_tree, tmp_path):
    """A copy of ``shared_tree`` this test may change."""
    return Path(shutil.copytree(shared_tree, tmp_path / "data"))


def _new_db(url: str, name: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


def _variant(src: Path, dest: Path, **changes) -> None:
    """A copy of ``src`` with attributes changed (None: removed)."""
    ds = pydicom.dcmread(src)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest)


def _tricky_tree(data: Path) -> None:
    """Keys met again in later batches, with values missing, a duplicate SOP UID, an
    inconsistent link, modalities spread over batches, bad files."""
    rt = synthetic.write_linked_rt_set(data, seed=3, patient_id="PG1", ct_slices=3)
    pg2 = synthetic.write_patient(data, seed=4, patient_id="pg2", ct_slices=2, mr_slices=2,
                                  rt=False)
    shutil.copy(data / rt.files[0], data / "PG1" / "zz_same_sop.dcm")
    _variant(data / pg2[0], data / "pg2" / "zz_no_name.dcm", PatientName=None,
             PatientBirthDate=None, SeriesDescription=None,
             SOPInstanceUID=synthetic.make_uid(7, "noname"))
    _variant(data / pg2[-1], data / "pg2" / "zz_other_study.dcm",
             StudyInstanceUID=synthetic.make_uid(7, "study"),
             SOPInstanceUID=synthetic.make_uid(7, "moved"))
    (data / "pg2" / "empty.dcm").write_bytes(b"")
    (data / "pg2" / "notes.dcm").write_text("not DICOM")


def _rebuilds(data: Path, urls: tuple[str, str], lite: Path, batch: int):
    from conquest_run.backends.pgbulk import rebuild_all
    from conquest_run.backends.pgschema import ensure_schema
    from conquest_run.backends.postgres import connect
    from conquest_run.db import connect as lite_connect, ensure_schema as lite_schema
    from conquest_run.indexer import Indexer
    results, notices = [], []
    lconn = lite_connect(lite)
    try:
        lite_schema(lconn, SCHEMA)
        results.append(Indexer(lconn, SCHEMA, data, batch_size=batch).run(mode="all"))
    finally:
        lconn.close()
    for url, bulk in zip(urls, (False, True)):
        with connect(url) as conn:
            ensure_schema(conn, SCHEMA)
            if bulk:
                results.append(rebuild_all(conn, SCHEMA, data, batch_size=batch))
            else:
                results.append(Indexer(conn, SCHEMA, data, batch_size=batch).run(mode="all"))
            notices.append(conn.notices)
    return results, notices


@pytest.mark.parametrize("batch", [3, 2000])
def test_bulk_rebuild_gives_the_cells_of_the_row_by_row_writer_and_sqlite(tmp_path, pg_url,
                                                                          batch):
    data = tmp_path / "data"
    _tricky_tree(data)
    urls = (pg_url, _new_db(pg_url, f"bulk{batch}"))
    results, _ = _rebuilds(data, urls, tmp_path / "lite.db", batch)
    facts = [(r.indexed, [(b.path, b.reason) for b in r.bad], r.duplicates,
              [(f.path, f.flags) for f in r.flagged]) for r in results]
    assert facts[0] == facts[1] == facts[2]
    assert facts[0][0] == 12 and len(facts[0][1]) == 3, facts[0]
    assert any("inconsistent link" in why for _, why in facts[0][1])
    assert facts[0][2] == ["PG1/zz_same_sop.dcm"], facts[0][2]
    row_by_row, bulk = _pg_tables(urls[0]), _pg_tables(urls[1])
    assert bulk == row_by_row
    assert bulk == _lite_tables(tmp_path / "lite.db")
    # a value too long for its column: cut, with the same notice, on both PostgreSQL paths
    _variant(data / "pg2" / "zz_no_name.dcm", data / "LONG" / ("d" * 120) / ("e" * 120) /
             "long_file.dcm", PatientID="LONG", SOPInstanceUID=synthetic.make_uid(7, "long"),
             StudyInstanceUID=synthetic.make_uid(7, "longstudy"),
             SeriesInstanceUID=synthetic.make_uid(7, "longseries"))
    _, notices = _rebuilds(data, urls, tmp_path / "lite2.db", batch)
    assert notices[0] == notices[1] and any("dicomimages.objectfile from" in n
                                            for n in notices[1]), notices
    assert _pg_tables(urls[0]) == _pg_tables(urls[1])


def _wait_for(url: str, sql: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while not conn.execute(sql).fetchone()[0]:
            assert time.monotonic() < deadline, sql
            time.sleep(0.02)


_WAITING = ("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'conquest-run' "
            "AND wait_event_type = 'Lock'")
_LOCK_ALL = ("LOCK TABLE dicompatients, dicomstudies, dicomseries, dicomimages, rtextras "
             "IN SHARE MODE")


def test_a_killed_full_rebuild_leaves_the_previous_index(tmp_path, tree, pg_url, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tree
    assert main(["rebuild", "--database", pg_url]) == 0
    before = _pg_tables(pg_url)
    shutil.rmtree(data / "BENCH00001")                 # what a finished rebuild would drop
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    with psycopg.connect(pg_url) as holder:            # the merge waits for this lock...
        holder.execute(_LOCK_ALL)
        proc = subprocess.Popen([sys.executable, "-m", "conquest_run", "rebuild", "--database",
                                 pg_url], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            _wait_for(pg_url, _WAITING)                # ...with every row staged
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        holder.rollback()
    assert _pg_tables(pg_url) == before
    assert main(["rebuild", "--database", pg_url]) == 0
    assert main(["rebuild", "--database", "lite.db"]) == 0
    after = _pg_tables(pg_url)
    assert after == _lite_tables(tmp_path / "lite.db") and after != before


def _midway(action, at: int = 100):
    """A progress callback that does ``action`` once, when ``at`` files have been read."""
    done = []

    def progress(n: int, total: int) -> None:
        if n == at and not done:
            done.append(n)
            action()
    return progress


def _rebuild(url: str, data: Path, progress=None, delays=(0.1, 0.2, 0.4, 0.8, 1.6, 3.2)):
    from conquest_run.backends.pgbulk import rebuild_all
    from conquest_run.backends.pgschema import ensure_schema
    from conquest_run.backends.postgres import connect
    said: list[str] = []
    with connect(url, retry_delays=delays) as conn:
        conn.report = said.append
        ensure_schema(conn, SCHEMA)
        result = rebuild_all(conn, SCHEMA, data, progress=progress, batch_size=20)
    return result, said


def test_a_terminated_backend_midway_gives_the_rows_of_a_clean_rebuild(tree, pg_url):
    clean = _new_db(pg_url, "clean_term")
    _rebuild(clean, tree)

    def terminate() -> None:
        with psycopg.connect(pg_url, autocommit=True) as other:
            assert other.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                 "WHERE application_name = 'conquest-run' AND datname = "
                                 "current_database()").fetchone()[0] == 1
    result, said = _rebuild(pg_url, tree, _midway(terminate))
    assert result.indexed == 150 and not result.bad
    assert len(said) == 1 and "was lost" in said[0] and pg_url in said[0], said
    assert _pg_tables(pg_url) == _pg_tables(clean)


def test_a_server_restarted_midway_or_down_for_good(tree, tmp_path, pg_restartable,
                                                    monkeypatch, capsys):
    """Restarted (pg_ctl restart -m fast) midway: the rows of a clean rebuild.  Stopped for
    good midway: one sentence, the index as it was before, exit 2 from the command."""
    from conquest_run.backends import postgres
    from conquest_run.backends.postgres import PgConnectionLost
    cluster = pg_restartable
    url, clean = cluster.url("t"), _new_db(cluster.url(), "clean")
    _rebuild(clean, tree)
    result, said = _rebuild(url, tree, _midway(cluster.restart))
    assert result.indexed == 150 and said and "reconnecting" in said[0]
    before = _pg_tables(url)
    assert before == _pg_tables(clean)
    shutil.rmtree(tree / "BENCH00000")
    with pytest.raises(PgConnectionLost) as caught:
        _rebuild(url, tree, _midway(cluster.stop), delays=(0.05, 0.1))
    text = str(caught.value)
    assert "could not be made again in 2 attempts" in text and url in text
    cluster.start()
    assert _pg_tables(url) == before                   # the interrupted rebuild wrote nothing
    # the command: exit 2, the sentence, no traceback
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(postgres, "RETRY_DELAYS_S", (0.05, 0.1))

    def stop_when_merging() -> None:
        holder = psycopg.connect(url)
        holder.execute(_LOCK_ALL)
        _wait_for(url, _WAITING)
        cluster.stop("immediate")
        holder.close()
    helper = threading.Thread(target=stop_when_merging)
    helper.start()
    assert main(["rebuild", "--database", url]) == 2
    helper.join(30)
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].endswith(
        "run the command again when the server is back"), err
    cluster.start()
    assert _pg_tables(url) == before


def test_store_reconnects_after_its_backend_was_terminated(tmp_path, pg_url):
    from conquest_run.backends.pgschema import ensure_schema
    from conquest_run.backends.postgres import connect
    from conquest_run.store import store
    incoming = tmp_path / "incoming"
    synthetic.write_linked_rt_set(incoming, seed=5, patient_id="ST", ct_slices=3)
    (tmp_path / "data").mkdir()
    said: list[str] = []
    with connect(pg_url, retry_delays=(0.05, 0.1)) as conn:
        conn.report = said.append
        ensure_schema(conn, SCHEMA)
        with psycopg.connect(pg_url, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                          "application_name = 'conquest-run'")
        result = store(conn, SCHEMA, tmp_path / "data", [incoming])
        assert len(result.stored) == 6 and not result.bad
        assert conn.reconnects == 1 and len(said) == 1
        # a batch whose connection goes in the middle of its transaction is written again
        from conquest_run.dicomread import ReadSpec, read_header
        from conquest_run.indexer import Indexer
        more = synthetic.write_patient(tmp_path / "data", seed=6, patient_id="MID",
                                       ct_slices=2, rt=False)
        records = [read_header(tmp_path / "data" / rel, rel, ReadSpec.from_schema(SCHEMA))
                   for rel in more]
        refused: list = []
        with psycopg.connect(pg_url) as holder:
            holder.execute("LOCK TABLE dicompatients IN SHARE MODE")   # the upsert waits...
            writer = threading.Thread(target=lambda: refused.extend(
                Indexer(conn, SCHEMA, tmp_path / "data").add_records(records)))
            writer.start()
            _wait_for(pg_url, _WAITING)
            holder.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                           "application_name = 'conquest-run'")     # ...and its backend goes
            holder.rollback()
            writer.join(30)
        assert not writer.is_alive() and refused == [] and conn.reconnects == 2
    with psycopg.connect(pg_url) as check:
        assert check.execute("SELECT count(*) FROM dicomimages").fetchone()[0] == 8
        assert check.execute("SELECT count(*) FROM rtextras").fetchone()[0] == 8
