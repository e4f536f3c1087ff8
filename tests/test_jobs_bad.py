"""Every bad job file under tests/jobs/bad/ fails with exactly the located message beside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from conquest_run.errors import JobError
from conquest_run.jobs import validate_job

from _jobs_support import BAD_JOBS, cli

BAD = sorted(BAD_JOBS.glob("*.yml"))


def test_there_are_enough_bad_jobs_each_with_its_expected_message():
    assert len(BAD) >= 25
    for job in BAD:
        assert job.with_suffix(".expected").is_file(), job.name


@pytest.mark.parametrize("job", BAD, ids=[p.stem for p in BAD])
def test_bad_job_is_refused_with_its_exact_location_and_message(job: Path, monkeypatch):
    monkeypatch.chdir(BAD_JOBS)          # messages name the file as the user wrote it
    expected = job.with_suffix(".expected").read_text(encoding="utf-8").rstrip("\n")
    with pytest.raises(JobError) as info:
        validate_job(job.name)
    assert str(info.value) == expected
    # every line is located: FILE:LINE:COL: message
    for line in expected.splitlines():
        name, row, col, message = line.split(":", 3)
        assert name == job.name and int(row) >= 1 and int(col) >= 1 and message.strip()


def test_several_schema_errors_are_all_reported_in_file_order():
    lines = (BAD_JOBS / "10_several_schema_errors.expected").read_text().splitlines()
    assert len(lines) == 5
    positions = [tuple(int(x) for x in line.split(":")[1:3]) for line in lines]
    assert positions == sorted(positions)


def test_validate_cli_prints_the_errors_on_stderr_and_exits_2():
    jobs = ["10_several_schema_errors.yml", "24_sql_unknown_column.yml", "29_delete_files_yes.yml"]
    proc = cli("--validate", *jobs, cwd=BAD_JOBS)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    expected = "".join((BAD_JOBS / j).with_suffix(".expected").read_text() for j in jobs)
    assert proc.stderr == expected
    assert proc.stdout == ""


def test_run_refuses_an_invalid_job_before_touching_anything(tmp_path):
    proc = cli(str(BAD_JOBS / "18_sql_insert.yml"), "--data", str(tmp_path / "data"),
               "--database", str(tmp_path / "x.db"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "only a read-only query (SELECT) is allowed, not INSERT" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
