"""delete: Conquest's cascade in one transaction, files after the commit, nothing forgotten."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from _actions_support import (audit_rows, ct_study, make_archive, make_step,
                              planned_series, run_action, table_counts, tree_state, variant)

from conquest_run.actions._local import connect_reader
from conquest_run.actions.delete import delete_instances, delete_series
from conquest_run.db import connect
from conquest_run.plan import PlannedSeries

SERIES_A, SERIES_B = "1.2.826.0.1.9.1.1", "1.2.826.0.1.9.1.2"


@pytest.fixture
def archive(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return make_archive(tmp_path, extra=ct_study(tmp_path))


def _series(archive, uid: str) -> tuple[PlannedSeries, ...]:
    return planned_series(archive, [uid])


def _rows(archive, sql: str, *params) -> list[tuple]:
    conn = connect_reader(archive.database)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_cascade_series_then_study_then_patient(archive):
    before = table_counts(archive)
    report, run_id = run_action(archive, make_step(archive, "delete", {}, series=_series(
        archive, SERIES_A)))
    assert report.ok and report.totals() == {"done": 2, "skipped": 0, "failed": 0}
    assert report.summary["rows"] == {"RTExtras": 2, "DICOMImages": 2, "DICOMSeries": 1,
                                      "DICOMStudies": 0, "DICOMPatients": 0}
    after = table_counts(archive)
    assert {k: before[k] - after[k] for k in before} == {
        "DICOMPatients": 0, "DICOMStudies": 0, "DICOMSeries": 1, "DICOMImages": 2,
        "RTExtras": 2}
    assert _rows(archive, "SELECT count(*) FROM DICOMStudies WHERE StudyInsta = ?",
                 "1.2.826.0.1.9.1") == [(1,)]
    # without files: true the files stay
    assert (archive.data_dir / "CTX/a1.dcm").is_file()
    assert sorted(r[1] for r in audit_rows(archive, run_id)) == ["done", "done"]

    report, _ = run_action(archive, make_step(archive, "delete", {}, series=_series(
        archive, SERIES_B)))
    assert report.summary["rows"] == {"RTExtras": 1, "DICOMImages": 1, "DICOMSeries": 1,
                                      "DICOMStudies": 1, "DICOMPatients": 1}
    assert _rows(archive, "SELECT count(*) FROM DICOMPatients WHERE PatientID = 'CTX'") == [(0,)]
    # the other patients are untouched
    assert table_counts(archive)["DICOMPatients"] == before["DICOMPatients"] - 1


def test_files_true_removes_files_after_the_rows(archive):
    series = _series(archive, SERIES_A)
    report, _ = run_action(archive, make_step(archive, "delete", {"files": True},
                                              series=series))
    assert report.ok and report.summary["files_removed"] == 2
    assert not (archive.data_dir / "CTX/a1.dcm").exists()
    assert not (archive.data_dir / "CTX/a2.dcm").exists()
    assert (archive.data_dir / "CTX/b1.dcm").is_file()
    assert _rows(archive, "SELECT count(*) FROM DICOMImages WHERE SeriesInst = ?",
                 SERIES_A) == [(0,)]


def test_a_file_that_cannot_be_removed_is_reported_not_forgotten(archive):
    series = _series(archive, SERIES_A)
    stuck = archive.data_dir / "CTX/a2.dcm"
    stuck.unlink()  # a non-empty folder of the same name: unlink fails, even for root
    stuck.mkdir()
    (stuck / "keep").write_text("x")
    report, run_id = run_action(archive, make_step(archive, "delete", {"files": True},
                                                   series=series))
    assert not report.ok
    failed = [o for o in report.outcomes if o.status == "failed"]
    assert [o.sop_uid for o in failed] == ["1.2.826.0.1.9.1.1.2"]
    assert failed[0].detail == {"path": str(stuck.resolve()), "row_deleted": True,
                                "file_kept": True, "file_removed": False}
    assert "could not remove the file" in failed[0].reason
    assert report.summary["files_not_removed"] == [str(stuck.resolve())]
    assert not (archive.data_dir / "CTX/a1.dcm").exists()
    # the rows went in the committed transaction; the audit log keeps the path to clean up
    assert _rows(archive, "SELECT count(*) FROM DICOMSeries WHERE SeriesInst = ?",
                 SERIES_A) == [(0,)]
    logged = [r for r in audit_rows(archive, run_id) if r[1] == "failed"]
    assert json.loads(logged[0][3])["path"] == str(stuck.resolve())


def test_paths_outside_the_data_directory_are_refused(archive, tmp_path):
    outside = tmp_path / "precious.dcm"
    shutil.copyfile(archive.data_dir / "CTX/a1.dcm", outside)
    # one row points outside with '..', one file is a symlink that resolves outside
    conn = connect(archive.database)
    with conn:
        conn.execute("UPDATE DICOMImages SET ObjectFile = '../precious.dcm' "
                     "WHERE SOPInstanc = '1.2.826.0.1.9.1.1.1'")
    conn.close()
    (archive.data_dir / "CTX/a2.dcm").unlink()
    os.symlink(outside, archive.data_dir / "CTX/a2.dcm")
    report, _ = run_action(archive, make_step(archive, "delete", {"files": True},
                                              series=_series(archive, SERIES_A)))
    reasons = {o.sop_uid: o.reason for o in report.outcomes}
    assert all(o.status == "failed" for o in report.outcomes)
    assert "refused to remove" in reasons["1.2.826.0.1.9.1.1.1"]
    assert "outside the data directory" in reasons["1.2.826.0.1.9.1.1.2"]
    assert outside.is_file() and (archive.data_dir / "CTX/a2.dcm").is_symlink()


def test_dry_run_reports_the_same_and_changes_nothing(archive, tmp_path):
    step = make_step(archive, "delete", {"files": True}, series=_series(archive, SERIES_B))
    before = tree_state(tmp_path)
    dry, _ = run_action(archive, step, dry_run=True)
    assert tree_state(tmp_path) == before
    real, _ = run_action(archive, step)
    assert dry.summary == real.summary
    assert dry.summary["rows"]["DICOMPatients"] == 0  # series A still holds the study
    assert [(o.sop_uid, o.status) for o in dry.outcomes] == \
        [(o.sop_uid, o.status) for o in real.outcomes]


def test_instance_level_deletes_only_the_named_instances(archive):
    report = delete_instances(archive, ["1.2.826.0.1.9.1.1.1"], files=True)
    assert report.summary["rows"]["DICOMSeries"] == 0
    assert not (archive.data_dir / "CTX/a1.dcm").exists()
    assert (archive.data_dir / "CTX/a2.dcm").is_file()
    report = delete_instances(archive, ["1.2.826.0.1.9.1.1.2"])
    assert report.summary["rows"]["DICOMSeries"] == 1
    assert report.summary["rows"]["DICOMStudies"] == 0


def test_a_series_that_gained_instances_since_the_plan_keeps_them(archive, tmp_path):
    step = make_step(archive, "delete", {"files": True}, series=_series(archive, SERIES_B))
    newer = variant("CT_small.dcm", archive.data_dir / "CTX/b2.dcm", PatientID="CTX",
                    StudyInstanceUID="1.2.826.0.1.9.1", SeriesInstanceUID=SERIES_B,
                    SOPInstanceUID="1.2.826.0.1.9.1.2.2")
    archive.rebuild(mode="missing")
    report, _ = run_action(archive, step)
    assert report.ok and report.summary["series_kept"] == {SERIES_B: 1}
    assert report.summary["rows"]["DICOMSeries"] == 0
    assert newer.is_file()
    assert _rows(archive, "SELECT SOPInstanc FROM DICOMImages WHERE SeriesInst = ?",
                 SERIES_B) == [("1.2.826.0.1.9.1.2.2",)]


def test_python_api_delete_series_and_rows_already_gone(archive):
    report = delete_series(archive, [SERIES_A, SERIES_B], files=True)
    assert report.ok and report.summary["rows"]["DICOMPatients"] == 1
    assert not any((archive.data_dir / "CTX").iterdir())
    # a stale plan: its rows are gone, so nothing is done twice
    step = make_step(archive, "delete", {"files": True}, series=(PlannedSeries(
        SERIES_A, "CTX", "1.2.826.0.1.9.1", "CT", None, ()),))
    again, _ = run_action(archive, step)
    assert again.ok and again.summary["rows"] == {"RTExtras": 0, "DICOMImages": 0,
                                                  "DICOMSeries": 0, "DICOMStudies": 0,
                                                  "DICOMPatients": 0}


def test_python_api_with_no_uids_deletes_nothing(archive):
    before = table_counts(archive)
    report = delete_series(archive, [], files=True)
    assert report.totals() == {"done": 0, "skipped": 0, "failed": 0}
    assert table_counts(archive) == before
