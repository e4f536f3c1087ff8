"""Query/retrieve benchmark of ``conquest-run serve`` (issue 10), whole processes, loopback:

* C-FIND at STUDY level (universal, with NumberOfStudyRelatedInstances and ModalitiesInStudy)
  on an index of ``--instances`` rows (made directly in SQLite, no files): time to the first
  response, to the last, and serve's peak memory (VmHWM) before and after the query;
* C-MOVE of ``--files`` small files from serve to dcmtk ``storescp`` (``movescu``, serve
  already running) against ``conquest-run send`` (a job) of the same files to the same peer.

``--record`` replaces the "Query/retrieve" section of ``bench/RESULTS.md``.

    python bench/bench_qr.py [--instances 1000000] [--files 600] [--repeat 2] [--record]
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_net import (NODELAY, RESULTS, StoreSCP, free_port, machine,  # noqa: E402
                       make_archive, send_job, stop, timed, wait_port)

MOVESCU = "/usr/bin/movescu"


def serve(data: Path, db: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "conquest_run", "serve", "--port", str(port),
                             "--aet", "CRUN", "--data", str(data), "--database", str(db),
                             *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def peak_kb(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", text).group(1))


def big_index(root: Path, instances: int) -> tuple[Path, Path]:
    """``instances`` image rows: studies of 5 series of 20 images, one study per patient."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conquest_run.archive import Archive

    data, db = root / "data", root / "conquest.db"
    data.mkdir(parents=True)
    Archive(data, db).connect().close()
    conn = sqlite3.connect(db)
    studies = max(1, instances // 100)
    with conn:
        for s in range(studies):
            pid, study = f"P{s:07d}", f"1.2.826.0.1.7.{s}"
            conn.execute("INSERT INTO DICOMPatients (PatientID, PatientNam) VALUES (?, ?)",
                         (pid, f"BENCH^{s}"))
            conn.execute("INSERT INTO DICOMStudies (StudyInsta, StudyDate, PatientID, "
                         "PatientNam) VALUES (?, ?, ?, ?)", (study, "20240101", pid, f"BENCH^{s}"))
            for k in range(5):
                series = f"{study}.{k}"
                conn.execute("INSERT INTO DICOMSeries (SeriesInst, Modality, StudyInsta, "
                             "SeriesPat) VALUES (?, ?, ?, ?)",
                             (series, ("CT", "MR", "RTSTRUCT", "RTPLAN", "RTDOSE")[k], study, pid))
                conn.executemany("INSERT INTO DICOMImages (SOPInstanc, SeriesInst, ImagePat) "
                                 "VALUES (?, ?, ?)",
                                 [(f"{series}.{i}", series, pid) for i in range(20)])
    conn.close()
    return data, db


def bench_find(work: Path, instances: int) -> dict:
    from pydicom import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    started = time.perf_counter()
    data, db = big_index(work / "find", instances)
    built = time.perf_counter() - started
    proc, port = serve(data, db)
    try:
        before = peak_kb(proc.pid)
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        for key in ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate"):
            setattr(ds, key, "")
        ds.ModalitiesInStudy = ""
        ds.NumberOfStudyRelatedInstances = None
        ae = AE(ae_title="BENCH")
        ae.add_requested_context(FIND)
        assoc = ae.associate("127.0.0.1", port, ae_title="CRUN")
        t0 = time.perf_counter()
        first = None
        count = 0
        for status, identifier in assoc.send_c_find(ds, FIND):
            if identifier is not None and status.Status in (0xFF00, 0xFF01):
                count += 1
                if first is None:
                    first = time.perf_counter() - t0
        total = time.perf_counter() - t0
        assoc.release()
        after = peak_kb(proc.pid)
    finally:
        stop(proc)
    return {"instances": instances, "studies": count, "first": first, "total": total,
            "before_mb": before / 1024, "after_mb": after / 1024, "built": built}


def bench_move(work: Path, files: int, repeat: int) -> dict:
    data, db, n = make_archive(work / "move", "small", files)
    out: dict = {"files": n}
    with StoreSCP(work) as scp:
        job = send_job(work, data, db, scp.port, 1)
        proc, port = serve(data, db, "--node", f"STORESCP=127.0.0.1:{scp.port}")
        try:
            studies = [r[0] for r in sqlite3.connect(db).execute(
                "SELECT StudyInsta FROM DICOMStudies")]
            keys = ["-k", "QueryRetrieveLevel=STUDY", "-k",
                    "StudyInstanceUID=" + "\\".join(studies)]
            moves, sends = [], []
            for _ in range(repeat):                 # taking turns (the machine is shared)
                scp.clear()
                moves.append(timed([MOVESCU, "-S", "-aet", "BENCH", "-aec", "CRUN", "-aem",
                                    "STORESCP", *keys, "127.0.0.1", str(port)], env=NODELAY))
                assert scp.received() == n, (scp.received(), n)
                scp.clear()
                sends.append(timed([sys.executable, "-m", "conquest_run", "--force", str(job)]))
                assert scp.received() == n, (scp.received(), n)
        finally:
            stop(proc)
    out.update(move=min(moves), send=min(sends))
    return out


def report(find: dict, move: dict, seconds: float) -> str:
    ratio = (move["files"] / move["move"]) / (move["files"] / move["send"])
    return "\n".join([
        "## Query/retrieve (serve)", "",
        f"`python bench/bench_qr.py` ({seconds:.0f} s in all), {machine()}.", "",
        f"C-FIND, Study Root, STUDY level, universal, with NumberOfStudyRelatedInstances and "
        f"ModalitiesInStudy computed, on an index of {find['instances']:,} instances "
        f"({find['studies']:,} studies; index made in {find['built']:.0f} s, no files):", "",
        "| first response | all responses | serve peak memory before | after |",
        "|---|---|---|---|",
        f"| {find['first'] * 1000:.0f} ms | {find['total']:.1f} s | "
        f"{find['before_mb']:.0f} MB | {find['after_mb']:.0f} MB |", "",
        f"C-MOVE of {move['files']} small files (one study list, STUDY level) from serve to "
        f"dcmtk storescp, against `conquest-run send` of the same files to the same storescp "
        f"(whole processes, best of the turns; the send includes starting Python and planning):",
        "",
        "| | seconds | files/s |", "|---|---|---|",
        f"| movescu -> serve -> storescp | {move['move']:.2f} | "
        f"{move['files'] / move['move']:.0f} |",
        f"| conquest-run send (job) | {move['send']:.2f} | {move['files'] / move['send']:.0f} |",
        "", f"C-MOVE / send: {ratio:.2f}x.", ""])


def record(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    pattern = re.compile(r"^## Query/retrieve \(serve\)\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section, text) if pattern.search(text) else \
        text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        find = bench_find(Path(tmp), args.instances)
        move = bench_move(Path(tmp), args.files, args.repeat)
    section = report(find, move, time.perf_counter() - started)
    print(section)
    if args.record:
        record(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
