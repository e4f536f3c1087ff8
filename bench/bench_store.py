"""Store speed: ``conquest-run store`` (copy) and ``store --move`` of N synthetic files, this
checkout against another one (``--baseline OLD_TREE``, e.g. ``git archive COMMIT | tar -x -C
OLD_TREE``), whole processes taking turns, best of ``--repeat``.

    python bench/bench_store.py [--files 2000] [--repeat 3] [--baseline OLD_TREE]

Each run stores into a fresh, empty archive (its database made by ``rebuild`` beforehand, not
timed); a move gets a fresh copy of the files on the same file system first (not timed).  The
rates include the process start (~0.5 s of imports), so they are files/s of the command as a
user runs it; the in-process time (printed by the command's own clock) is not available from
the outside, hence N of a few thousand.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _package(tree: Path, work: Path) -> Path:
    folder = work / f"pkg_{tree.name}"
    if not folder.exists():
        folder.mkdir()
        (folder / "conquest_run").symlink_to(tree.resolve() / "engine")
    return folder


def one_store(tree: Path, work: Path, files: Path, move: bool, n: int) -> float:
    root = work / "run"
    shutil.rmtree(root, ignore_errors=True)
    (root / "data").mkdir(parents=True)
    source = files
    if move:
        source = root / "in"
        shutil.copytree(files, source)
    env = {**os.environ, "PYTHONPATH": str(_package(tree, work))}
    base = [sys.executable, "-m", "conquest_run"]
    flags = ["--data", str(root / "data"), "--database", str(root / "c.db")]
    subprocess.run(base + ["rebuild", *flags], env=env, check=True, capture_output=True)
    started = time.perf_counter()
    subprocess.run(base + ["store", str(source), *flags] + (["--move"] if move else []),
                   env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    rows = sqlite3.connect(root / "c.db").execute("SELECT count(*) FROM DICOMImages").fetchone()
    if rows[0] != n:
        raise RuntimeError(f"{tree}: stored {rows[0]} of {n}")
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline", type=Path, metavar="TREE")
    args = ap.parse_args()
    trees = {"this checkout": HERE.parent}
    if args.baseline is not None:
        trees[f"baseline {args.baseline.name}"] = args.baseline
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="bench_store_") as tmp:
        work = Path(tmp)
        from conquest_run.synthetic import generate_files
        generate_files(work / "files", args.files, seed=3)
        best: dict[tuple[str, bool], float] = {}
        for _ in range(args.repeat):
            for move in (False, True):
                for name, tree in trees.items():
                    t = one_store(tree, work, work / "files", move, args.files)
                    best[name, move] = min(best.get((name, move), float("inf")), t)
    print(f"{args.files} files, best of {args.repeat}; load {load} before, "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} after\n")
    print("| command | tree | files/s | vs baseline |\n|---|---|---:|---:|")
    for move in (False, True):
        base = best.get((f"baseline {args.baseline.name}", move)) if args.baseline else None
        for name in trees:
            rate = args.files / best[name, move]
            ratio = f"{base / best[name, move]:.2f}x" if base else "-"
            print(f"| store{' --move' if move else ''} | {name} | {rate:,.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
