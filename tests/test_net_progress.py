"""A send shows a progress bar on a terminal, like the local actions, and nothing otherwise."""

from __future__ import annotations

import pytest
from _net_support import make_archive, send_step

from conquest_run.actions import ActionContext
from conquest_run.actions.send import run


@pytest.mark.parametrize("on_terminal", [True, False])
def test_send_progress_bar_only_when_asked(tmp_path, capsys, monkeypatch, on_terminal):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")     # rich renders as on a terminal
    monkeypatch.setenv("COLUMNS", "120")
    archive = make_archive(tmp_path / "archive", patients=1, ct_slices=3)
    plan, step = send_step(archive, {"host": "127.0.0.1", "port": 11112, "called_ae": "PACS"})
    ctx = ActionContext(archive=archive, plan=plan, dry_run=True, progress=on_terminal)
    report = run(step, ctx)
    assert report.error is None and len(report.outcomes) == step.instance_count
    err = capsys.readouterr().err
    assert ("send PACS@127.0.0.1:11112" in err) is on_terminal
    assert (f"{step.instance_count}/{step.instance_count}" in err) is on_terminal
