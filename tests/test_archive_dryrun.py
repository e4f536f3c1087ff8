"""rebuild --dry-run and store --dry-run: what would happen, and nothing changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conquest_run.cli import main

from _jobs_support import tree_state


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_rebuild_dry_run(scratch: Path, capsys):
    files = sorted(p for p in (scratch / "data").rglob("*") if p.is_file())
    code, out, err = _run(capsys, "rebuild", "--dry-run")
    assert code == 0
    assert out.strip() == (f"dry run: the index does not exist yet; a rebuild would create it "
                           f"and index {len(files)} files (nothing was changed)")
    assert not (scratch / "conquest.db").exists()
    assert main(["rebuild"]) == 0
    capsys.readouterr()
    shutil.copy(files[0], scratch / "data" / "PAT003" / "extra.dcm")   # a new file
    files[1].unlink()                                                    # a vanished one
    before = tree_state(scratch)
    code, out, err = _run(capsys, "rebuild", "--dry-run", "--refresh", "--json")
    doc = json.loads(out)
    assert (doc["to_read"], doc["new"], doc["to_remove"]) == (1, 1, 1)
    assert doc["unchanged"] == len(files) - 1
    code, out, err = _run(capsys, "rebuild", "--dry-run", "--only-missing")
    assert "would index 1 of" in out and "(nothing was changed)" in out
    assert tree_state(scratch) == before


def test_store_dry_run(scratch: Path, capsys, tmp_path_factory):
    assert main(["rebuild"]) == 0
    capsys.readouterr()
    incoming = tmp_path_factory.mktemp("incoming")
    one = next(p for p in (scratch / "data" / "RT001").rglob("*.dcm"))
    shutil.copy(one, incoming / "again.dcm")
    (incoming / "junk.txt").write_text("not dicom")
    before = tree_state(scratch)
    code, out, err = _run(capsys, "store", "--dry-run", "--verbose", str(incoming))
    assert code == 1                                   # a bad file, as a real store says
    assert "junk.txt" in err
    assert f"again.dcm -> RT001/{one.name} (replaces)" in out
    assert "store would put 1 files into the archive (1 replacing" in out
    assert tree_state(scratch) == before


def test_rebuild_job_on_a_missing_database_indexes_once(scratch: Path, capsys, monkeypatch):
    from conquest_run.indexer import Indexer
    runs = []
    real = Indexer.run

    def counted(self, **kw):
        runs.append(kw.get("mode", "all"))
        return real(self, **kw)
    monkeypatch.setattr(Indexer, "run", counted)
    (scratch / "rb.yml").write_text("version: 1\naction: {rebuild: {}}\n")
    code, out, err = _run(capsys, "--dry-run", "rb.yml")
    assert code == 0, err
    assert "conquest.db does not exist: the job's rebuild creates it (in this dry run, a " \
           "temporary one)" in err
    assert not (scratch / "conquest.db").exists()
    code, out, err = _run(capsys, "rb.yml")
    assert code == 0, err
    assert "indexing data first" not in err
    assert runs == ["all"]         # the real run indexes once; the dry run not at all
    import sqlite3
    with sqlite3.connect(scratch / "conquest.db") as conn:
        assert conn.execute("select count(*) from DICOMImages").fetchone()[0] == 23


def test_dry_run_on_a_missing_database_says_what_a_real_run_would_do(scratch: Path, capsys):
    (scratch / "d.yml").write_text("version: 1\nselect: {modality: RTPLAN}\n"
                                   "action: {dump: {file: plans.csv}}\n")
    code, out, err = _run(capsys, "--dry-run", "d.yml")
    assert code == 0, err
    assert "the index conquest.db does not exist: a real run would index data into it first" \
        in err
    assert not (scratch / "conquest.db").exists() and not (scratch / "plans.csv").exists()
