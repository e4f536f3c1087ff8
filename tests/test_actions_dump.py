"""dump: CSV that round-trips, DICOM JSON and text headers, read-only queries, dry runs."""

from __future__ import annotations

import csv
import json
import warnings

import pydicom
import pytest
from _actions_support import (make_archive, make_step, planned_series, run_action, tree_state)

from conquest_run.actions.dump import dump_csv
from conquest_run.actions._local import connect_reader
from conquest_run.db import connect
from conquest_run.errors import ActionError

AWKWARD = 'Comma, "Quote"\nNew line; \\ back\u00e9'


@pytest.fixture
def archive(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arch = make_archive(tmp_path)
    conn = connect(arch.database)
    with conn:
        conn.execute("UPDATE DICOMStudies SET StudyDescr = ? WHERE PatientID = 'id00001'",
                     (AWKWARD,))
    conn.close()
    return arch


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_query_csv_round_trips_through_the_csv_module(archive, tmp_path):
    query = ("SELECT SeriesInst, Modality, StudyDescr, SeriesNumb FROM v_series "
             "ORDER BY SeriesInst")
    step = make_step(archive, "dump", {"file": "out/q.csv"}, query=query)
    report, _ = run_action(archive, step)
    assert report.ok and report.summary["rows"] == 5
    rows = _read_csv(tmp_path / "out/q.csv")
    conn = connect_reader(archive.database)
    expected = [[("" if v is None else str(v)) for v in r] for r in conn.execute(query)]
    conn.close()
    assert rows[0] == ["SeriesInst", "Modality", "StudyDescr", "SeriesNumb"]
    assert rows[1:] == expected
    assert AWKWARD in [r[2] for r in rows]


def test_series_csv_has_study_and_patient_columns_in_plan_order(archive, tmp_path):
    step = make_step(archive, "dump", {"file": "series.csv"})
    report, _ = run_action(archive, step)
    assert report.ok and report.summary["source"] == "series"
    header, *rows = _read_csv(tmp_path / "series.csv")
    for col in ("SeriesInst", "Modality", "StudyDate", "StudyDescr", "PatientNam", "PatientID"):
        assert col in header
    assert len(header) == len({h.lower() for h in header})
    uid = header.index("SeriesInst")
    assert [r[uid] for r in rows] == [s.series_uid for s in step.series]
    rtplan = next(r for r in rows if r[header.index("Modality")] == "RTPLAN")
    assert rtplan[header.index("PatientID")] == "id00001"
    assert rtplan[header.index("StudyDescr")] == AWKWARD


def test_table_and_view_dumps(archive, tmp_path):
    step = make_step(archive, "dump", {"file": "images.csv", "table": "dicomimages"})
    report, _ = run_action(archive, step)
    assert report.ok and report.summary["source"] == "table DICOMImages"
    header, *rows = _read_csv(tmp_path / "images.csv")
    assert header[0] == "SOPInstanc" and "ObjectFile" in header and len(rows) == 5
    view = make_step(archive, "dump", {"file": "rt.csv", "table": "v_seriesRT"})
    report, _ = run_action(archive, view)
    assert report.ok and report.summary["rows"] == 3
    into_data = make_step(archive, "dump", {"file": "data/x.csv", "table": "DICOMImages"})
    report, _ = run_action(archive, into_data)
    assert "inside the archive's data directory" in report.error
    missing = make_step(archive, "dump", {"file": "x.csv", "table": 'DICOMImages"; drop'})
    report, _ = run_action(archive, missing)
    assert "no table or view" in report.error and not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("query", [
    "DELETE FROM DICOMImages",
    "SELECT load_extension('x')",
    "ATTACH DATABASE 'other.db' AS o",
])
def test_queries_that_write_are_refused(archive, tmp_path, query):
    before = tree_state(tmp_path)
    step = make_step(archive, "dump", {"file": "bad.csv"}, query=query)
    report, _ = run_action(archive, step, dry_run=True)
    assert report.error and "the query failed" in report.error
    assert tree_state(tmp_path) == before


def test_json_headers_without_pixel_data(archive, tmp_path):
    step = make_step(archive, "dump", {"file": "h.json", "format": "json"})
    report, _ = run_action(archive, step)
    assert report.ok and report.totals()["done"] == 5
    docs = json.loads((tmp_path / "h.json").read_text(encoding="utf-8"))
    assert len(docs) == 5
    planned = [i for s in step.series for i in s.instances]
    for doc, inst in zip(docs, planned):
        assert doc["00080018"]["Value"] == [inst.sop_uid]
        assert "7FE00010" not in doc
        with warnings.catch_warnings():  # bulk data stays a URI, pydicom says so
            warnings.simplefilter("ignore")
            ds = pydicom.Dataset.from_json(doc)
        assert ds.SOPInstanceUID == inst.sop_uid
    # large binary values are not inlined: a URI names the file and the tag
    uris = [v["BulkDataURI"] for doc in docs for v in doc.values() if "BulkDataURI" in v]
    assert uris and all("#" in u and u.split("#")[0].endswith(".dcm") for u in uris)


def test_text_headers_per_instance(archive, tmp_path):
    step = make_step(archive, "dump", {"file": "headers", "format": "text",
                                       "per_instance": True})
    report, _ = run_action(archive, step)
    assert report.ok
    for series in step.series:
        for inst in series.instances:
            text = (tmp_path / "headers" / f"{inst.sop_uid}.txt").read_text(encoding="utf-8")
            assert f"(0008,0018) UI [{inst.sop_uid}]" in text
            assert f"(0008,0060) CS [{series.modality}]" in text
            assert "(7fe0,0010)" not in text
    plan_sop = planned_series(archive, modality="RTPLAN")[0].instances[0].sop_uid
    rtplan = (tmp_path / "headers" / f"{plan_sop}.txt").read_text()
    assert "SQ (Sequence with" in rtplan and "(fffe,e000) na (Item #1)" in rtplan


def test_unreadable_instance_fails_alone(archive, tmp_path):
    step = make_step(archive, "dump", {"file": "h.txt", "format": "text"})
    broken = step.series[0].instances[0]
    (archive.data_dir / broken.path).unlink()
    report, _ = run_action(archive, step)
    assert [o.sop_uid for o in report.outcomes if o.status == "failed"] == [broken.sop_uid]
    assert (tmp_path / "h.txt").read_text().count("(0008,0018) UI") == 4


def test_dry_run_leaves_everything_byte_identical(archive, tmp_path):
    before = tree_state(tmp_path)
    for opts, query in [({"file": "a.csv"}, None), ({"file": "b.csv"}, "SELECT * FROM v_series"),
                        ({"file": "c.json", "format": "json"}, None),
                        ({"file": "d", "format": "text", "per_instance": True}, None)]:
        report, _ = run_action(archive, make_step(archive, "dump", opts, query=query),
                               dry_run=True)
        assert report.ok and report.dry_run
    assert tree_state(tmp_path) == before


def test_python_api_dump_csv(archive, tmp_path):
    report = dump_csv(archive, tmp_path / "p.csv",
                      query="SELECT PatientID, PatientNam FROM DICOMPatients WHERE PatientID = ?",
                      params=["id00001"])
    assert report.summary["rows"] == 1
    assert _read_csv(tmp_path / "p.csv") == [["PatientID", "PatientNam"],
                                             ["id00001", "Last^First^mid^pre"]]
    dump_csv(archive, tmp_path / "t.csv", table="DICOMSeries")
    assert len(_read_csv(tmp_path / "t.csv")) == 6
    dump_csv(archive, tmp_path / "s.csv")
    assert len(_read_csv(tmp_path / "s.csv")) == 6
    with pytest.raises(ActionError):
        dump_csv(archive, tmp_path / "e.csv", query="UPDATE DICOMPatients SET PatientNam = 'x'")
    assert not (tmp_path / "e.csv").exists()
    conn = connect_reader(archive.database)  # the refused UPDATE really did not happen
    assert conn.execute("SELECT count(*) FROM DICOMPatients WHERE PatientNam = 'x'"
                        ).fetchone()[0] == 0
    conn.close()
