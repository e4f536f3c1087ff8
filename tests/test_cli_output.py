"""summary and history: readable on a terminal, TSV when piped, JSON errors under --json."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from conquest_run.cli import main


def _on_terminal(args: list[str], cwd: Path) -> str:
    """Run the CLI with stdout on a pseudo-terminal 140 columns wide; its text, uncoloured."""
    leader, follower = pty.openpty()
    env = dict(os.environ, COLUMNS="140", NO_COLOR="1", TERM="xterm")
    proc = subprocess.Popen([sys.executable, "-m", "conquest_run", *args], cwd=cwd, env=env,
                            stdout=follower, stderr=subprocess.PIPE)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(leader)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))


def test_summary_terminal_and_piped(scratch: Path, capsys):
    assert main(["rebuild"]) == 0
    capsys.readouterr()
    assert main(["summary"]) == 0                       # captured: not a terminal -> TSV
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split("\t")[:3] == ["PatientID", "Study", "Series"]
    assert all(len(line.split("\t")) == 9 for line in lines)
    full_uid = lines[1].split("\t")[2]
    assert len(full_uid) > 30 and lines[1].split("\t")[7].isdigit()
    text = _on_terminal(["summary"], scratch)
    assert "15 series of 3 patients, 23 instances, 66.9 kB in conquest.db" in text
    assert full_uid not in text                          # shortened in the middle...
    assert re.search(re.escape(full_uid[:8]) + "[0-9.]*\u2026[0-9.]*" + re.escape(full_uid[-8:]),
                     text)                               # ...on one line
    assert " kB " in text


def test_history_piped_is_tsv_and_json_errors(scratch: Path, capsys):
    (scratch / "rb.yml").write_text("version: 1\naction: {rebuild: {}}\n")
    assert main(["rb.yml"]) == 0
    capsys.readouterr()
    assert main(["history"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "run\tstarted\tjob\tuser\tresult\tdone\tskipped\tfailed"
    assert len(lines[1].split("\t")[0]) == 32 and "\tok\t" in lines[1]
    assert main(["history", "--run", "nosuch", "--json"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["error"]["message"] == "no run 'nosuch' in the audit log"
    assert main(["history", "--database", "missing.db", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["file"] == "missing.db"


def test_progress_bar_counts_failures(scratch: Path):
    job = scratch / "cp.yml"
    job.write_text("version: 1\nselect: {modality: CT}\naction: {copy: {destination: out}}\n")
    assert main(["cp.yml"]) == 0
    first = sorted((scratch / "out").rglob("*.dcm"))[0]
    first.write_bytes(b"different")                      # overwrite: never -> one failure
    leader, follower = pty.openpty()
    env = dict(os.environ, COLUMNS="160", TERM="xterm")
    proc = subprocess.Popen([sys.executable, "-m", "conquest_run", "cp.yml"], cwd=scratch,
                            env=env, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 1
    os.close(leader)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))
    assert "copy to out" in text and "1 failed" in text
