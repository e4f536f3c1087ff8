"""copy: byte-identical, atomic, reproducible exports with a manifest."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from _actions_support import (audit_rows, make_archive, make_step, planned_series, run_action,
                              tree_state, variant)

from conquest_run.actions.copy import check_layout, copy_series
from conquest_run.errors import ActionError, JobError
from conquest_run.schema import load_schema


@pytest.fixture
def archive(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return make_archive(tmp_path)


def _manifest_entries(path: Path) -> list[dict]:
    return json.loads(path.read_text())["instances"]


def test_copy_is_byte_identical_and_manifest_stable(archive, tmp_path):
    step = make_step(archive, "copy", {"destination": "exports/all"})
    first, run_id = run_action(archive, step)
    assert first.ok and first.totals() == {"done": 5, "skipped": 0, "failed": 0}
    manifest = tmp_path / "exports/all/manifest.json"
    assert first.summary["manifest"] == "exports/all/manifest.json"
    doc = json.loads(manifest.read_text())
    assert doc["job"] == "test-job" and doc["job_sha256"] == "ab" * 32 and doc["count"] == 5
    entries = doc["instances"]
    for series in step.series:
        for inst in series.instances:
            entry = next(e for e in entries if e["sop_uid"] == inst.sop_uid)
            copied = tmp_path / "exports/all" / entry["path"]
            source = archive.data_dir / inst.path
            assert copied.read_bytes() == source.read_bytes()
            assert entry["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
            assert entry["size"] == source.stat().st_size
            assert entry["path"] == (f"{series.patient_id}/{series.series_uid}/"
                                     f"{inst.sop_uid}.dcm")
    keys = [(e["patient_id"], e["series_uid"], e["sop_uid"]) for e in entries]
    assert keys == sorted(keys)
    # every copy is in the audit log of the run
    assert sorted(r[0] for r in audit_rows(archive, run_id)) == sorted(e["sop_uid"]
                                                                       for e in entries)
    files_before = tree_state(tmp_path / "exports/all")

    second, _ = run_action(archive, step)
    assert second.ok and second.totals() == {"done": 0, "skipped": 5, "failed": 0}
    assert _manifest_entries(manifest) == entries
    after = tree_state(tmp_path / "exports/all")
    assert {k: v for k, v in after.items() if not k.endswith("manifest.json")} == \
        {k: v for k, v in files_before.items() if not k.endswith("manifest.json")}

    # a fresh destination gets the same entries and the same bytes
    other = make_step(archive, "copy", {"destination": "exports/again"})
    run_action(archive, other)
    assert _manifest_entries(tmp_path / "exports/again/manifest.json") == entries


def test_overwrite_never_refuses_a_different_file(archive, tmp_path):
    rtplan = planned_series(archive, modality="RTPLAN")
    step = make_step(archive, "copy", {"destination": "out", "layout": "flat"})
    inst = rtplan[0].instances[0]
    clash = tmp_path / "out" / f"{inst.sop_uid}.dcm"
    clash.parent.mkdir()
    clash.write_bytes(b"someone else's file")
    report, run_id = run_action(archive, step)
    assert not report.ok
    failed = [o for o in report.outcomes if o.status == "failed"]
    assert [o.sop_uid for o in failed] == [inst.sop_uid]
    assert "a different file is already at" in failed[0].reason
    assert clash.read_bytes() == b"someone else's file"
    assert report.totals()["done"] == 4
    assert ("failed" in [r[1] for r in audit_rows(archive, run_id)])
    # the manifest lists only what is really at the destination
    listed = {e["sop_uid"] for e in _manifest_entries(tmp_path / "out/manifest.json")}
    assert inst.sop_uid not in listed and len(listed) == 4

    replace = make_step(archive, "copy", {"destination": "out", "layout": "flat",
                                          "overwrite": "if_different"})
    report, _ = run_action(archive, replace)
    assert report.ok and report.totals() == {"done": 1, "skipped": 4, "failed": 0}
    assert clash.read_bytes() == (archive.data_dir / inst.path).read_bytes()
    again = make_step(archive, "copy", {"destination": "out", "layout": "flat",
                                        "overwrite": "always"})
    report, _ = run_action(archive, again)
    assert report.totals() == {"done": 5, "skipped": 0, "failed": 0}


def test_missing_source_fails_that_instance_only(archive, tmp_path):
    step = make_step(archive, "copy", {"destination": "out", "manifest": "csv"})
    gone = step.series[0].instances[0]
    (archive.data_dir / gone.path).unlink()
    report, _ = run_action(archive, step)
    statuses = {o.sop_uid: (o.status, o.reason) for o in report.outcomes}
    assert statuses[gone.sop_uid][0] == "failed"
    assert "source file missing" in statuses[gone.sop_uid][1]
    assert report.totals()["done"] == 4
    with open(tmp_path / "out/manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and gone.sop_uid not in {r["sop_uid"] for r in rows}
    assert {r["job_sha256"] for r in rows} == {"ab" * 32}


def test_template_layout_uses_index_columns_made_safe(archive, tmp_path):
    step = make_step(archive, "copy", {
        "destination": "out", "layout": "{PatientNam}/{Modality}_{SeriesNumb}/{SOPInstanc}.dcm"})
    report, _ = run_action(archive, step)
    assert report.ok
    paths = sorted(o.detail["path"] for o in report.outcomes)
    assert "Last^First^mid^pre/RTPLAN_2/1.2.777.777.77.7.7777.7777.20030903150023.dcm" in paths
    for p in paths:
        assert (tmp_path / "out" / p).is_file()


def test_patient_id_cannot_escape_the_destination(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = variant("CT_small.dcm", tmp_path / "src/evil.dcm", PatientID="../../escaped",
                   SOPInstanceUID="1.2.826.0.1.9.9.1", SeriesInstanceUID="1.2.826.0.1.9.9",
                   StudyInstanceUID="1.2.826.0.1.9")
    archive = make_archive(tmp_path / "arch", extra={"evil/evil.dcm": evil})
    series = [s for s in planned_series(archive) if s.patient_id == "../../escaped"]
    for layout in ("patient", "{PatientID}/{StudyInsta}/{SOPInstanc}.dcm"):
        step = make_step(archive, "copy", {"destination": "out", "layout": layout},
                         series=series)
        report, _ = run_action(archive, step)
        assert report.ok, report.outcomes
        written = (tmp_path / "out" / report.outcomes[0].detail["path"]).resolve()
        assert written.is_relative_to((tmp_path / "out").resolve())
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("layout, message", [
    ("{PatientID}/{NoSuchCol}.dcm", "{NoSuchCol} is not a column of the index"),
    ("{PatientID}/../{SOPInstanc}.dcm", "'..'"),
    ("/abs/{SOPInstanc}.dcm", "relative path"),
    ("{SOPInstanc.__class__}", "plain column name"),
    ("fixed.dcm", "names no field"),
])
def test_bad_templates_are_refused(layout, message):
    with pytest.raises(JobError) as err:
        check_layout(layout, load_schema())
    assert message in str(err.value)


def test_bad_template_fails_the_step_without_writing(archive, tmp_path):
    step = make_step(archive, "copy", {"destination": "out", "layout": "{Nope}.dcm"})
    report, _ = run_action(archive, step)
    assert report.error and "{Nope} is not a column" in report.error
    assert not (tmp_path / "out").exists()


def test_destination_inside_the_data_directory_is_refused(archive):
    step = make_step(archive, "copy", {"destination": "data/copies"})
    report, _ = run_action(archive, step)
    assert report.error and "inside the archive's data directory" in report.error


def test_dry_run_writes_nothing_and_reports_the_same(archive, tmp_path):
    (tmp_path / "out").mkdir()
    clash = tmp_path / "out/manifest.json"
    clash.write_text("old manifest")
    step = make_step(archive, "copy", {"destination": "out", "layout": "series"})
    before = tree_state(tmp_path)
    dry, _ = run_action(archive, step, dry_run=True)
    assert tree_state(tmp_path) == before
    assert dry.dry_run and dry.summary["manifest"] == "out/manifest.json"
    real, _ = run_action(archive, step)
    assert [(o.sop_uid, o.status, o.detail) for o in dry.outcomes] == \
        [(o.sop_uid, o.status, o.detail) for o in real.outcomes]


def test_python_api_copy_series(archive, tmp_path):
    uids = [s.series_uid for s in planned_series(archive, modality="RTPLAN")]
    report = copy_series(archive, uids, tmp_path / "api", layout="series")
    assert report.ok and report.totals()["done"] == 1
    entry = _manifest_entries(tmp_path / "api/manifest.json")[0]
    assert entry["path"].startswith(uids[0] + "/")
    with pytest.raises(ActionError):
        copy_series(archive, uids, tmp_path / "api2", layout="{Bad}.dcm")
    assert not (tmp_path / "api2").exists()
