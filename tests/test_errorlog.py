"""``--log-file PATH``: warnings and errors of every command in a size-rotated file, one line
per event with the run id; off by default."""

from __future__ import annotations

import re
import sqlite3
import sys
import textwrap

from conquest_run import synthetic
from conquest_run.archive import Archive
from conquest_run.cli import main
from conquest_run.errorlog import log_file_of, logging_to, take_log_file

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} (WARNING|ERROR) run=(\S+) pid=\d+ "
                  r"conquest_run\.\S+: .+$")


def _lines(path):
    lines = path.read_text().splitlines()
    assert all(LINE.match(line) for line in lines), lines
    return lines


def test_take_log_file_and_the_project_hook():
    assert take_log_file(["x.yml", "--log-file", "a.log", "--dry-run"]) == (
        ["x.yml", "--dry-run"], "a.log")
    assert take_log_file(["--log-file=b.log", "summary"]) == (["summary"], "b.log")
    assert take_log_file(["--log-file"]) == (["--log-file"], None)
    assert log_file_of(None, {"log_file": "p.log"}) == "p.log"
    assert log_file_of("c.log", {"log_file": "p.log"}) == "c.log"
    assert log_file_of(None, None) is None


def test_errors_of_a_command_go_to_the_log_one_line_each(tmp_path, capsys):
    job = tmp_path / "bad.yml"
    job.write_text("version: 1\nselect: {modality: CT, colour: red}\naction:\n  dump: {}\n")
    log = tmp_path / "errors.log"
    assert main(["--validate", str(job), "--log-file", str(log)]) == 2
    err = capsys.readouterr().err
    lines = _lines(log)
    assert len(lines) == len(err.strip().splitlines()) == 2
    assert all(" ERROR run=- " in line for line in lines)
    assert f"{job}:2:24: " in lines[0] or f"{job}:2:24: " in lines[1]


def test_the_project_files_log_file_is_used_without_the_option(tmp_path, capsys, monkeypatch):
    """``log_file:`` in conquest-run.yml (relative to the project folder) logs a job's errors
    when the job lies in that repository, wherever the command is run from; --log-file wins."""
    repo = tmp_path / "repo"
    (repo / "jobs").mkdir(parents=True)
    (repo / "conquest-run.yml").write_text("version: 1\nlog_file: logs/conquest-run.log\n")
    (repo / "logs").mkdir()
    job = repo / "jobs" / "bad.yml"
    job.write_text("version: 1\nselect: {modality: CT, colour: red}\naction:\n  dump: {}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["--validate", str(job)]) == 2
    lines = _lines(repo / "logs" / "conquest-run.log")
    assert lines and all(" ERROR run=- " in line for line in lines)
    other = tmp_path / "other.log"
    assert main(["--validate", str(job), "--log-file", str(other)]) == 2
    assert len(_lines(repo / "logs" / "conquest-run.log")) == len(lines)     # not written again
    assert _lines(other)


def test_off_by_default(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--validate", str(tmp_path / "missing.yml")]) == 2
    assert list(tmp_path.iterdir()) == []


def test_a_job_run_logs_its_failures_with_the_run_id(tmp_path, capsys):
    synthetic.write_linked_rt_set(tmp_path / "data", seed=6, patient_id="LOG1", ct_slices=2)
    arc = Archive(tmp_path / "data", tmp_path / "conquest.db")
    arc.rebuild()
    next((tmp_path / "data").rglob("*.dcm")).unlink()        # its copy fails
    job = tmp_path / "copy.yml"
    job.write_text(textwrap.dedent(f"""\
        version: 1
        archive: {{data: {arc.data_dir}, database: {arc.database}}}
        select: {{patient: LOG1}}
        action:
          copy: {{destination: {tmp_path / "out"}}}
        """))
    log = tmp_path / "logs" / "run.log"
    log.parent.mkdir()
    assert main(["--log-file", str(log), str(job)]) == 1
    capsys.readouterr()
    with sqlite3.connect(arc.database) as conn:
        run_id = conn.execute("SELECT RunId FROM ConquestRunRuns WHERE JobPath LIKE '%copy.yml'"
                              ).fetchone()[0]
    lines = _lines(log)
    failed = [line for line in lines if "source file missing" in line]
    assert len(failed) == 1 and f" ERROR run={run_id} " in failed[0]
    assert "step 1 (copy, copy -> " in failed[0]
    # a recorded command (store of a bad file) carries its own run id
    bad = tmp_path / "junk.dcm"
    bad.write_bytes(b"not dicom at all")
    assert main(["store", str(bad), "--data", str(arc.data_dir), "--database",
                 str(arc.database), "--log-file", str(log)]) != 0
    capsys.readouterr()
    with sqlite3.connect(arc.database) as conn:
        store_id = conn.execute("SELECT RunId FROM ConquestRunRuns WHERE JobPath LIKE "
                                "'conquest-run store%'").fetchone()[0]
    assert any(f"run={store_id} " in line and "junk.dcm" in line for line in _lines(log))


def test_the_log_rotates_by_size(tmp_path):
    log = tmp_path / "small.log"
    with logging_to(log, max_bytes=400, backups=2):
        for n in range(40):
            print(f"conquest-run: error number {n}", file=sys.stderr)
        print("note: a warning", file=sys.stderr)
        sys.stderr.write("\x1b[?25l\rcopy to out \u2501\u2501 50%\n\x1b[2K\x1b[1A\n")
        sys.stderr.write("\x1b[31mconquest-run: in colour\x1b[0m")      # no newline yet
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["small.log", "small.log.1", "small.log.2"]
    assert all(p.stat().st_size <= 400 for p in tmp_path.iterdir())
    last = _lines(tmp_path / "small.log.1") + _lines(log)
    assert last[-1].endswith(" conquest_run.stderr: conquest-run: in colour")
    assert last[-2].split(" ", 2)[1] == "WARNING" and last[-3].endswith("error number 39")


def test_an_unusable_log_file_is_a_plain_error(tmp_path, capsys):
    assert main(["--log-file", str(tmp_path), "summary"]) == 2
    assert "is a folder; give a file name" in capsys.readouterr().err
    assert main(["--log-file", str(tmp_path / "no" / "x.log"), "summary"]) == 2
    assert "does not exist" in capsys.readouterr().err
