"""Retrieve benchmark: a job pulling files from Orthanc by C-MOVE, against Orthanc's own C-MOVE
of the same files to dcmtk ``storescp``, in the same run, taking turns.

Orthanc (loaded once with ``storescu``) knows two destinations: the job's AE (``CRUN``, where
``conquest-run JOB.yml`` listens while its ``retrieve`` step runs, storing and indexing each file
durably as ``serve`` does) and ``STORESCP``.  Measured:

* the job: ``conquest-run JOB.yml`` as a whole process into a fresh archive (C-FINDs, plan,
  C-MOVE of every series, report), and the retrieve step alone (its report's start and end);
* Orthanc to storescp: dcmtk ``movescu`` of every study (one request, a UID list) to
  ``STORESCP``.

``--record`` replaces the "Retrieve" section of ``bench/RESULTS.md``.

    python bench/bench_retrieve.py [--patients 20] [--slices 28] [--repeat 3] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_net import NODELAY, STORESCU, free_port, stop, wait_port  # noqa: E402

ORTHANC, MOVESCU, STORESCP = "/usr/sbin/Orthanc", "/usr/bin/movescu", "/usr/bin/storescp"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Retrieve (issue 10)"


def start_orthanc(work: Path, job_port: int, scp_port: int) -> tuple[subprocess.Popen, int]:
    port, http = free_port(), free_port()
    config = {"Name": "bench", "HttpPort": http, "DicomPort": port,
              "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
              "DicomAet": "ORTHANC", "DicomAlwaysAllowStore": True,
              "DicomAlwaysAllowFind": True, "DicomAlwaysAllowMove": True,
              "StorageDirectory": str(work / "storage"), "IndexDirectory": str(work / "index"),
              "Plugins": [], "SaveJobs": False, "DicomAssociationCloseDelay": 0,
              "DicomModalities": {"crun": ["CRUN", "127.0.0.1", job_port],
                                  "storescp": ["STORESCP", "127.0.0.1", scp_port]}}
    (work / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen([ORTHANC, f"--logfile={work / 'orthanc.log'}",
                             str(work / "orthanc.json")], env=NODELAY,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(http)
    wait_port(port)
    return proc, port


def job_text(root: Path, port: int, job_port: int, patients: list[str]) -> str:
    listed = ", ".join(f'"{p}"' for p in patients)
    return (f"version: 1\nname: bench-retrieve\narchive: {{data: '{root / 'data'}', "
            f"database: '{root / 'conquest.db'}'}}\n"
            f"nodes:\n  pacs: {{host: 127.0.0.1, port: {port}, called_ae: ORTHANC, "
            f"calling_ae: CRUN}}\nselect: {{remote: pacs, patient: [{listed}]}}\n"
            f"action: {{retrieve: {{method: move, port: {job_port}, bind: 127.0.0.1}}}}\n")


def run_job(work: Path, text: str, files: int, python: str = sys.executable
            ) -> tuple[float, float]:
    root = work / "job"
    shutil.rmtree(root, ignore_errors=True)
    (root / "data").mkdir(parents=True)
    (root / "job.yml").write_text(text)
    started = time.perf_counter()
    done = subprocess.run([python, "-m", "conquest_run", "--json", str(root / "job.yml")],
                          capture_output=True, text=True, timeout=900)
    whole = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"the job failed ({done.returncode}): {done.stderr[-2000:]}")
    step = json.loads(done.stdout)["report"]["steps"][0]
    if step["totals"]["done"] != files:
        raise RuntimeError(f"the job retrieved {step['totals']} of {files}")
    span = (datetime.fromisoformat(step["ended"]) - datetime.fromisoformat(step["started"]))
    return whole, max(span.total_seconds(), 1.0)      # the report keeps whole seconds


def run_movescu(work: Path, port: int, scp_port: int, studies: list[str], files: int) -> float:
    folder = work / "storescp"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    scp = subprocess.Popen([STORESCP, "+xa", "-pm", "-od", str(folder), "-aet", "STORESCP",
                            str(scp_port)], env=NODELAY, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        wait_port(scp_port)
        started = time.perf_counter()
        done = subprocess.run([MOVESCU, "-S", "-aet", "MOVESCU", "-aec", "ORTHANC", "-aem",
                               "STORESCP", "127.0.0.1", str(port), "-k",
                               "QueryRetrieveLevel=STUDY", "-k",
                               "StudyInstanceUID=" + "\\".join(studies)],
                              env=NODELAY, capture_output=True, text=True, timeout=900)
        seconds = time.perf_counter() - started
    finally:
        stop(scp)
    got = sum(1 for _ in folder.iterdir())
    if done.returncode != 0 or got != files:
        raise RuntimeError(f"movescu: exit {done.returncode}, {got} of {files} files: "
                           f"{done.stderr[-1000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--slices", type=int, default=26, help="CT slices per patient "
                        "(each patient also has an RTSTRUCT, RTPLAN and RTDOSE)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--baseline-python", metavar="PY", help="also run the job with this "
                        "interpreter (a venv of an older tree), taking turns, for a ratio")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conquest_run.synthetic import write_patient

    work = Path(tempfile.mkdtemp(prefix="bench-retrieve-"))
    job_port, scp_port = free_port(), free_port()
    orthanc = None
    try:
        pids = [f"RB{n:03d}" for n in range(args.patients)]
        for pid in pids:
            write_patient(work / "upload", seed=21, patient_id=pid, ct_slices=args.slices)
        files = sum(1 for p in (work / "upload").rglob("*") if p.is_file())
        orthanc, port = start_orthanc(work, job_port, scp_port)
        subprocess.run([STORESCU, "-R", "+sd", "+r", "-aec", "ORTHANC", "127.0.0.1", str(port),
                        str(work / "upload")], env=NODELAY, check=True, capture_output=True)
        from conquest_run.net.qrscu import RemoteNode, find_series
        studies = sorted({s.study_uid for s in find_series(
            RemoteNode("127.0.0.1", port, "ORTHANC", "CRUN"))})
        text = job_text(work / "job", port, job_port, pids)
        load_before = os.getloadavg()[0]
        job_whole, job_step, orthanc_times, base_whole, base_step = [], [], [], [], []
        for _ in range(args.repeat):       # taking turns
            whole, step = run_job(work, text, files)
            job_whole.append(whole)
            job_step.append(step)
            if args.baseline_python:
                whole, step = run_job(work, text, files, args.baseline_python)
                base_whole.append(whole)
                base_step.append(step)
            orthanc_times.append(run_movescu(work, port, scp_port, studies, files))
        load_after = os.getloadavg()[0]
    finally:
        if orthanc is not None:
            stop(orthanc)
        shutil.rmtree(work, ignore_errors=True)
    rows = [("Orthanc C-MOVE -> dcmtk storescp (movescu)", min(orthanc_times)),
            ("Orthanc C-MOVE -> conquest-run job, retrieve step", min(job_step)),
            ("Orthanc C-MOVE -> conquest-run job, whole process", min(job_whole))]
    if base_whole:
        rows += [("... baseline tree, retrieve step", min(base_step)),
                 ("... baseline tree, whole process", min(base_whole))]
    base = rows[0][1]
    table = ["| transfer | seconds | files/s | vs storescp |", "|---|---:|---:|---:|"]
    for name, seconds in rows:
        table.append(f"| {name} | {seconds:.2f} | {files / seconds:.0f} | "
                     f"{base / seconds:.2f}x |")
    text = (f"{SECTION}\n\n`python bench/bench_retrieve.py --patients {args.patients} --slices "
            f"{args.slices} --repeat {args.repeat}`: {files} small files (CT 16x16 slices and "
            f"an RT set per patient) held by Orthanc 1.10, best of {args.repeat} runs taking "
            f"turns. Machine: {platform.machine()}, `nproc` {os.cpu_count()}, shared; load "
            f"average {load_before:.2f} before, {load_after:.2f} after.\n\n"
            + "\n".join(table) + "\n")
    print(text)
    if args.record:
        old = RESULTS.read_text()
        if SECTION in old:
            head, _, rest = old.partition(SECTION)
            tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
            old = head.rstrip() + "\n\n" + text + tail
        else:
            old = old.rstrip() + "\n\n" + text
        RESULTS.write_text(old)
    return 0


if __name__ == "__main__":
    sys.exit(main())
