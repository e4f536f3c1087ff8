"""Extra columns, ROI filters and image statistics on both backends, with the same
expectations (taken from what the synthetic RT sets wrote and from the files themselves):
``Archive.add_column`` and ``rebuild --refresh --columns`` (ALTER TABLE, the views made again,
only those tags read; the same cells as a fresh rebuild), ``select.roi`` / ``with_referenced``,
``Archive.image_statistics`` and ``conquest-run image-stats --table``."""

from __future__ import annotations

import shutil
import textwrap

import numpy as np
import pydicom
import pytest

from conquest_run import synthetic
from conquest_run.archive import Archive
from conquest_run.cli import main
from conquest_run.errors import ArchiveError
from conquest_run.planner import plan_selection
from conquest_run.schema import default_dicom_sql_path

from _backends import IndexDb
from _module_backends import module_index_db, new_pg_database  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def arc(module_index_db, tmp_path_factory):
    root = tmp_path_factory.mktemp("extras")
    a = synthetic.write_linked_rt_set(root / "data", seed=1, patient_id="ROI1", ct_slices=2,
                                      rois=("BODY", "PTV_High", "CTV"))
    b = synthetic.write_linked_rt_set(root / "data", seed=2, patient_id="ROI2", ct_slices=3,
                                      rois=("BODY", "SpinalCord", "Lung_L"))
    shutil.copyfile(default_dicom_sql_path(), root / "dicom.sql")
    archive = Archive(root / "data", module_index_db.arg, root / "dicom.sql")
    archive.rebuild()
    return archive, module_index_db, a, b


def _headers(archive):
    """SOPInstanceUID -> header of every file, read with pydicom."""
    out = {}
    for path in archive.data_dir.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        out[str(ds.SOPInstanceUID)] = (path, ds)
    return out


def _text(ds, keyword):
    return str(ds[keyword].value).strip() if keyword in ds else None


def _planned(archive, select):
    step = plan_selection(archive, select, "copy", {"destination": "x"}).steps[0]
    return {s.series_uid for s in step.series}, step.options


def test_roi_selects_the_same_series(arc, tmp_path, capsys):
    archive, index_db, a, b = arc
    uids, options = _planned(archive, {"roi": "ptv*"})
    assert uids == {a.rtstruct_series_uid}
    assert options["roi_matched"] == {a.rtstruct_series_uid: ["PTV_High"]}
    uids, options = _planned(archive, {"roi": ["LUNG*", "spinal?ord"]})
    assert uids == {b.rtstruct_series_uid}
    assert options["roi_matched"] == {b.rtstruct_series_uid: ["SpinalCord", "Lung_L"]}
    assert _planned(archive, {"roi": "body"})[0] == {a.rtstruct_series_uid,
                                                     b.rtstruct_series_uid}
    assert _planned(archive, {"roi": "body", "patient": "ROI2"})[0] == {b.rtstruct_series_uid}
    assert _planned(archive, {"roi": "nothing*"})[0] == set()
    uids, options = _planned(archive, {"roi": "ptv*", "with_referenced": True})
    linked = {a.ct_series_uid, a.rtplan_series_uid, a.rtdose_series_uid}
    assert uids == linked | {a.rtstruct_series_uid}
    assert options["roi_referenced"] == {uid: a.rtstruct_series_uid for uid in linked}
    job = tmp_path / "roi.yml"
    job.write_text(textwrap.dedent(f"""\
        version: 1
        archive: {{data: {archive.data_dir}, database: "{index_db.arg}"}}
        select: {{roi: "PTV*", with_referenced: true}}
        action:
          copy: {{destination: {tmp_path / "out"}}}
        """))
    assert main([str(job), "--dry-run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"ROI match: {a.rtstruct_series_uid}: PTV_High" in out
    assert f"referenced by structure set {a.rtstruct_series_uid}: {a.ct_series_uid}" in out
    assert main([str(job)]) == 0, capsys.readouterr().err
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == len(a.files)


def test_image_statistics_match_the_pixels(arc):
    archive, index_db, a, b = arc
    headers = _headers(archive)
    by_series: dict[str, list] = {}
    for path, ds in headers.values():
        if "PixelData" in ds:
            by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    rows = {r["SeriesInst"]: r for r in archive.image_statistics()}
    assert set(rows) == set(by_series) == {a.ct_series_uid, a.rtdose_series_uid,
                                           b.ct_series_uid, b.rtdose_series_uid}
    for uid, datasets in by_series.items():
        values = np.concatenate([
            ds.pixel_array.astype(np.float64).ravel() * float(ds.get("RescaleSlope", 1))
            + float(ds.get("RescaleIntercept", 0)) for ds in datasets])
        row = rows[uid]
        assert row["Instances"] == len(datasets) and row["Unreadable"] == 0
        assert (row["PixelMin"], row["PixelMax"]) == (values.min(), values.max())
        assert row["PixelMean"] == pytest.approx(values.mean())
        assert row["PixelStd"] == pytest.approx(values.std())
        assert (row["Rows"], row["Columns"]) == (datasets[0].Rows, datasets[0].Columns)
    picked = archive.image_statistics({"roi": "ptv*", "with_referenced": True})
    assert {r["SeriesInst"] for r in picked} == {a.ct_series_uid, a.rtdose_series_uid}


def test_image_stats_command_fills_a_table_that_jobs_read(arc, capsys):
    archive, index_db, a, b = arc
    flags = ["--data", str(archive.data_dir), "--database", index_db.arg]
    assert main(["image-stats", "--patient", "ROI2", "--table", "pixel_stats", *flags]) == 0
    assert "2 series added to pixel_stats" in capsys.readouterr().out
    assert sorted(index_db.rows("SELECT SeriesInst, Modality, Instances FROM pixel_stats")) == \
        sorted([(b.ct_series_uid, "CT", 3), (b.rtdose_series_uid, "RTDOSE", 1)])
    query = "select SeriesInst from pixel_stats where Modality = 'RTDOSE' and PixelMax > 0"
    assert _planned(archive, {"query": query})[0] == {b.rtdose_series_uid}
    assert main(["image-stats", "--table", "RTExtras", *flags]) == 2
    assert "one of Conquest's or conquest-run's tables" in capsys.readouterr().err


def _cells(index_db: IndexDb, table: str, columns: list[str]) -> list[tuple]:
    return sorted(index_db.rows(f"SELECT {', '.join(columns)} FROM {table}"),
                  key=lambda r: tuple("" if v is None else str(v) for v in r))


def test_add_column_alters_the_table_and_reads_only_that_tag(arc, request):
    archive, index_db, _, _ = arc
    images = index_db.rows("SELECT count(*) FROM DICOMImages")[0][0]
    before = _cells(index_db, "DICOMImages", ["SOPInstanc", "ObjectFile", "ImageNumbe"])
    result = archive.add_column("Image", "SliceThickness", "SliceThickness")
    assert result["columns"] == ["DICOMImages.SliceThick"] and result["rows_updated"] == images
    archive.add_column("series", "(0018,0060)", "KVP")
    archive.add_column("Image", "StructureSetDate", "SSetDate")
    headers = _headers(archive)
    got = dict(index_db.rows("SELECT SOPInstanc, SliceThick FROM DICOMImages"))
    assert got == {sop: _text(ds, "SliceThickness") for sop, (_, ds) in headers.items()}
    got = dict(index_db.rows("SELECT SOPInstanc, SSetDate FROM DICOMImages"))
    assert got == {sop: _text(ds, "StructureSetDate") for sop, (_, ds) in headers.items()}
    kvp = {str(ds.SeriesInstanceUID): _text(ds, "KVP") for _, ds in headers.values()}
    assert dict(index_db.rows("SELECT SeriesInst, KVP FROM DICOMSeries")) == kvp
    # the views show the new columns, and still work
    ct = sorted(uid for uid, v in kvp.items() if v is not None)
    assert sorted(r[0] for r in index_db.rows("SELECT SeriesInst FROM v_series WHERE KVP = ?",
                                              (kvp[ct[0]],))) == ct
    assert index_db.rows("SELECT count(SliceThick) FROM v_seriesRT") == [(0,)]
    assert _cells(index_db, "DICOMImages", ["SOPInstanc", "ObjectFile", "ImageNumbe"]) == before
    # job SQL knows the new column
    assert _planned(archive, {"query": "select SeriesInst from DICOMSeries where KVP = "
                                       f"'{kvp[ct[0]]}'"})[0] == set(ct)
    with pytest.raises(ArchiveError, match="already has a column KVP"):
        archive.add_column("Series", "KVP", "KVP")
    # a fresh full rebuild with that layout gives the same cells
    fresh = (IndexDb("postgresql", new_pg_database(*request.getfixturevalue("pg_server")))
             if index_db.on_postgres else
             IndexDb("sqlite", str(archive.dicom_sql.with_name("fresh.db"))))
    assert main(["rebuild", "--data", str(archive.data_dir), "--database", fresh.arg,
                 "--dicom-sql", str(archive.dicom_sql)]) == 0
    for table, level in (("DICOMImages", "Image"), ("DICOMSeries", "Series")):
        columns = [e.column for e in archive.schema.levels[level].columns
                   if e.column != "AccessTime"]
        assert _cells(index_db, table, columns) == _cells(fresh, table, columns)


def test_dicom_sql_route_rebuild_refresh_columns(arc, capsys):
    archive, index_db, _, _ = arc
    text = archive.dicom_sql.read_text()
    link = '\t{ 0x0020, 0x000e, "SeriesInstanceUID", 64, SQL_C_CHAR, DT_UI }\n}'
    assert text.count(link) == 1
    archive.dicom_sql.write_text(text.replace(
        link, '\t{ 0x0020, 0x1041, "SliceLoc", 16, SQL_C_CHAR, DT_STR },\n' + link))
    flags = ["--data", str(archive.data_dir), "--database", index_db.arg,
             "--dicom-sql", str(archive.dicom_sql)]
    with pytest.raises(ArchiveError, match="run conquest-run rebuild --refresh --columns "
                                           "SliceLoc"):
        Archive(archive.data_dir, archive.database, archive.dicom_sql).connect()
    assert main(["rebuild", "--columns", "SliceLoc", *flags]) == 2
    assert "--columns goes with --refresh" in capsys.readouterr().err
    assert main(["rebuild", "--refresh", "--columns", "Nope", *flags]) == 2
    assert "Nope: not a column of" in capsys.readouterr().err
    images = index_db.rows("SELECT count(*) FROM DICOMImages")[0][0]
    assert main(["rebuild", "--refresh", "--columns", "SliceLoc", *flags]) == 0
    assert f"DICOMImages.SliceLoc: {images} rows updated from {images} files" in \
        capsys.readouterr().out
    assert main(["summary", *flags]) == 0
    headers = _headers(archive)
    assert dict(index_db.rows("SELECT SOPInstanc, SliceLoc FROM DICOMImages")) == {
        sop: _text(ds, "SliceLocation") for sop, (_, ds) in headers.items()}
    assert index_db.rows("SELECT count(SliceLoc) FROM v_seriesRT") == [(0,)]
