"""pydicom's bundled test files and charset files, a corpus nobody here wrote, through store,
rebuild, dump (json, text) and copy, each file's outcome checked against what dcmtk does with it.

dcmtk's verdict: every file is sent on its own by ``storescu -R`` to ``storescp +xa`` (which
accepts every standard syntax); a file storescp writes is "stored".  Every file storescp stores
must be stored and indexed by us.  We index some files storescp never gets (storescu cannot
propose a context for them, or refuses them); those are listed, with the reason, in
``WE_INDEX_DCMTK_DOES_NOT``; the files neither takes are in ``NEITHER``.  Both tables must match
exactly, so a change on either side shows here.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from _net_support import NODELAY, STORESCU, require, storescp

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_charset_files, get_testdata_files  # noqa: E402

_NO_CODEC = ("compressed; storescu cannot decode it to a syntax storescp +xa accepts (this dcmtk "
             "has no codec for it), so it is never sent; we store files as they are")
_JPEG = ("JPEG; storescu's conversion to an uncompressed syntax storescp +xa accepts fails, so it "
         "is never sent; we store files as they are")
# The one table of known, deliberate differences: file name -> why we store and index it and
# storescp (fed by storescu, file by file) does not.  None the other way round: every file
# storescp stores, we store and index.
WE_INDEX_DCMTK_DOES_NOT: dict[str, str] = {
    **dict.fromkeys([
        "693_J2KI.dcm", "GDCMJ2K_TextGBR.dcm", "J2K_pixelrep_mismatch.dcm",
        "JPEG2000-embedded-sequence-delimiter.dcm", "JPEG2000.dcm", "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm", "examples_jpeg2k.dcm", "MR_small_RLE.dcm",
        "SC_rgb_rle.dcm", "SC_rgb_rle_16bit.dcm", "SC_rgb_rle_16bit_2frame.dcm",
        "SC_rgb_rle_2frame.dcm", "SC_rgb_rle_32bit.dcm", "SC_rgb_rle_32bit_2frame.dcm",
        "rtdose_rle.dcm", "rtdose_rle_1frame.dcm"], _NO_CODEC),
    **dict.fromkeys([
        "JPEG-lossy.dcm", "JPGExtended.dcm", "SC_jpeg_no_color_transform.dcm",
        "SC_jpeg_no_color_transform_2.dcm", "SC_rgb_dcmtk_+eb+cr.dcm",
        "SC_rgb_dcmtk_+eb+cy+n1.dcm", "SC_rgb_dcmtk_+eb+cy+n2.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm",
        "SC_rgb_dcmtk_+eb+cy+s2.dcm", "SC_rgb_dcmtk_+eb+cy+s4.dcm", "SC_rgb_gdcm_KY.dcm",
        "SC_rgb_jpeg_app14_dcmd.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jpeg_gdcm.dcm",
        "SC_rgb_jpeg_lossy_gdcm.dcm", "SC_rgb_small_odd_jpeg.dcm", "examples_ybr_color.dcm"],
        _JPEG),
    "SC_rgb_jpeg.dcm": ("its meta says explicit VR, the data set is implicit; storescu fails "
                        "to send it; we index it flagged syntax-mismatch"),
}


def _corpus() -> list[Path]:
    files = {Path(f) for f in get_testdata_files("**/*")} | {
        Path(f) for f in get_charset_files("*.dcm")}
    return sorted((f for f in files if f.is_file()), key=lambda p: (p.name, str(p)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(folder of the corpus files under unique names, {unique name: original name})."""
    root = tmp_path_factory.mktemp("corpus")
    folder = root / "in"
    folder.mkdir()
    names = {}
    for i, src in enumerate(_corpus()):
        name = f"{i:03d}_{src.name}"
        shutil.copyfile(src, folder / name)
        names[name] = src.name
    return folder, names


@pytest.fixture(scope="module")
def dcmtk_verdict(corpus, tmp_path_factory):
    """{unique name: True when storescp stored the file sent alone by storescu}."""
    require(STORESCU)
    folder, names = corpus
    out = tmp_path_factory.mktemp("storescp")
    verdict = {}
    with storescp(out) as (_, port):
        for name in sorted(names):
            subprocess.run([STORESCU, "-R", "-nh", "-to", "10", "-aet", "SCU", "-aec",
                            "STORESCP", "127.0.0.1", str(port), str(folder / name)],
                           env=NODELAY, capture_output=True, timeout=30)
            written = list(out.iterdir())     # several corpus files share a SOP UID
            verdict[name] = bool(written)
            for path in written:
                path.unlink()
    return verdict


@pytest.fixture(scope="module")
def stored(corpus, tmp_path_factory):
    """The corpus stored with ``conquest-run store --json`` into a fresh archive:
    (archive root, exit code, the JSON report)."""
    folder, _ = corpus
    root = tmp_path_factory.mktemp("archive")
    (root / "data").mkdir()
    args = ["--data", str(root / "data"), "--database", str(root / "conquest.db")]
    out = root / "store.json"
    proc = subprocess.run(["conquest-run", "store", "--json", *args, str(folder)],
                          capture_output=True, text=True, timeout=120)
    out.write_text(proc.stdout)
    assert "Traceback" not in proc.stderr
    return root, args, proc.returncode, json.loads(proc.stdout)


def _originals(names: dict[str, str], paths) -> set[str]:
    return {names[Path(p).name] for p in paths}


def test_store_indexes_every_file_storescp_stores(corpus, dcmtk_verdict, stored):
    _, names = corpus
    root, _, code, report = stored
    ours = {Path(f["path"]).name for f in report["files"]}
    bad = {Path(b["path"]).name: b["reason"] for b in report["bad"]}
    assert code == 1 and bad                       # the corpus holds files nobody can index
    assert ours | set(bad) == set(names) and not ours & set(bad)
    dcmtk = {n for n, ok in dcmtk_verdict.items() if ok}
    assert dcmtk - ours == set(), "storescp stores these, we do not"
    assert _originals(names, ours - dcmtk) == set(WE_INDEX_DCMTK_DOES_NOT)
    assert all(r and "Traceback" not in r for r in bad.values())
    # every file we refuse, storescp does not store either; none of them is refused for
    # having no pixel data, and "truncated" is only said of files cut inside an element
    assert not any(dcmtk_verdict[n] for n in bad)
    assert not any("without pixel data" in r for r in bad.values())
    assert {names[n] for n, r in bad.items() if r.startswith("truncated")} == {
        "MR_truncated.dcm", "rtplan_truncated.dcm"}
    # every stored file is in the index, under the data set's SOP UID (not the meta's)
    conn = sqlite3.connect(root / "conquest.db")
    indexed = dict(conn.execute("SELECT SOPInstanc, ObjectFile FROM DICOMImages"))
    flags = dict(conn.execute("SELECT SOPInstanc, Flags FROM RTExtras"))
    conn.close()
    last = {f["sop_uid"]: f for f in report["files"]}   # corpus files share SOP UIDs:
    assert len(indexed) == len(last)                     # the last one stored is indexed
    for f in last.values():
        assert f["object_file"] == indexed[f["sop_uid"]]
        assert f["flags"] == (flags[f["sop_uid"]].split("\\") if flags[f["sop_uid"]] else [])
        ds = pydicom.dcmread(f["path"], stop_before_pixels=True, force=True)
        assert f["sop_uid"] == ds.SOPInstanceUID
    by_name = {names[Path(f["path"]).name]: f["flags"] for f in report["files"]}
    assert by_name["rtplan.dcm"] == ["meta-mismatch"]
    assert by_name["SC_rgb_jpeg.dcm"] == ["syntax-mismatch"]
    assert by_name["ExplVR_LitEndNoMeta.dcm"] == ["no-meta"]
    assert by_name["chrKoreanMulti.dcm"] == ["no-pixel-data"]
    assert sum("no-pixel-data" in f for f in by_name.values()) >= 40


def test_rebuild_indexes_every_stored_file_again(stored):
    root, args, _, store_report = stored
    proc = subprocess.run(["conquest-run", "rebuild", "--json", *args],
                          capture_output=True, text=True, timeout=120)
    report = json.loads(proc.stdout)
    files = [p for p in (root / "data").rglob("*") if p.is_file()]
    assert proc.returncode == 0 and report["bad"] == [] and proc.stderr == ""
    assert report["indexed"] == len(files) == len({f["sop_uid"] for f in store_report["files"]})
    flagged = {f["path"]: f["flags"] for f in report["flagged"]}
    last = {f["object_file"]: f["flags"] for f in store_report["files"]}  # the last one per SOP
    assert flagged == {path: flags for path, flags in last.items() if flags}
    text = subprocess.run(["conquest-run", "rebuild", "--verbose", *args],
                          capture_output=True, text=True, timeout=120)
    assert text.returncode == 0
    assert len([line for line in text.stderr.splitlines() if ": indexed, flagged " in line]) == \
        len(flagged)


def test_dump_json_text_and_copy_every_instance(stored, tmp_path):
    root, args, _, report = stored
    job = tmp_path / "corpus.yml"
    job.write_text(f"""version: 1
name: corpus
archive: {{data: {json.dumps(str(root / "data"))}, database: {json.dumps(str(root / "conquest.db"))}}}
steps:
  - name: json
    select: {{query: select SOPInstanc from DICOMImages}}
    action: {{dump: {{file: {json.dumps(str(tmp_path / "json"))}, format: json, per_instance: true}}}}
  - name: text
    select: {{query: select SOPInstanc from DICOMImages}}
    action: {{dump: {{file: {json.dumps(str(tmp_path / "text"))}, format: text, per_instance: true}}}}
  - name: copy
    select: {{query: select SOPInstanc from DICOMImages}}
    action: {{copy: {{destination: {json.dumps(str(tmp_path / "copy"))}}}}}
""")
    proc = subprocess.run(["conquest-run", "--json", str(job)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    instances = len({f["sop_uid"] for f in report["files"]})
    for folder in ("json", "text", "copy"):
        assert len([p for p in (tmp_path / folder).rglob("*") if p.is_file()
                    and p.name != "manifest.json"]) == instances, folder
    copied = sorted(p.read_bytes() for p in (tmp_path / "copy").rglob("*.dcm"))
    assert copied == sorted(p.read_bytes() for p in (root / "data").rglob("*") if p.is_file())


def test_charset_person_names_are_indexed_as_pydicom_decodes_them(tmp_path):
    from conquest_run import Archive

    files = sorted(Path(f) for f in get_charset_files("*.dcm"))
    assert len(files) == 17
    checked = []
    for src in files:
        archive = Archive(tmp_path / src.stem / "data", tmp_path / src.stem / "conquest.db")
        archive.data_dir.mkdir(parents=True)
        result = archive.store([src])
        ds = pydicom.dcmread(src, stop_before_pixels=True)
        if "SOPInstanceUID" not in ds:    # chrSQEncoding*: names in a sequence, no instance
            assert [b.reason for b in result.bad] == [
                "no SOP Instance UID: not an indexable DICOM object"], src.name
            continue
        assert result.bad == [], src.name
        checked.append(src.name)
        want = str(ds.get("PatientName", "") or "")[:64].rstrip(" ") or None
        (got,) = archive.query("select PatientNam from DICOMPatients", column=0)
        # the value as in the file, as Conquest keeps it: chrX1's empty phonetic group keeps its
        # '=' ("Wang^XiaoDong=王^小東="), which pydicom's str() leaves off
        assert got == want or (got.rstrip("=") == want and got.endswith("=")), src.name
    assert len(checked) == 15 and "chrJapMulti.dcm" in checked and "chrX1.dcm" in checked
