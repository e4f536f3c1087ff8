"""The decoding fallback: a compressed file to a peer that takes only uncompressed syntaxes
(dcmtk storescp with ``+x=``) is decoded and sent uncompressed; nothing is compressed."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from conquest_run.net import DicomTransport, PeerSettings, read_send_item
from conquest_run.report import DONE, FAILED

from _net_support import received_sops, storescp

pytestmark = pytest.mark.timeout(60)
np = pytest.importorskip("numpy", reason="the codecs extra: pip install 'conquest-run[codecs]'")

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _items(*names):
    out = []
    for name in names:
        path = Path(get_testdata_file(name))
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out.append(read_send_item(path, str(ds.SOPInstanceUID), "S"))
    return out


def _send(items, port):
    got = []
    DicomTransport(PeerSettings("127.0.0.1", port, called_ae="STORESCP", retries=0,
                                timeout=10)).send([items], got.append)
    return {o.sop_uid: o for o in got}


def test_compressed_files_are_decoded_for_a_peer_that_takes_only_uncompressed(tmp_path):
    items = _items("JPEG2000.dcm", "MR_small_RLE.dcm", "JPEGLSNearLossless_16.dcm", "CT_small.dcm")
    with storescp(tmp_path / "rx", None, "+x=") as (_, port):       # uncompressed only
        got = _send(items, port)
    rx = received_sops(tmp_path / "rx")
    assert set(rx) == {i.sop_uid for i in items}
    for item in items[:3]:
        outcome = got[item.sop_uid]
        assert outcome.status == DONE and "decompressed from" in outcome.reason
        assert outcome.detail["decompressed"] is True
        assert outcome.detail["stored_syntax"] == item.transfer_syntax
        received = pydicom.dcmread(rx[item.sop_uid])
        assert received.file_meta.TransferSyntaxUID == EXPLICIT_LE
        assert np.array_equal(received.pixel_array, pydicom.dcmread(item.path).pixel_array)
    assert got[items[3].sop_uid].reason == "sent"             # uncompressed: as stored


def test_a_peer_that_takes_the_compressed_syntax_gets_the_file_as_stored(tmp_path):
    items = _items("JPEG2000.dcm")
    with storescp(tmp_path / "rx") as (_, port):                    # +xa: compressed too
        got = _send(items, port)
    assert got[items[0].sop_uid].reason == "sent"
    received = received_sops(tmp_path / "rx")[items[0].sop_uid]
    ds = pydicom.dcmread(received)
    assert ds.file_meta.TransferSyntaxUID == items[0].transfer_syntax
    assert ds.PixelData == pydicom.dcmread(items[0].path).PixelData     # the stored bytes


def test_a_file_no_codec_here_decodes_fails_alone_with_the_reason(tmp_path):
    items = _items("JPEG-lossy.dcm", "CT_small.dcm")        # 12-bit JPEG Extended
    with storescp(tmp_path / "rx", None, "+x=") as (_, port):
        got = _send(items, port)
    bad = got[items[0].sop_uid]
    assert bad.status == FAILED and "cannot be decoded here" in bad.reason
    assert got[items[1].sop_uid].status == DONE
