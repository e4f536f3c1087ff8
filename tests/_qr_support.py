"""Helpers for the query/retrieve tests: an archive with real files plus index rows made for the
matching rules, ``conquest-run serve`` as a subprocess, and dcmtk's findscu/movescu/getscu."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pydicom

from _net_support import NODELAY, free_port, require, stop, wait_port

FINDSCU, MOVESCU, GETSCU = "/usr/bin/findscu", "/usr/bin/movescu", "/usr/bin/getscu"
AET = "CRUN"

# index-only studies (no files) made for the matching rules:
# (patient id, name, birth date, study uid, study date, [(series uid, modality, images)])
MATCH_ROWS = (
    ("M001", "Smith^John", "19600101", "1.2.826.0.1.9.1", "20230115",
     [("1.2.826.0.1.9.1.1", "CT", 3), ("1.2.826.0.1.9.1.2", "PT", 2)]),
    ("M002", "SMITHSON^ANNA", "19710202", "1.2.826.0.1.9.2", "20240615",
     [("1.2.826.0.1.9.2.1", "MR", 4)]),
    ("M003", "doe^jane", "19820303", "1.2.826.0.1.9.3", "20241231",
     [("1.2.826.0.1.9.3.1", "RTPLAN", 1), ("1.2.826.0.1.9.3.2", "CT", 2)]),
    ("M004", "Doe^John", "19930404", "1.2.826.0.1.9.4", "20250301",
     [("1.2.826.0.1.9.4.1", "US", 1)]),
)


def make_qr_archive(root: Path, patients: int = 2, ct_slices: int = 3):
    """Synthetic patients with files (NET000...) indexed, plus MATCH_ROWS in the index."""
    from conquest_run.archive import Archive
    from conquest_run.synthetic import write_patient

    data = root / "data"
    for n in range(patients):
        write_patient(data, seed=7, patient_id=f"NET{n:03d}", ct_slices=ct_slices)
    archive = Archive(data, root / "conquest.db")
    archive.rebuild()
    conn = sqlite3.connect(archive.database)
    with conn:
        for pid, name, birth, study, date, series in MATCH_ROWS:
            conn.execute("INSERT INTO DICOMPatients (PatientID, PatientNam, PatientBir) "
                         "VALUES (?, ?, ?)", (pid, name, birth))
            conn.execute("INSERT INTO DICOMStudies (StudyInsta, StudyDate, PatientNam, "
                         "PatientBir, PatientID, StudyModal) VALUES (?, ?, ?, ?, ?, ?)",
                         (study, date, name, birth, pid,
                          "\\".join(m for _, m, _ in series)))
            for uid, modality, images in series:
                conn.execute("INSERT INTO DICOMSeries (SeriesInst, Modality, SeriesPat, "
                             "StudyInsta) VALUES (?, ?, ?, ?)", (uid, modality, pid, study))
                for i in range(images):
                    conn.execute("INSERT INTO DICOMImages (SOPInstanc, SeriesInst, ImagePat, "
                                 "ImageNumbe) VALUES (?, ?, ?, ?)",
                                 (f"{uid}.{i + 1}", uid, pid, str(i + 1)))
    conn.close()
    return archive


@contextmanager
def serve(archive, *extra: str, port: int | None = None) -> Iterator[tuple[subprocess.Popen,
                                                                          int, Path]]:
    """``conquest-run serve`` on a free port; yields (process, port, stderr log file)."""
    port = port or free_port()
    log = Path(archive.database).parent / f"serve-{port}.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "conquest_run", "serve", "--port", str(port), "--aet", AET,
             "--data", str(archive.data_dir), "--database", str(archive.database), *extra],
            stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_port(port, proc, timeout=20)
        yield proc, port, log
    finally:
        stop(proc)


def run_tool(binary: str, port: int, *args: str, aet: str = "QRSCU",
             timeout: float = 30) -> subprocess.CompletedProcess:
    require(binary)
    return subprocess.run([binary, "-v", "-aet", aet, "-aec", AET, *args, "127.0.0.1", str(port)],
                          env=NODELAY, capture_output=True, text=True, timeout=timeout)


def find(port: int, out: Path, level: str, *keys: str, model: str = "-S",
         aet: str = "QRSCU", extra: tuple[str, ...] = ()) -> tuple[list[pydicom.Dataset],
                                                                   subprocess.CompletedProcess]:
    """findscu with ``-k`` keys; the responses (written with ``-X``) in order, and the run."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    args = [model, "-X", "-od", str(out), *extra, "-k", f"QueryRetrieveLevel={level}"]
    for key in keys:
        args += ["-k", key]
    require(FINDSCU)
    done = subprocess.run([FINDSCU, "-v", "-aet", aet, "-aec", AET, *args, "127.0.0.1",
                           str(port)], env=NODELAY, capture_output=True, text=True, timeout=30)
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))], done


def values(responses: list[pydicom.Dataset], keyword: str) -> list[str]:
    return sorted(str(r.get(keyword, "")) for r in responses)


def audit_rows(database: Path, action: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(database)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM ConquestRunAudit WHERE Action = ? ORDER BY rowid",
                            (action,)).fetchall()
    finally:
        conn.close()
