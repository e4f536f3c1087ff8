"""The project file conquest-run.yml: shared archive and nodes, paths from its folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conquest_run.cli import main
from conquest_run.errors import JobError
from conquest_run.jobs import load_job
from conquest_run.project import find_project, load_project

from _jobs_support import REPO, SAMPLE_DATA

PROJECT = """\
version: 1
archive: {data: archive/data, database: archive/conquest.db}
nodes:
  tps: {host: 127.0.0.1, port: 11112, called_ae: TPS}
  pacs: {host: 127.0.0.1, port: 11113, called_ae: PACS}
"""
SEND = """\
version: 1
nodes:
  pacs: {host: 127.0.0.1, port: 4242, called_ae: OTHER}
select: {modality: RTPLAN}
action: {send: {node: tps}}
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "conquest-run.yml").write_text(PROJECT)
    (tmp_path / "jobs" / "sub").mkdir(parents=True)
    (tmp_path / "jobs" / "sub" / "send.yml").write_text(SEND)
    return tmp_path


def test_jobs_inherit_and_override(repo: Path):
    job = load_job(repo / "jobs" / "sub" / "send.yml")
    assert find_project(repo / "jobs" / "sub" / "send.yml") == repo / "conquest-run.yml"
    assert job.archive.data == str(repo / "archive" / "data")
    assert job.archive.database == str(repo / "archive" / "conquest.db")
    assert job.nodes["tps"]["called_ae"] == "TPS"              # inherited
    assert job.nodes["pacs"]["called_ae"] == "OTHER"           # the job's own wins
    (repo / "jobs" / "own.yml").write_text(SEND.replace("nodes:", "archive: {data: d2}\nnodes:"))
    own = load_job(repo / "jobs" / "own.yml")
    assert own.archive.data == str(repo / "d2")                # from the project's folder
    assert own.archive.database == str(repo / "archive" / "conquest.db")



def test_the_search_stops_at_the_git_repository_root(repo: Path):
    """A conquest-run.yml above the git repository a job is in is not that job's project
    file (git's own discovery stops there too); one inside the repository still is."""
    inner = repo / "clone"
    (inner / ".git").mkdir(parents=True)
    (inner / "jobs").mkdir()
    (inner / "jobs" / "send.yml").write_text(SEND)
    assert find_project(inner / "jobs" / "send.yml") is None
    with pytest.raises(JobError, match="'tps' is not declared under nodes"):
        load_job(inner / "jobs" / "send.yml")
    (inner / "conquest-run.yml").write_text(PROJECT)
    assert find_project(inner / "jobs" / "send.yml") == inner / "conquest-run.yml"
    (inner / ".git").rmdir()
    (inner / ".git").write_text("gitdir: ../elsewhere\n")     # a worktree's .git file
    (inner / "conquest-run.yml").unlink()
    assert find_project(inner / "jobs" / "send.yml") is None

def test_output_paths_are_from_the_project_folder_too(repo: Path, tmp_path: Path, monkeypatch):
    """A copy job of a repository exports beside the project wherever it is run from; an
    absolute destination and a job without a project are left alone."""
    shutil.copytree(SAMPLE_DATA, repo / "archive" / "data")
    (repo / "jobs" / "export.yml").write_text(
        "version: 1\nsteps:\n  - name: plans\n    select: {modality: RTPLAN}\n"
        "    action: {copy: {destination: exports/plans}}\n"
        "  - name: list\n    action: {dump: {file: exports/series.csv, table: DICOMSeries}}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main([str(repo / "jobs" / "export.yml")]) == 0
    assert list((repo / "exports" / "plans").rglob("*.dcm"))
    assert (repo / "exports" / "series.csv").is_file()
    assert list(elsewhere.iterdir()) == []
    job = load_job(repo / "jobs" / "export.yml")
    assert job.steps[0].options["destination"] == str(repo / "exports" / "plans")
    absolute = str(tmp_path / "abs")
    (repo / "jobs" / "abs.yml").write_text(
        f"version: 1\nselect: {{modality: RTPLAN}}\naction: {{copy: {{destination: '{absolute}'}}}}\n")
    assert load_job(repo / "jobs" / "abs.yml").steps[0].options["destination"] == absolute


def test_without_project_paths_stay_relative(tmp_path: Path):
    (tmp_path / "job.yml").write_text(SEND.replace("node: tps", "node: pacs"))
    job = load_job(tmp_path / "job.yml")
    assert job.project is None and job.archive.data is None


def test_project_errors_are_located(repo: Path, capsys):
    (repo / "conquest-run.yml").write_text(PROJECT + "archve: {}\n"
                                           + "log_file: logs/run.log\n")
    with pytest.raises(JobError) as info:
        load_project(repo / "conquest-run.yml")
    assert str(info.value).endswith("conquest-run.yml:6:1: unknown key 'archve' in the "
                                    "project file (did you mean 'archive'?)")
    assert main(["--validate", str(repo / "jobs" / "sub" / "send.yml")]) == 2
    assert main(["--validate", str(repo / "conquest-run.yml")]) == 2
    err = capsys.readouterr().err
    assert err.count("conquest-run.yml:6:1: unknown key 'archve'") == 2
    (repo / "conquest-run.yml").write_text(PROJECT.replace("11112", "port"))
    assert main(["--validate", str(repo / "conquest-run.yml")]) == 2
    assert "conquest-run.yml:4:32: nodes.tps.port" in capsys.readouterr().err


def test_plan_header_says_where_paths_are_from(tmp_path: Path, capsys, monkeypatch):
    shutil.copytree(SAMPLE_DATA, tmp_path / "archive" / "data")
    (tmp_path / "conquest-run.yml").write_text("version: 1\narchive: {data: archive/data, "
                                               "database: archive/conquest.db}\n")
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "dump.yml").write_text(
        "version: 1\nselect: {modality: RTPLAN}\naction: {dump: {file: plans.csv}}\n")
    monkeypatch.chdir(tmp_path / "jobs")          # from a subfolder: same archive
    assert main(["--plan-out", "p.json", "dump.yml"]) == 0
    out = capsys.readouterr().out
    assert f"project file {tmp_path}/conquest-run.yml: relative paths are from {tmp_path}" \
        in out
    assert f"archive: data directory {tmp_path}/archive/data, database {tmp_path}/archive/" \
        in out
    plan = json.loads(Path("p.json").read_text())
    assert plan["data_dir"] == str(tmp_path / "archive" / "data")


def test_project_schema_is_shipped_and_valid():
    import jsonschema
    schema = json.loads((REPO / "schemas" / "project.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert "log_file" in schema["properties"]
    from conquest_run.project import project_schema
    assert project_schema() == schema
