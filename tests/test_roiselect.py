"""``select: {roi: ...}``: RTSTRUCT series by ROI name from the indexed RT extras, with
``with_referenced`` the plans, doses and images that go with them; shown by the dry run."""

from __future__ import annotations

import json
import sqlite3
import textwrap

import pytest

from conquest_run import synthetic
from conquest_run.archive import Archive
from conquest_run.cli import main
from conquest_run.planner import plan_selection
from conquest_run.roiselect import matching_names


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("roi")
    a = synthetic.write_linked_rt_set(root / "data", seed=1, patient_id="ROI1", ct_slices=2,
                                      rois=("BODY", "PTV_High", "CTV"))
    b = synthetic.write_linked_rt_set(root / "data", seed=2, patient_id="ROI2", ct_slices=2,
                                      rois=("BODY", "SpinalCord", "Lung_L"))
    arc = Archive(root / "data", root / "conquest.db")
    arc.rebuild()
    return arc, a, b


def _by_modality(arc, patient) -> dict[str, str]:
    with sqlite3.connect(arc.database) as conn:
        return dict(conn.execute("SELECT Modality, SeriesInst FROM DICOMSeries s JOIN "
                                 "DICOMStudies t ON t.StudyInsta = s.StudyInsta "
                                 "WHERE t.PatientID = ?", (patient,)))


def _planned(arc, select):
    step = plan_selection(arc, select, "copy", {"destination": "x"}).steps[0]
    return {s.series_uid for s in step.series}, step.options


def test_globs_are_case_insensitive_and_match_whole_names():
    assert matching_names("BODY\\PTV_High\\ptv2\\CTV", ["ptv*"]) == ["PTV_High", "ptv2"]
    assert matching_names("BODY\\PTV", ["PT"]) == []
    assert matching_names("Lung_L\\Lung_R", ["lung_[l]", "BODY"]) == ["Lung_L"]
    assert matching_names(None, ["*"]) == []


def test_roi_picks_the_structure_sets_whose_rois_match(archive):
    arc, _, _ = archive
    one, two = _by_modality(arc, "ROI1"), _by_modality(arc, "ROI2")
    uids, options = _planned(arc, {"roi": "ptv*"})
    assert uids == {one["RTSTRUCT"]}
    assert options["roi_matched"] == {one["RTSTRUCT"]: ["PTV_High"]}
    uids, options = _planned(arc, {"roi": ["LUNG*", "spinal?ord"]})
    assert uids == {two["RTSTRUCT"]}
    assert options["roi_matched"][two["RTSTRUCT"]] == ["SpinalCord", "Lung_L"]
    assert _planned(arc, {"roi": "body"})[0] == {one["RTSTRUCT"], two["RTSTRUCT"]}
    assert _planned(arc, {"roi": "body", "patient": "ROI2"})[0] == {two["RTSTRUCT"]}
    assert _planned(arc, {"roi": "Bladder"})[0] == set()


def test_with_referenced_adds_plans_doses_and_contoured_images(archive):
    arc, _, _ = archive
    one = _by_modality(arc, "ROI1")
    uids, options = _planned(arc, {"roi": "PTV*", "with_referenced": True})
    assert uids == set(one.values()) and set(one) == {"CT", "RTSTRUCT", "RTPLAN", "RTDOSE"}
    assert options["roi_referenced"] == {one[m]: one["RTSTRUCT"]
                                         for m in ("CT", "RTPLAN", "RTDOSE")}


def test_dry_run_shows_which_roi_matched_and_a_saved_plan_applies(archive, tmp_path, capsys):
    arc, _, _ = archive
    one = _by_modality(arc, "ROI1")
    job = tmp_path / "roi.yml"
    job.write_text(textwrap.dedent(f"""\
        version: 1
        archive: {{data: {arc.data_dir}, database: {arc.database}}}
        select: {{roi: "ptv*", with_referenced: true}}
        action:
          copy: {{destination: {tmp_path / "out"}}}
        """))
    assert main(["--dry-run", str(job)]) == 0
    out = capsys.readouterr().out
    assert f"ROI match: {one['RTSTRUCT']}: PTV_High" in out
    assert f"referenced by structure set {one['RTSTRUCT']}: {one['RTPLAN']}" in out
    assert main(["--plan-out", str(tmp_path / "plan.json"), str(job)]) == 0
    capsys.readouterr()
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["steps"][0]["options"]["roi_matched"] == {one["RTSTRUCT"]: ["PTV_High"]}
    assert main(["--apply", str(tmp_path / "plan.json")]) == 0, capsys.readouterr().err
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 5


def test_with_referenced_without_roi_is_a_located_error(tmp_path, capsys):
    job = tmp_path / "bad.yml"
    job.write_text("version: 1\nselect:\n  modality: RTPLAN\n  with_referenced: true\n"
                   "action:\n  copy: {destination: out}\n")
    assert main(["--validate", str(job)]) == 2
    err = capsys.readouterr().err
    assert f"{job}:4:3: select.with_referenced adds what ROI-matched structure sets " in err
    job.write_text("version: 1\nselect: {roi: []}\naction:\n  copy: {destination: out}\n")
    assert main(["--validate", str(job)]) == 2
    assert f"{job}:2:15: select.roi must list at least one value" in capsys.readouterr().err


def test_the_example_job_selects_the_lung_sets_and_edits_the_copies(tmp_path, monkeypatch, capsys):
    import pydicom
    from _jobs_support import sandbox
    root = sandbox(tmp_path)
    monkeypatch.chdir(root)
    assert main(["--dry-run", "jobs/export_lung_sets.yml"]) == 0
    out = capsys.readouterr().out
    assert "ROI match: " in out and ": Lung_L, Lung_R" in out
    assert out.count("referenced by structure set") == 3        # plan, dose, CT
    assert not (root / "exports").exists()
    assert main(["jobs/export_lung_sets.yml"]) == 0
    files = sorted((root / "exports" / "lung-sets").rglob("*.dcm"))
    modalities = sorted(str(pydicom.dcmread(p).Modality) for p in files)
    assert modalities[-3:] == ["RTDOSE", "RTPLAN", "RTSTRUCT"] and set(modalities[:-3]) == {"CT"}
    for p in files:
        ds = pydicom.dcmread(p)
        assert ds.InstitutionName == "Plan review" and ds.PatientID == "RT/002 A.B"
        if ds.Modality == "RTSTRUCT":
            assert [r.ROIName for r in ds.StructureSetROISequence] == [
                "BODY", "PTV", "LUNG_LEFT", "LUNG_RIGHT"]
