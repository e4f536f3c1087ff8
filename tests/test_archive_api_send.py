"""Archive.send, as the README shows it: the send action's path, audited and resumable."""

from __future__ import annotations

import pytest
from _net_support import make_archive, received_sops, storescp

from conquest_run.report import DONE, SKIPPED

pytestmark = pytest.mark.timeout(60)


def test_archive_send_delivers_then_skips_what_was_confirmed(tmp_path):
    a = make_archive(tmp_path / "archive", patients=1, ct_slices=2)
    uids = a.query("select SeriesInst from DICOMSeries where Modality = ?", ("RTPLAN",),
                   column="SeriesInst")
    sops = set(a.query("select SOPInstanc from DICOMImages where SeriesInst = ?", (uids[0],),
                       column=0))
    rx = tmp_path / "rx"
    with storescp(rx) as (_, port):
        first = a.send(uids, "127.0.0.1", port, "STORESCP", retries=0)
        again = a.send(uids, "127.0.0.1", port, "STORESCP", retries=0)
    assert {o.sop_uid for o in first.outcomes if o.status == DONE} == sops
    assert {o.sop_uid for o in again.outcomes if o.status == SKIPPED} == sops
    assert set(received_sops(rx)) == sops


def test_archive_send_of_no_series_sends_nothing(tmp_path):
    a = make_archive(tmp_path / "archive", patients=1, ct_slices=2)
    rx = tmp_path / "rx"
    with storescp(rx) as (_, port):
        report = a.send([], "127.0.0.1", port, "STORESCP", retries=0)
    assert report.outcomes == [] and report.error is None
    assert not received_sops(rx)
