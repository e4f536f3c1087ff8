"""Synthetic DICOM: reproducible bytes, valid links, and the committed sample matches its script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom

from conquest_run import synthetic

REPO = Path(__file__).resolve().parents[1]


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_uids(tmp_path):
    a = synthetic.write_linked_rt_set(tmp_path / "a", seed=1, patient_id="P")
    b = synthetic.write_linked_rt_set(tmp_path / "b", seed=1, patient_id="P")
    c = synthetic.write_linked_rt_set(tmp_path / "c", seed=2, patient_id="P")
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    assert a == b and c.rtplan_uid != a.rtplan_uid
    assert all(len(u) <= 64 for u in [a.study_uid, a.rtplan_uid, *a.ct_sop_uids])


def test_links_point_at_real_objects(tmp_path):
    info = synthetic.write_linked_rt_set(tmp_path, seed=3, patient_id="P", ct_slices=4,
                                         beams=2, fractions=10)
    read = {f: pydicom.dcmread(tmp_path / f) for f in info.files}
    by_uid = {ds.SOPInstanceUID: ds for ds in read.values()}
    ss, plan, dose = by_uid[info.rtstruct_uid], by_uid[info.rtplan_uid], by_uid[info.rtdose_uid]
    frame = ss.ReferencedFrameOfReferenceSequence[0]
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == info.ct_series_uid
    assert {c.ReferencedSOPInstanceUID for c in series.ContourImageSequence} == set(
        info.ct_sop_uids)
    assert plan.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == ss.SOPInstanceUID
    assert dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == plan.SOPInstanceUID
    assert len(plan.BeamSequence) == 2
    assert plan.FractionGroupSequence[0].NumberOfFractionsPlanned == 10
    ct = by_uid[info.ct_sop_uids[0]]
    assert (ct.Rows, ct.Columns, len(ct.PixelData)) == (16, 16, 16 * 16 * 2)
    big = synthetic.ct_series(synthetic.PatientSpec("P"), 1, "1.2.3", slices=1, size=512)[0]
    assert len(big.PixelData) == 512 * 512 * 2


def test_generate_files_makes_the_requested_mix(tmp_path):
    files = synthetic.generate_files(tmp_path, 120, seed=1)
    assert len(files) == 120 == len(set(files))
    modalities = {pydicom.dcmread(tmp_path / f, stop_before_pixels=True).Modality for f in files}
    assert modalities == {"CT", "MR", "RTSTRUCT", "RTPLAN", "RTDOSE"}


def test_committed_sample_is_what_the_script_writes(tmp_path):
    committed = REPO / "examples" / "sample" / "data"
    out = tmp_path / "data"
    subprocess.run([sys.executable, str(REPO / "examples" / "make_sample.py"), str(out)],
                   check=True, capture_output=True)
    assert tree(out) == tree(committed)
    assert sum(len(v) for v in tree(out).values()) < 400 * 1024


def test_make_sample_help_and_refusal(tmp_path):
    script = str(REPO / "examples" / "make_sample.py")
    res = subprocess.run([sys.executable, script, "--help"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and "OUTPUT_DATA_DIR" in res.stdout
    assert list(tmp_path.iterdir()) == []                # no folder named --help
    mine = tmp_path / "mine"
    (mine / "P").mkdir(parents=True)
    (mine / "P" / "keep.dcm").write_bytes(b"precious")
    res = subprocess.run([sys.executable, script, str(mine)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "refusing to replace it" in res.stderr
    assert (mine / "P" / "keep.dcm").read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]   # no temporary folder left
    out = tmp_path / "sample"
    for _ in range(2):                                   # its own sample is replaced
        res = subprocess.run([sys.executable, script, str(out)], capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 0, res.stderr
