"""The index on PostgreSQL (first step): rebuild, store, summary and query against a real
throwaway PostgreSQL cluster, compared with the same commands on SQLite; dgate's schema; the
sentences for bad URLs; values longer than their column.

The cluster comes from ``_pg_support.py`` (fixtures ``pg_server``, ``pg_url``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from _net_support import free_port
from conquest_run import synthetic
from conquest_run.cli import main
from conquest_run.schema import EXTRAS_COLUMNS, EXTRAS_TABLE, load_schema

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install "
                                                 "'.[test]' installs it)")


def _pg_rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


@pytest.fixture
def archive(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    synthetic.write_linked_rt_set(data, seed=3, patient_id="PG1", ct_slices=3)
    synthetic.write_patient(data, seed=4, patient_id="pg2", ct_slices=2, mr_slices=2, rt=False)
    return tmp_path


def _tables_equal(sqlite_path: Path, url: str, skip: tuple[str, ...] = ("AccessTime",)) -> None:
    """Every table's rows (AccessTime aside: the clock of each run) alike on both sides."""
    schema = load_schema()
    tables = [(t.name, t.column_names()) for t in schema.tables.values()]
    tables.append((EXTRAS_TABLE, [n for n, _ in EXTRAS_COLUMNS]))
    lite = sqlite3.connect(sqlite_path)
    try:
        for name, cols in tables:
            cols = [c for c in cols if c not in skip]
            sql = f"SELECT {', '.join(cols)} FROM {name}"
            want = sorted(lite.execute(sql).fetchall(), key=repr)
            got = sorted(_pg_rows(url, sql), key=repr)
            assert got == want, name
    finally:
        lite.close()


def test_rebuild_gives_the_rows_sqlite_gives(archive, pg_url, capsys):
    assert main(["rebuild", "--database", "lite.db"]) == 0
    assert main(["rebuild", "--database", pg_url]) == 0
    out = capsys.readouterr().out
    assert "10 files indexed, 0 unchanged, 0 skipped, 0 bad" in out
    _tables_equal(archive / "lite.db", pg_url)
    studies = _pg_rows(pg_url, "SELECT studymodal FROM dicomstudies ORDER BY 1")
    assert studies == [("MR\\CT",), ("RTPLAN\\CT\\RTDOSE\\RTSTRUCT",)]
    # the incremental modes run on the same indexer
    assert main(["rebuild", "--database", pg_url, "--refresh"]) == 0
    assert capsys.readouterr().out.startswith("0 files indexed, 10 unchanged")
    (archive / "data" / "pg2").rename(archive / "gone")
    assert main(["rebuild", "--database", pg_url, "--refresh"]) == 0
    assert main(["rebuild", "--database", "lite.db", "--refresh"]) == 0
    _tables_equal(archive / "lite.db", pg_url)
    assert _pg_rows(pg_url, "SELECT count(*) FROM dicompatients") == [(1,)]


def test_schema_is_dgates_in_lower_case(archive, pg_url):
    assert main(["rebuild", "--database", pg_url]) == 0
    schema = load_schema()
    widths = {(t, c): n for t, c, n in _pg_rows(
        pg_url, "SELECT table_name, column_name, character_maximum_length "
                "FROM information_schema.columns WHERE table_schema = 'public'")}
    for table in schema.tables.values():
        for col in table.columns:
            key = (table.name.lower(), col.name.lower())
            assert key in widths, key
            if col.sql_type.startswith(("varchar", "char")):
                assert widths[key] == int(col.sql_type.split("(")[1].rstrip(")")), key
    keys = dict(_pg_rows(pg_url, "SELECT tc.table_name, kcu.column_name FROM "
                         "information_schema.table_constraints tc JOIN "
                         "information_schema.key_column_usage kcu USING (constraint_name) "
                         "WHERE tc.constraint_type = 'PRIMARY KEY'"))
    for table in schema.tables.values():
        if table.key:
            assert keys[table.name.lower()] == table.key.lower()
    indexes = {r[0] for r in _pg_rows(pg_url, "SELECT indexname FROM pg_indexes "
                                              "WHERE schemaname = 'public'")}
    for stmt in schema.conquest_ddl():
        if stmt.startswith("CREATE INDEX"):
            assert stmt.split()[2].lower() in indexes
    views = {r[0] for r in _pg_rows(pg_url, "SELECT viewname FROM pg_views "
                                            "WHERE schemaname = 'public'")}
    assert views == {"v_series", "v_seriesrt"}
    assert _pg_rows(pg_url, "SELECT count(*) FROM v_seriesrt") == [(3,)]


def test_store_summary_and_query_match_sqlite(tmp_path, monkeypatch, pg_url, capsys):
    monkeypatch.chdir(tmp_path)
    incoming = tmp_path / "incoming"
    rt = synthetic.write_linked_rt_set(incoming, seed=9, patient_id="ST1", ct_slices=2)
    ct_files = [incoming / f for f in rt.files[:2]]
    rest = [incoming / f for f in rt.files[2:]]
    sides = (("lite.db", "data_lite"), (pg_url, "data"))
    for db, data in sides:          # the CT first, the RT objects in a second store
        (tmp_path / data).mkdir()
        assert main(["store", "--data", data, "--database", db, *map(str, ct_files)]) == 0
        assert main(["store", "--data", data, "--database", db, *map(str, rest)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("2 files stored") and out[1].startswith("3 files stored"), out
    assert sorted(p.name for p in (tmp_path / "data").rglob("*.dcm")) == sorted(
        p.name for p in (tmp_path / "data_lite").rglob("*.dcm"))
    _tables_equal(tmp_path / "lite.db", pg_url, skip=("AccessTime", "FileMtime"))
    assert _pg_rows(pg_url, "SELECT studymodal FROM dicomstudies") == [
        ("RTDOSE\\RTPLAN\\RTSTRUCT\\CT",)]
    # the same files again: replaced in place, nothing duplicated
    assert main(["store", "--database", pg_url, str(incoming)]) == 0
    assert "5 replaced" in capsys.readouterr().out
    assert _pg_rows(pg_url, "SELECT count(*) FROM dicomimages") == [(5,)]
    summaries = []
    for db, data in sides:
        assert main(["summary", "--data", data, "--database", db]) == 0
        summaries.append(capsys.readouterr().out)
    assert summaries[0] == summaries[1] and len(summaries[0].splitlines()) == 5
    sql = ("SELECT Modality, SeriesDesc FROM DICOMSeries WHERE Modality LIKE ? "
           "ORDER BY Modality")
    answers = []
    for db in ("lite.db", pg_url):
        assert main(["query", "--database", db, sql, "--param", "rt%"]) == 0
        answers.append(capsys.readouterr().out)
    assert answers[0] == answers[1]
    assert answers[0].splitlines()[0] == "Modality\tSeriesDesc"
    assert len(answers[0].splitlines()) == 4
    # a statement that writes is refused before it reaches the server
    assert main(["query", "--database", pg_url, "DELETE FROM DICOMImages"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert _pg_rows(pg_url, "SELECT count(*) FROM dicomimages") == [(5,)]


def test_values_longer_than_their_column_are_cut_with_a_notice(tmp_path, monkeypatch, pg_url,
                                                              capsys):
    monkeypatch.chdir(tmp_path)
    deep = tmp_path / "data" / "PGT" / ("d" * 120) / ("e" * 120)
    synthetic.write_linked_rt_set(deep, seed=11, patient_id="PGT", ct_slices=1)
    assert main(["rebuild", "--database", pg_url]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("4 files indexed")
    notes = [line for line in captured.err.splitlines() if "***Truncated" in line]
    assert len(notes) == 4 and "dicomimages.objectfile" in notes[0], captured.err
    lengths = _pg_rows(pg_url, "SELECT length(objectfile) FROM dicomimages")
    assert lengths == [(255,)] * 4
    # through the writer directly: an over-long name is cut, the batch goes through
    from conquest_run.backends.pgschema import ensure_schema
    from conquest_run.backends.postgres import connect
    from conquest_run.dicomread import ReadSpec, read_header
    from conquest_run.indexer import Indexer
    schema = load_schema()
    rel = synthetic.write_patient(tmp_path / "data", seed=12, patient_id="LONG", ct_slices=1,
                                  rt=False)[0]
    record = read_header(tmp_path / "data" / rel, rel, ReadSpec.from_schema(schema))
    patient = list(record.rows[0])
    patient[1] = "N" * 300
    record.rows = (tuple(patient),) + record.rows[1:]
    conn = connect(pg_url)
    try:
        ensure_schema(conn, schema)
        assert Indexer(conn, schema, tmp_path / "data").add_records([record]) == []
        assert any("dicompatients.patientnam from 300 to 64" in n for n in conn.notices)
    finally:
        conn.close()
    assert _pg_rows(pg_url, "SELECT patientnam FROM dicompatients WHERE patientid = 'LONG'") == [
        ("N" * 64,)]


def test_bad_urls_are_one_sentence_with_the_password_masked(archive, pg_server, pg_url, capsys,
                                                           monkeypatch):
    host, port = pg_server
    unused = free_port()
    cases = [
        (f"postgresql://postgres@127.0.0.1:{unused}/x", "cannot be reached"),
        (f"postgresql://nobody@{host}:{port}/postgres", "refused the login"),
        (f"postgresql://postgres@{host}:{port}/no_such_db", "'no_such_db' does not exist"),
        ("postgresql://postgres@[::1/x", "cannot be parsed"),
        (f"postgresql://postgres@{host}:port/x", "cannot be parsed"),
        (f"postgresql://postgres:s3cret@{host}:{port}/x", "PGPASSWORD or ~/.pgpass"),
        (f"postgresql://{host}:{port}/x?password=s3cret", "PGPASSWORD or ~/.pgpass"),
    ]
    for url, words in cases:
        for command in (["summary"], ["rebuild"], ["query", "SELECT 1 FROM DICOMPatients"]):
            assert main([*command, "--database", url]) == 2, (url, command)
            err = capsys.readouterr().err
            assert words in err, (url, err)
            assert "Traceback" not in err and "s3cret" not in err, err
            assert len(err.strip().splitlines()) == 1, err
    assert "postgres:***@" in (main(["summary", "--database", cases[5][0]]) == 2
                               and capsys.readouterr().err)
    # a database with nothing indexed yet
    for command in (["summary"], ["query", "SELECT 1 FROM DICOMPatients"]):
        assert main([*command, "--database", pg_url]) == 2
        assert "holds no Conquest tables yet" in capsys.readouterr().err
    # a database whose tables came from another dicom.sql
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE dicompatients (patientid varchar(64) PRIMARY KEY, x int)")
    assert main(["rebuild", "--database", pg_url]) == 2
    err = capsys.readouterr().err
    assert "another dicom.sql" in err and pg_url in err and "Traceback" not in err


def test_migrate_is_checked_resumable_and_idempotent(archive, pg_url, capsys):
    assert main(["store", "--database", "lite.db", "--data", "data", "data"]) == 0
    assert main(["rebuild", "--database", "lite.db"]) == 0      # a ConquestRunRuns row more
    capsys.readouterr()
    assert main(["migrate", "--from", "lite.db", "--to", pg_url]) == 0
    out = capsys.readouterr().out.splitlines()
    lines = {line.split(":")[0]: line for line in out[:-1]}
    assert {"dicompatients", "dicomimages", "rtextras", "conquestrunruns",
            "conquestrunaudit"} <= set(lines), out
    assert "sqlite 10 rows" in lines["dicomimages"] and "postgresql 10 rows" in lines[
        "dicomimages"] and lines["dicomimages"].endswith("ok (10 rows copied now)")
    assert out[-1].endswith("all agree")
    _tables_equal(archive / "lite.db", pg_url, skip=())
    # idempotent: nothing copied again; resumable: rows lost on the way come back
    with psycopg.connect(pg_url, autocommit=True) as conn:
        lost = conn.execute("DELETE FROM dicomimages WHERE imagenumbe = '1'").rowcount
    assert lost > 0
    assert main(["migrate", "--from", "lite.db", "--to", pg_url]) == 0
    out = capsys.readouterr().out
    checksum = lines["dicomimages"].split()[4].rstrip(",")
    assert f"postgresql 10 rows {checksum}: ok ({lost} rows copied now)" in out, out
    assert "dicompatients: sqlite 2 rows" in out and "ok (0 rows copied now)" in out
    summaries = []
    for db in ("lite.db", pg_url):
        assert main(["summary", "--database", db]) == 0
        summaries.append(capsys.readouterr().out)
    assert summaries[0] == summaries[1]
    # a row that differs on the PostgreSQL side is reported, exit 1
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE dicompatients SET patientnam = 'CHANGED' WHERE patientid = 'PG1'")
    assert main(["migrate", "--from", "lite.db", "--to", pg_url]) == 1
    out = capsys.readouterr().out
    assert "dicompatients: sqlite 2 rows" in out and "DIFFERS" in out and "1 differ" in out
    assert main(["migrate", "--from", "missing.db", "--to", pg_url]) == 2
    assert main(["migrate", "--from", "lite.db", "--to", "elsewhere.db"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_jobs_history_and_restore_on_an_unreachable_server_say_so(archive, capsys):
    url = "postgresql://postgres@127.0.0.1:1/x"
    (archive / "job.yml").write_text(
        "version: 1\nname: t\narchive: {data: data, database: '" + url + "'}\n"
        "select: {modality: CT}\naction: {dump: {file: x.csv}}\n")
    for argv in (["--dry-run", "job.yml"], ["job.yml"], ["history", "--database", url],
                 ["restore", "1a2b", "--database", url]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "the PostgreSQL server of postgresql://postgres@127.0.0.1:1/x cannot be " \
               "reached" in err, argv
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not list(archive.glob("postgresql*"))          # no SQLite file made of the URL


def test_two_writers_of_one_study_at_once_keep_both_modalities(tmp_path, pg_url):
    """Two connections write two series of one new study in overlapping transactions: the
    second waits on the first's row, then merges its modality into it (in the database)."""
    import threading

    from conquest_run.backends.pgschema import ensure_schema
    from conquest_run.backends.postgres import connect
    from conquest_run.dicomread import ReadSpec, read_header
    from conquest_run.indexer import Indexer
    schema = load_schema()
    data = tmp_path / "data"
    rt = synthetic.write_linked_rt_set(data, seed=21, patient_id="TWO", ct_slices=1)
    spec = ReadSpec.from_schema(schema)
    ct, plan = (read_header(data / rel, rel, spec) for rel in (rt.files[0], rt.files[2]))
    first, second = connect(pg_url), connect(pg_url)
    try:
        ensure_schema(first, schema)
        first.execute("BEGIN")          # the first writer holds the new study's row...
        Indexer(first, schema, data).add_records([ct])
        done = threading.Event()

        def write_second() -> None:
            Indexer(second, schema, data).add_records([plan])
            done.set()
        thread = threading.Thread(target=write_second)
        thread.start()
        assert not done.wait(0.5)       # ...so the second waits for it
        first.execute("COMMIT")
        thread.join(10)
        assert done.is_set()
    finally:
        first.close()
        second.close()
    assert _pg_rows(pg_url, "SELECT studymodal FROM dicomstudies") == [("RTPLAN\\CT",)]
    assert _pg_rows(pg_url, "SELECT count(*) FROM dicomseries") == [(2,)]
