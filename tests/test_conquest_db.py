"""A conquest.db a Conquest server (dgate) made: Conquest's tables only, no RTExtras.

Built from the DDL and rows dgate produced for the two sample CT files
(``tests/data/conquest_made``, copied from ``/work/shared/reference/conquest`` when present, which
is used as well).  ``summary`` works on it with a one-line note naming the command;
``rebuild --only-missing`` fills RTExtras for the indexed files without rewriting Conquest's rows.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from conquest_run.cli import main

FIXTURE = Path(__file__).parent / "data" / "conquest_made"
REFERENCE = Path("/work/shared/reference/conquest")
CONQUEST_TABLES = ("DICOMPatients", "DICOMStudies", "DICOMSeries", "DICOMImages")


def _source(which: str) -> Path:
    if which == "fixture":
        return FIXTURE
    if not (REFERENCE / "sample_rows.sqlite.sql").is_file():
        pytest.skip("/work/shared/reference/conquest is not on this machine")
    return REFERENCE


@pytest.fixture(params=["fixture", "reference"])
def conquest_made(request, tmp_path, monkeypatch):
    """tmp_path/conquest.db from dgate's dump, tmp_path/data with its files."""
    src = _source(request.param)
    shutil.copytree(src / "data", tmp_path / "data")
    conn = sqlite3.connect(tmp_path / "conquest.db")
    conn.executescript((src / "sample_rows.sqlite.sql").read_text())
    conn.close()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _conquest_rows(db: Path) -> dict[str, list]:
    conn = sqlite3.connect(db)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                for t in CONQUEST_TABLES}
    finally:
        conn.close()


def _summary(capsys) -> tuple[list[list[str]], str]:
    assert main(["summary"]) == 0
    captured = capsys.readouterr()
    return [line.split("\t") for line in captured.out.splitlines()[1:]], captured.err


def test_summary_works_without_rtextras_and_names_the_command(conquest_made, capsys):
    rows, err = _summary(capsys)
    assert len(rows) == 1 and rows[0][0] == "0009703828" and rows[0][6] == "2"
    assert rows[0][7] == ""              # bytes unknown, not a misleading 0
    assert err.count("\n") == 1 and "2 indexed instances have no conquest-run facts" in err
    assert "'conquest-run rebuild --only-missing'" in err


@pytest.mark.parametrize("rtextras", ["none", "empty"])
def test_only_missing_fills_rtextras_and_keeps_conquests_rows(conquest_made, capsys, rtextras):
    db = conquest_made / "conquest.db"
    if rtextras == "empty":    # what an older conquest-run left: the table made, no rows
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE RTExtras (SOPInstanc varchar(64) PRIMARY KEY not null, "
                     "Modality varchar(16), hash varchar(64), FileSize int)")
        conn.close()
    before = _conquest_rows(db)
    assert main(["rebuild", "--only-missing"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 files indexed, 0 unchanged")
    assert "2 already in Conquest's tables: RTExtras filled" in out
    assert _conquest_rows(db) == before      # AccessTime and all: not rewritten
    files = sorted((conquest_made / "data" / "0009703828").iterdir())
    conn = sqlite3.connect(db)
    extras = conn.execute("SELECT i.ObjectFile, e.FileSize, e.hash, e.Modality, e.Flags "
                          "FROM DICOMImages i JOIN RTExtras e ON e.SOPInstanc = i.SOPInstanc "
                          "ORDER BY 1").fetchall()
    conn.close()
    assert [(e[0], e[1]) for e in extras] == [
        (f"0009703828/{f.name}", f.stat().st_size) for f in files]
    assert all(len(e[2]) == 64 and e[3] == "CT" and e[4] is None for e in extras)
    rows, err = _summary(capsys)
    assert rows[0][7] == str(sum(f.stat().st_size for f in files)) and err == ""
    assert main(["rebuild", "--only-missing"]) == 0    # now nothing is missing
    assert capsys.readouterr().out.startswith("0 files indexed, 2 unchanged")
    assert _conquest_rows(db) == before


def test_refresh_fills_facts_too_and_a_full_rebuild_reindexes(conquest_made, capsys):
    db = conquest_made / "conquest.db"
    before = _conquest_rows(db)
    assert main(["rebuild", "--refresh"]) == 0
    assert "2 already in Conquest's tables" in capsys.readouterr().out
    assert _conquest_rows(db) == before
    assert main(["rebuild"]) == 0            # asked: everything is indexed again
    after = _conquest_rows(db)
    assert len(after["DICOMImages"]) == 2
    # the same cells as dgate wrote them, apart from AccessTime (column 21 of DICOMImages)
    strip = [r[:21] + r[22:] for r in after["DICOMImages"]]
    assert strip == [r[:21] + r[22:] for r in before["DICOMImages"]]
