"""Rebuild of two trees side by side (issue 14: the atomic rebuild against the one before it).

    python bench/bench_rebuild_side_by_side.py --old-python OLD_TREE/.venv/bin/python \
        [--new-python PYTHON] [--files 3000] [--repeat 4]

One synthetic tree (``conquest_run.synthetic.generate_files``) is indexed by each tree's
``Archive.rebuild`` in its own child process, the trees taking turns (the order alternates each
repeat, so a change in the machine's load hits both): a full rebuild into a fresh database, a
refresh with nothing changed, and a refresh after 10% of the files were touched.  Each child
reports wall and CPU seconds of the call alone; the best of the repeats is printed.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
CHILD = r"""
import json, os, resource, sys, time
from pathlib import Path
from conquest_run import Archive
data, db, mode = sys.argv[1:4]
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
if mode == "all":
    for s in ("", "-wal", "-shm"):
        Path(db + s).unlink(missing_ok=True)
c, t = cpu(), time.perf_counter()
r = Archive(data, db).rebuild(mode=mode)
print(json.dumps({"wall": time.perf_counter() - t, "cpu": cpu() - c, "indexed": r.indexed}))
"""

def run(py: str, data: Path, db: Path, mode: str) -> dict:
    out = subprocess.run([py, "-c", CHILD, str(data), str(db), mode], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-python", required=True)
    ap.add_argument("--new-python", default=sys.executable)
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=4)
    args = ap.parse_args()
    old, new, n, reps = args.old_python, args.new_python, args.files, args.repeat
    work = Path(tempfile.mkdtemp(prefix="sbs-"))
    data = work / "data"
    subprocess.run([new, "-c", f"from conquest_run import synthetic; synthetic.generate_files({str(data)!r}, {n}, seed='sbs')"], check=True)
    files = sorted(data.rglob("*.dcm"))
    res = {k: {"old": [], "new": []} for k in ("all", "refresh0", "refresh10")}
    for rep in range(reps):
        for tree, py in (("old", old), ("new", new)) if rep % 2 == 0 else (("new", new), ("old", old)):
            db = work / f"{tree}.db"
            res["all"][tree].append(run(py, data, db, "all"))
            res["refresh0"][tree].append(run(py, data, db, "refresh"))
            for p in files[rep::10]:                      # 10% changed
                os.utime(p, ns=(time.time_ns(), time.time_ns()))
            res["refresh10"][tree].append(run(py, data, db, "refresh"))
    print(f"load {os.getloadavg()}")
    for k, v in res.items():
        o = min(x["wall"] for x in v["old"]); nw = min(x["wall"] for x in v["new"])
        oc = min(x["cpu"] for x in v["old"]); nc = min(x["cpu"] for x in v["new"])
        print(f"{k}: old wall {o:.3f} s cpu {oc:.3f} s | new wall {nw:.3f} s cpu {nc:.3f} s | "
              f"new/old wall {nw / o:.2f}x cpu {nc / oc:.2f}x | indexed {v['new'][0]['indexed']}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
