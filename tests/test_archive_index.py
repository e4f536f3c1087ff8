"""The indexer: rebuild modes, RT extras of a linked set, the sample archive, hostile inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from conquest_run import Archive, synthetic
from conquest_run.errors import ArchiveError

from conftest import PYDICOM_FILES, pydicom_file


def counts(archive: Archive) -> tuple[int, int, int, int, int]:
    return tuple(archive.query(f"SELECT count(*) FROM {t}")[0][0] for t in (
        "DICOMPatients", "DICOMStudies", "DICOMSeries", "DICOMImages", "RTExtras"))


def test_pydicom_files_index_into_all_levels(pydicom_files, tmp_path):
    archive = Archive(pydicom_files, tmp_path / "c.db")
    result = archive.rebuild()
    assert result.indexed == 5 and not result.bad and result.unchanged == 0
    for name in PYDICOM_FILES:
        ds = pydicom.dcmread(pydicom_file(name), force=True, stop_before_pixels=True)
        row = archive.query(
            "SELECT i.ObjectFile, i.DeviceName, i.SeriesInst, i.ImagePat, s.Modality, "
            "s.StudyInsta, st.PatientID FROM DICOMImages i JOIN DICOMSeries s ON "
            "i.SeriesInst = s.SeriesInst JOIN DICOMStudies st ON s.StudyInsta = st.StudyInsta "
            "WHERE i.SOPInstanc = ?", (ds.SOPInstanceUID,))
        assert len(row) == 1, name
        objfile, device, series, pat, modality, study, patient = row[0]
        assert (pydicom_files / objfile).read_bytes() == pydicom_file(name).read_bytes()
        assert "\\" not in objfile and not Path(objfile).is_absolute()
        assert device == "MAG0"
        assert series == ds.SeriesInstanceUID and study == ds.StudyInstanceUID
        assert pat == patient == ds.PatientID
        assert modality == ds.Modality
    assert archive.query("SELECT count(*) FROM DICOMPatients")[0][0] == len(
        {pydicom.dcmread(pydicom_file(n), force=True).PatientID for n in PYDICOM_FILES})
    # RTExtras has a row per file with its size and hash
    sizes = dict(archive.query("SELECT SOPInstanc, FileSize FROM RTExtras"))
    assert len(sizes) == 5


def test_linked_rt_set_extras(linked_rt, tmp_path):
    data, info = linked_rt
    archive = Archive(data, tmp_path / "c.db")
    archive.rebuild()
    q = "SELECT {} FROM RTExtras WHERE SOPInstanc = ?"
    ss = archive.query(q.format("ElementCount, ElementList, ReferencedSeriesUID, UniqueFOR_UID"),
                       (info.rtstruct_uid,))[0]
    assert ss == (len(info.roi_names), "\\".join(info.roi_names), info.ct_series_uid,
                  info.frame_of_reference_uid)
    plan = archive.query(q.format("Nfractions, NumBeams, RefStructSet, ReferencedSOPUID"),
                         (info.rtplan_uid,))[0]
    assert plan == (info.fractions, info.beams, info.rtstruct_uid, info.rtstruct_uid)
    dose = archive.query(q.format("RefPlan, ReferencedSOPUID"), (info.rtdose_uid,))[0]
    assert dose == (info.rtplan_uid, info.rtplan_uid)
    # pyconquest-style query through the view
    rows = archive.query("SELECT Modality, Nfractions FROM v_seriesRT ORDER BY Modality")
    assert rows == [("RTDOSE", None), ("RTPLAN", info.fractions), ("RTSTRUCT", None)]
    # the study's modality list is made from its series (the files carry none)
    mods = archive.query("SELECT StudyModal FROM DICOMStudies", column=0)[0].split("\\")
    assert sorted(mods) == ["CT", "RTDOSE", "RTPLAN", "RTSTRUCT"]


def test_sample_archive_indexes_completely(sample_archive, tmp_path):
    archive = Archive(sample_archive, tmp_path / "c.db")
    result = archive.rebuild()
    files = [p for p in sample_archive.rglob("*") if p.is_file()]
    assert result.indexed == len(files) and not result.bad
    patients = archive.query("SELECT PatientID FROM DICOMPatients ORDER BY 1", column=0)
    assert "RT/002 A.B" in patients and len(patients) == 3
    folder = archive.query("SELECT ObjectFile FROM DICOMImages WHERE ImagePat = ?",
                           ("RT/002 A.B",), column=0)
    assert folder and all(f.startswith("RT_002_A_B/") for f in folder)
    modalities = set(archive.query("SELECT Modality FROM DICOMSeries", column=0))
    assert {"CT", "RTSTRUCT", "RTPLAN", "RTDOSE"} <= modalities
    summary = archive.series_summary()
    assert sum(s.instances for s in summary) == len(files)
    assert sum(s.bytes for s in summary) == sum(f.stat().st_size for f in files)


@pytest.mark.parametrize("workers", [1, 2])
def test_rebuild_all_is_repeatable_and_workers_agree(tmp_path, workers):
    import threading
    assert threading.active_count() == 1          # else the helpers would not be forked
    data = tmp_path / "data"
    n = 300                        # enough chunks for the worker processes to take part
    synthetic.generate_files(data, n, seed=3)
    (data / "BENCH00000" / "junk.txt").write_text("not DICOM")
    archive = Archive(data, tmp_path / "c.db")
    first = archive.rebuild(workers=workers)
    assert first.indexed == n and [b.path for b in first.bad] == ["BENCH00000/junk.txt"]
    sql = "SELECT * FROM DICOMImages ORDER BY 1"
    rows = [r[:21] + r[22:] for r in archive.query(sql)]          # all but AccessTime
    single = Archive(data, tmp_path / "single.db")
    single.rebuild(workers=1)
    assert [r[:21] + r[22:] for r in single.query(sql)] == rows
    assert single.query("SELECT * FROM RTExtras ORDER BY 1") == archive.query(
        "SELECT * FROM RTExtras ORDER BY 1")
    second = archive.rebuild(workers=workers)
    assert second.indexed == n
    assert [r[:21] + r[22:] for r in archive.query(sql)] == rows
    assert counts(archive)[3:] == (n, n)


def test_missing_and_refresh_modes(linked_rt, tmp_path):
    data, info = linked_rt
    archive = Archive(data, tmp_path / "c.db")
    archive.rebuild()
    before = counts(archive)
    # nothing new
    r = archive.rebuild(mode="missing")
    assert (r.indexed, r.unchanged) == (0, len(info.files))
    # a new file appears: only it is read
    extra = synthetic.write_patient(data, seed=99, patient_id="NEW01", ct_slices=1, rt=False)
    r = archive.rebuild(mode="missing")
    assert (r.indexed, r.unchanged) == (1, len(info.files))
    assert counts(archive)[0] == before[0] + 1
    # refresh: unchanged files are not read
    r = archive.rebuild(mode="refresh")
    assert (r.indexed, r.unchanged, r.removed) == (0, len(info.files) + 1, 0)
    # a changed file (new content, same name) is re-read
    plan_path = data / [f for f in info.files if f.endswith(info.rtplan_uid + ".dcm")][0]
    ds = pydicom.dcmread(plan_path)
    ds.FractionGroupSequence[0].NumberOfFractionsPlanned = 12
    ds.save_as(plan_path)
    r = archive.rebuild(mode="refresh")
    assert r.indexed == 1
    assert archive.query("SELECT Nfractions FROM RTExtras WHERE SOPInstanc = ?",
                         (info.rtplan_uid,), column=0) == [12]
    # vanished files: rows dropped, and the cascade removes the emptied series/study/patient
    os.unlink(data / extra[0])
    r = archive.rebuild(mode="refresh")
    assert r.removed == 1
    assert counts(archive) == before
    assert archive.query("SELECT count(*) FROM DICOMPatients WHERE PatientID = 'NEW01'",
                         column=0) == [0]
    # removing one of three CT slices keeps the series
    os.unlink(data / info.files[0])
    r = archive.rebuild(mode="refresh")
    assert r.removed == 1
    assert archive.query("SELECT count(*) FROM DICOMSeries WHERE SeriesInst = ?",
                         (info.ct_series_uid,), column=0) == [1]


def test_rebuild_given_patients_only(tmp_path):
    data = tmp_path / "data"
    synthetic.write_patient(data, seed=1, patient_id="A1", ct_slices=2, rt=False)
    b_files = synthetic.write_patient(data, seed=2, patient_id="B/2", ct_slices=2)
    archive = Archive(data, tmp_path / "c.db")
    archive.rebuild()
    # B's files change on disk: a plan deleted, a new CT slice written
    os.unlink(data / b_files[-2])
    synthetic.write_patient(data, seed=5, patient_id="B/2", ct_slices=1, rt=False)
    # and A gets a file that a B-only rebuild must not see
    synthetic.write_patient(data, seed=6, patient_id="A1", ct_slices=1, rt=False)
    r = archive.rebuild(patients=["B/2"])
    assert r.indexed == len(b_files) - 1 + 1
    assert archive.query("SELECT count(*) FROM DICOMImages WHERE ImagePat = 'A1'",
                         column=0) == [2]
    assert archive.query("SELECT count(*) FROM DICOMImages WHERE ImagePat = 'B/2'",
                         column=0) == [len(b_files)]
    assert archive.query("SELECT count(*) FROM DICOMSeries WHERE Modality = 'RTPLAN'",
                         column=0) == [0]


def headerless_bytes(ds: pydicom.Dataset) -> bytes:
    """A Conquest .v2 style file: implicit VR little endian data set, no preamble, no meta."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_dataset(fp, ds)
    return fp.getvalue()


def test_hostile_inputs_are_reported_and_never_stop_the_run(tmp_path):
    data = tmp_path / "data"
    good = synthetic.write_patient(data, seed=4, patient_id="GOOD", ct_slices=2, rt=False)
    bad_dir = data / "junk"
    bad_dir.mkdir()
    (bad_dir / "empty.dcm").write_bytes(b"")
    (bad_dir / "notes.txt").write_text("not a DICOM file\n" * 10)
    src = (data / good[0]).read_bytes()
    (bad_dir / "truncated.dcm").write_bytes(src[: len(src) - 100])
    (bad_dir / ".hidden.tmp-1").write_bytes(src)
    # a headerless file is DICOM: indexed with force
    ds = synthetic.ct_series(synthetic.PatientSpec("../../x"), 9, "1.2.826.0.1.9", slices=1)[0]
    (data / "v2").mkdir()
    (data / "v2" / "image.v2").write_bytes(headerless_bytes(ds))
    archive = Archive(data, tmp_path / "c.db")
    r = archive.rebuild(workers=1)
    reasons = {b.path: b.reason for b in r.bad}
    assert set(reasons) == {"junk/empty.dcm", "junk/notes.txt", "junk/truncated.dcm"}
    assert "empty" in reasons["junk/empty.dcm"]
    assert "not DICOM" in reasons["junk/notes.txt"]
    assert "truncated" in reasons["junk/truncated.dcm"]
    assert r.indexed == len(good) + 1 and r.skipped == 1
    assert archive.query("SELECT ObjectFile FROM DICOMImages WHERE ImagePat = '../../x'",
                         column=0) == ["v2/image.v2"]
    # indexing never moves files: the hostile PatientID stays data, and nothing left data/
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.db", "c.db-shm", "c.db-wal",
                                                          "data"] or \
        sorted(p.name for p in tmp_path.iterdir()) == ["c.db", "data"]


def test_database_inside_data_dir_is_not_indexed(tmp_path):
    data = tmp_path / "data"
    synthetic.write_patient(data, seed=4, patient_id="P", ct_slices=1, rt=False)
    archive = Archive(data, data / "conquest.db")
    r = archive.rebuild()
    assert r.indexed == 1 and not r.bad


def test_ensure_indexed_and_missing_data_dir(tmp_path):
    data = tmp_path / "data"
    synthetic.write_patient(data, seed=4, patient_id="P", ct_slices=2, rt=False)
    archive = Archive(data, tmp_path / "c.db")
    assert archive.query("SELECT count(*) FROM DICOMImages", column=0) == [2]  # indexed first
    assert archive.ensure_indexed() is None
    with pytest.raises(ArchiveError, match="data directory not found"):
        Archive(tmp_path / "nope", tmp_path / "d.db").rebuild()
    with pytest.raises(ArchiveError, match="unknown rebuild mode"):
        archive.rebuild(mode="sometimes")


def test_query_is_read_only_and_parameterised(tmp_path, linked_rt):
    data, info = linked_rt
    archive = Archive(data, tmp_path / "c.db")
    archive.rebuild()
    assert archive.query("SELECT Modality FROM DICOMSeries WHERE SeriesInst = ?",
                         (info.rtplan_series_uid,), column="modality") == ["RTPLAN"]
    with pytest.raises(ArchiveError, match="readonly|read-only"):
        archive.query("DELETE FROM DICOMImages")
    with pytest.raises(ArchiveError, match="no column"):
        archive.query("SELECT 1 AS a", column="b")
    evil = "x' OR '1'='1"
    assert archive.query("SELECT count(*) FROM DICOMPatients WHERE PatientID = ?",
                         (evil,), column=0) == [0]
    assert counts(archive)[3] == len(info.files)


def test_relative_paths_and_database_inside_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    synthetic.write_patient(tmp_path / "data", seed=4, patient_id="P", ct_slices=2, rt=False)
    archive = Archive("data", "data/index.db")
    r = archive.rebuild()
    assert (r.indexed, r.skipped, r.bad) == (2, 0, [])
    assert archive.rebuild(mode="refresh").unchanged == 2
    assert set(archive.query("SELECT ObjectFile FROM DICOMImages", column=0)) == {
        p.relative_to(tmp_path / "data").as_posix()
        for p in (tmp_path / "data" / "P").iterdir()}


def test_conquest_update_rules(tmp_path):
    """Absent values never overwrite; the modality list grows newest first; inconsistent
    links are refused and reported, never moved."""
    from conquest_run.indexer import merge_modality
    assert merge_modality(None, "CT") == "CT"
    assert merge_modality("CT", "RTSTRUCT") == "RTSTRUCT\\CT"
    assert merge_modality("RTSTRUCT\\CT", "CT") == "RTSTRUCT\\CT"
    assert merge_modality("RTSTRUCT", "RT") == "RT\\RTSTRUCT"     # whole values, not substrings
    assert merge_modality("CT", None) == "CT"

    data = tmp_path / "data"
    patient = synthetic.PatientSpec("P1", "NAME^ONE")
    cts = synthetic.ct_series(patient, 1, "1.2.826.0.1.77", slices=2)
    cts[1].StudyDescription = ""                     # zero length: must not erase slice 1's
    cts[1].ModalitiesInStudy = ["MR"]               # Conquest ignores the file's own list
    for ds in cts:
        synthetic.write_dataset(ds, data / "P1" / f"{ds.SOPInstanceUID}.dcm")
    stray = synthetic.ct_series(patient, 1, "1.2.826.0.1.77", slices=1)[0]
    stray.SOPInstanceUID = "1.2.826.0.1.77.5"
    stray.StudyInstanceUID = "1.2.826.0.1.78"       # same series UID, another study
    synthetic.write_dataset(stray, data / "P1" / "zz-stray.dcm")
    archive = Archive(data, tmp_path / "c.db")
    r = archive.rebuild()
    assert r.indexed == 2
    assert [b.path for b in r.bad] == ["P1/zz-stray.dcm"]
    assert "inconsistent link: series" in r.bad[0].reason
    assert archive.query("SELECT StudyDescr, StudyModal FROM DICOMStudies") == [
        ("Synthetic RT study", "CT")]
    assert archive.query("SELECT count(*) FROM DICOMStudies", column=0) == [1]
    # once the conflicting rows are gone (refresh after the CTs vanish) the file is accepted
    for ds in cts:
        (data / "P1" / f"{ds.SOPInstanceUID}.dcm").unlink()
    r = archive.rebuild(mode="refresh")
    assert (r.removed, r.bad) == (2, [])
    assert archive.query("SELECT StudyInsta FROM DICOMSeries", column=0) == ["1.2.826.0.1.78"]
