"""The receiver (conquest-run serve / receiver.listen) against dcmtk storescu on 127.0.0.1."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest

from conquest_run.db import connect_readonly
from conquest_run.errors import NetworkError
from conquest_run.net import PeerSettings, echo
from conquest_run.net.receiver import listen
from conquest_run.synthetic import write_patient

from _net_support import dataset_bytes, free_port, stop, storescu, wait_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def outgoing(tmp_path) -> dict[str, Path]:
    """Files to send (two patients, one with a PatientID that tries to escape): SOP -> file."""
    src = tmp_path / "outgoing"
    write_patient(src, seed=3, patient_id="RX001", ct_slices=4)
    write_patient(src, seed=3, patient_id="../evil", ct_slices=2, rt=False)
    out = {}
    for path in src.rglob("*.dcm"):
        out[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    return out


def _rows(database: Path) -> dict[str, str]:
    conn = connect_readonly(database)
    try:
        return dict(conn.execute("SELECT SOPInstanc, ObjectFile FROM DICOMImages"))
    finally:
        conn.close()


def test_storescu_into_the_archive_stores_and_indexes(tmp_path, outgoing):
    data, db = tmp_path / "data", tmp_path / "conquest.db"
    with listen(data, free_port(), database=db) as rx:
        done = storescu(rx.port, next(iter(outgoing.values())).parents[1])
        assert done.returncode == 0, done.stderr
    assert rx.received == len(outgoing) and rx.failed == 0
    rows = _rows(db)
    assert set(rows) == set(outgoing)
    for sop, object_file in rows.items():
        stored = data / object_file
        assert stored.resolve().is_relative_to(data.resolve())
        assert dataset_bytes(stored) == dataset_bytes(outgoing[sop])     # stored as received
    folders = {Path(f).parts[0] for f in rows.values()}
    assert folders == {"RX001", "___evil"}                              # escaped PatientID
    assert not [p for p in data.rglob("*") if p.name.startswith(".")]   # no temp files left


def test_a_job_can_read_while_the_receiver_writes(tmp_path, outgoing):
    data, db = tmp_path / "data", tmp_path / "conquest.db"
    counts, errors = [], []
    with listen(data, free_port(), database=db) as rx:
        stop_reading = threading.Event()

        def reader():
            while not stop_reading.is_set():
                try:
                    conn = connect_readonly(db)
                    counts.append(conn.execute("SELECT count(*) FROM DICOMImages").fetchone()[0])
                    conn.close()
                except Exception as exc:          # "database is locked" would land here
                    errors.append(exc)
                time.sleep(0.01)

        t = threading.Thread(target=reader)
        t.start()
        try:
            storescu(rx.port, next(iter(outgoing.values())).parents[1])
        finally:
            stop_reading.set()
            t.join(10)
    assert errors == [] and counts
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_no_index_stores_files_only(tmp_path, outgoing):
    data = tmp_path / "data"
    with listen(data, free_port(), database=tmp_path / "conquest.db", index=False) as rx:
        storescu(rx.port, next(iter(outgoing.values())).parents[1])
    assert not (tmp_path / "conquest.db").exists()
    assert len(list(data.rglob("*.dcm"))) == len(outgoing)


def test_allow_rejects_other_calling_aes(tmp_path):
    with listen(tmp_path / "data", free_port(), allow=["GOOD"], index=False) as rx:
        assert echo(PeerSettings("127.0.0.1", rx.port, calling_ae="GOOD", timeout=5)) >= 0
        with pytest.raises(NetworkError, match="association rejected"):
            echo(PeerSettings("127.0.0.1", rx.port, calling_ae="BAD", timeout=5))


def test_listen_on_a_busy_port_is_a_clear_error(tmp_path):
    with listen(tmp_path / "data", free_port(), index=False) as rx:
        with pytest.raises(NetworkError, match=f"cannot listen on 127.0.0.1:{rx.port}"):
            listen(tmp_path / "data2", rx.port, index=False)


def test_serve_runs_until_sigterm_and_exits_0(tmp_path, outgoing):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "conquest_run", "serve", "--port", str(port), "--aet", "RX",
         "--data", str(tmp_path / "data"), "--database", str(tmp_path / "conquest.db")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, proc, timeout=20)
        done = storescu(port, next(iter(outgoing.values())).parents[1], called_ae="RX")
        assert done.returncode == 0, done.stderr
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        stop(proc, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and f"listening on 127.0.0.1:{port}" in err
    assert f"received {len(outgoing)}" in err
    assert set(_rows(tmp_path / "conquest.db")) == set(outgoing)


def test_echo_cli(tmp_path, capsys):
    from conquest_run.cli import main

    with listen(tmp_path / "data", free_port(), aet="RX", index=False) as rx:
        assert main(["echo", "127.0.0.1", str(rx.port), "--called-ae", "RX"]) == 0
    assert f"C-ECHO RX@127.0.0.1:{rx.port}: ok" in capsys.readouterr().out
    assert main(["echo", "127.0.0.1", str(rx.port), "--timeout", "3"]) == 1
    assert "no DICOM peer listening" in capsys.readouterr().err


def test_part10_bytes_are_pynetdicoms_file_format_byte_for_byte(tmp_path, outgoing):
    """The receiver encodes the file meta itself; it must be what pynetdicom would write, and
    a stored file must read back with the sender's SOP class, instance and transfer syntax."""
    from pydicom.uid import UID
    from pynetdicom.dsutils import create_file_meta, encode_file_meta

    from conquest_run.net.receiver import part10_bytes

    for sop_class, sop, ts in (("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1"),
                               ("1.2.840.10008.5.1.4.1.1.481.5", "1.2.33", "1.2.840.10008.1.2"),
                               ("1.2.840.10008.5.1.4.1.1.4", "1.2.826.0.1.3680043.8.498.1",
                                "1.2.840.10008.1.2.4.50")):
        expected = b"\0" * 128 + b"DICM" + encode_file_meta(create_file_meta(
            sop_class_uid=UID(sop_class), sop_instance_uid=UID(sop),
            transfer_syntax=UID(ts))) + b"payload"
        assert part10_bytes(sop_class, sop, ts, b"payload") == expected
    data = tmp_path / "data"
    with listen(data, free_port(), index=False) as rx:
        done = storescu(rx.port, next(iter(outgoing.values())).parents[1])
        assert done.returncode == 0, done.stderr
    for sop, source in outgoing.items():
        stored = next(data.rglob(f"{sop}.dcm"))
        got, sent = pydicom.dcmread(stored), pydicom.dcmread(source)
        assert got.file_meta.MediaStorageSOPInstanceUID == sop
        assert got.file_meta.MediaStorageSOPClassUID == sent.SOPClassUID
        assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        assert dataset_bytes(stored) == dataset_bytes(source)       # the peer's bytes


def test_a_c_store_naming_another_instance_is_refused_with_a900(tmp_path, outgoing):
    """pynetdicom sends a file's dataset under its file meta's UID (chunked mode): a file whose
    meta names another instance than its dataset makes a real mismatched C-STORE."""
    from pynetdicom import AE, _config

    source = next(p for p in outgoing.values() if "CT" in str(pydicom.dcmread(p).Modality))
    ds = pydicom.dcmread(source)
    honest_uid = str(ds.SOPInstanceUID)
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.999"
    lying = tmp_path / "lying.dcm"
    ds.save_as(lying)                           # enforce_file_format would mend the meta
    written = pydicom.dcmread(lying)
    assert str(written.SOPInstanceUID) == honest_uid
    assert str(written.file_meta.MediaStorageSOPInstanceUID) == "1.2.826.0.1.3680043.8.498.999"
    notices: list[str] = []
    data, db = tmp_path / "data", tmp_path / "conquest.db"
    with listen(data, free_port(), database=db, log=notices.append) as rx:
        ae = AE(ae_title="LIAR")
        ae.add_requested_context(ds.SOPClassUID, str(ds.file_meta.TransferSyntaxUID))
        assoc = ae.associate("127.0.0.1", rx.port, ae_title="CONQUEST")
        assert assoc.is_established
        saved = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            lied = assoc.send_c_store(lying)
            honest = assoc.send_c_store(source)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = saved
            assoc.release()
    assert lied.Status == 0xA900
    assert honest.Status == 0x0000
    assert [p.name for p in data.rglob("*.dcm")] == [f"{honest_uid}.dcm"]
    assert set(_rows(db)) == {honest_uid}
    assert any("1.2.826.0.1.3680043.8.498.999 is not the dataset's SOP Instance UID" in n
               for n in notices)


def _store_responses(stdout: str) -> dict[str, str]:
    """storescu -v output -> {SOP Instance UID (the file name): response text}."""
    out, current = {}, None
    for line in stdout.splitlines():
        if "Sending file: " in line:
            current = Path(line.split("Sending file: ", 1)[1].strip()).stem
        elif "Received Store Response" in line and current is not None:
            out[current] = line.split("Received Store Response", 1)[1].strip()
            current = None
    return out


def test_a_failed_commit_fails_its_c_stores_and_nothing_acknowledged_is_missing(tmp_path):
    """Durable before acknowledged: with the database held by another writer past the
    receiver's busy timeout, storescu gets a failure status for every file whose rows could not
    be committed; once the writer lets go, the rows are committed (retried) and every instance
    storescu was told Success for is in the index."""
    from _net_support import STORESCU, NODELAY, require

    require(STORESCU)
    src = tmp_path / "src"
    write_patient(src, seed=5, patient_id="DUR001", ct_slices=4, rt=False)
    data, db = tmp_path / "data", tmp_path / "conquest.db"
    notices: list[str] = []

    def push() -> dict[str, str]:
        done = subprocess.run([STORESCU, "-v", "-R", "+sd", "+r", "-nh", "-aec", "CONQUEST",
                               "127.0.0.1", str(rx.port), str(src)], env=NODELAY,
                              capture_output=True, text=True, timeout=60)
        return _store_responses(done.stdout + done.stderr)

    with listen(data, free_port(), database=db, busy_timeout=0.2, log=notices.append) as rx:
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")          # another writer holds the database
        try:
            refused = push()
            assert len(refused) == 4
            assert all("OutOfResources" in r for r in refused.values()), refused
            assert _rows(db) == {}
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        deadline = time.monotonic() + 10            # the flusher retries the kept rows
        while len(_rows(db)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(_rows(db)) == set(refused)
        accepted = push()
        assert all(r == "(Success)" for r in accepted.values()), accepted
        assert set(accepted) <= set(_rows(db))    # acknowledged, so already committed
    assert any("database is locked" in n for n in notices)


def test_each_acknowledged_file_and_its_folder_are_fsynced(tmp_path, outgoing, monkeypatch):
    """A spy on os.fsync (the real one still runs): one file and one folder per C-STORE."""
    import os
    import stat

    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    with listen(tmp_path / "data", free_port(), database=tmp_path / "conquest.db") as rx:
        done = storescu(rx.port, next(iter(outgoing.values())).parents[1])
        assert done.returncode == 0, done.stderr
    assert synced.count("file") >= len(outgoing) and synced.count("dir") >= len(outgoing)
