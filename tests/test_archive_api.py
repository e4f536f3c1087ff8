"""The Archive class as the README shows it: pyconquest's methods on one object."""

from __future__ import annotations

import csv

from conquest_run import Archive


def test_readme_api_on_the_sample_archive(sample_archive, tmp_path):
    a = Archive(data=sample_archive, database=tmp_path / "conquest.db")
    uids = a.query("select SeriesInst from DICOMSeries where Modality = ?", ("RTPLAN",),
                   column="SeriesInst")
    assert len(uids) == 4                             # indexed on first use
    summary = {s.series_uid: s for s in a.series_summary()}
    assert all(summary[u].modality == "RTPLAN" and summary[u].instances == 1 for u in uids)

    report = a.copy_series(uids, tmp_path / "out")
    assert report.totals()["done"] == 4
    copied = sorted(p.name for p in (tmp_path / "out").rglob("*.dcm"))
    files = a.query("select i.SOPInstanc from DICOMImages i join DICOMSeries s "
                    "on i.SeriesInst = s.SeriesInst where s.Modality = 'RTPLAN'", column=0)
    assert copied == sorted(f"{sop}.dcm" for sop in files)

    a.dump_csv(tmp_path / "series.csv", table="DICOMSeries")
    with open(tmp_path / "series.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(summary)

    a.delete_series(uids[:1])
    assert a.query("select count(*) from DICOMSeries where SeriesInst = ?", (uids[0],),
                   column=0) == [0]
    assert (sample_archive / a.query(
        "select ObjectFile from DICOMImages", column=0)[0]).exists()   # files kept

    with a.listen(0) as receiver:                     # a receiver into this archive
        assert receiver.port > 0
