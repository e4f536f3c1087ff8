"""jobs/send_rtplans.yml through the real CLI: dry run, real run into storescp, re-run, no peer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conquest_run.cli import main

from _net_support import audit_rows, free_port, received_sops, storescp, tree_state

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "send_rtplans.yml"


@pytest.fixture
def sample(tmp_path) -> Path:
    src = REPO / "examples" / "sample" / "data"
    if not src.is_dir():
        pytest.skip("examples/sample/data is not there")
    shutil.copytree(src, tmp_path / "data")
    assert main(["rebuild", "--data", str(tmp_path / "data"),
                 "--database", str(tmp_path / "conquest.db")]) == 0
    return tmp_path


def _rtplans(data: Path) -> set[str]:
    import pydicom

    out = set()
    for path in data.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.Modality == "RTPLAN":
            out.add(str(ds.SOPInstanceUID))
    return out


def _job_on_port(tmp_path: Path, port: int) -> Path:
    text = JOB.read_text().replace("port: 11112", f"port: {port}")
    assert f"port: {port}" in text
    job = tmp_path / "send_rtplans.yml"
    job.write_text(text)
    return job


def _flags(sample: Path) -> list[str]:
    return ["--data", str(sample / "data"), "--database", str(sample / "conquest.db")]


def test_send_rtplans_dry_run_plans_every_rtplan_and_touches_nothing(sample, capsys):
    before = tree_state(sample)
    assert main(["--dry-run", "--json", str(JOB), *_flags(sample)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert tree_state(sample) == before
    text = json.dumps(out)
    expected = _rtplans(sample / "data")
    assert len(expected) >= 3
    for sop in expected:
        assert sop in text
    assert "STORESCP@127.0.0.1:11112" in text


def test_send_rtplans_real_run_then_rerun_sends_nothing_more(sample, tmp_path, capsys):
    rx = tmp_path / "rx"
    with storescp(rx) as (_, port):
        job = _job_on_port(tmp_path, port)
        assert main([str(job), *_flags(sample)]) == 0
        assert set(received_sops(rx)) == _rtplans(sample / "data")
        for f in rx.iterdir():
            f.unlink()
        assert main([str(job), *_flags(sample)]) == 0          # the journal: all skipped
        assert list(rx.iterdir()) == []
        capsys.readouterr()
        assert main(["--dry-run", "--echo", "--json", str(job), *_flags(sample)]) == 0
        dry = json.loads(capsys.readouterr().out)
        assert list(rx.iterdir()) == []                        # an echo stores nothing
    outcomes = [o for step in dry["report"]["steps"] for o in step["outcomes"]] \
        if "report" in dry else [o for step in dry["steps"] for o in step.get("outcomes", [])]
    assert {o["reason"] for o in outcomes} == {"already sent"}
    rows = audit_rows(sample / "conquest.db")
    assert sorted(r[2] for r in rows if r[1] == "skipped") == ["already sent"] * len(
        _rtplans(sample / "data"))


def test_send_rtplans_without_a_peer_exits_1_and_changes_nothing(sample, tmp_path, capsys):
    job = _job_on_port(tmp_path, free_port())
    before = tree_state(sample / "data")
    assert main([str(job), *_flags(sample)]) == 1
    err = capsys.readouterr()
    assert "127.0.0.1:" in err.out + err.err and "Traceback" not in err.err
    assert tree_state(sample / "data") == before
    assert [r for r in audit_rows(sample / "conquest.db") if r[1] == "done"] == []
