"""Own data beside the archive: ``Archive.insert_rows``, ``conquest-run load-csv`` and job
queries over those tables (the SQL check learns them from the database)."""

from __future__ import annotations

import sqlite3
import textwrap

import pytest

from conquest_run import synthetic
from conquest_run.archive import Archive
from conquest_run.cli import main
from conquest_run.errors import ArchiveError
from conquest_run.planner import plan_selection


@pytest.fixture
def archive(tmp_path):
    synthetic.write_linked_rt_set(tmp_path / "data", seed=3, patient_id="OWN1", ct_slices=2)
    arc = Archive(tmp_path / "data", tmp_path / "conquest.db")
    arc.rebuild()
    return arc


def _rows(arc, sql):
    with sqlite3.connect(arc.database) as conn:
        return conn.execute(sql).fetchall()


def _series(arc, modality):
    return _rows(arc, f"SELECT SeriesInst FROM DICOMSeries WHERE Modality = '{modality}'")[0][0]


def test_insert_rows_creates_the_table_then_adds_later_keys(archive):
    hostile = "x'); DROP TABLE DICOMSeries; --"
    assert archive.insert_rows("review", [{"uid": "1.2", "ok": 1, "score": 0.5},
                                          {"uid": hostile, "ok": True}]) == 2
    assert archive.insert_rows("review", [{"uid": "1.3", "note": "late key", "ok": None}]) == 1
    cols = _rows(archive, "PRAGMA table_info(review)")
    assert [(c[1], c[2]) for c in cols] == [("uid", "TEXT"), ("ok", "INTEGER"),
                                            ("score", "REAL"), ("note", "TEXT")]
    assert _rows(archive, "SELECT * FROM review") == [
        ("1.2", 1, 0.5, None), (hostile, 1, None, None), ("1.3", None, None, "late key")]
    assert _rows(archive, "SELECT count(*) FROM DICOMSeries")[0][0] == 4
    assert archive.insert_rows("review", []) == 0


@pytest.mark.parametrize("table", ["DICOMSeries", "dicomimages", "RTExtras", "UIDMODS",
                                   "ConquestRunAudit", "ConquestRunAnything", "v_series",
                                   "sqlite_master"])
def test_conquest_and_our_tables_are_refused(archive, table):
    with pytest.raises(ArchiveError, match="one of Conquest's or conquest-run's tables"):
        archive.insert_rows(table, [{"a": 1}])


@pytest.mark.parametrize("table, rows, message", [
    ('x"; drop table y; --', [{"a": 1}], "must start with a letter"),
    ("t", [{"a b": 1}], "row 1: column name 'a b' must start"),
    ("t", [{"a": 1}, {"a": [1, 2]}], "row 2: the value of a is a list"),
    ("t", [{"a": 1}, "not a row"], "row 2: must be a non-empty mapping"),
    ("t", [{"a": 1, "A": 2}], "column A is given twice"),
])
def test_bad_rows_write_nothing(archive, table, rows, message):
    with pytest.raises(ArchiveError, match=message):
        archive.insert_rows(table, rows)
    assert _rows(archive, "SELECT name FROM sqlite_master WHERE name = 't'") == []


def test_job_queries_read_user_tables(archive, tmp_path, capsys):
    plan_uid = _series(archive, "RTPLAN")
    archive.insert_rows("approved", [{"series": plan_uid, "by": "dr who"},
                                     {"series": "1.2.3", "by": "nobody"}])
    query = "select SeriesInst from DICOMSeries where SeriesInst in (select series from approved)"
    step = plan_selection(archive, {"query": query}, "copy", {"destination": "x"}).steps[0]
    assert [s.series_uid for s in step.series] == [plan_uid]
    job = tmp_path / "approved.yml"
    job.write_text(textwrap.dedent(f"""\
        version: 1
        archive: {{data: {archive.data_dir}, database: {archive.database}}}
        select:
          query: {query}
        action:
          copy: {{destination: {tmp_path / "out"}}}
        """))
    assert main(["--validate", str(job)]) == 0, capsys.readouterr().err
    assert main([str(job)]) == 0, capsys.readouterr().err
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 1
    assert main(["query", "--data", str(archive.data_dir), "--database", str(archive.database),
                 "select by from approved order by by"]) == 0
    assert "dr who" in capsys.readouterr().out
    # an unknown column of a user table is still an error, located in the job
    job.write_text(job.read_text().replace("select series from", "select serie from"))
    assert main(["--validate", str(job)]) == 2
    assert "unknown column serie" in capsys.readouterr().err


def test_load_csv_types_cells_and_locates_a_bad_line(archive, tmp_path, capsys):
    flags = ["--data", str(archive.data_dir), "--database", str(archive.database)]
    good = tmp_path / "dose.csv"
    good.write_text("PatientID,dose,fractions,note\n00123,70.0,35,\nOWN1,60,30,boost\n")
    assert main(["load-csv", str(good), "--table", "dose_review", *flags]) == 0
    assert "2 rows added to dose_review" in capsys.readouterr().out
    assert _rows(archive, "SELECT * FROM dose_review") == [("00123", 70.0, 35, None),
                                                           ("OWN1", 60, 30, "boost")]
    assert main(["load-csv", str(good), "--table", "as_text", "--as-text", *flags]) == 0
    assert _rows(archive, "SELECT fractions FROM as_text")[0] == ("35",)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,4,5\n")
    assert main(["load-csv", str(bad), "--table", "bad_one", *flags]) == 2
    assert f"{bad}:3: this row has 3 fields, the header 2" in capsys.readouterr().err
    assert main(["load-csv", str(good), "--table", "DICOMPatients", *flags]) == 2
    err = capsys.readouterr().err
    assert "one of Conquest's or conquest-run's tables" in err and "Traceback" not in err
    assert not _rows(archive, "SELECT name FROM sqlite_master WHERE name = 'bad_one'")
    missing = tmp_path / "nothere" / "conquest.db"
    assert main(["load-csv", str(bad), "--table", "t", "--data", str(archive.data_dir),
                 "--database", str(missing)]) == 2
    assert not missing.parent.exists()
