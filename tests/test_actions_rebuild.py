"""rebuild: re-indexing through the archive core, scoped by the selection."""

from __future__ import annotations

import pytest
from _actions_support import (audit_rows, ct_study, make_archive, make_step, planned_series,
                              run_action, table_counts, tree_state, variant)

from conquest_run.actions.rebuild import scope
from conquest_run.db import connect


@pytest.fixture
def archive(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return make_archive(tmp_path, extra=ct_study(tmp_path))


def _sops(archive) -> set[str]:
    return {i.sop_uid for s in planned_series(archive) for i in s.instances}


def test_only_missing_indexes_new_files(archive):
    variant("MR_small.dcm", archive.data_dir / "CTX/new.dcm", PatientID="CTX",
            StudyInstanceUID="1.2.826.0.1.9.1", SeriesInstanceUID="1.2.826.0.1.9.1.3",
            SOPInstanceUID="1.2.826.0.1.9.1.3.1")
    report, _ = run_action(archive, make_step(archive, "rebuild", {"only_missing": True},
                                              series=()))
    assert report.ok and report.summary["mode"] == "missing"
    assert report.summary["indexed"] == 1 and report.summary["unchanged"] == 8
    assert "1.2.826.0.1.9.1.3.1" in _sops(archive)


def test_refresh_forgets_vanished_files(archive):
    (archive.data_dir / "CTX/b1.dcm").unlink()
    report, run_id = run_action(archive, make_step(archive, "rebuild", {"refresh": True},
                                                   series=()))
    assert report.ok and report.summary["removed"] == 1
    assert "1.2.826.0.1.9.1.2.1" not in _sops(archive)
    assert audit_rows(archive, run_id)[-1][1] == "done"


def test_selection_rebuilds_only_the_patients_it_names(archive):
    ctx_series = [s for s in planned_series(archive) if s.patient_id == "CTX"]
    conn = connect(archive.database)
    with conn:  # lose the index rows of every patient; only CTX comes back
        for table in ("DICOMImages", "DICOMSeries", "DICOMStudies", "DICOMPatients",
                      "RTExtras"):
            conn.execute(f"DELETE FROM {table}")
    conn.close()
    step = make_step(archive, "rebuild", {}, series=ctx_series)
    assert scope(step) == ["CTX"]
    report, _ = run_action(archive, step)
    assert report.ok and report.summary["patients"] == ["CTX"]
    assert table_counts(archive)["DICOMPatients"] == 1
    assert table_counts(archive)["DICOMImages"] == 3


def test_patients_option_and_empty_selection():
    from conquest_run.plan import PlanStep
    explicit = PlanStep(1, "r", "rebuild", {"patients": ["B", "A", "A"]}, "", False, "series",
                        ())
    assert scope(explicit) == ["A", "B"]
    nothing = PlanStep(1, "r", "rebuild", {"patients": []}, "", False, "series", ())
    assert scope(nothing) == []
    everything = PlanStep(1, "r", "rebuild", {}, "", False, "series", ())
    assert scope(everything) is None


def test_unreadable_files_are_failed_outcomes(archive):
    (archive.data_dir / "CTX/junk.dcm").write_bytes(b"not DICOM at all" * 20)
    report, run_id = run_action(archive, make_step(archive, "rebuild", {"only_missing": True},
                                                   series=()))
    assert not report.ok
    failed = [o for o in report.outcomes if o.status == "failed"]
    assert [o.detail["path"] for o in failed] == ["CTX/junk.dcm"]
    assert any(r[1] == "failed" for r in audit_rows(archive, run_id))


def test_dry_run_changes_nothing(archive, tmp_path):
    (archive.data_dir / "CTX/b1.dcm").unlink()
    before = tree_state(tmp_path)
    report, _ = run_action(archive, make_step(archive, "rebuild", {"refresh": True},
                                              series=()), dry_run=True)
    assert tree_state(tmp_path) == before
    assert report.ok and report.summary["files_in_scope"] == 7


def test_planned_selection_of_an_unindexed_patient_indexes_only_that_patient(archive):
    """A select naming a patient not yet in the index re-indexes that folder, not everything."""
    from conquest_run.planner import plan_selection

    variant("MR_small.dcm", archive.data_dir / "NEWPAT/new.dcm", PatientID="NEWPAT",
            StudyInstanceUID="1.2.826.0.1.9.7", SeriesInstanceUID="1.2.826.0.1.9.7.3",
            SOPInstanceUID="1.2.826.0.1.9.7.3.1")
    before = table_counts(archive)
    step = plan_selection(archive, {"patient": "NEWPAT"}, "rebuild", {"only_missing": True}).steps[0]
    assert step.series == () and step.options["patients"] == ["NEWPAT"]
    report, _ = run_action(archive, step)
    assert report.ok and report.summary["patients"] == ["NEWPAT"]
    assert table_counts(archive)["DICOMImages"] == before["DICOMImages"] + 1


def test_planned_selection_matching_nothing_indexes_nothing(archive):
    from conquest_run.planner import plan_selection

    variant("MR_small.dcm", archive.data_dir / "OTHER/new.dcm", PatientID="OTHER",
            StudyInstanceUID="1.2.826.0.1.9.8", SeriesInstanceUID="1.2.826.0.1.9.8.3",
            SOPInstanceUID="1.2.826.0.1.9.8.3.1")
    before = table_counts(archive)
    step = plan_selection(archive, {"modality": "NOSUCH"}, "rebuild", {}).steps[0]
    assert step.options["patients"] == []
    report, _ = run_action(archive, step)
    assert report.ok and table_counts(archive) == before
