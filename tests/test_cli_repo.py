"""A CLI that answers like git: unknown commands, help, init, list, show, completion."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conquest_run.cli import SUBCOMMANDS, main
from conquest_run.cli.helptext import SUMMARY

from _jobs_support import SAMPLE_DATA


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_unknown_command_suggests(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, "rebuld")
    assert code == 2
    assert err.startswith("conquest-run: unknown command 'rebuld' (did you mean rebuild?)")
    code, out, err = _run(capsys, "help", "hisotry")
    assert code == 2 and "(did you mean history?)" in err
    # a job file is an existing path or ends in .yml / .yaml
    code, out, err = _run(capsys, "missing.yml")
    assert code == 2 and "missing.yml: job file not found" in err
    (tmp_path / "job").write_text("version: 1\naction: {rebuild: {}}\n")
    assert main(["--validate", "job"]) == 0


def test_help_and_every_command_help(capsys):
    code, out, err = _run(capsys, "help")
    assert code == 0 and "commands:" in out and "rebuild" in out and "exit codes:" in out
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "exit codes: 0 all done, 1 some work failed, 2 invalid" in out, name
        if name in SUMMARY:       # the commands of this repository (a new one: add it there)
            assert "examples:\n  conquest-run " in out, name
        code, help_out, _ = _run(capsys, "help", name)
        assert code == 0 and help_out == out


@pytest.fixture
def repo(tmp_path: Path, capsys, monkeypatch) -> Path:
    assert main(["init", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path / "r")
    return tmp_path / "r"


def test_init_writes_a_valid_repository(repo: Path, capsys):
    for rel in ("conquest-run.yml", ".pre-commit-config.yaml", ".gitignore",
                ".github/workflows/validate.yml", "schemas/job.schema.json",
                "schemas/project.schema.json"):
        assert (repo / rel).is_file(), rel
    jobs = sorted(p.name for p in (repo / "jobs").glob("*.yml"))
    actions = set()
    for name in jobs:
        actions |= {k for k in __import__("yaml").safe_load((repo / "jobs" / name)
                                                             .read_text())["action"]}
    assert actions >= {"copy", "dump", "delete", "rebuild", "send"}
    code, out, err = _run(capsys, "--validate", "conquest-run.yml",
                          *[f"jobs/{n}" for n in jobs])
    assert code == 0, err
    assert out.count("valid") == len(jobs) + 1
    assert "conquest.db" in (repo / ".gitignore").read_text()
    assert "conquest-run-validate" in (repo / ".pre-commit-config.yaml").read_text()
    assert "--validate" in (repo / ".github/workflows/validate.yml").read_text()
    code, out, err = _run(capsys, "init", str(repo))
    assert code == 2 and "refusing to overwrite conquest-run.yml" in err


def test_list_and_show(repo: Path, capsys):
    (repo / "jobs" / "broken.yml").write_text("version: 1\nselect: {modality: CT}\n")
    code, out, err = _run(capsys, "list", "--json")
    assert code == 2          # one job is invalid: said, the others listed
    doc = json.loads(out)
    by_name = {j.get("name", j["path"]): j for j in doc["jobs"]}
    assert by_name["delete-patient-ct"]["destructive"] is True
    assert by_name["export-patient"]["actions"] == ["copy"]
    assert by_name["export-patient"]["vars"]["patient"]["required"] is True
    assert by_name["jobs/broken.yml"]["valid"] is False
    (repo / "jobs" / "broken.yml").unlink()
    code, out, err = _run(capsys, "list")
    assert code == 0 and "delete-patient-ct" in out and "yes" in out
    code, out, err = _run(capsys, "show", "export-patient")
    assert code == 0, err
    assert "job export-patient (jobs/export_patient.yml)" in out
    assert "from the project file conquest-run.yml" in out
    assert "patient (string, required, pattern [A-Za-z0-9._^-]+): the PatientID" in out
    assert "selects PatientID is ${patient}" in out
    assert "and Modality is RTSTRUCT or RTPLAN or RTDOSE" in out
    code, out, err = _run(capsys, "show", "nosuch")
    assert code == 2 and "no such job file" in err


def test_init_to_a_parameterised_export(repo: Path, capsys):
    shutil.copytree(SAMPLE_DATA, repo / "data")
    code, out, err = _run(capsys, "--var", "patient=RT001", "jobs/export_patient.yml")
    assert code == 0, err
    assert "variables: patient=RT001" in out
    assert (repo / "exports" / "RT001" / "manifest.json").is_file()


def test_completion_scripts(repo: Path, capsys):
    code, bash_script, _ = _run(capsys, "completion", "bash")
    assert code == 0
    code, zsh_script, _ = _run(capsys, "completion", "zsh")
    assert code == 0 and "#compdef conquest-run" in zsh_script
    assert "_conquest_run_var_names" in zsh_script and "*.(yml|yaml)" in zsh_script
    (repo / "c.bash").write_text(bash_script)
    probe = """source ./c.bash
ask() { COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); _shtab_conquest_run;
        echo "${COMPREPLY[*]}"; }
ask conquest-run reb
ask conquest-run rebuild --only
ask conquest-run jobs/exp
"""
    env_path = str(Path(shutil.which("conquest-run") or "").parent)
    res = subprocess.run(["bash", "-c", probe], cwd=repo, capture_output=True, text=True,
                         timeout=20, env={"PATH": f"{env_path}:/usr/bin:/bin"})
    assert res.stdout.splitlines()[:3] == ["rebuild", "--only-missing",
                                           "jobs/export_patient.yml"], res.stderr
    res = subprocess.run(["bash", "-c", probe.split("ask conquest-run reb")[0]
                          + "ask conquest-run --var pa\n"], cwd=repo, capture_output=True,
                         text=True, timeout=20, env={"PATH": f"{env_path}:/usr/bin:/bin"})
    assert res.stdout.strip() == "patient=", res.stderr
