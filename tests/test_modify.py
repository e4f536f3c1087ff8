"""Tag editing (``modify:``) on copy and send: applied to the outgoing copies only, after
``deidentify:``, validated against pydicom's data dictionary at ``--validate`` time."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import textwrap
from pathlib import Path

import pydicom
import pytest
from _net_support import received_sops, storescp

from conquest_run import synthetic
from conquest_run.archive import Archive
from conquest_run.cli import main
from conquest_run.modify import check_block, parse_block

SECRET = "modify-test-secret-0123456789abcdef"


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("modify")
    synthetic.write_linked_rt_set(root / "data", seed=5, patient_id="MOD1", ct_slices=2,
                                  rois=("BODY", "PTV", "CTV"))
    arc = Archive(root / "data", root / "conquest.db")
    arc.rebuild()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MODIFY_TEST_SECRET", SECRET)
        yield arc


def _series(arc, modality=None) -> list[str]:
    sql = "SELECT SeriesInst FROM DICOMSeries" + (" WHERE Modality = ?" if modality else "")
    with sqlite3.connect(arc.database) as conn:
        return [r[0] for r in conn.execute(sql, (modality,) if modality else ())]


EDITS = {"set": {"InstitutionName": "Trial site 3", "(0008,1030)": "Plan review",
                 "PatientWeight": 71.5},
         "remove": ["PatientBirthDate"],
         "rename_roi": {"PTV": "PTV_70", "ABSENT": "X"}}


def test_check_block_refuses_bad_keywords_vrs_and_values_with_their_place():
    assert check_block(EDITS) == []
    problems = dict(check_block({
        "set": {"PatientNme": "x", "StudyDate": "2020", "ReferencedImageSequence": "x",
                "(0009,1001)": "x", "Rows": "ten", "PatientName": "A\\B",
                "(0002,0010)": "1.2"},
        "remove": ["NoSuchThing"], "rename_roi": {"PTV": "x" * 65}, "colour": 1}))
    assert "not a DICOM keyword" in problems[("set", "PatientNme")]
    assert "not a valid DA value" in problems[("set", "StudyDate")]
    assert "VR SQ" in problems[("set", "ReferencedImageSequence")]
    assert "private tag" in problems[("set", "(0009,1001)")]
    assert "an integer for VR US" in problems[("set", "Rows")]
    assert "backslash" in problems[("set", "PatientName")]
    assert "cannot be set" in problems[("set", "(0002,0010)")]
    assert "not a DICOM keyword" in problems[("remove", 0)]
    assert "not a valid ROI name" in problems[("rename_roi", "PTV")]
    assert "no key 'colour'" in problems[("colour",)]
    assert check_block({"set": {"PatientName": "A"}, "remove": ["PatientName"]}) == [
        (("remove", 0), "modify.remove: PatientName is also given under set")]


def test_validate_locates_each_bad_edit_in_the_job_file(tmp_path, capsys):
    job = tmp_path / "edit.yml"
    job.write_text(textwrap.dedent("""\
        version: 1
        select: {modality: RTSTRUCT}
        action:
          copy:
            destination: out
            modify:
              set: {InstitutionName: ok, StudyDate: "12/03/2020"}
              remove: [PatientBirthDate, BirthDay]
        """))
    assert main(["--validate", str(job)]) == 2
    err = capsys.readouterr().err
    assert f"{job}:7:45: modify.set: StudyDate is not a valid DA value" in err
    assert f"{job}:8:34: modify.remove: BirthDay is not a DICOM keyword" in err
    assert "Traceback" not in err


def test_copy_edits_the_copies_never_the_archive(archive, tmp_path):
    before = _tree(archive.data_dir)
    report = archive.copy_series(_series(archive), tmp_path / "out", modify=EDITS)
    assert _tree(archive.data_dir) == before
    files = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(files) == report.summary["modified"] == 5
    assert report.summary["modify"] == {"set": 15, "removed": 5, "renamed_roi": 1}
    manifest = {e["path"]: e["sha256"] for e in
                json.loads((tmp_path / "out" / "manifest.json").read_text())["instances"]}
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.InstitutionName == "Trial site 3" and ds.StudyDescription == "Plan review"
        assert float(ds.PatientWeight) == 71.5 and "PatientBirthDate" not in ds
        rel = str(path.relative_to(tmp_path / "out"))
        assert manifest[rel] == hashlib.sha256(path.read_bytes()).hexdigest()
        if ds.Modality == "RTSTRUCT":
            assert [r.ROIName for r in ds.StructureSetROISequence] == ["BODY", "PTV_70", "CTV"]
            original = pydicom.dcmread(next(archive.data_dir.rglob(path.name)))
            assert [r.ROIName for r in original.StructureSetROISequence][1] == "PTV"


def test_modify_runs_after_deidentify(archive, tmp_path):
    """The profile removes InstitutionName and blanks StudyDescription; the edit comes after
    it, so the copy holds the edited values."""
    report = archive.copy_series(_series(archive, "CT"), tmp_path / "out",
                                 deidentify={"secret_env": "MODIFY_TEST_SECRET"},
                                 modify={"set": {"InstitutionName": "Trial site 3"}})
    files = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(files) == 2 and report.summary["modified"] == 2
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES" and ds.SOPInstanceUID.startswith("2.25.")
        assert ds.InstitutionName == "Trial site 3"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_send_edits_what_the_peer_receives_and_is_journaled_apart(archive, tmp_path):
    rtstruct = _series(archive, "RTSTRUCT")
    before = _tree(archive.data_dir)
    with storescp(tmp_path / "recv") as (_, port):
        plain = archive.send(rtstruct, "127.0.0.1", port, "STORESCP")
        edited = archive.send(rtstruct, "127.0.0.1", port, "STORESCP",
                              modify={"rename_roi": {"CTV": "CTV_High"},
                                      "set": {"InstitutionName": "Trial site 3"}})
        again = archive.send(rtstruct, "127.0.0.1", port, "STORESCP",
                             modify={"rename_roi": {"CTV": "CTV_High"},
                                     "set": {"InstitutionName": "Trial site 3"}})
    assert [o.status for o in plain.outcomes] == ["done"]
    assert [o.status for o in edited.outcomes] == ["done"]      # not skipped as already sent
    assert [o.status for o in again.outcomes] == ["skipped"]
    assert edited.summary["modify"]["renamed_roi"] == 1
    assert _tree(archive.data_dir) == before
    received = received_sops(tmp_path / "recv")
    assert len(received) == 1          # the same SOP UID, stored twice by storescp
    names = set()
    for path in (tmp_path / "recv").rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path)
            names.add((str(ds.get("InstitutionName", "")),
                       tuple(r.ROIName for r in ds.StructureSetROISequence)))
    assert ("Trial site 3", ("BODY", "PTV", "CTV_High")) in names


def test_parse_block_names_every_problem():
    with pytest.raises(Exception, match="PatientNme is not a DICOM keyword"):
        parse_block({"set": {"PatientNme": "x"}})
