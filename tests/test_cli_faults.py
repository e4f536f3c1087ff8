"""Hostile inputs through the real CLI: each gives a clear, located message and a non-zero exit,
never a traceback, and leaves the archive as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conquest_run.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``conquest-run ARGS`` in this process: (exit code, stdout, stderr).

    In process, a traceback would be an exception escaping ``main`` and fail the test."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """tmp_path as the current directory, with the sample archive in data/ (not indexed)."""
    src = REPO / "examples" / "sample" / "data"
    if not src.is_dir():
        pytest.skip("examples/sample/data has not been generated")
    shutil.copytree(src, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- job files ------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [70, 5000])
def test_deeply_nested_yaml_is_a_located_job_error(scratch, capsys, depth):
    Path("deep.yml").write_text("version: 1\nname: t\nx: " + "[" * depth + "]" * depth + "\n")
    code, _, err = run_cli(capsys, "--validate", "deep.yml")
    assert code == 2
    assert err.startswith("deep.yml:3:") and "nested" in err
