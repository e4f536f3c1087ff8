"""User tables on both backends, with the same expectations: ``Archive.insert_rows`` (created,
widened, refused names, nothing half-written), ``conquest-run load-csv``, their discovery
(``user_tables``, ``schema_of``) and job queries over them.  On PostgreSQL the names are lower
case and the columns typed (widened as the values need)."""

from __future__ import annotations

import textwrap
import threading
from contextlib import closing

import pytest

from conquest_run import db, synthetic
from conquest_run.archive import Archive
from conquest_run.cli import main
from conquest_run.errors import ArchiveError
from conquest_run.planner import plan_selection
from conquest_run.usertables import insert_rows, schema_of, user_tables

from _module_backends import module_index_db  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def arc(module_index_db, tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    rt = synthetic.write_linked_rt_set(root / "data", seed=3, patient_id="OWN1", ct_slices=2)
    archive = Archive(root / "data", module_index_db.arg)
    archive.rebuild()
    return archive, module_index_db, rt


def _columns(index_db, table):
    """(lower-case name, declared type) of a table's columns, read without conquest-run."""
    if index_db.on_postgres:
        return index_db.rows("SELECT column_name, data_type FROM information_schema.columns "
                             "WHERE table_schema = current_schema() AND table_name = ? "
                             "ORDER BY ordinal_position", (table.lower(),))
    return [(n.lower(), t) for n, t in index_db.rows(
        "SELECT name, type FROM pragma_table_info(?)", (table,))]


def _has_table(index_db, table) -> bool:
    return bool(_columns(index_db, table))


def test_insert_rows_creates_the_table_then_adds_later_keys(arc):
    archive, index_db, _ = arc
    hostile = "x'); DROP TABLE DICOMSeries; --"
    assert archive.insert_rows("Review", [{"n": 1, "uid": "1.2", "ok": 1, "score": 0.5},
                                          {"n": 2, "uid": hostile, "ok": True}]) == 2
    assert archive.insert_rows("review", [{"n": 3, "uid": "1.3", "Note": "late key",
                                           "ok": None}]) == 1
    types = ([("n", "bigint"), ("uid", "text"), ("ok", "bigint"), ("score", "double precision"),
              ("note", "text")] if index_db.on_postgres else
             [("n", "INTEGER"), ("uid", "TEXT"), ("ok", "INTEGER"), ("score", "REAL"),
              ("note", "TEXT")])
    assert _columns(index_db, "review") == types
    assert index_db.rows("SELECT n, uid, ok, score, Note FROM Review ORDER BY n") == [
        (1, "1.2", 1, 0.5, None), (2, hostile, 1, None, None), (3, "1.3", None, None, "late key")]
    assert index_db.rows("SELECT count(*) FROM DICOMSeries") == [(4,)]
    assert archive.insert_rows("review", []) == 0


def test_a_column_takes_what_comes_later(arc):
    """SQLite keeps any value in any column; PostgreSQL widens the column (integer, decimal,
    text): the values read back the same."""
    archive, index_db, _ = arc
    archive.insert_rows("later", [{"k": 1, "v": 35, "w": 1}, {"k": 2, "w": 2.5}])
    archive.insert_rows("later", [{"k": 3, "v": 0.5}])
    archive.insert_rows("later", [{"k": 4, "v": "abc"}, {"k": 5, "v": 12345678901234}])
    rows = index_db.rows("SELECT k, v, w FROM later ORDER BY k")
    assert [str(v) for _, v, _ in rows] == ["35", "None", "0.5", "abc", "12345678901234"]
    assert [w for _, _, w in rows] == [1, 2.5, None, None, None]
    assert index_db.rows("SELECT sum(w) FROM later") == [(3.5,)]


@pytest.mark.parametrize("table", ["DICOMSeries", "dicomimages", "RTExtras", "UIDMODS",
                                   "ConquestRunAudit", "conquestrunsendqueue", "v_series",
                                   "v_seriesRT", "sqlite_master", "pg_class", "PG_anything"])
def test_conquest_ours_and_the_engines_tables_are_refused(arc, table):
    archive, index_db, _ = arc
    before = _columns(index_db, table)
    with pytest.raises(ArchiveError, match="one of Conquest's or conquest-run's tables"):
        archive.insert_rows(table, [{"a": 1}])
    assert _columns(index_db, table) == before


@pytest.mark.parametrize("table, rows, message", [
    ('x"; drop table y; --', [{"a": 1}], "must start with a letter"),
    ("t" * 64, [{"a": 1}], "at most 63"),
    ("t", [{"a b": 1}], "row 1: column name 'a b' must start"),
    ("t", [{"a": 1}, {"a": [1, 2]}], "row 2: the value of a is a list"),
    ("t", [{"a": 1}, "not a row"], "row 2: must be a non-empty mapping"),
    ("t", [{"a": 1, "A": 2}], "column A is given twice"),
    ("t", [{"a": 1}, {"a": 1 << 64}], "row 2: the value of a is an integer beyond 64 bits"),
])
def test_bad_rows_write_nothing(arc, table, rows, message):
    archive, index_db, _ = arc
    with pytest.raises(ArchiveError, match=message):
        archive.insert_rows(table, rows)
    assert not _has_table(index_db, "t") and not _has_table(index_db, "t" * 63)


def test_what_a_postgresql_column_cannot_hold_is_refused_whole(arc):
    archive, index_db, _ = arc
    if not index_db.on_postgres:
        pytest.skip("SQLite holds a NUL character and bytes beside text")
    with pytest.raises(ArchiveError, match="row 2: the value of b holds a NUL character"):
        archive.insert_rows("nul", [{"b": "ok"}, {"b": "a\x00b"}])
    with pytest.raises(ArchiveError, match="row 2: column b mixes bytes with other values"):
        archive.insert_rows("nul", [{"b": b"\x01"}, {"b": "text"}])
    archive.insert_rows("blobs", [{"b": b"\x00\x01"}])
    with pytest.raises(ArchiveError, match="column b of blobs holds bytes and these rows give "
                                           "it numbers or text"):
        archive.insert_rows("blobs", [{"a": 1}, {"b": "text"}])
    with closing(db.connect(index_db.arg)) as conn:     # a table of the user's own types
        conn.execute("CREATE TABLE typed (n integer, c varchar(4))")
    with pytest.raises(ArchiveError, match="PostgreSQL refused the rows for typed, none written: "
                                           "value too long for type character varying"):
        archive.insert_rows("typed", [{"n": 1, "c": "abcd"}, {"n": 2, "c": "abcde"}])
    archive.insert_rows("typed", [{"n": 2.0, "c": 12}])        # PostgreSQL casts them
    assert _columns(index_db, "typed") == [("n", "integer"), ("c", "character varying")]
    assert index_db.rows("SELECT n, c FROM typed") == [(2, "12")]
    assert not _has_table(index_db, "nul")
    assert _columns(index_db, "blobs") == [("b", "bytea")]
    assert index_db.rows("SELECT b FROM blobs") == [(b"\x00\x01",)]


def test_user_tables_are_discovered_in_the_current_schema(arc):
    archive, index_db, _ = arc
    archive.insert_rows("Approved", [{"series": "1.2.3", "by": "nobody"}])
    mine = ("CREATE TABLE mine (a bigint, b double precision, c varchar(8))"
            if index_db.on_postgres else "CREATE TABLE mine (a INTEGER, b REAL, c VARCHAR(8))")
    with closing(db.connect(index_db.arg)) as conn, db.committing(conn):
        conn.execute(mine)
        if index_db.on_postgres:         # another schema's table is not the index's
            conn.execute("CREATE SCHEMA elsewhere")
            conn.execute("CREATE TABLE elsewhere.hidden (x text)")
    with closing(db.connect_reader(index_db.arg)) as conn:
        found = {t.lower(): cols for t, cols in user_tables(conn, archive.schema).items()}
    assert found["approved"] == {"series": "TEXT", "by": "TEXT"}
    assert {c.lower(): t for c, t in found["mine"].items()} == {"a": "INT", "b": "REAL",
                                                                "c": "TEXT"}
    assert "hidden" not in found and "dicomseries" not in found and "rtextras" not in found
    known = {t.lower() for t in schema_of(archive).sqlglot_schema()}
    assert {"approved", "mine", "dicomseries"} <= known


def test_job_queries_read_user_tables(arc, tmp_path, capsys):
    archive, index_db, rt = arc
    archive.insert_rows("chosen", [{"series": rt.rtplan_series_uid, "by": "dr who"},
                                   {"series": "1.2.3", "by": "nobody"}])
    query = "select SeriesInst from DICOMSeries where SeriesInst in (select series from chosen)"
    step = plan_selection(archive, {"query": query}, "copy", {"destination": "x"}).steps[0]
    assert [s.series_uid for s in step.series] == [rt.rtplan_series_uid]
    job = tmp_path / "chosen.yml"
    job.write_text(textwrap.dedent(f"""\
        version: 1
        archive: {{data: {archive.data_dir}, database: "{index_db.arg}"}}
        steps:
          - name: copy
            select:
              query: {query}
            action:
              copy: {{destination: {tmp_path / "out"}}}
          - name: table
            action: {{dump: {{file: {tmp_path / "chosen.csv"}, table: chosen}}}}
          - name: joined
            select:
              query: >-
                select c.series as SeriesInst, c.by, s.Modality from chosen c
                join DICOMSeries s on s.SeriesInst = c.series
            action: {{dump: {{file: {tmp_path / "joined.csv"}}}}}
        """))
    assert main(["--validate", str(job)]) == 0, capsys.readouterr().err
    assert main([str(job)]) == 0, capsys.readouterr().err
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 1
    assert (tmp_path / "chosen.csv").read_text().splitlines() == [
        "series,by", f"{rt.rtplan_series_uid},dr who", "1.2.3,nobody"]
    assert (tmp_path / "joined.csv").read_text().splitlines() == [
        "SeriesInst,by,Modality", f"{rt.rtplan_series_uid},dr who,RTPLAN"]
    assert main(["query", "--data", str(archive.data_dir), "--database", index_db.arg,
                 "select by from chosen where series like '2.25.%'"]) == 0
    out = capsys.readouterr().out
    assert "dr who" in out and "nobody" not in out
    # an unknown column of a user table is still an error, located in the job
    job.write_text(job.read_text().replace("select series from", "select serie from"))
    assert main(["--validate", str(job)]) == 2
    assert "unknown column serie" in capsys.readouterr().err


def test_load_csv_types_cells_and_locates_a_bad_line(arc, tmp_path, capsys):
    archive, index_db, _ = arc
    flags = ["--data", str(archive.data_dir), "--database", index_db.arg]
    good = tmp_path / "dose.csv"
    good.write_text("PatientID,dose,fractions,note\n00123,70.0,35,\nOWN1,60,30,boost\n")
    assert main(["load-csv", str(good), "--table", "dose_review", *flags]) == 0
    assert "2 rows added to dose_review" in capsys.readouterr().out
    assert index_db.rows("SELECT * FROM dose_review ORDER BY PatientID") == [
        ("00123", 70.0, 35, None), ("OWN1", 60, 30, "boost")]
    assert main(["load-csv", str(good), "--table", "as_text", "--as-text", *flags]) == 0
    assert index_db.rows("SELECT fractions FROM as_text ORDER BY fractions") == [("30",),
                                                                                 ("35",)]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,4,5\n")
    assert main(["load-csv", str(bad), "--table", "bad_one", *flags]) == 2
    assert f"{bad}:3: this row has 3 fields, the header 2" in capsys.readouterr().err
    assert main(["load-csv", str(good), "--table", "DICOMPatients", *flags]) == 2
    err = capsys.readouterr().err
    assert "one of Conquest's or conquest-run's tables" in err and "Traceback" not in err
    assert not _has_table(index_db, "bad_one")
    missing = (index_db.arg.rsplit("/", 1)[0] + "/no_such_db" if index_db.on_postgres
               else str(tmp_path / "nothere" / "conquest.db"))
    assert main(["load-csv", str(good), "--table", "t", "--data", str(archive.data_dir),
                 "--database", missing]) == 2
    err = capsys.readouterr().err
    assert ("does not exist" if index_db.on_postgres else "does not exist") in err
    assert "Traceback" not in err


def test_two_first_inserts_at_once_both_land(arc):
    archive, index_db, _ = arc
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def insert(n: int) -> None:
        with closing(archive.connect()) as conn:      # both connected before either writes
            start.wait(timeout=10)
            try:
                insert_rows(conn, "racey", [{"writer": n, f"only{n}": n}], archive.schema)
            except BaseException as exc:          # said below, with the other writer's result
                errors.append(exc)
    threads = [threading.Thread(target=insert, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert index_db.rows("SELECT writer, only1, only2 FROM racey ORDER BY writer") == [
        (1, 1, None), (2, None, 2)]


def test_a_lost_connection_is_made_again_and_the_work_done_once(arc, tmp_path):
    """insert_rows, add_missing_columns and refresh_columns on PostgreSQL: the server ends the
    session before each; a note, a new connection, the whole transaction done once."""
    archive, index_db, _ = arc
    if not index_db.on_postgres:
        pytest.skip("a SQLite file has no connection to lose")
    import psycopg

    from conquest_run.backends.postgres import connect
    from conquest_run.extracolumns import add_missing_columns, refresh_columns
    from conquest_run.schema import default_dicom_sql_path, load_schema
    layout = tmp_path / "dicom.sql"
    link = '\t{ 0x0020, 0x000e, "SeriesInstanceUID", 64, SQL_C_CHAR, DT_UI }\n}'
    layout.write_text(default_dicom_sql_path().read_text().replace(
        link, '\t{ 0x0028, 0x0010, "PixRows", 5, SQL_C_CHAR, DT_UINT16 },\n' + link))
    schema = load_schema(layout)
    notes: list[str] = []
    with closing(connect(index_db.arg, retry_delays=(0.05, 0.05))) as conn:
        conn.report = notes.append

        def lose() -> None:
            with psycopg.connect(index_db.arg, autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s)", (conn.raw.info.backend_pid,))
        lose()
        assert insert_rows(conn, "lost", [{"n": 1}, {"n": 2}], archive.schema) == 2
        lose()
        assert add_missing_columns(conn, schema, ["PixRows"]) == [("DICOMImages", "PixRows")]
        lose()
        result = refresh_columns(conn, schema, archive.data_dir, [("DICOMImages", "PixRows")])
    assert len(notes) == 3 and all("was lost" in n and "reconnecting" in n for n in notes)
    assert index_db.rows("SELECT n FROM lost ORDER BY n") == [(1,), (2,)]
    images = index_db.rows("SELECT count(*) FROM DICOMImages")[0][0]
    assert result["rows_updated"] == images
    assert index_db.rows("SELECT count(*) FROM DICOMImages WHERE PixRows = '16'") == [(2,)]
