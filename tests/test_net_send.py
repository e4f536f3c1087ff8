"""The send action and net.py against real peers (dcmtk storescp, Orthanc) on 127.0.0.1."""

from __future__ import annotations

import socket
from pathlib import Path

import pydicom
import pytest

from conquest_run.errors import NetworkError
from conquest_run.net import (DicomTransport, PeerSettings, echo, group_associations,
                              read_send_item, tune_connection)
from conquest_run.report import DONE, FAILED, SKIPPED

from _net_support import (audit_rows, dataset_bytes, free_port, http_json, killing_journal,
                          make_archive, orthanc, received_sops, run_send, send_step, storescp,
                          tree_state)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def archive(tmp_path):
    return make_archive(tmp_path / "archive")


def _options(port, **extra):
    return {"host": "127.0.0.1", "port": port, "called_ae": "STORESCP", "retries": 0,
            "retry_delay": 0.05, "timeout": 10, **extra}


def test_send_to_storescp_delivers_the_plan_byte_for_byte(archive, tmp_path):
    rx = tmp_path / "rx"
    with storescp(rx) as (_, port):
        plan, step = send_step(archive, _options(port))
        report = run_send(archive, plan, step)
    planned = {i.sop_uid: i for s in step.series for i in s.instances}
    assert report.error is None
    assert report.totals() == {DONE: len(planned), SKIPPED: 0, FAILED: 0}
    got = received_sops(rx)
    assert set(got) == set(planned)
    for sop, path in got.items():                 # same transfer syntax: bytes unchanged
        assert dataset_bytes(path) == dataset_bytes(archive.data_dir / planned[sop].path)
    rows = audit_rows(archive.database)
    assert sorted(r[0] for r in rows if r[1] == DONE) == sorted(planned)
    assert report.summary["peer"] == f"STORESCP@127.0.0.1:{port}"


def test_rerun_skips_what_the_journal_confirmed_and_force_resends(archive, tmp_path):
    with storescp(tmp_path / "rx1") as (_, port):
        plan, step = send_step(archive, _options(port))
        first = run_send(archive, plan, step, run_id="r1")
        second = run_send(archive, plan, step, run_id="r2")
    assert first.totals()[DONE] == step.instance_count
    assert second.totals() == {DONE: 0, SKIPPED: step.instance_count, FAILED: 0}
    assert {o.reason for o in second.outcomes} == {"already sent"}
    rx2 = tmp_path / "rx2"
    with storescp(rx2, port) as _:
        forced = run_send(archive, plan, step, force=True, run_id="r3")
    assert forced.totals()[DONE] == step.instance_count
    assert len(received_sops(rx2)) == step.instance_count


def test_parallel_associations_keep_each_series_on_one_association(archive, tmp_path):
    rx = tmp_path / "rx"
    with storescp(rx) as (_, port):
        plan, step = send_step(archive, _options(port, associations=3))
        report = run_send(archive, plan, step)
    assert report.ok and report.summary["associations"] >= 2
    assert set(received_sops(rx)) == {i.sop_uid for s in step.series for i in s.instances}


def test_peer_not_listening_is_a_step_error_and_changes_nothing(archive):
    port = free_port()
    plan, step = send_step(archive, _options(port, verify=False))
    before = tree_state(archive.data_dir), archive.database.read_bytes()
    report = run_send(archive, plan, step)
    assert report.error is not None and f"127.0.0.1:{port}" in report.error
    assert not report.ok and report.outcomes == []
    assert audit_rows(archive.database) == []
    assert (tree_state(archive.data_dir), archive.database.read_bytes())[0] == before[0]


def test_echo_failure_names_the_peer(archive):
    port = free_port()
    plan, step = send_step(archive, _options(port, verify=True))
    report = run_send(archive, plan, step)
    assert report.error == f"C-ECHO to STORESCP@127.0.0.1:{port}: no DICOM peer listening " \
                           f"at 127.0.0.1:{port}"


def test_dry_run_walks_the_plan_without_traffic(archive):
    port = free_port()                                     # nothing listens: no traffic possible
    plan, step = send_step(archive, _options(port))
    before = tree_state(archive.data_dir), archive.database.read_bytes()
    report = run_send(archive, plan, step, dry_run=True)
    assert report.error is None and report.dry_run
    assert report.totals()[DONE] == step.instance_count
    assert {o.reason for o in report.outcomes} == {"would send"}
    assert (tree_state(archive.data_dir), archive.database.read_bytes()) == before
    echoed = run_send(archive, plan, step, dry_run=True, echo=True)   # --dry-run --echo
    assert echoed.error is not None and "C-ECHO" in echoed.error


def test_dry_run_echo_reaches_the_peer(archive, tmp_path):
    rx = tmp_path / "rx"
    with storescp(rx) as (_, port):
        plan, step = send_step(archive, _options(port))
        report = run_send(archive, plan, step, dry_run=True, echo=True)
    assert report.error is None and report.summary["echo_seconds"] >= 0
    assert list(rx.iterdir()) == []                       # the echo was the only traffic


def test_peer_killed_mid_send_then_rerun_sends_only_the_rest(archive, tmp_path):
    KillAfter = killing_journal(after=5)

    with storescp(tmp_path / "rx1") as (proc, port):
        plan, step = send_step(archive, _options(port, verify=False))
        KillAfter.peer = proc
        first = run_send(archive, plan, step, audit_class=KillAfter, run_id="r1")
    confirmed = {o.sop_uid for o in first.outcomes if o.status == DONE}
    unsent = [o for o in first.outcomes if o.status == FAILED]
    assert 5 <= len(confirmed) < step.instance_count
    assert unsent and all(o.reason.startswith("not sent") for o in unsent)
    rx2 = tmp_path / "rx2"
    with storescp(rx2, port):
        second = run_send(archive, plan, step, run_id="r2")
    everything = {i.sop_uid for s in step.series for i in s.instances}
    assert second.ok
    assert {o.sop_uid for o in second.outcomes if o.status == SKIPPED} == confirmed
    assert set(received_sops(rx2)) == everything - confirmed


def test_a_rejected_sop_class_fails_that_instance_only(archive, tmp_path):
    private = archive.data_dir / "NET000" / "private.dcm"
    plan, step = send_step(archive, {"host": "x", "port": 1})
    first = archive.data_dir / step.series[0].instances[0].path
    ds = pydicom.dcmread(first)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.10.1389.99.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.1389.99.2"
    ds.save_as(private, enforce_file_format=True)
    archive.rebuild()
    rx = tmp_path / "rx"
    with storescp(rx, promiscuous=False) as (_, port):
        plan, step = send_step(archive, _options(port))
        report = run_send(archive, plan, step)
    failed = [o for o in report.outcomes if o.status == FAILED]
    assert [o.sop_uid for o in failed] == ["1.2.826.0.1.3680043.10.1389.99.2"]
    assert "not accepted by the peer" in failed[0].reason
    assert report.totals()[DONE] == step.instance_count - 1
    assert len(received_sops(rx)) == step.instance_count - 1


def test_send_to_orthanc_lists_the_instances(archive, tmp_path):
    with orthanc(tmp_path / "orthanc") as (dicom_port, http_port):
        plan, step = send_step(archive, _options(dicom_port, called_ae="ORTHANC",
                                                 associations=2))
        report = run_send(archive, plan, step)
        assert report.ok, report.error
        ids = http_json(f"http://127.0.0.1:{http_port}/instances")
        sops = {http_json(f"http://127.0.0.1:{http_port}/instances/{i}")["MainDicomTags"]
                ["SOPInstanceUID"] for i in ids}
    assert sops == {i.sop_uid for s in step.series for i in s.instances}


def test_tune_connection_sets_tcp_nodelay_and_a_short_poll(tmp_path):
    from pynetdicom import AE, evt

    seen = []

    def check(event):
        before = event.assoc.dul._run_loop_delay
        tune_connection(event)
        sock = event.assoc.dul.socket.socket
        seen.append((sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), before,
                     event.assoc.dul._run_loop_delay))

    with storescp(tmp_path / "rx") as (_, port):
        ae = AE(ae_title="T")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", port, evt_handlers=[(evt.EVT_CONN_OPEN, check)])
        assert assoc.is_established
        assoc.release()
    assert len(seen) == 1
    nodelay, before, after = seen[0]
    assert nodelay != 0 and after < before


def test_echo_ok_and_rejected(tmp_path):
    with storescp(tmp_path / "rx") as (_, port):
        assert echo(PeerSettings("127.0.0.1", port, called_ae="STORESCP", timeout=5)) >= 0
    with pytest.raises(NetworkError, match="no DICOM peer listening"):
        echo(PeerSettings("127.0.0.1", port, timeout=5))


# -- no peer needed ------------------------------------------------------------------------

def _bare(src: Path, dst: Path) -> Path:
    """A Conquest .v2 style file: implicit VR little endian, no preamble, no file meta."""
    from pydicom.dataset import FileMetaDataset

    ds = pydicom.dcmread(src)
    ds.preamble = None
    ds.file_meta = FileMetaDataset()
    ds.save_as(dst, implicit_vr=True, little_endian=True)
    assert dst.read_bytes()[128:132] != b"DICM"
    return dst


def test_read_send_item_reads_file_meta_only_and_reports_bad_files(archive, tmp_path):
    plan, step = send_step(archive, {"host": "x", "port": 1})
    inst = step.series[0].instances[0]
    item = read_send_item(archive.data_dir / inst.path, inst.sop_uid, step.series[0].series_uid)
    assert item.sop_class == inst.sop_class and item.transfer_syntax == "1.2.840.10008.1.2.1"
    assert item.has_meta and item.size == inst.size
    missing = read_send_item(tmp_path / "nope.dcm", "1.2.3", None)
    assert missing.status == FAILED and missing.reason == "file missing"
    other = read_send_item(archive.data_dir / inst.path, "1.2.3", None)
    assert other.status == FAILED and "not the planned one" in other.reason
    bare = _bare(archive.data_dir / inst.path, tmp_path / "bare.v2")
    item = read_send_item(bare, inst.sop_uid, None, inst.sop_class)
    assert not item.has_meta and item.transfer_syntax == "1.2.840.10008.1.2"


def test_a_bare_dataset_is_sent_decoded(archive, tmp_path):
    plan, step = send_step(archive, {"host": "x", "port": 1})
    inst = step.series[0].instances[0]
    bare = _bare(archive.data_dir / inst.path, tmp_path / "bare.v2")
    item = read_send_item(bare, inst.sop_uid, None, inst.sop_class)
    got = []
    with storescp(tmp_path / "rx") as (_, port):
        DicomTransport(PeerSettings("127.0.0.1", port, retries=0)).send([[item]], got.append)
    assert [(o.sop_uid, o.status) for o in got] == [(inst.sop_uid, DONE)]
    assert set(received_sops(tmp_path / "rx")) == {inst.sop_uid}


def _item(n, series, sop_class="1.2.840.10008.5.1.4.1.1.2", ts="1.2.840.10008.1.2.1"):
    from conquest_run.net import SendItem
    return SendItem(f"1.2.{n}", series, Path(f"f{n}"), sop_class, ts, True, 100)


def test_group_associations_respects_the_context_limit_and_series():
    items = [_item(n, f"s{n // 10}", sop_class=f"1.2.840.9.{n}") for n in range(300)]
    batches = group_associations(items)
    assert all(len({(i.sop_class, i.transfer_syntax) for i in b}) <= 128 for b in batches)
    assert [i for b in batches for i in b] == items
    whole = [_item(n, f"s{n // 10}") for n in range(100)]
    parts = group_associations(whole, parts=4)
    assert len(parts) > 1
    for b in parts:                                      # no series split across batches
        for other in parts:
            if other is not b:
                assert not {i.series_uid for i in b} & {i.series_uid for i in other}
    assert group_associations(whole) == [whole]


def test_options_are_checked():
    from conquest_run.actions.send import peer_settings
    from conquest_run.errors import ActionError

    s = peer_settings({"host": "h", "port": 104})
    assert (s.calling_ae, s.associations, s.target) == ("CONQUEST_RUN", 1, "ANY-SCP@h:104")
    for bad in ({"host": "h", "port": 0}, {"host": "h", "port": 104, "associations": 9},
                {"port": 104}, {"host": "h", "port": "104"}, {"node": "pacs"}):
        with pytest.raises(ActionError):
            peer_settings(bad)


def test_hundreds_of_instances_on_one_association_without_a_lost_response(tmp_path):
    """Regression for pynetdicom's reactor race (a stolen C-STORE-RSP -> DIMSE timeout ->
    aborted association): with no retries and a short timeout every instance must be sent."""
    from conquest_run.archive import Archive
    from conquest_run.synthetic import generate_files

    generate_files(tmp_path / "data", 400, seed=5, size=8, per_patient=200)
    archive = Archive(tmp_path / "data", tmp_path / "conquest.db")
    archive.rebuild()
    rx = tmp_path / "rx"
    with storescp(rx) as (_, port):
        plan, step = send_step(archive, _options(port, timeout=3))
        report = run_send(archive, plan, step)
    assert report.ok, [o.reason for o in report.outcomes if o.status != DONE][:3]
    assert report.totals()[DONE] == step.instance_count >= 400
    assert len(received_sops(rx)) == step.instance_count


def test_the_pynetdicom_internals_we_rely_on_are_there(tmp_path):
    """tune_connection and settle_after_request quietly do nothing if pynetdicom moves these."""
    from pynetdicom import AE

    from conquest_run.net import settle_after_request

    with storescp(tmp_path / "rx") as (_, port):
        ae = AE(ae_title="T")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", port)
        try:
            assert isinstance(assoc.dul.socket.socket, socket.socket)
            assert isinstance(assoc._is_paused, bool)
            assert assoc.send_c_echo().Status == 0
            settle_after_request(assoc)
            assert assoc._is_paused is False        # the reactor runs again
        finally:
            assoc.release()


def test_read_file_meta_agrees_with_pydicom_on_its_bundled_files():
    import pydicom.data

    from conquest_run.net.items import _pydicom_file_meta, read_file_meta

    folder = Path(pydicom.data.__file__).parent / "test_files"
    compared = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        got = read_file_meta(path)
        if got is None:                     # no DICM preamble
            assert path.read_bytes()[128:132] != b"DICM"
            continue
        assert got == _pydicom_file_meta(path), path.name
        compared += 1
    assert compared > 100


def test_python_api_send_series(archive, tmp_path):
    from conquest_run.actions.send import send_series

    plan, step = send_step(archive, {"host": "x", "port": 1}, modality="RTPLAN")
    uids = [s.series_uid for s in step.series]
    rx = tmp_path / "rx"
    with storescp(rx) as (_, port):
        report = send_series(archive, uids, "127.0.0.1", port, "STORESCP", retries=0)
        again = send_series(archive, uids, "127.0.0.1", port, "STORESCP", retries=0)
        forced = send_series(archive, uids, "127.0.0.1", port, "STORESCP", force=True)
    sops = {i.sop_uid for s in step.series for i in s.instances}
    assert {o.sop_uid for o in report.outcomes if o.status == DONE} == sops
    assert again.totals()[SKIPPED] == len(sops) and forced.totals()[DONE] == len(sops)
    assert set(received_sops(rx)) == sops
    port = free_port()
    with pytest.raises(NetworkError, match=f"no DICOM peer listening at 127.0.0.1:{port}"):
        send_series(archive, uids, "127.0.0.1", port, "STORESCP", retries=0)
