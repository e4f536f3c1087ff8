"""The de-identification profile on single datasets: the generated table, each option's column,
UIDs by value, burned-in refusal, the secret, and the job file's located checks."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from conquest_run.deid import OPTIONS, Profile, SecretError, check_settings
from conquest_run.deid.apply import BurnedIn, deidentify_dataset
from conquest_run.deid.profile import load_table, read_secret
from conquest_run.deid.uids import Pseudonyms
from conquest_run.errors import JobError
from conquest_run.jobs import parse_job

REPO = Path(__file__).resolve().parents[1]
KEY = b"k" * 16
_MARKS = {"DeidentificationMethod", "DeidentificationMethodCodeSequence",
          "LongitudinalTemporalInformationModified"}


def rich_dataset() -> Dataset:
    """pydicom's CT with identifying attributes of every option's column added."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName = "DOE^JOHN"
    ds.PatientID = "ID-4242"
    ds.PatientSex = "M"
    ds.PatientAge = "042Y"
    ds.PatientWeight = 80
    ds.StudyDate = "20240102"
    ds.SeriesDate = "20240102"
    ds.DeviceSerialNumber = "SN-77"
    ds.StationName = "CT-STATION-9"
    ds.InstitutionName = "ST ELSEWHERE HOSPITAL"
    ds.SeriesDescription = "CHEST DOE JOHN"
    ds.StudyDescription = "THORAX"
    ds.ImageComments = "scanned for DOE"
    ds.add_new(0x00700001, "SQ", Sequence([Dataset()]))      # GraphicAnnotationSequence
    ds.GraphicAnnotationSequence[0].GraphicLayer = "LAYER1"
    ds.add_new(0x00400555, "SQ", Sequence([Dataset()]))      # AcquisitionContextSequence
    ds.AcquisitionContextSequence[0].TextValue = "DOE"
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    ds.ReferencedImageSequence = Sequence([item])
    return ds


def _export(ds: Dataset, options=(), key: bytes = KEY) -> Dataset:
    out = copy.deepcopy(ds)
    deidentify_dataset(out, Profile(options), Pseudonyms(key))
    return out


def _differing(a: Dataset, b: Dataset) -> set[str]:
    tags = set(a.keys()) | set(b.keys())
    return {pydicom.datadict.keyword_for_tag(t) or str(t) for t in tags
            if (a.get(t).value if t in a else None) != (b.get(t).value if t in b else None)}


def test_table_is_generated_data_with_every_column():
    doc = load_table()
    assert doc["generated_by"] == "tools/gen_deid_table.py"
    assert doc["source"]["package"].startswith("idiscore-")
    assert "2025-06-24" in doc["release"]
    assert set(doc["columns"]) == {"basic", *OPTIONS}
    assert len(doc["rows"]) > 600
    by_tag = {r["tag"]: r for r in doc["rows"]}
    assert by_tag["00100010"]["basic"] == "Z"          # PatientName
    assert by_tag["00080018"]["basic"] == "U"          # SOPInstanceUID
    assert by_tag["00080018"]["retain-uids"] == "K"
    assert by_tag["private"]["basic"] == "X"


def test_generator_reproduces_the_committed_table(tmp_path):
    wheel = tmp_path / "w"      # the source package, from PyPI as the README says
    got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                          "--only-binary=:all:", "--python-version", "3.12", "idiscore==1.6.0",
                          "-d", str(wheel)], capture_output=True, timeout=120)
    assert got.returncode == 0, got.stderr
    wheels = sorted(wheel.glob("idiscore-1.6.0-*.whl"))
    out = tmp_path / "table.json"
    subprocess.run([sys.executable, str(REPO / "tools/gen_deid_table.py"), str(wheels[0]),
                    "-o", str(out)], check=True, capture_output=True, timeout=60)
    assert json.loads(out.read_text()) == load_table()


def test_basic_profile_removes_identity_and_marks_the_file():
    ds = rich_dataset()
    out = _export(ds)
    assert out.PatientName != "DOE^JOHN" and out.PatientID == str(out.PatientName)
    assert out.PatientIdentityRemoved == "YES"
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100"]
    for kw in ("PatientAge", "PatientWeight", "SeriesDescription", "ImageComments",
               "AcquisitionContextSequence"):
        assert kw not in out or not out[kw].value, kw
    assert out.DeviceSerialNumber == "ANONYMIZED"                       # X/Z/D: a dummy
    assert out.GraphicAnnotationSequence == Sequence([Dataset()])       # D on a sequence
    assert not any(t.is_private for t in out.keys())
    assert out.StudyDate in ("", None)
    assert out.SOPClassUID == ds.SOPClassUID            # standard UIDs unchanged
    assert out.SOPInstanceUID.startswith("2.25.") and out.SOPInstanceUID != ds.SOPInstanceUID
    # by value, at every depth
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == out.SOPInstanceUID
    assert out.ReferencedImageSequence[0].ReferencedSOPClassUID == ds.SOPClassUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


@pytest.mark.parametrize("option", OPTIONS)
def test_each_option_changes_exactly_its_column(option):
    ds = rich_dataset()
    base, opt = _export(ds), _export(ds, (option,))
    basic, with_opt = Profile(()), Profile((option,))
    column = {pydicom.datadict.keyword_for_tag(t) or str(t) for t in ds.keys()
              if not t.is_private and basic.action(int(t)) != with_opt.action(int(t))}
    if option == "retain-safe-private":
        column |= {str(t) for t in ds.keys() if t.is_private}
    if option == "retain-uids":   # also the UIDs the table does not list, and their references
        column |= {"ReferencedImageSequence", "MediaStorageSOPInstanceUID"}
    changed = _differing(base, opt) - _MARKS
    assert changed, f"{option} changed nothing"
    assert changed <= column, changed - column
    assert [i.CodeValue for i in opt.DeidentificationMethodCodeSequence] == \
        ["113100", load_table()["columns"][option]["code"]]


def test_option_effects_are_the_standards():
    ds = rich_dataset()
    assert _export(ds, ("retain-uids",)).SOPInstanceUID == ds.SOPInstanceUID
    assert _export(ds, ("retain-patient-characteristics",)).PatientSex == "M"
    assert _export(ds, ("retain-device-identity",)).DeviceSerialNumber == "SN-77"
    assert _export(ds, ("retain-institution-identity",)).InstitutionName == ds.InstitutionName
    assert _export(ds, ("retain-longitudinal-full-dates",)).StudyDate == "20240102"
    moved = _export(ds, ("retain-longitudinal-modified-dates",))
    assert moved.StudyDate not in ("20240102", "", None) and moved.StudyDate == moved.SeriesDate
    assert moved.LongitudinalTemporalInformationModified == "MODIFIED"
    clean = _export(ds, ("clean-descriptors",))
    assert clean.SeriesDescription.strip() == "CHEST"   # the patient's name taken out
    kept = _export(ds, ("retain-safe-private",))
    # Table E.3.10-1's GE entries and their creators only (tests/test_deid_private.py)
    assert {int(t) for t in kept.keys() if t.is_private} == {
        0x00190010, 0x00191023, 0x00191024, 0x00191027, 0x00250010, 0x00251007, 0x00430010,
        0x00431027}


def test_same_key_same_values_other_key_disjoint():
    ds = rich_dataset()
    a, b, c = _export(ds), _export(ds), _export(ds, key=b"another-secret-key")
    assert a == b and a.file_meta == b.file_meta
    uids = lambda d: {d.SOPInstanceUID, d.SeriesInstanceUID, d.StudyInstanceUID,
                      d.FrameOfReferenceUID}
    assert not uids(a) & uids(c)
    assert a.PatientID != c.PatientID


def test_pseudonym_pattern_numbers_patients():
    names = Pseudonyms(KEY, "TRIAL42-{n:04d}", ["P1", "P2", "P3"])
    got = {names.patient_id(p) for p in ("P1", "P2", "P3")}
    assert got == {"TRIAL42-0001", "TRIAL42-0002", "TRIAL42-0003"}
    assert "k" * 16 not in repr(names)


@pytest.mark.parametrize("sop_class,burned,refused", [
    ("1.2.840.10008.5.1.4.1.1.7", None, True),           # secondary capture, flag absent
    ("1.2.840.10008.5.1.4.1.1.6.1", None, True),         # ultrasound
    ("1.2.840.10008.5.1.4.1.1.481.1", None, True),       # RT image
    ("1.2.840.10008.5.1.4.1.1.7", "NO", False),
    ("1.2.840.10008.5.1.4.1.1.2", "YES", True),          # CT that says so
    ("1.2.840.10008.5.1.4.1.1.2", None, False),
])
def test_burned_in_text_is_refused(sop_class, burned, refused):
    ds = rich_dataset()
    ds.SOPClassUID = sop_class
    if burned:
        ds.BurnedInAnnotation = burned
    if refused:
        with pytest.raises(BurnedIn):
            deidentify_dataset(copy.deepcopy(ds), Profile(()), Pseudonyms(KEY))
        deidentify_dataset(ds, Profile(()), Pseudonyms(KEY), allow_burned_in=True)
    else:
        deidentify_dataset(ds, Profile(()), Pseudonyms(KEY))
    assert ds.PatientName != "DOE^JOHN" or refused


@pytest.mark.parametrize("value,why", [(None, "is not set"), ("", "is empty"),
                                       ("short", "holds fewer than 16 bytes")])
def test_the_secret_must_be_usable(value, why):
    env = {} if value is None else {"T42": value}
    with pytest.raises(SecretError, match=f"T42 {why}"):
        read_secret("T42", env)
    assert read_secret("T42", {"T42": "x" * 16}) == b"x" * 16


JOB = """version: 1
select: {modality: CT}
action:
  copy:
    destination: exports/x
    deidentify:
      secret_env: T42
      options: [{options}]
"""


@pytest.mark.parametrize("options,message,col", [
    ("retain-uids, retain-everything", "not 'retain-everything'", 30),
    ("retain-longitudinal-full-dates, retain-longitudinal-modified-dates",
     "exclude each other", 49),
])
def test_job_file_refuses_bad_options_located(options, message, col):
    with pytest.raises(JobError) as err:
        parse_job(JOB.replace("{options}", options), "job.yml")
    text = str(err.value)
    assert f"job.yml:8:{col}:" in text and message in text, text


def test_job_file_refuses_bad_pattern_and_unknown_key():
    text = JOB.replace("{options}", "").replace("secret_env: T42",
                                                "secret_env: T42\n      patient_id: X-{name}")
    with pytest.raises(JobError, match=r"job.yml:8:19: .*patient_id must be a pattern"):
        parse_job(text, "job.yml")
    with pytest.raises(JobError, match=r"job.yml:\d+:\d+: .*secret"):
        parse_job(JOB.replace("{options}", "").replace("secret_env: T42", "secret: abc"),
                  "job.yml")
    settings, problems = check_settings({"secret_env": "T42", "options": ["clean-graphics"]})
    assert not problems and settings.options == ("clean-graphics",)


def test_send_takes_the_same_block_and_mapping_path_is_checked():
    job = parse_job("version: 1\nselect: {modality: CT}\naction:\n  send:\n"
                    "    host: 127.0.0.1\n    port: 104\n    called_ae: PACS\n"
                    "    deidentify: {secret_env: T42, options: [retain-uids]}\n", "send.yml")
    assert job.steps[0].options["deidentify"]["options"] == ["retain-uids"]
    with pytest.raises(JobError, match=r"send.yml:8:\d+: .*mapping contains a control"):
        parse_job("version: 1\nselect: {modality: CT}\naction:\n  send:\n"
                  "    host: 127.0.0.1\n    port: 104\n    called_ae: PACS\n"
                  "    deidentify: {secret_env: T42, mapping: \"map\\x01.json\"}\n", "send.yml")
