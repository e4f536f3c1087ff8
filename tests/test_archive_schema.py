"""dicom.sql parsing and the Conquest-exact schema (DDL equality with a real Conquest server)."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import pytest

from conquest_run import db
from conquest_run.dicomsql import parse_dicom_sql, read_dicom_sql
from conquest_run.errors import ArchiveError, DicomSqlError
from conquest_run.schema import EXTRAS_COLUMNS, EXTRAS_TABLE, Schema, load_schema

REPO = Path(__file__).resolve().parents[1]


def ddl_statements(path: Path) -> list[str]:
    """The CREATE statements of a sqlite3 DDL dump, one per line, without the ';'."""
    return [line.rstrip().rstrip(";") for line in path.read_text().splitlines()
            if line.startswith("CREATE ")]


# -- DDL equality ----------------------------------------------------------------------------

def test_builtin_ddl_equals_reference_conquest(reference_dir):
    expected = ddl_statements(reference_dir / "conquest" / "schema.sqlite.sql")
    assert load_schema(None).conquest_ddl() == expected


def test_reference_dicom_sql_gives_reference_ddl(reference_dir):
    schema = load_schema(reference_dir / "conquest" / "dicom.sql")
    assert schema.conquest_ddl() == ddl_statements(reference_dir / "conquest" / "schema.sqlite.sql")


def test_builtin_ddl_equals_committed_fixture(test_data):
    # the same facts, committed with the tests so this runs without ../shared
    expected = ddl_statements(test_data / "conquest" / "schema.sqlite.sql")
    assert len(expected) == 19
    assert load_schema(None).conquest_ddl() == expected


def test_repository_dicom_sql_equals_builtin():
    top = load_schema(REPO / "dicom.sql")
    assert top.conquest_ddl() == load_schema(None).conquest_ddl()


def test_tables_columns_and_roles_match_column_facts(test_data):
    schema = load_schema(None)
    with open(test_data / "conquest" / "columns.tsv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t")
                if not r["role"].startswith("sequence-marker")]
    by_table: dict[str, list[dict]] = {}
    for r in rows:
        by_table.setdefault(r["table"], []).append(r)
    assert set(by_table) == set(schema.tables)
    for name, facts in by_table.items():
        table = schema.tables[name]
        dicom_cols = [c for c in table.columns if c.tag is not None]
        assert [c.name for c in dicom_cols] == [r["column10"] for r in facts]
        for col, r in zip(dicom_cols, facts):
            assert col.tag == (int(r["group"], 16) << 16 | int(r["element"], 16))
            assert col.full_name == r["full_name"]
            assert col.dicom_type == r["dicom_type"]
            want = "char(8)" if r["sql_type"] == "SQL_C_DATE" else f"varchar({r['length']})"
            assert col.sql_type == want
        keys = [r["column10"] for r in facts if r["role"] == "PRIMARY KEY"]
        links = [r["column10"] for r in facts if r["role"] == "link to parent"]
        assert table.key == (keys[0] if keys else None)
        assert table.link == (links[0] if links else None)
        extra = [c.name for c in table.columns if c.tag is None]
        want_extra = ["AccessTime", "qTimeStamp", "qFlags", "qSpare"]
        if name == "DICOMImages":
            want_extra += ["ObjectFile", "DeviceName"]
        assert extra == want_extra


def test_ddl_creates_tables_that_sqlite_reports_back(tmp_path, test_data):
    schema = load_schema(None)
    conn = db.connect(tmp_path / "c.db")
    db.ensure_schema(conn, schema)
    got = {r[0]: r[1] for r in conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL")}
    for stmt in ddl_statements(test_data / "conquest" / "schema.sqlite.sql"):
        name = stmt.split()[2]
        assert got[name] == stmt
    cols = [r[1] for r in conn.execute(f"PRAGMA table_info({EXTRAS_TABLE})")]
    assert cols == [n for n, _ in EXTRAS_COLUMNS]
    # the views are usable and empty
    assert conn.execute("SELECT count(*) FROM v_series").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM v_seriesRT").fetchone() == (0,)
    # ensure_schema twice is harmless
    db.ensure_schema(conn, schema)


def test_ensure_schema_refuses_a_database_from_another_layout(tmp_path, test_data):
    conn = db.connect(tmp_path / "c.db")
    db.ensure_schema(conn, load_schema(None))
    # the dBase layout has more Series/Image columns than this database
    with pytest.raises(ArchiveError, match="another dicom.sql"):
        db.ensure_schema(conn, load_schema(test_data / "conquest" / "dicom.sql.dbase"))


def test_sqlglot_schema_names_tables_views_and_extras():
    s = load_schema(None).sqlglot_schema()
    assert "SOPInstanc" in s["DICOMImages"] and "ObjectFile" in s["DICOMImages"]
    assert s["DICOMImages"]["AccessTime"] == "INT"
    assert "Nfractions" in s[EXTRAS_TABLE]
    assert "Modality" in s["v_series"] and "StudyDate" in s["v_series"]
    assert "hash" in s["v_seriesRT"] and "ObjectFile" in s["v_seriesRT"]


# -- the parser ------------------------------------------------------------------------------

def test_parse_dbase_variant(test_data):
    levels = {lv.section: lv for lv in read_dicom_sql(test_data / "conquest" / "dicom.sql.dbase")}
    assert list(levels) == ["Patient", "Study", "Series", "Image", "WorkList"]
    series = levels["Series"].columns
    assert len(series) > 17                       # denormalised: more columns than dicom.sql
    assert series[0].column == "SeriesInst" and series[-1].column == "StudyInsta"
    image = levels["Image"].columns
    assert image[0].column == "SOPInstanc" and image[-1].column == "SeriesInst"
    schema = Schema(list(levels.values()))
    assert schema.images.link == "SeriesInst" and schema.series.parent == "DICOMStudies"
    wl = levels["WorkList"]
    assert [e.dicom_type for e in wl.entries if e.is_sequence_marker] == [
        "DT_STARTSEQUENCE", "DT_ENDSEQUENCE"]
    assert wl.entries[0].hl7 == "OBR.3"


def test_parse_reference_file_with_missing_comma(reference_dir):
    levels = {lv.section: lv for lv in read_dicom_sql(reference_dir / "conquest" / "dicom.sql")}
    study = [e.column for e in levels["Study"].columns]
    assert study[-2:] == ["PatientSex", "PatientID"]   # no comma between them in the file


MINIMAL = """/* header */
*Patient*
{
  { 0x0010, 0x0020, "PatientID", 64, SQL_C_CHAR, DT_STR }
}
*Study*
{
  { 0x0020, 0x000d, "StudyInstanceUID", 64, SQL_C_CHAR, DT_UI },
  { 32, 13, "PatientIDLink", 64, SQL_C_CHAR, DT_STR }
}
*Series*
{
  { 0x0020, 0x000e, "SeriesInstanceUID", 64, SQL_C_CHAR, DT_UI },
  { 0x0020, 0x000d, "StudyInstanceUID", 64, SQL_C_CHAR, DT_UI }
}
*Image*
{
  { 0x0008, 0x0018, "SOPInstanceUID", 64, SQL_C_CHAR, DT_UI },
  { 0x0020, 0x000e, "SeriesInstanceUID", 64, SQL_C_CHAR, DT_UI }
}
"""


def test_minimal_file_without_worklist_and_decimal_numbers():
    levels = parse_dicom_sql(MINIMAL)
    assert [lv.section for lv in levels] == ["Patient", "Study", "Series", "Image"]
    link = levels[1].columns[1]
    assert (link.group, link.element, link.column) == (32, 13, "PatientIDL")
    ddl = Schema(levels).conquest_ddl()
    assert ddl[0].startswith("CREATE TABLE DICOMPatients (PatientID  varchar(64) PRIMARY KEY")


@pytest.mark.parametrize("broken, line, message", [
    (MINIMAL.replace('"PatientID", 64', '"PatientID" 64'), 4, "expected ','"),
    (MINIMAL.replace("SQL_C_CHAR, DT_UI },\n  { 32", "SQL_C_CHAR, DT_XX },\n  { 32"), 8,
     "unknown DICOM type 'DT_XX'"),
    (MINIMAL.replace("*Series*", "*Serie*"), 11, "unknown section *Serie*"),
    (MINIMAL.replace("/* header */", "/* header"), 1, "never closed"),
    (MINIMAL.replace("*Image*\n{\n  { 0x0008, 0x0018, \"SOPInstanceUID\", 64, SQL_C_CHAR, DT_UI },\n"
                     "  { 0x0020, 0x000e, \"SeriesInstanceUID\", 64, SQL_C_CHAR, DT_UI }\n}\n", ""),
     16, "missing section *Image*"),
    (MINIMAL.replace('"SOPInstanceUID", 64', '"SOPInstanceUID", 0'), 18, "length above 0"),
    (MINIMAL.replace("SQL_C_CHAR, DT_STR }\n}\n*Study*", "SQL_C_BLOB, DT_STR }\n}\n*Study*"), 4,
     "unknown SQL type"),
    (MINIMAL + "*Patient*\n{\n}\n", 21, "appears twice"),
    (MINIMAL.replace('"PatientIDLink"', '"StudyInstanceUIDx"'), 9, "repeats the column on line 8"),
    (MINIMAL.replace("0x0010, 0x0020", "0x10010, 0x0020", 1), 4, "16 bits"),
    (MINIMAL.replace("{\n  { 0x0010, 0x0020", "{\n  ; { 0x0010, 0x0020", 1), 4, "unexpected text"),
    (MINIMAL.rstrip().rstrip("}"), 20, "section *Image* opened on line 16 is never closed"),
])
def test_malformed_files_report_dicom_sql_line(broken, line, message):
    with pytest.raises(DicomSqlError) as info:
        parse_dicom_sql(broken)
    err = info.value
    assert err.line == line, str(err)
    assert str(err).startswith(f"dicom.sql:{line}: ")
    assert message in err.message


def test_unreadable_file_is_a_located_error(tmp_path):
    with pytest.raises(DicomSqlError) as info:
        read_dicom_sql(tmp_path / "nope.sql")
    assert str(info.value).startswith(str(tmp_path / "nope.sql") + ": cannot read")


def test_views_return_rt_rows(tmp_path):
    schema = load_schema(None)
    conn = db.connect(tmp_path / "c.db")
    db.ensure_schema(conn, schema)
    conn.execute("INSERT INTO DICOMStudies (StudyInsta, PatientID) VALUES ('st', 'p')")
    conn.execute("INSERT INTO DICOMSeries (SeriesInst, Modality, StudyInsta) VALUES "
                 "('se1', 'RTPLAN', 'st'), ('se2', 'CT', 'st')")
    conn.execute("INSERT INTO DICOMImages (SOPInstanc, SeriesInst) VALUES ('i1', 'se1'), "
                 "('i2', 'se2')")
    conn.execute(f"INSERT INTO {EXTRAS_TABLE} (SOPInstanc, Nfractions) VALUES ('i1', 30)")
    assert conn.execute("SELECT SeriesInst, Nfractions FROM v_seriesRT").fetchall() == [
        ("se1", 30)]
    assert sorted(conn.execute("SELECT SeriesInst FROM v_series").fetchall()) == [
        ("se1",), ("se2",)]
    assert isinstance(conn, sqlite3.Connection)


def test_ensure_schema_adds_the_flags_column_to_an_older_extras_table(tmp_path):
    schema = load_schema(None)
    path = tmp_path / "old.db"
    conn = db.connect(path)
    for stmt in schema.conquest_ddl():
        conn.execute(stmt)
    old = ", ".join(f"{n} {t}" for n, t in EXTRAS_COLUMNS if n != "Flags")
    conn.execute(f"CREATE TABLE {EXTRAS_TABLE} ({old})")
    conn.execute(f"INSERT INTO {EXTRAS_TABLE} (SOPInstanc, FileSize) VALUES ('1.2', 10)")
    for stmt in schema.views_ddl():       # the views as an older version made them
        conn.execute(stmt.replace(f", {EXTRAS_TABLE}.Flags", ""))
    db.ensure_schema(conn, schema)
    assert conn.execute(f"SELECT SOPInstanc, FileSize, Flags FROM {EXTRAS_TABLE}").fetchall() == \
        [("1.2", 10, None)]
    names = [d[0] for d in conn.execute("SELECT * FROM v_seriesRT").description]
    assert "Flags" in names
    conn.close()
