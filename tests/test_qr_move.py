"""C-MOVE and C-GET from ``conquest-run serve``: dcmtk movescu/getscu with storescp as the
destination, --node / --nodes (ACRNEMA.MAP wildcard rows), an unknown destination, one that is
down, a partly failed move (pynetdicom as the SCU, to read the Failed SOP Instance UID List),
the Move Originator of the sub-operations, and the audit rows."""

from __future__ import annotations

import sqlite3
import time

import pydicom
import pytest

from _net_support import dataset_bytes, free_port, received_sops, storescp
from _qr_support import AET, GETSCU, MOVESCU, audit_rows, make_qr_archive, run_tool, serve

pytestmark = pytest.mark.timeout(90)
MISSING_SOP = "1.2.826.0.1.9.404.1"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("qrmove")
    archive = make_qr_archive(root)
    conn = sqlite3.connect(archive.database)
    net000 = conn.execute("SELECT StudyInsta, SeriesInst FROM DICOMSeries WHERE SeriesPat = "
                          "'NET000' AND Modality = 'CT'").fetchone()
    with conn:          # an indexed instance whose file is gone
        conn.execute("INSERT INTO DICOMImages (SOPInstanc, SOPClassUI, SeriesInst, ImagePat, "
                     "ObjectFile) VALUES (?, '1.2.840.10008.5.1.4.1.1.2', ?, 'NET000', "
                     "'NET000/gone.dcm')", (MISSING_SOP, net000[1]))
    studies = dict(conn.execute("SELECT PatientID, StudyInsta FROM DICOMStudies"))
    conn.close()
    down, originator = free_port(), free_port()
    with storescp(root / "received") as (_, dest_port):
        amap = root / "ACRNEMA.MAP"
        amap.write_text(f"/* the archive itself, then wildcard rows */\n"
                        f"{AET}\t127.0.0.1\t104\tun\n"
                        f"WILD*\t*\t{dest_port}\tun\n"
                        f"DOWN\t127.0.0.1\t{down}\tun\n")
        with serve(archive, "--node", f"DEST=127.0.0.1:{dest_port}",
                   "--node", f"ORIG=127.0.0.1:{originator}", "--nodes", str(amap)) as \
                (proc, port, log):
            yield {"archive": archive, "port": port, "log": log, "received": root / "received",
                   "studies": studies, "originator": originator, "root": root}


def _archived(archive, patient: str) -> dict[str, bytes]:
    out = {}
    for path in (archive.data_dir / patient).glob("*.dcm"):
        out[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = \
            dataset_bytes(path)
    return out


def _clear(folder):
    for path in folder.glob("*"):
        path.unlink()


def test_movescu_study_to_storescp_sends_every_file_as_stored(server):
    _clear(server["received"])
    done = run_tool(MOVESCU, server["port"], "-S", "-aem", "DEST", "-k",
                    "QueryRetrieveLevel=STUDY", "-k",
                    f"StudyInstanceUID={server['studies']['NET001']}", aet="MOVESCU")
    assert done.returncode == 0, done.stderr
    assert "Final Move Response (Success)" in done.stderr
    archived = _archived(server["archive"], "NET001")
    got = received_sops(server["received"])
    assert set(got) == set(archived) and len(got) == 6
    for sop, path in got.items():
        assert dataset_bytes(path) == archived[sop]          # streamed as stored
    rows = [r for r in audit_rows(server["archive"].database, "move")
            if r["SOPInstanc"] in archived]
    assert len(rows) == 6 and {r["Status"] for r in rows} == {"done"}
    assert {r["PatientID"] for r in rows} == {"NET001"}
    assert all(r["Target"].startswith("DEST@127.0.0.1:") and '"requested_by": "MOVESCU@127.0.0.1'
               in r["Detail"] for r in rows)


def test_an_acrnema_map_wildcard_row_sends_to_the_caller_address(server):
    _clear(server["received"])
    done = run_tool(MOVESCU, server["port"], "-S", "-aem", "WILD7", "-k",
                    "QueryRetrieveLevel=SERIES", "-k",
                    f"StudyInstanceUID={server['studies']['NET001']}", "-k", "Modality=RTPLAN",
                    aet="MOVESCU")
    assert "Final Move Response (Success)" in done.stderr, done.stderr
    assert len(received_sops(server["received"])) >= 1


def test_an_unknown_destination_is_refused_with_a801(server):
    done = run_tool(MOVESCU, server["port"], "-S", "-aem", "NOWHERE", "-k",
                    "QueryRetrieveLevel=STUDY", "-k",
                    f"StudyInstanceUID={server['studies']['NET001']}", aet="MOVESCU")
    assert "MoveDestinationUnknown" in done.stderr, done.stderr       # 0xA801
    rows = audit_rows(server["archive"].database, "move")
    assert any(r["Target"] == "NOWHERE" and r["Status"] == "failed" and "unknown destination"
               in r["Reason"] for r in rows)


def test_a_destination_that_is_down_fails_every_sub_operation_and_says_so(server):
    started = time.monotonic()
    done = run_tool(MOVESCU, server["port"], "-S", "-aem", "DOWN", "-k",
                    "QueryRetrieveLevel=STUDY", "-k",
                    f"StudyInstanceUID={server['studies']['NET001']}", aet="MOVESCU")
    assert "Final Move Response (Refused: OutOfResourcesSubOperations)" in done.stderr  # A702
    assert time.monotonic() - started < 15
    deadline = time.monotonic() + 5
    while "destination unreachable" not in server["log"].read_text() and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    assert "no DICOM peer listening" in server["log"].read_text()
    summary = [r for r in audit_rows(server["archive"].database, "move")
               if r["SOPInstanc"] is None and r["Target"].startswith("DOWN@")]
    assert summary and '"failed": 6' in summary[-1]["Detail"]


def _pynetdicom_move(port: int, destination: str, identifier) -> list:
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

    ae = AE(ae_title="PYMOVE")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", port, ae_title=AET)
    assert assoc.is_established
    try:
        return list(assoc.send_c_move(identifier, destination,
                                      StudyRootQueryRetrieveInformationModelMove))
    finally:
        assoc.release()


def test_a_partly_failed_move_reports_counts_and_the_failed_list(server):
    ds = pydicom.Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = server["studies"]["NET000"]
    responses = _pynetdicom_move(server["port"], "DEST", ds)
    status, identifier = responses[-1]
    assert status.Status == 0xB000
    assert (status.NumberOfCompletedSuboperations, status.NumberOfFailedSuboperations) == (6, 1)
    assert list(pydicom.multival.MultiValue(str, [identifier.FailedSOPInstanceUIDList])
                if isinstance(identifier.FailedSOPInstanceUIDList, str)
                else identifier.FailedSOPInstanceUIDList) == [MISSING_SOP]
    pending = [s for s, _ in responses[:-1]]
    assert pending and all(s.Status == 0xFF00 for s in pending)
    assert [s.NumberOfRemainingSuboperations for s in pending] == \
        sorted((s.NumberOfRemainingSuboperations for s in pending), reverse=True)


def test_a_retrieve_without_a_unique_key_is_refused(server):
    ds = pydicom.Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    status, _ = _pynetdicom_move(server["port"], "DEST", ds)[-1]
    assert status.Status == 0xA900 and "unique key" in status.ErrorComment


def test_sub_operations_carry_the_move_originator(server):
    from pynetdicom import AE, evt
    from pynetdicom.presentation import AllStoragePresentationContexts

    seen = []

    def on_store(event):
        seen.append((event.request.MoveOriginatorApplicationEntityTitle,
                     event.request.MoveOriginatorMessageID))
        return 0

    ae = AE(ae_title="ORIG")
    ae.supported_contexts = AllStoragePresentationContexts
    scp = ae.start_server(("127.0.0.1", server["originator"]), block=False,
                          evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        ds = pydicom.Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID = server["studies"]["NET001"]
        ds.Modality = "RTPLAN"
        status, _ = _pynetdicom_move(server["port"], "ORIG", ds)[-1]
    finally:
        scp.shutdown()
    assert status.Status == 0x0000
    assert seen and all(str(a).strip() == "PYMOVE" and m == 1 for a, m in seen)


def test_getscu_retrieves_over_the_same_association(server):
    out = server["root"] / "got"
    out.mkdir(exist_ok=True)
    done = run_tool(GETSCU, server["port"], "-S", "-od", str(out), "-k",
                    "QueryRetrieveLevel=STUDY", "-k",
                    f"StudyInstanceUID={server['studies']['NET001']}", aet="GETSCU")
    assert done.returncode == 0, done.stderr
    archived = _archived(server["archive"], "NET001")
    got = received_sops(out)
    assert set(got) == set(archived)
    rows = [r for r in audit_rows(server["archive"].database, "get")
            if r["SOPInstanc"] in archived]
    assert len(rows) == 6 and {r["Status"] for r in rows} == {"done"}


def test_nodes_files_yaml_and_acrnema_map(tmp_path):
    from conquest_run.errors import ConquestRunError
    from conquest_run.net.nodes import parse_node, read_nodes_file

    yml = tmp_path / "nodes.yml"
    yml.write_text("nodes:\n  pacs: {host: 10.0.0.7, port: 104, called_ae: PACS}\n"
                   "  tps: {host: tps.local, port: 11112, called_ae: TPS, calling_ae: ME}\n")
    nodes = read_nodes_file(yml)
    assert nodes.lookup("PACS") == ("10.0.0.7", 104) and nodes.lookup("TPS") == \
        ("tps.local", 11112)
    assert nodes.lookup("pacs") is None                   # by AE title, exactly
    amap = tmp_path / "ACRNEMA.MAP"
    amap.write_text("/* a comment\n spanning lines */\nCONQUESTSRV1 127.0.0.1 5678 un\n"
                    "V*  *  1234  un\nS?  10.1.1.1  5678\n")
    nodes = read_nodes_file(amap) + read_nodes_file(yml)
    assert nodes.lookup("VIEWER", caller="192.168.0.9") == ("192.168.0.9", 1234)
    assert nodes.lookup("S1") == ("10.1.1.1", 5678) and nodes.lookup("S12") is None
    assert nodes.lookup("PACS") == ("10.0.0.7", 104)
    assert parse_node("DEST=[::1]:104").host == "::1"
    for text, message in (("DEST", "expected AE=HOST:PORT"),
                          ("D*=1.2.3.4:104", "has a wildcard"),
                          ("DEST=h:70000", "not a number from 1 to 65535")):
        with pytest.raises(ConquestRunError, match=message):
            parse_node(text)
    amap.write_text("GOOD 1.2.3.4 104\nBAD 1.2.3.4\n")
    with pytest.raises(ConquestRunError, match=r"ACRNEMA.MAP:2: expected AE HOST PORT"):
        read_nodes_file(amap)
    yml.write_text("nodes:\n  pacs: {host: 10.0.0.7, port: '104', called_ae: PACS}\n")
    with pytest.raises(ConquestRunError, match=r"nodes.yml:2:3: nodes.pacs.port must be"):
        read_nodes_file(yml)


def test_a_cancelled_move_stops_after_the_instance_in_flight(server):
    from pynetdicom import AE, evt
    from pynetdicom.presentation import AllStoragePresentationContexts

    stored = []

    def slow_store(event):            # a slow destination: the cancel lands mid-move
        time.sleep(0.3)
        stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    ae = AE(ae_title="ORIG")
    ae.supported_contexts = AllStoragePresentationContexts
    scp = ae.start_server(("127.0.0.1", server["originator"]), block=False,
                          evt_handlers=[(evt.EVT_C_STORE, slow_store)])
    try:
        done = run_tool(MOVESCU, server["port"], "-S", "-aem", "ORIG", "--cancel", "1", "-k",
                        "QueryRetrieveLevel=STUDY", "-k",
                        f"StudyInstanceUID={server['studies']['NET001']}", aet="MOVESCU")
    finally:
        scp.shutdown()
    assert "Final Move Response (Cancel" in done.stderr, done.stderr
    assert 1 <= len(stored) < 6
    summary = [r for r in audit_rows(server["archive"].database, "move")
               if r["SOPInstanc"] is None and r["Target"].startswith("ORIG@")]
    assert "cancelled" in summary[-1]["Reason"]
