"""Benchmark: a de-identified copy of N small files, against dicognito on the same files.

    pip install dicognito          # into your own venv: not a project dependency
    python bench/bench_deid.py [--files 2000] [--repeat 3]

Writes ``--files`` synthetic files (CT/MR/RT mix, 16x16 pixels) and indexes them (not timed).
Then, taking turns in one run: ours is ``Archive.copy_series(..., deidentify=...)`` (the whole
copy action: plan, read, PS3.15 Basic Profile, write atomically, read back, manifest, report);
dicognito is its ``Anonymizer.anonymize`` on each ``dcmread`` dataset, saved with ``save_as``
into a folder per run (no manifest, no read-back).  Prints files/s for each and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path


def ours(archive, series: list[str], out: Path) -> float:
    started = time.perf_counter()
    report = archive.copy_series(series, out, deidentify={"secret_env": "BENCH_DEID_SECRET"})
    elapsed = time.perf_counter() - started
    assert report.summary["deidentified"] > 0, report.summary
    return elapsed


def dicognito_run(files: list[Path], out: Path) -> float:
    import pydicom
    from dicognito.anonymizer import Anonymizer

    started = time.perf_counter()
    anonymizer = Anonymizer(seed="bench-deid-seed")
    out.mkdir(parents=True)
    for n, path in enumerate(files):
        ds = pydicom.dcmread(path)
        anonymizer.anonymize(ds)
        ds.save_as(out / f"{n:06d}.dcm")
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = ap.parse_args()
    try:
        import dicognito
    except ImportError:
        raise SystemExit("bench_deid: pip install dicognito first (into your own venv)")
    from conquest_run import synthetic
    from conquest_run.archive import Archive

    os.environ.setdefault("BENCH_DEID_SECRET", "bench-deid-secret-0123456789")
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-deid-"))
    data = root / "data"
    if not data.exists():
        synthetic.generate_files(data, args.files, seed="bench-deid")
    archive = Archive(data, root / "conquest.db")
    archive.rebuild()
    with sqlite3.connect(archive.database) as conn:
        series = [r[0] for r in conn.execute("SELECT SeriesInst FROM DICOMSeries")]
        count = conn.execute("SELECT COUNT(*) FROM DICOMImages").fetchone()[0]
    files = sorted(p for p in data.rglob("*.dcm"))
    rates: dict[str, list[float]] = {"conquest-run": [], "dicognito": []}
    for n in range(args.repeat):
        for name in (("conquest-run", "dicognito") if n % 2 == 0 else
                     ("dicognito", "conquest-run")):
            out = root / f"out-{name}-{n}"
            elapsed = (ours(archive, series, out) if name == "conquest-run"
                       else dicognito_run(files, out))
            rates[name].append(count / elapsed)
            shutil.rmtree(out)
    best = {k: max(v) for k, v in rates.items()}
    result = {"files": count, "repeat": args.repeat, "dicognito": dicognito.__version__,
              "cpus": os.cpu_count(), "load": os.getloadavg(), "python": platform.python_version(),
              "files_per_s": {k: [round(r, 1) for r in v] for k, v in rates.items()},
              "best_ratio": round(best["conquest-run"] / best["dicognito"], 2)}
    print(json.dumps(result, indent=1))
    if not args.keep:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
