"""Helpers for the network tests: free ports, real peers started and stopped by PID, archives
with synthetic files, and send plan steps built from an archive's index."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from conquest_run.plan import Plan, PlannedInstance, PlannedSeries, PlanStep

STORESCP = "/usr/bin/storescp"
STORESCU = "/usr/bin/storescu"
ORTHANC = "/usr/sbin/Orthanc"
NODELAY = {"TCP_NODELAY": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"peer exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def require(binary: str) -> None:
    if not Path(binary).is_file():
        pytest.skip(f"{binary} is not installed")


@contextmanager
def storescp(folder: Path, port: int | None = None, *extra: str,
             promiscuous: bool = True) -> Iterator[tuple[subprocess.Popen, int]]:
    """dcmtk storescp writing into ``folder`` on a free loopback port."""
    require(STORESCP)
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [STORESCP, "+xa", *(["-pm"] if promiscuous else []), *extra, "-od", str(folder),
            "-aet", "STORESCP", str(port)]
    proc = subprocess.Popen(args, env=NODELAY, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        yield proc, port
    finally:
        stop(proc)


def storescu(port: int, folder: Path, called_ae: str = "CONQUEST", calling_ae: str = "STORESCU",
             timeout: float = 60.0) -> subprocess.CompletedProcess:
    require(STORESCU)
    return subprocess.run([STORESCU, "-R", "+sd", "+r", "-nh", "-aet", calling_ae,
                           "-aec", called_ae, "127.0.0.1", str(port), str(folder)],
                          env=NODELAY, capture_output=True, text=True, timeout=timeout)


@contextmanager
def orthanc(tmp: Path, extra: dict | None = None,
            dicom_port: int | None = None) -> Iterator[tuple[int, int]]:
    """A private Orthanc (DICOM and HTTP on loopback); yields (dicom_port, http_port).
    ``extra``: more configuration (``DicomModalities``, ``DicomAlwaysAllowFind``, ...)."""
    require(ORTHANC)
    dicom_port, http_port = dicom_port or free_port(), free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "conquest-run-test", "HttpPort": http_port, "DicomPort": dicom_port,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomAet": "ORTHANC",
        "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True,
        "StorageDirectory": str(tmp / "storage"), "IndexDirectory": str(tmp / "index"),
        "Plugins": [], "SaveJobs": False, "DicomAssociationCloseDelay": 0,
        **(extra or {}),
    }
    (tmp / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen([ORTHANC, f"--logfile={tmp / 'orthanc.log'}",
                             str(tmp / "orthanc.json")], env=NODELAY,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(http_port, proc, timeout=20)
        wait_port(dicom_port, proc, timeout=20)
        yield dicom_port, http_port
    finally:
        stop(proc, timeout=15)


def http_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as rsp:
        return json.loads(rsp.read())


def received_sops(folder: Path) -> dict[str, Path]:
    """SOP Instance UID -> file, for every file a peer wrote into ``folder``."""
    import pydicom

    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path, stop_before_pixels=True,
                             specific_tags=["SOPInstanceUID"])
        out[str(ds.SOPInstanceUID)] = path
    return out


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part-10 file after its file meta group."""
    from pynetdicom.dsutils import split_dataset

    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


# -- archives and plans ---------------------------------------------------------------------

def make_archive(root: Path, patients: int = 2, ct_slices: int = 6):
    """data/ with synthetic patients (CT + linked RT set each) and an index; the Archive."""
    from conquest_run.archive import Archive
    from conquest_run.synthetic import write_patient

    data = root / "data"
    for n in range(patients):
        write_patient(data, seed=7, patient_id=f"NET{n:03d}", ct_slices=ct_slices)
    archive = Archive(data, root / "conquest.db")
    archive.rebuild()
    return archive


def send_step(archive, options: dict, modality: str | None = None,
              index: int = 1) -> tuple[Plan, PlanStep]:
    """A send PlanStep over the archive's series (optionally one modality), in plan order."""
    conn = sqlite3.connect(archive.database)
    try:
        rows = conn.execute(
            "SELECT s.SeriesInst, st.PatientID, s.StudyInsta, s.Modality, s.SeriesDesc, "
            "i.SOPInstanc, i.SOPClassUI, i.ObjectFile FROM DICOMImages i "
            "JOIN DICOMSeries s ON i.SeriesInst = s.SeriesInst "
            "LEFT JOIN DICOMStudies st ON s.StudyInsta = st.StudyInsta "
            "WHERE (? IS NULL OR s.Modality = ?) "
            "ORDER BY st.PatientID, s.StudyInsta, s.SeriesInst, i.SOPInstanc",
            (modality, modality)).fetchall()
    finally:
        conn.close()
    series: dict[str, list] = {}
    heads: dict[str, tuple] = {}
    for r in rows:
        heads.setdefault(r[0], r[:5])
        size = (archive.data_dir / r[7]).stat().st_size
        series.setdefault(r[0], []).append(PlannedInstance(r[5], r[6], r[7], size))
    planned = tuple(PlannedSeries(*heads[uid], tuple(insts)) for uid, insts in series.items())
    target = f"{options.get('called_ae', 'ANY-SCP')}@{options['host']}:{options['port']}"
    step = PlanStep(index, "send", "send", dict(options), target, False, "series", planned)
    plan = Plan("test.yml", "0" * 64, "test", str(archive.data_dir), str(archive.database), None,
                (step,))
    return plan, step


def run_send(archive, plan: Plan, step: PlanStep, *, dry_run: bool = False, force: bool = False,
             echo: bool = False, audit_class=None, run_id: str = "run"):
    """Run the send action like the runner does (audit on a read-write connection)."""
    from conquest_run.actions import ActionContext
    from conquest_run.actions.send import run
    from conquest_run.audit import AuditLog
    from conquest_run.db import connect

    conn = None if dry_run else connect(archive.database)
    try:
        audit = None if conn is None else (audit_class or AuditLog)(conn)
        ctx = ActionContext(archive=archive, plan=plan, dry_run=dry_run, force=force, echo=echo,
                            audit=audit, run_id=run_id)
        return run(step, ctx)
    finally:
        if conn is not None:
            conn.close()


def audit_rows(database: Path) -> list[tuple]:
    conn = sqlite3.connect(database)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'ConquestRunAudit'"
                            ).fetchone():
            return []
        return conn.execute("SELECT SOPInstanc, Status, Reason FROM ConquestRunAudit "
                            "ORDER BY rowid").fetchall()
    finally:
        conn.close()


def tree_state(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}




def killing_journal(after: int):
    """An AuditLog class: the real journal, which SIGKILLs its ``peer`` (a Popen set on the
    class) once ``after`` instances are confirmed, to interrupt a send at a known point."""
    from conquest_run.audit import AuditLog
    from conquest_run.report import DONE

    class KillAfter(AuditLog):
        peer = None
        done = 0

        def record(self, *args):
            super().record(*args)
            KillAfter.done += args[-1].status == DONE
            if KillAfter.peer is not None and KillAfter.done >= after:
                KillAfter.peer.send_signal(signal.SIGKILL)
                KillAfter.peer.wait(5)
                KillAfter.peer = None
    return KillAfter
