"""Extra columns: ``Archive.add_column`` and the dicom.sql route extend a layout; an existing
database gets ``ALTER TABLE`` and a re-read of that tag only (``rebuild --refresh --columns``);
Conquest's 10-character rule; the views keep working."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3

import pytest

from conquest_run import synthetic
from conquest_run.archive import Archive
from conquest_run.cli import main
from conquest_run.errors import ArchiveError
from conquest_run.planner import plan_selection
from conquest_run.schema import default_dicom_sql_path


def _dump(db, table, skip=()):
    with sqlite3.connect(db) as conn:
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})") if r[1] not in skip]
        return cols, sorted(conn.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall())


def _files(root):
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in root.rglob("*.dcm")}


@pytest.fixture
def archive(tmp_path):
    synthetic.write_linked_rt_set(tmp_path / "data", seed=4, patient_id="COL1", ct_slices=2)
    shutil.copyfile(default_dicom_sql_path(), tmp_path / "dicom.sql")
    arc = Archive(tmp_path / "data", tmp_path / "conquest.db", tmp_path / "dicom.sql")
    arc.rebuild()
    return arc


def test_add_column_alters_the_table_and_reads_only_that_tag(archive):
    before = {t: _dump(archive.database, t) for t in ("DICOMImages", "DICOMSeries")}
    files = _files(archive.data_dir)
    result = archive.add_column("Image", "SliceThickness", "SliceThickness")
    assert result["columns"] == ["DICOMImages.SliceThick"] and result["rows_updated"] == 5
    archive.add_column("series", "(0018,0060)", "KVP")
    archive.add_column("Image", "StructureSetDate", "SSetDate")
    text = archive.dicom_sql.read_text()
    assert '{ 0x0018, 0x0050, "SliceThickness", 64, SQL_C_CHAR, DT_STR },' in text
    assert '"SSetDate", 8, SQL_C_DATE, DT_DATE' in text
    # the link entries stay last: the layout still parses with the same keys and links
    assert archive.schema.images.link == "SeriesInst" and archive.schema.series.link == "StudyInsta"
    with sqlite3.connect(archive.database) as conn:
        thick = dict(conn.execute("SELECT Modality, SliceThick FROM DICOMImages i JOIN "
                                  "DICOMSeries s ON s.SeriesInst = i.SeriesInst"))
        assert thick["CT"] == "3.0" and thick["RTPLAN"] is None
        assert {r[0] for r in conn.execute("SELECT KVP FROM DICOMSeries WHERE Modality = 'CT'")
                } == {"120.0"}
        dates = dict(conn.execute("SELECT Modality, SSetDate FROM DICOMImages i JOIN "
                                  "DICOMSeries s ON s.SeriesInst = i.SeriesInst"))
        assert dates["CT"] is None and len(dates["RTSTRUCT"]) == 8
        types = {r[1]: r[2] for r in conn.execute("PRAGMA table_info(DICOMImages)")}
        assert types["SliceThick"] == "varchar(64)" and types["SSetDate"] == "char(8)"
        # the views show the new columns (and still work)
        assert conn.execute("SELECT count(*) FROM v_series WHERE KVP = '120.0'").fetchone()[0] == 1
        assert conn.execute("SELECT count(SliceThick) FROM v_seriesRT").fetchone()[0] == 0
    # nothing else changed: other columns cell for cell, the files
    for table, (cols, rows) in before.items():
        assert _dump(archive.database, table, {"SliceThick", "KVP", "SSetDate"}) == (cols, rows)
    assert _files(archive.data_dir) == files
    # job SQL knows the new column
    step = plan_selection(archive, {"query": "select SeriesInst from DICOMSeries where KVP = '120.0'"},
                          "copy", {"destination": "x"}).steps[0]
    assert [s.modality for s in step.series] == ["CT"]
    # a fresh full rebuild gives the same values
    again = Archive(archive.data_dir, archive.database.with_name("fresh.db"), archive.dicom_sql)
    again.rebuild()
    for table in ("DICOMImages", "DICOMSeries"):      # column order differs: ALTER appends
        cols, fresh = _dump(again.database, table, {"AccessTime"})
        assert sorted(cols) == sorted(_dump(archive.database, table, {"AccessTime"})[0])
        with sqlite3.connect(archive.database) as conn:
            ours = sorted(conn.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall())
        assert ours == fresh


@pytest.mark.parametrize("level, tag, name, message", [
    ("Series", "SeriesDescription", "SeriesDescr2", "already has a column SeriesDesc "
     "\\(Conquest keeps the first 10 characters of 'SeriesDescr2'\\)"),
    ("Series", "(0008,103E)", "Other", "\\(0008,103E\\) is already DICOMSeries.SeriesDesc"),
    ("Image", "NoSuchKeyword", "X", "not a DICOM keyword"),
    ("Image", "KVP", "1st", "must start with a letter"),
    ("Frames", "KVP", "KVP", "level 'Frames' is not one of"),
])
def test_bad_columns_are_refused_and_change_nothing(archive, level, tag, name, message):
    text = archive.dicom_sql.read_text()
    with pytest.raises(ArchiveError, match=message):
        archive.add_column(level, tag, name)
    assert archive.dicom_sql.read_text() == text


def test_builtin_layout_needs_a_file_and_a_new_archive_needs_no_alter(tmp_path):
    synthetic.write_linked_rt_set(tmp_path / "data", seed=5, patient_id="COL2", ct_slices=1)
    arc = Archive(tmp_path / "data", tmp_path / "conquest.db")
    if arc.dicom_sql is None:
        with pytest.raises(ArchiveError, match="built-in layout; pass dicom_sql="):
            arc.add_column("Image", "SliceThickness", "SliceThick")
    result = arc.add_column("Image", "SliceThickness", "SliceThick",
                            dicom_sql=tmp_path / "layout.sql")
    assert result["rows_updated"] == 0 and not arc.database.exists()
    assert (tmp_path / "layout.sql").read_text().startswith(
        default_dicom_sql_path().read_text()[:200])
    arc.rebuild()
    cols, rows = _dump(arc.database, "DICOMImages")
    assert "SliceThick" in cols


def test_dicom_sql_route_rebuild_refresh_columns(archive, capsys):
    text = archive.dicom_sql.read_text()
    link = '\t{ 0x0020, 0x000d, "StudyInstanceUID", 64, SQL_C_CHAR, DT_UI }\n}\n\n*Image*'
    assert link in text
    archive.dicom_sql.write_text(text.replace(
        link, '\t{ 0x0018, 0x0060, "KVP", 16, SQL_C_CHAR, DT_STR },\n' + link))
    flags = ["--data", str(archive.data_dir), "--database", str(archive.database),
             "--dicom-sql", str(archive.dicom_sql)]
    with pytest.raises(ArchiveError, match="run conquest-run rebuild --refresh --columns KVP"):
        Archive(archive.data_dir, archive.database, archive.dicom_sql).connect()
    assert main(["rebuild", "--columns", "KVP", *flags]) == 2
    assert "--columns goes with --refresh" in capsys.readouterr().err
    assert main(["rebuild", "--refresh", "--columns", "Nope", *flags]) == 2
    assert "Nope: not a column of" in capsys.readouterr().err
    assert main(["rebuild", "--refresh", "--columns", "KVP", *flags]) == 0
    assert "DICOMSeries.KVP: 4 rows updated from" in capsys.readouterr().out
    assert main(["summary", *flags]) == 0
    with sqlite3.connect(archive.database) as conn:
        assert conn.execute("SELECT KVP FROM v_series WHERE Modality = 'CT'").fetchone() == ("120.0",)
