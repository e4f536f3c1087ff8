"""Plans that say what will really happen, and hints for the usual mistakes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from conquest_run.cli import main

COPY = """\
version: 1
steps:
  - select: {modality: RTPLAN}
    action: {copy: {destination: out, layout: "{PatientID}/{SOPInstanc}.dcm"}}
  - select: {modality: XX}
    action: {copy: {destination: out2}}
"""


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_double_quoted_string_in_sql_gets_a_hint(tmp_path: Path, capsys):
    job = tmp_path / "j.yml"
    job.write_text('version: 1\nselect:\n  query: select SeriesInst from DICOMSeries where '
                   'SeriesDate > "20240101"\naction: {rebuild: {}}\n')
    code, out, err = _run(capsys, "--validate", str(job))
    assert code == 2
    assert f"{job}:3:64: unknown column 20240101 (in SQL, strings take single quotes: " \
           "'20240101'" in err


def test_layout_typo_is_located_with_did_you_mean(tmp_path: Path, capsys):
    job = tmp_path / "j.yml"
    job.write_text('version: 1\nselect: {modality: CT}\naction:\n  copy:\n'
                   '    destination: out\n    layout: "{PatientID}/{Modalty}/{SOPInstanc}.dcm"\n')
    code, out, err = _run(capsys, "--validate", str(job))
    assert code == 2
    assert (f"{job}:6:27: action.copy.layout: layout field {{Modalty}} is not a column of the "
            "index (did you mean Modality?)") in err


def test_plan_counts_new_identical_different_and_says_nothing_selected(scratch: Path, capsys):
    (scratch / "cp.yml").write_text(COPY)
    code, out, err = _run(capsys, "--dry-run", "cp.yml")
    assert code == 0, err
    assert "4 new, 0 identical (skipped), 0 different" in out
    assert "step 2 selected nothing" in out
    code, out, err = _run(capsys, "cp.yml")
    assert code == 0, err
    manifest = json.loads((scratch / "out" / "manifest.json").read_text())
    with sqlite3.connect("conquest.db") as conn:
        run_ids = [r[0] for r in conn.execute("select RunId from ConquestRunRuns")]
    assert manifest["run_id"] in run_ids
    changed = sorted((scratch / "out").rglob("*.dcm"))[0]
    changed.write_bytes(changed.read_bytes() + b"x")
    code, out, err = _run(capsys, "--dry-run", "cp.yml")
    assert "0 new, 3 identical (skipped), 1 different: will fail (overwrite: never)" in out
