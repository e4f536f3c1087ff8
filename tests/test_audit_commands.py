"""rebuild and store leave a run record (state, user, host) with their outcomes."""

from __future__ import annotations

import json

from _jobs_support import cli
from _net_support import make_archive


def test_store_and_rebuild_are_recorded(tmp_path):
    source = make_archive(tmp_path / "src", patients=1, ct_slices=2)
    archive = tmp_path / "arch"
    (archive / "data").mkdir(parents=True)
    done = cli("store", "--data", "data", "--database", "c.db", str(source.data_dir),
               cwd=archive)
    assert done.returncode == 0, done.stderr
    done = cli("rebuild", "--data", "data", "--database", "c.db", "--only-missing", cwd=archive)
    assert done.returncode == 0, done.stderr
    history = cli("history", "--database", "c.db", "--json", cwd=archive)
    runs = json.loads(history.stdout)
    assert [r["job_name"] for r in runs] == ["rebuild", "store"]
    assert all(r["state"] == "ok" and r["user"] and r["host"] for r in runs)
    assert runs[0]["job_path"] == "conquest-run rebuild --mode missing"
    stored = json.loads(cli("history", "--database", "c.db", "--json", "--patient", "NET000",
                            cwd=archive).stdout)
    assert len(stored) == runs[1]["done"] > 0
    assert all(o["action"] == "store" and o["detail"]["path"].startswith("NET000")
               for o in stored)


def test_a_failed_rebuild_leaves_no_database_and_a_failed_one_is_recorded(tmp_path):
    (tmp_path / "data").write_text("not a folder")
    done = cli("rebuild", "--data", "data", "--database", "c.db", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert not (tmp_path / "c.db").exists()       # no database made just to log a refusal
    (tmp_path / "data").unlink()
    (tmp_path / "data").mkdir()
    assert cli("rebuild", "--data", "data", "--database", "c.db", cwd=tmp_path).returncode == 0
    (tmp_path / "data").rmdir()
    (tmp_path / "data").write_text("not a folder")
    assert cli("rebuild", "--data", "data", "--database", "c.db", cwd=tmp_path).returncode == 2
    runs = json.loads(cli("history", "--database", "c.db", "--json", cwd=tmp_path).stdout)
    assert [r["state"] for r in runs] == ["failed", "ok"]
    assert "not a folder" in runs[0]["error"]
