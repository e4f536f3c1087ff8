"""The Retain Safe Private Option: PS3.15 Table E.3.10-1 as generated data, and on datasets only
the listed (creator, group, element byte) elements and their creators stay."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from conquest_run.deid import Profile
from conquest_run.deid.apply import deidentify_bytes, deidentify_dataset
from conquest_run.deid.private import creator_text, load_safe_private, safe_index
from conquest_run.deid.uids import Pseudonyms

REPO = Path(__file__).resolve().parents[1]
KEY = b"k" * 16
SAFE = ("retain-safe-private",)
SERIES = "1.2.826.0.1.3680043.10.1389.77.1"
IMAGE = "1.2.826.0.1.3680043.10.1389.77.2"


def _source_rows(doc: dict) -> list[dict]:
    """The rows in the source's own form (what its content_sha256 is over)."""
    return [{"tag": r["tag"], "private_creator": r["creator"], "vr": r["vr"], "vm": r["vm"],
             "meaning": r["meaning"]} for r in doc["rows"]]


def _digest(rows: list[dict]) -> str:
    text = json.dumps(rows, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_table_is_the_standards_generated_rows():
    doc = load_safe_private()
    assert doc["generated_by"] == "tools/gen_safe_private.py"
    assert doc["release"] == "2026d" and "E.3.10-1" in doc["standard"]
    assert doc["source"]["repository"] == "pymedphys/pymedphys"
    assert len(doc["rows"]) == 479
    # the committed rows are exactly the source's: its recorded digest is over them
    assert _digest(_source_rows(doc)) == doc["source"]["content_sha256"]
    index = safe_index()
    assert index[("GEMS_ACQU_01", 0x0019, 0x23)] == ("DS",)
    assert index[("SIEMENS MR HEADER", 0x0019, 0x0C)] == ("IS",)
    assert index[("Philips Imaging DD 001", 0x2001, 0x7D)] == ("OW", "OB")
    assert ("GEMS_ACQU_01", 0x0019, 0x02) not in index        # a number, but not listed


def test_generator_reproduces_the_committed_table(tmp_path):
    doc = load_safe_private()
    source = {"schema": "pymedphys-deid-table/1", "table": "PS3.15 Table E.3.10-1",
              "edition": doc["release"], "acknowledgement": doc["acknowledgement"],
              "sources": doc["scraped_from"], "content_sha256": doc["source"]["content_sha256"],
              "rows": _source_rows(doc)}
    src, out = tmp_path / "e3_10_1.json", tmp_path / "out.json"
    src.write_text(json.dumps(source), encoding="utf-8")
    subprocess.run([sys.executable, str(REPO / "tools/gen_safe_private.py"), str(src),
                    "-o", str(out)], check=True, capture_output=True, timeout=60)
    assert json.loads(out.read_text(encoding="utf-8")) == doc
    source["rows"][0]["meaning"] += "!"                     # an altered row is refused
    src.write_text(json.dumps(source), encoding="utf-8")
    bad = subprocess.run([sys.executable, str(REPO / "tools/gen_safe_private.py"), str(src),
                          "-o", str(tmp_path / "bad.json")], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0 and "content_sha256" in bad.stderr


def _private_dataset() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = IMAGE
    ds.SeriesInstanceUID = SERIES
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1389.77.3"
    ds.PatientName, ds.PatientID, ds.Modality = "DOE^JOHN", "ID-4242", "MR"
    ds.private_block(0x0019, "GEMS_ACQU_01", create=True).add_new(0x23, "DS", "5.0")
    ds.private_block(0x0019, "GEMS_ACQU_01").add_new(0x02, "SL", 912)       # not listed
    ds.private_block(0x0019, "GEMS_ACQU_01").add_new(0x24, "LO", "DOE")     # wrong VR
    ds.add_new(0x00190011, "LO", "SIEMENS MR HEADER ")                      # padded
    ds.add_new(0x0019110C, "IS", "1000")
    ds.add_new(0x00190012, "LO", "siemens mr header")                        # other case
    ds.add_new(0x0019120C, "IS", "2000")
    ds.private_block(0x0021, "GEMS_ACQU_01", create=True).add_new(0x23, "DS", "7")  # group
    ds.private_block(0x0029, "ACME 1.0", create=True).add_new(0x10, "DS", "1")
    ds.add_new(0x00311023, "DS", "3")                                        # no creator
    nq = ds.private_block(0x0099, "NQHeader", create=True)
    nq.add_new(0x02, "UI", SERIES)                                           # Analyzed Series
    nq.add_new(0x05, "LT", "report text")
    nested = Dataset()
    nested.ReferencedSOPInstanceUID = IMAGE
    nested.PatientName = "DOE^JOHN"
    nested.private_block(0x0019, "GEMS_ACQU_01", create=True).add_new(0x23, "DS", "9")
    nested.private_block(0x0019, "GEMS_ACQU_01").add_new(0x10, "LO", "DOE JOHN")
    ds.private_block(0x2001, "Philips Imaging DD 001", create=True).add_new(
        0x5F, "SQ", Sequence([nested]))                                      # Stack Sequence
    return ds


def _private(ds: Dataset) -> dict[int, object]:
    return {int(e.tag): e.value for e in ds if e.tag.is_private}


def test_only_listed_elements_and_their_creators_are_kept():
    ds = _private_dataset()
    out = copy.deepcopy(ds)
    counts = deidentify_dataset(out, Profile(SAFE), Pseudonyms(KEY))
    kept = _private(out)
    assert set(kept) == {0x00190010, 0x00191023, 0x00190011, 0x0019110C,
                         0x00990010, 0x00991002, 0x00991005, 0x20010010, 0x2001105F}
    assert kept[0x00191023] == "5.0" and kept[0x0019110C] == "1000"
    # a kept private UID is remapped like the standard one it names
    assert out[0x00991002].value == out.SeriesInstanceUID != SERIES
    item = out[0x2001105F].value[0]            # a kept sequence's items are de-identified
    assert item.ReferencedSOPInstanceUID == out.SOPInstanceUID
    assert "PatientName" not in item or str(item.PatientName) != "DOE^JOHN"
    assert _private(item) == {0x00190010: "GEMS_ACQU_01", 0x00191023: "9"}
    assert counts["(0019,1002)"] == {"X": 1} and counts["(0019,1023)"] == {"K": 2}
    assert counts["(0029,0010)"] == {"X": 1}       # the creator of nothing kept goes too
    # without the option nothing private stays, at any depth
    plain = copy.deepcopy(ds)
    deidentify_dataset(plain, Profile(()), Pseudonyms(KEY))
    assert not _private(plain)


def test_retain_uids_keeps_private_uids_too():
    out = copy.deepcopy(_private_dataset())
    deidentify_dataset(out, Profile(SAFE + ("retain-uids",)), Pseudonyms(KEY))
    assert out[0x00991002].value == SERIES == out.SeriesInstanceUID


def test_implicit_vr_private_uid_is_recognised_and_remapped():
    ds = _private_dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    raw = io.BytesIO()
    ds.save_as(raw, enforce_file_format=True)
    data, out, _ = deidentify_bytes(raw.getvalue(), Profile(SAFE), Pseudonyms(KEY))
    again = pydicom.dcmread(io.BytesIO(data))     # implicit VR again: the reader sees bytes
    assert out[0x00991002].VR == "UI"
    assert again[0x00991002].value.rstrip(b"\0").decode() == str(again.SeriesInstanceUID) \
        != SERIES
    assert SERIES.encode() not in data and IMAGE.encode() not in data
    assert 0x00191002 not in again and 0x00311023 not in again


def test_creator_values_compare_trimmed_and_exact():
    assert creator_text("GEMS_ACQU_01 ") == creator_text(b" GEMS_ACQU_01\0") == "GEMS_ACQU_01"
    assert creator_text(["A", "B"]) == ""


def test_pydicoms_ct_keeps_exactly_its_listed_ge_elements():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    deidentify_dataset(ds, Profile(SAFE), Pseudonyms(KEY))
    assert set(_private(ds)) == {0x00190010, 0x00191023, 0x00191024, 0x00191027,
                                 0x00250010, 0x00251007, 0x00430010, 0x00431027}
