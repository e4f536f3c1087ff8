"""One bad file costs only itself: files that kill associations, lie about their syntax or
carry a meta that names another instance, sent to a real dcmtk storescp."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from conquest_run.net import DicomTransport, PeerSettings, read_send_item
from conquest_run.report import DONE, FAILED

from _net_support import received_sops, storescp

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.filterwarnings("ignore:Expected explicit VR")]

LIAR = "SC_rgb_jpeg.dcm"        # meta: JPEG Baseline (explicit VR); bytes: implicit VR


def _cts(folder: Path, count: int) -> list[Path]:
    out = []
    for n in range(count):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.3.4.{n}"
        out.append(folder / f"ct{n}.dcm")
        ds.save_as(out[-1])
    return out


def _hidden_liar(folder: Path) -> Path:
    """The liar with its first dataset element rewritten in explicit VR: the sender's check
    of the first element passes, the peer aborts on the implicit bytes after it."""
    raw = Path(get_testdata_file(LIAR)).read_bytes()
    start = 144 + struct.unpack_from("<I", raw, 140)[0]
    length = struct.unpack_from("<I", raw, start + 4)[0]
    path = folder / "hidden.dcm"
    path.write_bytes(raw[:start + 4] + b"CS" + struct.pack("<H", length) + raw[start + 8:])
    return path


def _item(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    return read_send_item(path, str(ds.SOPInstanceUID), "S")


def _send(items, port, **settings):
    """One batch; with associations > 1, two (so worker processes send them)."""
    got = []
    batches = [items] if settings.get("associations", 1) == 1 else [items[:3], items[3:]]
    DicomTransport(PeerSettings("127.0.0.1", port, called_ae="STORESCP", retry_delay=0.05,
                                timeout=10, **settings)).send(batches, got.append)
    return {o.sop_uid: o for o in got}


@pytest.mark.parametrize("associations", [1, 2])
def test_an_association_killer_costs_only_itself_and_is_retried_alone(tmp_path, associations):
    cts = _cts(tmp_path, 4)
    hidden = _hidden_liar(tmp_path)
    items = [_item(p) for p in (cts[0], hidden, cts[1], cts[2], cts[3])]
    assert items[1].fix == ()                   # not detected: streamed, and the peer aborts
    killer = items[1].sop_uid

    with storescp(tmp_path / "none") as (_, port):
        got = _send(items, port, retries=0, associations=associations)
    assert [got[i.sop_uid].status for i in items] == [DONE, FAILED, DONE, DONE, DONE]
    assert "association was lost" in got[killer].reason
    assert set(received_sops(tmp_path / "none")) == {i.sop_uid for i in items} - {killer}

    with storescp(tmp_path / "one") as (_, port):
        got = _send(items, port, retries=1, associations=associations)
    assert all(o.status == DONE for o in got.values()) and len(got) == 5
    assert "re-encoded by pydicom" in got[killer].reason        # the retry alone
    assert set(received_sops(tmp_path / "one")) == {i.sop_uid for i in items}


def test_bytes_that_do_not_follow_the_declared_syntax_are_re_encoded(tmp_path):
    liar = _item(Path(get_testdata_file(LIAR)))
    ct = _item(_cts(tmp_path, 1)[0])
    assert liar.fix == ("syntax-mismatch",) and ct.fix == ()
    with storescp(tmp_path / "rx") as (_, port):
        got = _send([liar, ct], port, retries=0)
    assert got[liar.sop_uid].status == DONE
    assert got[liar.sop_uid].detail["fixed"] == ["syntax-mismatch"]
    assert got[ct.sop_uid].reason == "sent"                 # the others go as stored
    rx = received_sops(tmp_path / "rx")
    ds = pydicom.dcmread(rx[liar.sop_uid])
    assert ds.file_meta.TransferSyntaxUID == liar.transfer_syntax
    assert ds.original_encoding[0] is False                 # what the meta says, now true
    original = pydicom.dcmread(get_testdata_file(LIAR))
    assert ds.PixelData == original.PixelData


@pytest.mark.parametrize("name", ["rtplan.dcm", "rtdose.dcm"])
def test_a_meta_naming_another_instance_is_sent_under_the_datasets_uid(tmp_path, name):
    path = Path(get_testdata_file(name))
    ds = pydicom.dcmread(path)
    assert ds.file_meta.MediaStorageSOPInstanceUID != ds.SOPInstanceUID
    item = read_send_item(path, ds.SOPInstanceUID, "S")
    assert item.fix == ("meta-mismatch",)
    other = read_send_item(path, "1.2.3.999", "S")          # the archive changed
    assert other.status == FAILED and f"holds SOP instance {ds.SOPInstanceUID}" in other.reason
    with storescp(tmp_path / "rx") as (_, port):
        got = _send([item], port, retries=0)
    assert got[ds.SOPInstanceUID].status == DONE
    received = pydicom.dcmread(received_sops(tmp_path / "rx")[ds.SOPInstanceUID])
    assert received.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_the_index_flags_reach_the_plan_and_make_the_sender_re_encode(tmp_path):
    import sqlite3

    from conquest_run.actions.send import send_series
    from conquest_run.plan import Plan
    from conquest_run.planner import plan_selection

    from _net_support import make_archive

    archive = make_archive(tmp_path / "archive", patients=1, ct_slices=3)
    options = {"host": "127.0.0.1", "port": 1}
    conn = sqlite3.connect(archive.database)
    with conn:                                  # a database from before the Flags column
        conn.execute("DROP VIEW IF EXISTS v_seriesRT")
        conn.execute("ALTER TABLE RTExtras DROP COLUMN Flags")
    conn.close()
    before = plan_selection(archive, {"modality": "CT"}, "send", options)     # no Flags column
    sops = [i.sop_uid for s in before.steps[0].series for i in s.instances]
    assert len(sops) == 3 and all(i.flags == () for s in before.steps[0].series
                                  for i in s.instances)
    conn = sqlite3.connect(archive.database)
    with conn:
        if "Flags" not in {r[1] for r in conn.execute("PRAGMA table_info(RTExtras)")}:
            conn.execute("ALTER TABLE RTExtras ADD COLUMN Flags TEXT")
        conn.execute("UPDATE RTExtras SET Flags = ? WHERE SOPInstanc = ?",
                     ("bad-fragments\\syntax-mismatch", sops[1]))
    conn.close()
    plan = plan_selection(archive, {"modality": "CT"}, "send", options)
    flags = {i.sop_uid: i.flags for s in plan.steps[0].series for i in s.instances}
    assert flags == {sops[0]: (), sops[1]: ("bad-fragments", "syntax-mismatch"), sops[2]: ()}
    assert Plan.from_dict(plan.to_dict()) == plan
    old = plan.to_dict()
    for s in old["steps"][0]["series"]:
        for i in s["instances"]:
            del i["flags"]                                  # a plan saved before flags
    assert all(i.flags == () for s in Plan.from_dict(old).steps[0].series for i in s.instances)

    series = [s.series_uid for s in plan.steps[0].series]
    with storescp(tmp_path / "rx") as (_, port):
        report = send_series(archive, series, "127.0.0.1", port, "STORESCP", retries=0)
    got = {o.sop_uid: o for o in report.outcomes}
    assert {o.status for o in got.values()} == {DONE}
    assert got[sops[1]].detail["fixed"] == ["bad-fragments", "syntax-mismatch"]
    assert got[sops[0]].reason == "sent" and "reencoded" not in got[sops[0]].detail
    assert set(received_sops(tmp_path / "rx")) == set(sops)


def test_a_file_no_one_can_parse_fails_alone_with_the_reason(tmp_path):
    """Bytes after the first element that neither storescp nor pydicom can follow: the peer
    aborts, the next file goes on, the retry alone cannot even re-encode it."""
    raw = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    start = 144 + struct.unpack_from("<I", raw, 140)[0]
    first_end = start + 8 + struct.unpack_from("<H", raw, start + 6)[0]
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(raw[:first_end] + b"\x08\x00\x16\x00UI\xff\xff" + b"\x01" * 200)
    sop = str(pydicom.dcmread(get_testdata_file("CT_small.dcm")).SOPInstanceUID)
    items = [read_send_item(garbage, sop, "S"), _item(Path(get_testdata_file("MR_small.dcm")))]
    with storescp(tmp_path / "rx") as (_, port):
        got = _send(items, port, retries=1)
    assert got[items[1].sop_uid].status == DONE
    assert got[sop].status == FAILED
    assert "lost while it was sent as stored" in got[sop].reason
    assert "cannot be re-encoded" in got[sop].reason
    assert set(received_sops(tmp_path / "rx")) == {items[1].sop_uid}


def test_odd_length_fragments_are_re_itemized_to_even_lengths(tmp_path):
    from pydicom.encaps import generate_fragments, generate_frames

    from conquest_run.net.reencode import prepared

    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1)).rstrip(b"\0")
    assert len(frame) % 2 == 1                          # the JPEG stream without its pad
    item_tag, end_tag = b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0"
    ds.PixelData = (item_tag + struct.pack("<I", 0) + item_tag + struct.pack("<I", len(frame))
                    + frame + end_tag + struct.pack("<I", 0))   # odd: pydicom pads the value,
    # so the file ends in a stray byte after the delimiter: damaged, but pydicom reads it
    path = tmp_path / "odd.dcm"
    ds.save_as(path, enforce_file_format=True)
    item = read_send_item(path, str(ds.SOPInstanceUID), "S", flags=("bad-fragments",))
    assert item.fix == ("bad-fragments",)
    sent, how, detail = prepared(item, {item.transfer_syntax})
    assert "re-encoded by pydicom in JPEG Baseline" in how and detail["fixed"] == ["bad-fragments"]
    fragments = list(generate_fragments(sent.PixelData[8:]))        # after the offset table
    assert [len(f) % 2 for f in fragments] == [0] and fragments[0] == frame + b"\0"
    assert 0xFE00DDFF not in sent                           # the stray end is no element
    with storescp(tmp_path / "rx") as (_, port):
        got = _send([item], port, retries=0)
    assert got[item.sop_uid].status == DONE, got[item.sop_uid].reason
