"""history: filters across runs (--patient, --series, --sop, --job, --action, --status, --since,
--failed, --state), --json full records, and 'history export' CSV."""

from __future__ import annotations

import csv
import io
import json
import sqlite3

import pytest

from _jobs_support import cli, sandbox

ARCHIVE = "archive: {data: examples/sample/data, database: c.db}\n"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = sandbox(tmp_path_factory.mktemp("history"))
    (root / "jobs" / "copy.yml").write_text(
        "version: 1\nname: copy-plans\n" + ARCHIVE +
        "select: {modality: RTPLAN}\naction: {copy: {destination: out}}\n")
    (root / "jobs" / "del.yml").write_text(
        "version: 1\nname: del-ct\n" + ARCHIVE +
        "select: {patient: RT001, modality: CT}\naction: {delete: {files: false}}\n")
    for args in (("jobs/copy.yml",), ("--yes", "jobs/del.yml")):
        done = cli(*args, cwd=root)
        assert done.returncode == 0, done.stderr
    return root


def _history(root, *args):
    done = cli("history", "--database", "c.db", *args, cwd=root)
    assert done.returncode == 0, done.stderr
    return done


def _json(root, *args):
    return json.loads(_history(root, "--json", *args).stdout)


def test_runs_carry_their_context(root):
    runs = _json(root)
    assert [r["job_name"] for r in runs] == ["del-ct", "copy-plans"]
    for r in runs:
        assert r["state"] == "ok" and r["user"] and r["host"] and r["pid"] and r["version"]
    assert [r["job_name"] for r in _json(root, "--job", "copy-plans")] == ["copy-plans"]
    assert [r["job_name"] for r in _json(root, "--job", "jobs/del.yml")] == ["del-ct"]
    assert _json(root, "--since", "2999-01-01") == []
    assert len(_json(root, "--since", "2000-01-01", "--state", "ok")) == 2
    assert _json(root, "--state", "crashed") == []


def test_outcome_filters_across_runs(root):
    deleted = _json(root, "--action", "delete")
    assert deleted and {o["patient_id"] for o in deleted} == {"RT001"}
    assert all(o["detail"]["file_removed"] is False and o["detail"]["path"] for o in deleted)
    patient = _json(root, "--patient", "RT001")
    assert {o["action"] for o in patient} == {"copy", "delete"}
    one = deleted[0]
    assert [o["sop_uid"] for o in _json(root, "--sop", one["sop_uid"])] == [one["sop_uid"]]
    series = _json(root, "--series", one["series_uid"])
    assert series and {o["series_uid"] for o in series} == {one["series_uid"]}
    assert _json(root, "--failed") == []
    assert _json(root, "--status", "done", "--job", "del-ct") == deleted
    text = _history(root, "--patient", "RT001").stdout
    assert "RT001" in text and "delete" in text and "copy" in text


def test_export_csv(root):
    done = _history(root, "export", "--since", "2000-01-01")
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    conn = sqlite3.connect(root / "c.db")
    total = conn.execute("select count(*) from ConquestRunAudit").fetchone()[0]
    conn.close()
    assert len(rows) == total
    assert {"run_id", "patient_id", "sop_uid", "status", "detail", "run_user"} <= set(rows[0])
    assert _history(root, "export", "--since", "2999-01-01").stdout.count("\n") == 1
    _history(root, "export", "--action", "delete", "--out", "audit.csv")
    rows = list(csv.DictReader(open(root / "audit.csv", newline="", encoding="utf-8")))
    assert rows and {r["action"] for r in rows} == {"delete"}


def test_bad_since_is_a_plain_error(root):
    done = cli("history", "--database", "c.db", "--since", "yesterday", cwd=root)
    assert done.returncode == 2
    assert done.stderr.strip() == ("--since 'yesterday' is not an ISO date or time (for example "
                                   "2026-12-01 or 2026-12-01T14:30)")


def test_limit_keeps_the_newest_outcomes(root):
    every = _json(root, "--limit", "0", "--status", "done")
    newest = _json(root, "--limit", "3", "--status", "done")
    assert len(every) > 3 and newest == every[-3:]
