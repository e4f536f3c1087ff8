"""The audit record of ``conquest-run serve``: one run for the server's life, one row per
association with its calling AE, peer address and instance count, the run closed on SIGTERM."""

from __future__ import annotations

import json
import sqlite3

import pytest

from _net_support import stop, storescu
from _qr_support import audit_rows, find, make_qr_archive, serve

pytestmark = pytest.mark.timeout(90)


def test_serve_records_its_run_and_each_association(tmp_path):
    from conquest_run.synthetic import write_patient

    archive = make_qr_archive(tmp_path / "archive", patients=1)
    incoming = tmp_path / "incoming"
    write_patient(incoming, seed=5, patient_id="IN001", ct_slices=3)
    with serve(archive) as (proc, port, log):
        done = storescu(port, incoming, called_ae="CRUN", calling_ae="SCANNER")
        assert done.returncode == 0, done.stderr
        responses, _ = find(port, tmp_path / "rsp", "STUDY", "PatientID=IN001",
                            "StudyInstanceUID")
        assert len(responses) == 1                     # what was stored can be found at once
        stop(proc)
    assert proc.returncode == 0
    conn = sqlite3.connect(archive.database)
    (run_id, path, state, summary), = conn.execute(
        "SELECT RunId, JobPath, State, Summary FROM ConquestRunRuns WHERE JobName = 'serve'")
    conn.close()
    assert path == f"conquest-run serve CRUN@127.0.0.1:{port}" and state == "ok"
    assert json.loads(summary)["received"] == 6 and json.loads(summary)["associations"] == 2
    rows = audit_rows(archive.database, "associate")
    assert {r["RunId"] for r in rows} == {run_id}
    details = {json.loads(r["Detail"])["calling_ae"]: json.loads(r["Detail"]) for r in rows}
    assert details["SCANNER"]["instances"] == 6 and details["SCANNER"]["ended"] == "released"
    assert details["SCANNER"]["peer"].startswith("127.0.0.1:")
    assert details["QRSCU"]["instances"] == 0 and details["QRSCU"]["find_requests"] == 1
