"""Benchmark: the dump action streams; peak memory stays flat on a million rows.

    python bench/bench_dump.py [--rows 1000000] [--keep DIR]

Builds an archive database with ``--rows`` synthetic DICOMImages rows (plus their series,
studies and patients) by direct INSERTs into the Conquest tables, then runs the dump action to
CSV in a child process per case and reports the child's peak resident memory (ru_maxrss), the
time and the CSV size.  A baseline child that only imports the package and the dump module gives the floor.
Target: under 300 MB peak for a million rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGES_PER_SERIES = 100
SERIES_PER_STUDY = 4
STUDIES_PER_PATIENT = 2


def build(db_path: Path, rows: int) -> float:
    from conquest_run.db import connect, ensure_schema
    from conquest_run.schema import load_schema

    started = time.perf_counter()
    schema = load_schema()
    conn = connect(db_path)
    ensure_schema(conn, schema)
    conn.execute("PRAGMA synchronous = OFF")
    n_series = -(-rows // IMAGES_PER_SERIES)
    root = "1.2.826.0.1.3680043.10.999"

    def series_uid(s: int) -> str:
        return f"{root}.3.{s}"

    def study_of(s: int) -> int:
        return s // SERIES_PER_STUDY

    def patient_of(study: int) -> str:
        return f"PAT{study // STUDIES_PER_PATIENT:07d}"

    conn.execute("BEGIN")
    n_studies = study_of(n_series - 1) + 1
    conn.executemany(
        "INSERT OR IGNORE INTO DICOMPatients (PatientID, PatientNam, PatientSex) VALUES (?,?,?)",
        ((patient_of(t), f"Bench^Patient {t // STUDIES_PER_PATIENT}", "O")
         for t in range(n_studies)))
    conn.executemany(
        "INSERT INTO DICOMStudies (StudyInsta, StudyDate, StudyDescr, PatientID, PatientNam) "
        "VALUES (?,?,?,?,?)",
        ((f"{root}.2.{t}", "20240101", f"study, \"{t}\"", patient_of(t),
          f"Bench^Patient {t // STUDIES_PER_PATIENT}") for t in range(n_studies)))
    conn.executemany(
        "INSERT INTO DICOMSeries (SeriesInst, SeriesNumb, Modality, SeriesDesc, SeriesPat, "
        "StudyInsta) VALUES (?,?,?,?,?,?)",
        ((series_uid(s), str(s % 10), "CT", "bench series\nline two", patient_of(study_of(s)),
          f"{root}.2.{study_of(s)}") for s in range(n_series)))
    conn.executemany(
        "INSERT INTO DICOMImages (SOPInstanc, SOPClassUI, ImageNumbe, SliceLocat, QRows, "
        "QColumns, ImageType, ImagePat, SeriesInst, ObjectFile, DeviceName) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        ((f"{root}.1.{i}", "1.2.840.10008.5.1.4.1.1.2", str(i % IMAGES_PER_SERIES),
          f"{-0.5 * (i % IMAGES_PER_SERIES):.6f}", "512", "512", "ORIGINAL\\PRIMARY\\AXIAL",
          patient_of(study_of(i // IMAGES_PER_SERIES)), series_uid(i // IMAGES_PER_SERIES),
          f"{patient_of(study_of(i // IMAGES_PER_SERIES))}/{i}.dcm", "MAG0")
         for i in range(rows)))
    conn.execute("COMMIT")
    conn.close()
    return time.perf_counter() - started


def child(db: str, out: str, case: str) -> None:
    """Run in a fresh process: one dump, then report its own peak memory."""
    import conquest_run.actions.dump  # noqa: F401  (the baseline loads it too)
    from conquest_run.actions import ActionContext, get_action
    from conquest_run.archive import Archive
    from conquest_run.plan import Plan, PlanStep

    archive = Archive(Path(db).parent / "data", db)
    if case == "baseline":
        rows = 0
        seconds = 0.0
    else:
        options = {"file": out}
        query = None
        if case == "table":
            options["table"] = "DICOMImages"
        else:
            query = ("SELECT i.SOPInstanc, i.ObjectFile, s.SeriesInst, s.SeriesDesc, "
                     "t.StudyDescr, t.PatientID FROM DICOMImages i JOIN DICOMSeries s ON "
                     "s.SeriesInst = i.SeriesInst JOIN DICOMStudies t ON "
                     "t.StudyInsta = s.StudyInsta")
        step = PlanStep(1, "dump", "dump", options, out, False, "instance", (), query)
        plan = Plan("bench", "", "bench", str(archive.data_dir), db, None, (step,))
        started = time.perf_counter()
        report = get_action("dump")(step, ActionContext(archive, plan))
        seconds = time.perf_counter() - started
        if report.error:
            raise SystemExit(report.error)
        rows = report.summary["rows"]
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"case": case, "rows": rows, "seconds": round(seconds, 2),
                      "peak_mb": round(peak_kb / 1024, 1),
                      "csv_mb": round(os.path.getsize(out) / 1e6, 1) if rows else 0}))


def machine() -> str:
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}, "
            f"Python {platform.python_version()}, SQLite "
            f"{__import__('sqlite3').sqlite_version}, {platform.system()} {platform.release()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--keep", help="build the database in this folder and keep it")
    ap.add_argument("--child", nargs=3, metavar=("DB", "OUT", "CASE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="bench-dump-") as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        db = folder / "conquest.db"
        if db.exists():
            db.unlink()
        build_s = build(db, args.rows)
        print(f"machine: {machine()}")
        print(f"built {args.rows} image rows in {build_s:.1f} s "
              f"({db.stat().st_size / 1e6:.0f} MB database)")
        for case in ("baseline", "table", "query"):
            out = folder / f"{case}.csv"
            res = subprocess.run([sys.executable, __file__, "--child", str(db), str(out), case],
                                 capture_output=True, text=True, check=True)
            print(res.stdout.strip())
            out.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
