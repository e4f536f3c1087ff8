"""Store: Conquest folder names, atomic placement inside the data dir, replacing, datasets."""

from __future__ import annotations

import pydicom
import pytest

from conquest_run import Archive, synthetic
from conquest_run.errors import ArchiveError, DicomFileError
from conquest_run.store import resolve_inside, safe_component, safe_patient_dir

from conftest import pydicom_file


@pytest.mark.parametrize("raw, folder", [
    ("0009703828", "0009703828"),
    ("../../x", "______x"),
    ("..", "unknown"),
    ("", "unknown"),
    (None, "unknown"),
    ("a/b\\c;d>e<f|g,h.i j:k?l*m\"n", "a_b_c_d_e_f_g_h_i_j_k_l_m_n"),
    ("AB\x01CD", "AB"),
    ("AB\tCD", "AB"),
    ("ID 123  ", "ID_123"),
    ("x..", "x"),
    ("Müller^Ä", "Müller^Ä"),
])
def test_safe_patient_dir_the_conquest_way(raw, folder):
    assert safe_patient_dir(raw) == folder


@pytest.mark.parametrize("raw, name", [
    ("1.2.3.dcm", "1.2.3.dcm"), ("..", "_."), ("../etc/passwd", "_._etc_passwd"),
    ("", "unknown"), ("a\x00b", "a_b"), (".hidden", "_hidden"),
])
def test_safe_component(raw, name):
    assert safe_component(raw) == name


def test_resolve_inside_refuses_escapes(tmp_path):
    assert resolve_inside(tmp_path, "a", "b.dcm") == (tmp_path / "a" / "b.dcm").resolve()
    with pytest.raises(ArchiveError, match="outside"):
        resolve_inside(tmp_path, "..", "x")
    (tmp_path / "link").symlink_to("/tmp")
    with pytest.raises(ArchiveError, match="outside"):
        resolve_inside(tmp_path, "link", "x.dcm")


def no_temp_files(root):
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


def test_store_files_and_folder(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    incoming = tmp_path / "incoming"
    info = synthetic.write_linked_rt_set(incoming, seed=11, patient_id="../../x", ct_slices=2)
    (incoming / "readme.txt").write_text("not DICOM")
    archive = Archive(data, tmp_path / "c.db")
    result = archive.store([incoming, pydicom_file("rtplan.dcm")])
    assert len(result.stored) == len(info.files) + 1
    assert [b.path.endswith("readme.txt") for b in result.bad] == [True]
    # nothing escaped the data dir; the database keeps the raw PatientID
    assert sorted(p.name for p in tmp_path.iterdir()) in (
        ["c.db", "c.db-shm", "c.db-wal", "data", "incoming"], ["c.db", "data", "incoming"])
    for s in result.stored:
        assert (data / s.object_file).resolve().is_relative_to(data.resolve())
    assert {s.object_file.split("/")[0] for s in result.stored} == {"______x", "id00001"}
    assert archive.query("SELECT PatientID FROM DICOMPatients ORDER BY 1", column=0) == [
        "../../x", "id00001"]
    # copies are byte-identical, the sources stay, no temp files anywhere
    for rel in info.files:
        sop = rel.split("/")[-1]
        assert (data / "______x" / sop).read_bytes() == (incoming / rel).read_bytes()
    assert (incoming / info.files[0]).exists()
    assert no_temp_files(data) == []
    # the index agrees with the files
    assert archive.rebuild(mode="refresh").unchanged == len(result.stored)


def test_store_same_instance_twice_replaces(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    archive = Archive(data, tmp_path / "c.db")
    src = pydicom_file("CT_small.dcm")
    first = archive.store(src)
    again = archive.store(src)
    assert first.replaced == 0 and again.replaced == 1
    assert len(list(data.rglob("*.dcm"))) == 1
    # the same instance under another patient: Conquest refuses the inconsistent link, and
    # nothing changes (no file written, the old one kept)
    ds = pydicom.dcmread(src)
    ds.PatientID = "MOVED"
    moved = tmp_path / "moved.dcm"
    ds.save_as(moved)
    third = archive.store(moved)
    assert third.stored == [] and len(third.bad) == 1
    assert "inconsistent link: study" in third.bad[0].reason
    assert "'1CT1'" in third.bad[0].reason and "'MOVED'" in third.bad[0].reason
    assert [p.relative_to(data).parts[0] for p in data.rglob("*.dcm")] == ["1CT1"]
    assert archive.query("SELECT PatientID FROM DICOMPatients", column=0) == ["1CT1"]
    assert archive.query("SELECT count(*) FROM DICOMImages", column=0) == [1]


def test_store_move(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    incoming = tmp_path / "in"
    files = synthetic.write_patient(incoming, seed=3, patient_id="MV", ct_slices=2, rt=False)
    archive = Archive(data, tmp_path / "c.db")
    result = archive.store([incoming], move=True)
    assert len(result.stored) == 2
    assert not any((incoming / f).exists() for f in files)
    assert no_temp_files(data) == []


def test_store_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    import os

    from conquest_run import store as store_module
    data = tmp_path / "data"
    data.mkdir()
    archive = Archive(data, tmp_path / "c.db")

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(store_module.os, "replace", failing_replace)
    with pytest.raises(OSError):
        archive.store(pydicom_file("MR_small.dcm"))
    monkeypatch.setattr(store_module.os, "replace", os.replace)
    assert [p for p in data.rglob("*") if p.is_file()] == []


def test_store_dataset_for_the_receiver(tmp_path):
    from conquest_run.datasetstore import DatasetStore, store_dataset
    data = tmp_path / "data"
    data.mkdir()
    archive = Archive(data, tmp_path / "c.db")
    ds = pydicom.dcmread(pydicom_file("rtdose.dcm"))
    conn = archive.connect()
    try:
        stored = store_dataset(ds, conn=conn, schema=archive.schema, data_dir=data)
        assert stored.object_file == f"{safe_patient_dir(ds.PatientID)}/{ds.SOPInstanceUID}.dcm"
        assert (data / stored.object_file).read_bytes()[128:132] == b"DICM"
        raw = pydicom_file("MR_small.dcm").read_bytes()
        with DatasetStore(conn, archive.schema, data, batch_size=10) as batch:
            s2 = batch.store(raw)
            # the file is in place at once, the row comes with the batch
            assert (data / s2.object_file).read_bytes() == raw
            assert conn.execute("SELECT count(*) FROM DICOMImages").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM DICOMImages").fetchone() == (2,)
        with pytest.raises(DicomFileError):
            store_dataset(b"garbage" * 10, conn=conn, schema=archive.schema, data_dir=data)
        # a series already indexed under another study is refused, also within a batch
        other = pydicom.dcmread(pydicom_file("MR_small.dcm"))
        other.SOPInstanceUID = "1.2.3.4.5.6"
        other.StudyInstanceUID = "1.2.3.999"
        with DatasetStore(conn, archive.schema, data, batch_size=10) as batch:
            with pytest.raises(DicomFileError, match="inconsistent link: series"):
                batch.store(other)
        assert not (data / safe_patient_dir(other.PatientID) / "1.2.3.4.5.6.dcm").exists()
    finally:
        conn.close()
    assert no_temp_files(data) == []
    assert archive.rebuild(mode="refresh").unchanged == 2
