"""Indexing speed: conquest-run rebuild vs a bare pydicom read loop vs pyconquest 0.1.12.

    python bench/bench_index.py [--files 10000] [--repeat 2] [--write]

Generates N synthetic files (CT/MR/RT mix, ``conquest_run.synthetic``) in a temporary folder,
reads them all once (so every measurement starts from a warm page cache), then times:

1. the bare loop ``pydicom.dcmread(f, stop_before_pixels=True)`` over the file list;
2. ``Archive.rebuild()`` into a fresh database with 1 worker, then with 2 worker processes;
3. ``Archive.rebuild(mode="refresh")`` over the unchanged archive (the re-scan);
4. pyconquest 0.1.12 ``rebuild_database_from_dicom(compute_only_missing=False,
   check_existing=False)`` (its fastest settings) in a subprocess, if it is installed.

Each conquest-run / bare timing is the best of ``--repeat`` runs.  ``--write`` replaces the
"## Indexing" section of bench/RESULTS.md with the results and the machine facts.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom

from conquest_run import Archive, synthetic
from conquest_run.schema import default_dicom_sql_path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"

PYCONQUEST_SCRIPT = r"""
import json, sys, time, sqlite3
from pyconquest import pyconquest
data, sql, db = sys.argv[1:4]
pc = pyconquest(data_directory=data, sql_inifile_name=sql, database_filename=db)
t = time.perf_counter()
n = pc.rebuild_database_from_dicom(compute_only_missing=False, check_existing=False)
dt = time.perf_counter() - t
rows = sqlite3.connect(db).execute("select count(*) from dicomimages").fetchone()[0]
print(json.dumps({"files": n, "rows": rows, "seconds": dt}))
"""


def machine() -> dict[str, str]:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines()
                      if line.startswith("Model name")), "")
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {"nproc": str(os.cpu_count()), "cpu": model, "python": platform.python_version(),
            "pydicom": pydicom.__version__, "load": load}


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (worker processes)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def best(fn, repeat: int) -> tuple[float, float]:
    """(best wall seconds, CPU seconds of that run)."""
    runs = []
    for _ in range(repeat):
        c = cpu_seconds()
        t = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t, cpu_seconds() - c))
    return min(runs)


def bare_loop(paths: list[str]) -> None:
    for p in paths:
        pydicom.dcmread(p, stop_before_pixels=True)


def _bare_chunk(chunk: list[str]) -> int:
    bare_loop(chunk)
    return len(chunk)


def bare_loop_two_processes(paths: list[str]) -> None:
    """The bare loop split over 2 processes: what parallelism the machine gives right now."""
    ctx = multiprocessing.get_context("fork")
    chunks = [paths[i:i + 64] for i in range(0, len(paths), 64)]
    with ctx.Pool(2) as pool:
        sum(pool.imap(_bare_chunk, chunks))


def run_pyconquest(python: str, data: Path, db: Path, timeout: float) -> dict:
    code = subprocess.run([python, "-c", "import pyconquest"], capture_output=True, text=True,
                          cwd=str(db.parent))   # pyconquest writes its log file into the cwd
    if code.returncode != 0:
        return {"error": "pyconquest is not importable with " + python + ": "
                + (code.stderr.strip().splitlines() or ["?"])[-1]}
    try:
        proc = subprocess.run(
            [python, "-c", PYCONQUEST_SCRIPT, str(data), str(default_dicom_sql_path()), str(db)],
            capture_output=True, text=True, timeout=timeout, cwd=str(db.parent))
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=16, help="image matrix (default 16)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--pyconquest-python", default=sys.executable)
    ap.add_argument("--pyconquest-timeout", type=float, default=1800)
    ap.add_argument("--skip-pyconquest", action="store_true")
    ap.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        data = work / "data"
        t = time.perf_counter()
        synthetic.generate_files(data, args.files, seed="bench", size=args.size)
        generated = time.perf_counter() - t
        paths = sorted(str(p) for p in data.rglob("*") if p.is_file())
        total_bytes = sum(os.path.getsize(p) for p in paths)
        for p in paths:                                    # warm the page cache
            with open(p, "rb") as fh:
                fh.read()
        n = len(paths)
        print(f"{n} files, {total_bytes / 1e6:.1f} MB, generated in {generated:.1f} s",
              flush=True)
        facts = machine()
        results: dict[str, dict] = {}

        bare, bare_cpu = best(lambda: bare_loop(paths), args.repeat)
        results["bare"] = {"seconds": bare, "cpu": bare_cpu}
        print(f"bare dcmread loop: {n / bare:,.0f} files/s", flush=True)
        bare2, bare2_cpu = best(lambda: bare_loop_two_processes(paths), args.repeat)
        results["bare2"] = {"seconds": bare2, "cpu": bare2_cpu}
        print(f"bare dcmread loop in 2 processes: {n / bare2:,.0f} files/s", flush=True)

        db = work / "conquest.db"

        def fresh(workers: int):
            def go():
                for suffix in ("", "-wal", "-shm"):
                    Path(str(db) + suffix).unlink(missing_ok=True)
                r = Archive(data, db).rebuild(workers=workers)
                assert r.indexed == n and not r.bad, r.summary()
            return go
        for workers in (1, 2):
            s, cpu = best(fresh(workers), args.repeat)
            results[f"rebuild{workers}"] = {"seconds": s, "cpu": cpu}
            print(f"conquest-run rebuild, {workers} worker(s): {n / s:,.0f} files/s", flush=True)

        archive = Archive(data, db)
        refresh_times = []
        for _ in range(max(3, args.repeat)):
            r = archive.rebuild(mode="refresh")
            assert r.unchanged == n and r.indexed == 0, r.summary()
            refresh_times.append(r.seconds)
        results["refresh"] = {"seconds": min(refresh_times)}
        print(f"re-scan (refresh, unchanged): {n / min(refresh_times):,.0f} files/s", flush=True)

        if args.skip_pyconquest:
            results["pyconquest"] = {"error": "skipped (--skip-pyconquest)"}
        else:
            pc = run_pyconquest(args.pyconquest_python, data, work / "pyconquest.db",
                                args.pyconquest_timeout)
            results["pyconquest"] = pc
            if "error" in pc:
                print(f"pyconquest: {pc['error']}", flush=True)
            else:
                print(f"pyconquest 0.1.12: {pc['files'] / pc['seconds']:,.0f} files/s "
                      f"({pc['rows']} image rows)", flush=True)
        facts["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        table = report(n, total_bytes, args.size, results, facts)
        print()
        print(table)
        if args.write:
            write_section(table)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(n: int, total_bytes: int, size: int, results: dict, facts: dict) -> str:
    bare = n / results["bare"]["seconds"]
    r1 = n / results["rebuild1"]["seconds"]
    r2 = n / results["rebuild2"]["seconds"]
    rescan = n / results["refresh"]["seconds"]
    pc = results["pyconquest"]

    def cpu_ms(key: str) -> str:
        return f"{results[key]['cpu'] / n * 1e6:,.0f}"
    lines = [
        "## Indexing",
        "",
        f"`python bench/bench_index.py --files {n}` — {n} synthetic files (CT/MR/RT mix, "
        f"{size}x{size} images, {total_bytes / 1e6:.1f} MB), warm page cache, best of the "
        "repeats.",
        f"Machine: {facts['nproc']} cores, {facts['cpu']}, Python {facts['python']}, pydicom "
        f"{facts['pydicom']}. Shared with three other engineers' work while measured: load "
        f"average {facts['load']} before, {facts['load_after']} after.",
        "",
        "| run | files/s (wall) | CPU ms / 1000 files | target | met |",
        "|---|---:|---:|---|---|",
        f"| bare `pydicom.dcmread(stop_before_pixels=True)` loop | {bare:,.0f} | "
        f"{cpu_ms('bare')} | — | — |",
        f"| the same loop split over 2 processes (what the shared machine gave) | "
        f"{n / results['bare2']['seconds']:,.0f} | {cpu_ms('bare2')} | — | "
        f"({n / results['bare2']['seconds'] / bare:.2f}x) |",
        f"| conquest-run rebuild, 1 worker | {r1:,.0f} | {cpu_ms('rebuild1')} | "
        f">= 0.8x bare ({0.8 * bare:,.0f}) | {'yes' if r1 >= 0.8 * bare else 'no'} "
        f"({r1 / bare:.2f}x) |",
        f"| conquest-run rebuild, 2 workers | {r2:,.0f} | {cpu_ms('rebuild2')} | "
        f">= 1.5x bare ({1.5 * bare:,.0f}) | {'yes' if r2 >= 1.5 * bare else 'no'} "
        f"({r2 / bare:.2f}x) |",
        f"| re-scan of the unchanged archive (refresh) | {rescan:,.0f} | — | >= 50,000 | "
        f"{'yes' if rescan >= 50_000 else 'no'} |",
    ]
    if "error" in pc:
        lines.append(f"| pyconquest 0.1.12 rebuild | not measured: {pc['error']} | — | — | — |")
    else:
        p = pc["files"] / pc["seconds"]
        lines.append(f"| pyconquest 0.1.12 rebuild (check_existing=False) | {p:,.0f} | — | — "
                     "| — |")
        lines.append(f"| conquest-run 1 worker / pyconquest | {r1 / p:.1f}x | — | >= 5x | "
                     f"{'yes' if r1 >= 5 * p else 'no'} |")
    lines += ["",
              "conquest-run's rebuild also hashes every file (SHA-256), checks for truncation "
              "and writes the RTExtras row; the bare loop does none of that.", ""]
    return "\n".join(lines)


def write_section(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    pattern = re.compile(r"^## Indexing\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
