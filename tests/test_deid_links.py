"""De-identified exports keep RT records and spatial registrations linked: an RT Beams Treatment
Record still references its plan, and a Spatial Registration its images, series, studies and
frames of reference, all inside the export; dciodvfy finds no new errors in either."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pydicom
import pytest

from conquest_run import synthetic
from conquest_run.archive import Archive

from _deid_links_support import beams_treatment_record, spatial_registration

SECRET = "links-secret-value-0123456789abcdef"
_REFERENCE_KEYWORDS = ("ReferencedSOPInstanceUID", "ReferencedFrameOfReferenceUID",
                       "SeriesInstanceUID", "FrameOfReferenceUID", "StudyInstanceUID")


def _read(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, force=True)


def _walk(ds, path=()):
    for elem in ds:
        yield path + (elem.keyword,), elem
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                yield from _walk(item, path + (elem.keyword, i))


@pytest.fixture(scope="module")
def linked(tmp_path_factory):
    """(original datasets by role, exported datasets by role, original and exported paths)."""
    root = tmp_path_factory.mktemp("links")
    data = root / "data"
    rt = synthetic.write_linked_rt_set(data, seed=21, patient_id="LINK-0042",
                                       patient_name="LINKED^PATIENT", ct_slices=3)
    files = {Path(f).stem: data / f for f in rt.files}
    ct = [_read(files[u]) for u in rt.ct_sop_uids]
    plan = _read(files[rt.rtplan_uid])
    patient = synthetic.PatientSpec("LINK-0042", "LINKED^PATIENT")
    mr_study = synthetic.make_uid(21, "LINK-0042", "MR study")
    mr = synthetic.mr_series(patient, 21, mr_study, slices=2)
    for ds in mr:
        synthetic.write_dataset(ds, data / "LINK-0042" / f"{ds.SOPInstanceUID}.dcm")
    record = beams_treatment_record(plan, 21)
    registration = spatial_registration(ct, mr, 21)
    paths = {}
    for role, ds in (("record", record), ("registration", registration)):
        paths[role] = synthetic.write_dataset(ds, data / "LINK-0042" / f"{role}.dcm")
    arc = Archive(data, root / "conquest.db")
    arc.rebuild()
    with sqlite3.connect(arc.database) as conn:
        series = [r[0] for r in conn.execute("SELECT SeriesInst FROM DICOMSeries")]
    dest = root / "export"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LINKS_SECRET", SECRET)
        report = arc.copy_series(series, dest, deidentify={"secret_env": "LINKS_SECRET"})
    exported = [_read(p) for p in sorted(dest.rglob("*.dcm"))]
    assert len(exported) == report.summary["deidentified"] == len(rt.files) + len(mr) + 2
    by_modality: dict[str, list] = {}
    for ds in exported:
        by_modality.setdefault(str(ds.Modality), []).append(ds)
    original = {"ct": ct, "mr": mr, "plan": plan, "record": record,
                "registration": registration}
    out_paths = {str(ds.Modality): p for ds, p in zip(exported, sorted(dest.rglob("*.dcm")))}
    return original, by_modality, paths, out_paths


def test_every_reference_resolves_inside_the_export(linked):
    _, out, _, _ = linked
    defined = set()
    for group in out.values():
        for ds in group:
            defined |= {str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID),
                        str(ds.StudyInstanceUID), str(ds.get("FrameOfReferenceUID", ""))}
    refs = 0
    for group in out.values():
        for ds in group:
            for where, elem in _walk(ds):
                if elem.keyword in _REFERENCE_KEYWORDS and len(where) > 1:
                    assert str(elem.value) in defined, (ds.Modality, where)
                    refs += 1
    assert refs >= 20


def test_the_record_still_references_its_plan(linked):
    original, out, _, _ = linked
    (record,), (plan,) = out["RTRECORD"], out["RTPLAN"]
    ref = record.ReferencedRTPlanSequence[0]
    assert ref.ReferencedSOPInstanceUID == plan.SOPInstanceUID
    assert ref.ReferencedSOPInstanceUID != original["plan"].SOPInstanceUID
    assert ref.ReferencedSOPClassUID == plan.SOPClassUID            # a class UID stays
    assert record.StudyInstanceUID == plan.StudyInstanceUID
    assert [b.ReferencedBeamNumber for b in record.TreatmentSessionBeamSequence] == \
        [b.BeamNumber for b in plan.BeamSequence]
    assert str(record.PatientID) == str(plan.PatientID) != "LINK-0042"


def test_the_registration_still_registers_the_exported_images(linked):
    original, out, _, _ = linked
    (reg,) = out["REG"]
    ct, mr = out["CT"], out["MR"]
    ct_item, mr_item = reg.RegistrationSequence
    assert ct_item.FrameOfReferenceUID == ct[0].FrameOfReferenceUID == reg.FrameOfReferenceUID
    assert mr_item.FrameOfReferenceUID == mr[0].FrameOfReferenceUID
    assert mr_item.FrameOfReferenceUID != original["mr"][0].FrameOfReferenceUID
    assert {r.ReferencedSOPInstanceUID for r in ct_item.ReferencedImageSequence} == \
        {d.SOPInstanceUID for d in ct}
    assert {r.ReferencedSOPInstanceUID for r in mr_item.ReferencedImageSequence} == \
        {d.SOPInstanceUID for d in mr}
    matrix = mr_item.MatrixRegistrationSequence[0].MatrixSequence[0]
    assert list(matrix.FrameOfReferenceTransformationMatrix)[3] == 2.5     # geometry kept
    (series,) = reg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == ct[0].SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in series.ReferencedInstanceSequence} == \
        {d.SOPInstanceUID for d in ct}
    (other,) = reg.StudiesContainingOtherReferencedInstancesSequence
    assert other.StudyInstanceUID == mr[0].StudyInstanceUID != reg.StudyInstanceUID
    assert other.ReferencedSeriesSequence[0].SeriesInstanceUID == mr[0].SeriesInstanceUID


def test_no_original_uid_or_name_survives_in_record_or_registration(linked):
    original, _, _, out_paths = linked
    words = {"LINKED", "LINK-0042", "TECH", "PHYSICIST", "ST ELSEWHERE", "LINAC-SN-1"}
    for role in ("record", "registration", "plan"):
        words |= {str(e.value) for _, e in _walk(original[role]) if e.VR == "UI"
                  and not str(e.value).startswith("1.2.840.10008.")}
    for modality in ("RTRECORD", "REG"):
        raw = out_paths[modality].read_bytes()
        for word in words:
            assert word.encode() not in raw, (modality, word)


def _dciodvfy_errors(path: Path) -> tuple[int, str]:
    got = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=30)
    text = got.stdout + got.stderr
    return sum(1 for line in text.splitlines() if line.startswith("Error")), text


@pytest.mark.parametrize("role,modality,iod", [("record", "RTRECORD", "RTBeamsTreatmentRecord"),
                                               ("registration", "REG", "SpatialRegistration")])
def test_dciodvfy_finds_no_new_errors(linked, role, modality, iod):
    if not shutil.which("dciodvfy"):
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    _, _, paths, out_paths = linked
    before, text = _dciodvfy_errors(paths[role])
    after, new_text = _dciodvfy_errors(out_paths[modality])
    assert iod in text.splitlines() and iod in new_text.splitlines(), text   # the IOD checked
    assert after <= before, new_text
