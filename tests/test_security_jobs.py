"""Security hardening of job files, job SQL and `query` (issue 15): hostile input is refused
with a located message and a bounded cost, never a traceback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conquest_run.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def alias_bomb(levels: int = 7, fan: int = 9) -> str:
    lines = ["version: 1", "name: t", 'a0: &a0 ["x"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * fan) + "]")
    lines += ["select: {modality: RTPLAN}", "action: {copy: {destination: out}}"]
    return "\n".join(lines) + "\n"


# -- YAML -------------------------------------------------------------------------------------------
def test_a_yaml_alias_bomb_is_refused_located_within_a_second(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("bomb.yml").write_text(alias_bomb())
    started = time.monotonic()
    code, _, err = run_cli(capsys, "--validate", "bomb.yml")
    assert time.monotonic() - started < 1.0
    assert code == 2
    assert err.startswith("bomb.yml:") and "aliases" in err, err


def test_a_few_aliases_still_work(tmp_path):
    from conquest_run.source import parse_source
    src = parse_source("base: &b {x: 1, y: [1, 2, 3]}\none: *b\ntwo: *b\nthree: {<<: *b, x: 2}\n")
    assert src.data["two"] == {"x": 1, "y": [1, 2, 3]}
    assert src.data["three"] == {"x": 2, "y": [1, 2, 3]}


def test_a_control_character_in_a_job_file_is_a_located_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("esc.yml").write_text('version: 1\nname: "a\x1bb"\nselect: {modality: RTPLAN}\n'
                               "action: {copy: {destination: out}}\n")
    code, _, err = run_cli(capsys, "--validate", "esc.yml")
    assert code == 2
    assert err.startswith("esc.yml:2:9: ") and "U+001B" in err, err
