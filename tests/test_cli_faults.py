"""Hostile inputs through the real CLI: each gives a clear, located message and a non-zero exit,
never a traceback, and leaves the archive as it was."""

from __future__ import annotations

import json
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


def write_job(name: str, action: str, select: str = "{modality: RTPLAN}") -> str:
    Path(name).write_text("version: 1\nname: t\narchive: {data: data, database: conquest.db}\n"
                          f"select: {select}\naction: {action}\n")
    return name


@pytest.mark.parametrize("dry", [False, True])
@pytest.mark.parametrize("action, message", [
    ("{copy: {destination: afile/sub}}", "afile exists and is not a folder"),
    ("{dump: {file: afile/x.csv}}", "afile exists and is not a folder"),
    ("{dump: {file: adir}}", "adir is a folder"),
])
def test_a_file_where_a_folder_belongs_fails_the_step_clearly_also_in_a_dry_run(
        scratch, capsys, dry, action, message):
    Path("afile").write_text("not a folder")
    Path("adir").mkdir()
    job = write_job("j.yml", action)
    assert run_cli(capsys, "rebuild")[0] == 0
    code, out, _ = run_cli(capsys, *(["--dry-run"] if dry else []), "--json", job)
    assert code == 1
    doc = json.loads(out)
    assert message in doc["report"]["steps"][0]["error"]
    assert Path("afile").read_text() == "not a folder"
    assert list(Path("adir").iterdir()) == []
