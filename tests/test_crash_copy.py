"""A copy job killed with SIGKILL at random moments (issue 14): what it left is whole or a
temporary file; the natural next step (the same job again) ends with every file there and
identical, and no temporary file of the killed process left in the destination."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conquest_run import Archive, synthetic
from conquest_run.actions._local import remove_stale_temp_files
from conquest_run.cli import main

pytestmark = pytest.mark.timeout(120)


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.is_file() and p.name.endswith(".tmp")]


def test_killed_copy_then_the_same_job_again_ends_complete_and_clean(tmp_path, capsys):
    data, db, out = tmp_path / "data", tmp_path / "conquest.db", tmp_path / "out"
    synthetic.generate_files(data, 36, seed="kill-copy", size=128)
    Archive(data, db).rebuild()
    sources = {p.name: p.read_bytes() for p in data.rglob("*.dcm")}
    job = tmp_path / "copy.yml"
    job.write_text("version: 1\nname: export-all\nselect:\n  query: select SeriesInst from "
                   f"DICOMSeries\naction:\n  copy: {{destination: {out}, layout: flat}}\n")
    args = [str(job), "--data", str(data), "--database", str(db)]
    # how long a run copies once its destination exists, so that the kills land inside runs
    proc = subprocess.Popen([sys.executable, "-m", "conquest_run", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not out.exists() and proc.poll() is None:
        time.sleep(0.002)
    began = time.monotonic()
    assert proc.wait(30) == 0
    window = max(time.monotonic() - began, 0.02)
    shutil.rmtree(out)
    killed_midway = 0
    for trial in range(10):
        rng = random.Random(trial)
        if out.exists() and rng.random() < 0.5:
            shutil.rmtree(out)                 # from scratch, or resuming the last trial's
        proc = subprocess.Popen([sys.executable, "-m", "conquest_run", *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.5 * window))
        killed_midway += proc.poll() is None       # still running: the kill lands in the run
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for p in out.glob("*.dcm") if out.exists() else ():   # a file there is whole
            assert p.read_bytes() == sources[p.name], f"trial {trial}: {p.name} is partial"
        assert main(args) == 0, capsys.readouterr()        # the natural next step
        capsys.readouterr()
        assert _temp_files(out) == [], f"trial {trial}: temporary files left"
        copied = {p.name: p.read_bytes() for p in out.glob("*.dcm")}
        assert copied == sources, f"trial {trial}"
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["count"] == len(manifest["instances"]) == len(sources)
    # the kills did land inside the runs (whether one lands inside a single file's write, with
    # its temporary file there, is down to the machine's timing: small files take microseconds)
    assert killed_midway >= 8


def test_only_the_temporary_files_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".a.dcm.{dead.pid}-x1y2.tmp"
    running = tmp_path / f".b.dcm.{os.getpid()}-x1y2.tmp"
    other = tmp_path / ".c.dcm.abcdef.tmp"              # not ours (no pid): left alone
    for p in (stale, running, other):
        p.write_bytes(b"")
    assert remove_stale_temp_files(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, other.name])
