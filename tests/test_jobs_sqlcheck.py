"""sqlcheck.py: what a job query may be, and the authorizer wall behind it."""

from __future__ import annotations

import sqlite3

import pytest

from conquest_run import db
from conquest_run.errors import SqlCheckError
from conquest_run.schema import load_schema
from conquest_run.sqlcheck import (ALLOWED_FUNCTIONS, CheckedQuery, authorizer, check_query,
                                   run_query)


@pytest.fixture(scope="module")
def schema():
    return load_schema()


@pytest.mark.parametrize("sql, level", [
    ("select SeriesInst from DICOMSeries where Modality = 'RTPLAN'", "series"),
    ("SELECT seriesinst FROM dicomseries WHERE modality = ?", "series"),
    ("select * from v_seriesRT where Nfractions > 10", "instance"),
    ("select SOPInstanc from DICOMImages i join DICOMSeries s on s.SeriesInst = i.SeriesInst "
     "where s.Modality in ('CT', 'MR') and i.ImageNumbe between 1 and 3", "instance"),
    ("with p as (select PatientID from DICOMPatients where PatientSex = 'F') "
     "select SeriesInst from DICOMSeries where SeriesPat in (select PatientID from p)", "series"),
    ("select SeriesInst from DICOMSeries union select SeriesInst from DICOMImages", "series"),
    ("select SeriesInst, count(*) as n from DICOMImages group by SeriesInst having n > 1 "
     "order by n desc limit 5", "series"),
    ("select SeriesInst from DICOMSeries s where exists (select 1 from DICOMImages i "
     "where i.SeriesInst = s.SeriesInst and ObjectFile like '%.dcm')", "series"),
    ("select SeriesInst, group_concat(Modality), upper(trim(SeriesDesc)), "
     "strftime('%Y', SeriesDate), ifnull(SeriesDesc, '') from DICOMSeries group by SeriesInst",
     "series"),
    ("select x.SeriesInst from (select SeriesInst from DICOMSeries) x", "series"),
])
def test_accepted_queries_and_their_level(schema, sql, level):
    assert check_query(sql, schema).level == level


@pytest.mark.parametrize("sql, at, message", [
    ("select SeriesInst from DICOMSeries; delete from DICOMSeries", "delete",
     "only one SQL statement is allowed"),
    ("replace into DICOMSeries (SeriesInst) values ('x')", "replace", "not REPLACE"),
    ("detach database x", "detach", "not DETACH"),
    ("select SeriesInst from DICOMSeries s join Elsewhere e on e.x = s.SeriesInst", "Elsewhere",
     "unknown table Elsewhere"),
    ("select SeriesInst from DICOMSeries where SeriesInst in (select SeriesInst from Bogus)",
     "Bogus", "unknown table Bogus"),
    ("select SeriesInst from other.DICOMSeries", "DICOMSeries", "only the archive's own tables"),
    ("select SeriesInst from sqlite_master", "sqlite_master", "unknown table sqlite_master"),
    ("select s.Nope from DICOMSeries s", "Nope", "unknown column Nope in DICOMSeries"),
    ("with a as (select SeriesInst from DICOMSeries) select Foo from a", "Foo",
     "unknown column Foo"),
    ("select SeriesInst from DICOMSeries s where exists (select 1 from DICOMImages i "
     "where i.SeriesInst = s.SeriesInst and i.Bad = 1)", "Bad", "unknown column Bad in DICOMImages"),
    ("select SeriesInst, writefile('x', 'y') from DICOMSeries", "writefile",
     "writefile() is not allowed"),
    ("select SeriesInst, sqlite_version() from DICOMSeries", "sqlite_version",
     "sqlite_version() is not allowed"),
    ("select SeriesInst from DICOMSeries where SeriesDesc = 'x", "'x", "the quote ' is never closed"),
    ("select SeriesInst as uid from DICOMSeries", "select", "it returns uid"),
])
def test_refused_queries_point_at_the_offending_text(schema, sql, at, message):
    with pytest.raises(SqlCheckError) as info:
        check_query(sql, schema, file="j.yml", line=7, col=1)
    assert (info.value.file, info.value.line, info.value.column) == ("j.yml", 7, sql.index(at) + 1)
    assert message in info.value.message


def test_columns_of_a_custom_dicom_sql_are_the_ones_checked(tmp_path, schema):
    from conquest_run.schema import default_dicom_sql_path
    custom = default_dicom_sql_path().read_text(encoding="latin-1").replace(
        "SeriesDesc", "SeriesDscX")
    path = tmp_path / "dicom.sql"
    path.write_text(custom, encoding="latin-1")
    other = load_schema(path)
    check_query("select SeriesInst from DICOMSeries where SeriesDscX = 'a'", other)
    with pytest.raises(SqlCheckError, match="unknown column SeriesDesc"):
        check_query("select SeriesInst from DICOMSeries where SeriesDesc = 'a'", other)


def _database(tmp_path, schema):
    path = tmp_path / "c.db"
    conn = db.connect(path)
    db.ensure_schema(conn, schema)
    conn.execute("INSERT INTO DICOMSeries (SeriesInst, Modality) VALUES ('1.2', 'RTPLAN')")
    conn.close()
    return path


def test_run_query_returns_rows_on_a_read_only_connection(tmp_path, schema):
    path = _database(tmp_path, schema)
    checked = check_query("select SeriesInst, lower(Modality) m from DICOMSeries", schema)
    conn = db.connect_readonly(path)
    names, rows = run_query(conn, checked)
    conn.close()
    assert names == ["SeriesInst", "m"] and rows == [("1.2", "rtplan")]


@pytest.mark.parametrize("sql", [
    "delete from DICOMSeries",                                  # a write
    "select SeriesInst, load_extension('x') from DICOMSeries",  # a forbidden function
    "pragma writable_schema = 1",
    "attach database ':memory:' as evil",
])
def test_the_authorizer_is_a_second_wall(tmp_path, schema, sql):
    """Even a query that somehow skipped check_query cannot write or load code."""
    path = _database(tmp_path, schema)
    before = path.read_bytes()
    conn = sqlite3.connect(path, isolation_level=None)   # read-write on purpose
    forged = CheckedQuery(sql, "series", "SeriesInst", ("seriesinst",), ("DICOMSeries",))
    with pytest.raises(SqlCheckError, match="not authorized"):
        run_query(conn, forged, file="j.yml", line=3, col=10)
    assert conn.execute("select count(*) from DICOMSeries").fetchone() == (1,)
    conn.close()
    assert path.read_bytes() == before


def test_every_allowed_function_is_a_real_sqlite_function(schema):
    conn = sqlite3.connect(":memory:")
    known = {r[0] for r in conn.execute("select name from pragma_function_list")}
    conn.close()
    newer = {"concat", "concat_ws", "octet_length", "string_agg", "timediff"}  # SQLite >= 3.43
    assert ALLOWED_FUNCTIONS - known <= newer
    assert not {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer",
                "sqlite_version", "zeroblob", "randomblob"} & ALLOWED_FUNCTIONS
    assert authorizer(sqlite3.SQLITE_FUNCTION, None, "load_extension", None, None) == sqlite3.SQLITE_DENY
    assert authorizer(sqlite3.SQLITE_FUNCTION, None, "upper", None, None) == sqlite3.SQLITE_OK
    assert authorizer(sqlite3.SQLITE_INSERT, "DICOMSeries", None, "main", None) == sqlite3.SQLITE_DENY


def test_random_token_soup_is_refused_or_accepted_never_crashes(tmp_path, schema):
    """Whatever the text, the checker answers with a located SqlCheckError or a query that
    then runs (or fails) cleanly under the authorizer."""
    import random
    tokens = ("select SeriesInst SOPInstanc from DICOMSeries DICOMImages v_seriesRT where and or "
              "not ( ) , ; * = 'x' \"y\" 1 2.5 join on as a b group by order having limit union "
              "all with recursive in exists case when then else end null is like between count( "
              "max( lower( load_extension( -- /* */ ` [ ] ? . || distinct values insert pragma "
              "over partition collate nocase cast( int ) text").split()
    path = _database(tmp_path, schema)
    rng = random.Random(5)
    accepted = 0
    for _ in range(600):
        sql = " ".join(rng.choice(tokens) for _ in range(rng.randint(1, 12)))
        if rng.random() < 0.5:
            sql = "select SeriesInst from DICOMSeries where " + sql
        try:
            checked = check_query(sql, schema, file="f.yml", line=2, col=3)
        except SqlCheckError as exc:
            assert exc.file == "f.yml" and exc.line >= 2 and exc.column >= 1
            continue
        accepted += 1
        conn = db.connect_readonly(path)
        try:
            run_query(conn, checked)
        except SqlCheckError:
            pass
        finally:
            conn.close()
    assert accepted > 0
