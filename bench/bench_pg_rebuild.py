"""Full rebuild into PostgreSQL against SQLite, side by side in one run (issue 12).

    python bench/bench_pg_rebuild.py [--files 10000] [--repeat 3] [--row-by-row]

One synthetic tree (``conquest_run.synthetic.generate_files``: CT/MR/RT mix, 16x16 images) is
rebuilt (mode all, 1 worker, over the index of the round before) into SQLite
(``Archive.rebuild``: the atomic shadow rebuild) and into PostgreSQL (``rebuild_all``: COPY and
one merge, what ``conquest-run rebuild --database postgresql://...`` runs), each in a fresh
child process that times the call alone, the two taking turns (the order alternates each round,
so a change in the machine's load hits both).  ``--row-by-row`` adds the PostgreSQL row-by-row
writer (``Indexer`` through ``PgWriter``, the path before COPY) as a third contender.

PostgreSQL is a throwaway cluster this script starts and stops itself (initdb, pg_ctl, as the
``postgres`` user when run as root), ``fsync=on`` and the default ``synchronous_commit`` (as
SQLite's default synchronous mode syncs too), on 127.0.0.1.

A *record* is one row written in any of the five tables (DICOMPatients, DICOMStudies,
DICOMSeries, DICOMImages, RTExtras): the rows in them after the rebuild, counted on each side
(and checked to agree).  Conquest's manual gives 449 records/s for PostgreSQL.  Best of the
rounds is printed, with the ratios PG/SQLite and PG/449.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

CONQUEST_PG_RECORDS_PER_S = 449
TABLES = ("DICOMPatients", "DICOMStudies", "DICOMSeries", "DICOMImages", "RTExtras")

CHILD = r"""
import json, resource, sys, time
kind, data, target = sys.argv[1:4]
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
from conquest_run import Archive
from conquest_run.schema import load_schema
if kind == "sqlite":
    c, t = cpu(), time.perf_counter()
    r = Archive(data, target).rebuild(mode="all")
else:
    from conquest_run.backends.pgbulk import rebuild_all
    from conquest_run.backends.pgschema import ensure_schema
    from conquest_run.backends.postgres import connect
    from conquest_run.indexer import Indexer
    schema = load_schema()
    import os
    def server_cpu(pid):      # the backend's CPU seconds (/proc, the same machine)
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    c, t = cpu(), time.perf_counter()
    with connect(target) as conn:
        pid = conn.raw.info.backend_pid
        s0 = server_cpu(pid)
        ensure_schema(conn, schema)
        if kind == "pg":
            r = rebuild_all(conn, schema, data)
        else:
            r = Indexer(conn, schema, data).run(mode="all")
        server = server_cpu(pid) - s0
print(json.dumps({"wall": time.perf_counter() - t, "cpu": cpu() - c, "indexed": r.indexed,
                  "bad": len(r.bad), "server_cpu": server if kind != "sqlite" else 0.0}))
"""


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if not on_path:
        sys.exit("bench_pg_rebuild: the PostgreSQL server binaries (initdb, pg_ctl) are not "
                 "installed")
    return Path(on_path).parent


class Cluster:
    """A throwaway cluster, fsync on, trust authentication on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.pgbin, self.root = _pg_bin(), root
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.data = root / "cluster"
        subprocess.run(_as_postgres([str(self.pgbin / "initdb"), "-D", str(self.data), "-A",
                                     "trust", "-U", "postgres", "-E", "UTF8",
                                     "--locale=C.UTF-8"]), check=True, capture_output=True)
        opts = f"-k {root} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=on"
        subprocess.run(_as_postgres([str(self.pgbin / "pg_ctl"), "-D", str(self.data), "-l",
                                     str(root / "log"), "-w", "-t", "60", "-o", opts, "start"]),
                       check=True, capture_output=True)

    def url(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        subprocess.run(_as_postgres([str(self.pgbin / "pg_ctl"), "-D", str(self.data), "-m",
                                     "fast", "-w", "stop"]), capture_output=True)


def machine() -> str:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines()
                      if line.startswith("Model name")), "")
    except OSError:
        pass
    server = subprocess.run([str(_pg_bin() / "postgres"), "--version"], capture_output=True,
                            text=True).stdout.strip()
    return f"{model}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, {server}"


def rows_in(kind: str, target: str) -> int:
    if kind == "sqlite":
        conn = sqlite3.connect(target)
        try:
            return sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES)
        finally:
            conn.close()
    import psycopg
    with psycopg.connect(target) as conn:
        return sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES)


def run(kind: str, data: Path, target: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(data), target],
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"bench_pg_rebuild: the {kind} rebuild failed:\n{out.stderr}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["records"] = rows_in(kind, target)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--row-by-row", action="store_true",
                    help="also the PostgreSQL row-by-row writer")
    args = ap.parse_args()
    from conquest_run import synthetic
    work = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    cluster = None
    try:
        data = work / "data"
        synthetic.generate_files(data, args.files, seed="pgbench")
        for f in data.rglob("*.dcm"):       # a warm page cache for every contender
            f.read_bytes()
        pgroot = Path(tempfile.mkdtemp(prefix="bench-pg-cluster-"))  # the postgres user's
        cluster = Cluster(pgroot)
        import psycopg
        with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
            conn.execute("CREATE DATABASE bench_rows")
        targets = {"sqlite": str(work / "index.db"), "pg": cluster.url("bench"),
                   "pg-rows": cluster.url("bench_rows")}
        kinds = ["sqlite", "pg"] + (["pg-rows"] if args.row_by_row else [])
        for kind in kinds:                  # the index the measured rebuilds replace
            run(kind, data, targets[kind])
        res: dict[str, list[dict]] = {k: [] for k in kinds}
        load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
        for rnd in range(args.repeat):
            for kind in (kinds if rnd % 2 == 0 else kinds[::-1]):
                res[kind].append(run(kind, data, targets[kind]))
        load = " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" (before: {load_before})"
        best = {k: min(v, key=lambda r: r["wall"]) for k, v in res.items()}
        records = {k: b["records"] for k, b in best.items()}
        print(f"machine: {machine()}; load {load}")
        print(f"{args.files} files asked, {best['sqlite']['indexed']} indexed; records "
              f"(rows in the five tables) {records}")
        for kind in kinds:
            b = best[kind]
            walls = ", ".join(f"{r['wall']:.2f}" for r in res[kind])
            cpu_all = min(r["cpu"] + r["server_cpu"] for r in res[kind])
            print(f"{kind}: best {b['wall']:.2f} s (rounds {walls}), "
                  f"{b['indexed'] / b['wall']:.0f} files/s, {b['records'] / b['wall']:.0f} "
                  f"records/s; CPU (client + server backend) best {cpu_all:.2f} s: "
                  f"{b['records'] / cpu_all:.0f} records per CPU second")
        lite, pg = best["sqlite"], best["pg"]
        ratio = (pg["records"] / pg["wall"]) / (lite["records"] / lite["wall"])
        print(f"PG/SQLite {ratio:.2f}x (target >= 0.7x); PG/{CONQUEST_PG_RECORDS_PER_S} "
              f"{pg['records'] / pg['wall'] / CONQUEST_PG_RECORDS_PER_S:.1f}x (target >= 5x)")
        if len(set(records.values())) != 1:
            print("WARNING: the record counts differ between the contenders")
    finally:
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
