"""--apply re-checks every planned file against the plan: size, mtime and, where the index holds
it, SHA-256; any difference refuses the apply, naming the file, and nothing is done."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from _jobs_support import cli, sandbox

JOB = ("version: 1\nname: del-plans\narchive: {data: examples/sample/data, database: c.db}\n"
       "select: {modality: RTPLAN, patient: RT001}\naction: {delete: {files: true}}\n")


def _planned(root):
    (root / "jobs" / "del.yml").write_text(JOB)
    done = cli("--plan-out", "p.json", "jobs/del.yml", cwd=root)
    assert done.returncode == 0, done.stderr
    plan = json.loads((root / "p.json").read_text())
    [inst] = [i for s in plan["steps"][0]["series"] for i in s["instances"]][:1]
    assert inst["mtime"] and inst["size"]
    return root / "examples" / "sample" / "data" / inst["path"], inst["path"]


def _refused(root, rel: str, why: str):
    done = cli("--yes", "--apply", "p.json", cwd=root)
    assert done.returncode != 0
    assert rel in done.stderr and why in done.stderr, done.stderr
    assert "Nothing was done" in done.stderr
    conn = sqlite3.connect(root / "c.db")
    assert not conn.execute("select 1 from sqlite_master where name = 'ConquestRunRuns'"
                            ).fetchone()          # no run was even started
    conn.close()


def test_a_file_grown_by_one_byte_refuses_the_apply(tmp_path):
    root = sandbox(tmp_path)
    path, rel = _planned(root)
    with open(path, "ab") as f:
        f.write(b"\0")
    _refused(root, rel, "bytes, the plan says")
    assert path.exists()


def test_a_touched_file_refuses_the_apply(tmp_path):
    root = sandbox(tmp_path)
    path, rel = _planned(root)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    _refused(root, rel, "was modified since the plan")


def test_same_size_and_mtime_but_other_bytes_refuse_the_apply(tmp_path):
    root = sandbox(tmp_path)
    path, rel = _planned(root)
    conn = sqlite3.connect(root / "c.db")
    held = conn.execute("select count(*) from RTExtras where hash is not null").fetchone()[0]
    conn.close()
    if not held:
        pytest.skip("this index holds no SHA-256")
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    _refused(root, rel, "does not have the SHA-256 the index holds")


def test_an_unchanged_plan_applies(tmp_path):
    root = sandbox(tmp_path)
    path, _ = _planned(root)
    done = cli("--yes", "--apply", "p.json", cwd=root)
    assert done.returncode == 0, done.stderr
    assert not path.exists()
