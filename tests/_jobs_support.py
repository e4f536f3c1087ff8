"""Helpers for the jobs tests: a sandbox laid out like the repository, tree hashing, the CLI."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
BAD_JOBS = TESTS / "jobs" / "bad"
SAMPLE_DATA = REPO / "examples" / "sample" / "data"


def sandbox(tmp_path: Path) -> Path:
    """tmp_path laid out like the repository root: examples/sample/data and jobs/*.yml."""
    import pytest
    if not SAMPLE_DATA.is_dir():
        pytest.skip("examples/sample/data is not there yet")
    shutil.copytree(SAMPLE_DATA, tmp_path / "examples" / "sample" / "data")
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    return tmp_path


def tree_state(root: Path) -> dict[str, str]:
    """Every file and folder under root -> SHA-256 of its bytes ('dir' for folders)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python -m conquest_run ARGS`` in ``cwd`` (a real process: exit code and streams)."""
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "conquest_run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def index(data: Path, database: Path):
    from conquest_run.archive import Archive
    arc = Archive(data, database)
    arc.rebuild()
    return arc
