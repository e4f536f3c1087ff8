"""Image statistics per series (pyconquest's ``analyse_images``) into a user table."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from conquest_run import synthetic
from conquest_run.archive import Archive
from conquest_run.cli import main


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    synthetic.write_linked_rt_set(root / "data", seed=8, patient_id="STAT1", ct_slices=3)
    (root / "data" / "pyd").mkdir()
    for name in ("CT_small.dcm", "MR_small_RLE.dcm"):
        shutil.copyfile(get_testdata_file(name), root / "data" / "pyd" / name)
    arc = Archive(root / "data", root / "conquest.db")
    arc.rebuild()
    return arc


def _expected(paths):
    """Independently: every rescaled value of the files in one array."""
    values = []
    for p in paths:
        ds = pydicom.dcmread(p)
        slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        values.append(ds.pixel_array.astype(np.float64).ravel() * slope + intercept)
    v = np.concatenate(values)
    return v.min(), v.max(), v.mean(), v.std()


def test_statistics_per_series_match_the_pixels(archive):
    rows = {r["SeriesInst"]: r for r in archive.image_statistics()}
    by_modality = {}
    for path in archive.data_dir.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_modality.setdefault(str(ds.SeriesInstanceUID), []).append(path)
    with sqlite3.connect(archive.database) as conn:
        modality = dict(conn.execute("SELECT SeriesInst, Modality FROM DICOMSeries"))
    # series without pixel data (RTSTRUCT, RTPLAN) have no row; CT, MR (RLE) and RTDOSE do
    assert sorted(r["Modality"] for r in rows.values()) == ["CT", "CT", "MR", "RTDOSE"]
    for uid, row in rows.items():
        low, high, mean, std = _expected(by_modality[uid])
        assert row["Instances"] == len(by_modality[uid]) and row["Unreadable"] == 0
        assert row["PixelMin"] == low and row["PixelMax"] == high
        assert row["PixelMean"] == pytest.approx(mean, rel=1e-9)
        assert row["PixelStd"] == pytest.approx(std, rel=1e-6, abs=1e-6)
        assert modality[uid] == row["Modality"]


def test_statistics_go_into_a_user_table_from_a_selection(archive, tmp_path, capsys):
    flags = ["--data", str(archive.data_dir), "--database", str(archive.database)]
    assert main(["image-stats", "--modality", "CT", "--table", "ct_stats", *flags]) == 0
    assert "2 series" in capsys.readouterr().out
    with sqlite3.connect(archive.database) as conn:
        got = conn.execute("SELECT Modality, Instances, Rows, Columns FROM ct_stats "
                           "ORDER BY Instances").fetchall()
    assert got == [("CT", 1, 128, 128), ("CT", 3, 16, 16)]
    job_sql = "select SeriesInst from DICOMSeries where SeriesInst in " \
              "(select SeriesInst from ct_stats where PixelStd > 0)"
    assert len(archive.query(job_sql)) == 2
    assert main(["image-stats", "--table", "DICOMSeries", *flags]) == 2
    assert "one of Conquest's or conquest-run's tables" in capsys.readouterr().err


def test_an_undecodable_file_is_reported_not_fatal(archive, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(archive.data_dir, data)
    ct = sorted(p for p in data.rglob("*.dcm") if "pyd" in p.parts)[0]
    arc = Archive(data, tmp_path / "c.db")
    arc.rebuild()
    raw = ct.read_bytes()
    ct.write_bytes(raw[:-4000])                      # damaged after it was indexed
    rows, problems = arc.image_statistics(select={"modality": "CT"}, with_problems=True)
    cut = [r for r in rows if r["Unreadable"]]
    assert len(cut) == 1 and cut[0]["Instances"] == 0 and cut[0]["PixelMean"] is None
    assert len(problems) == 1 and problems[0].startswith("pyd/CT_small.dcm: ")
