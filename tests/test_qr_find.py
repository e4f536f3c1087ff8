"""C-FIND against ``conquest-run serve`` with dcmtk findscu: every matching rule, the computed
counts, keys dicom.sql does not define, cancel, --allow and the audit rows."""

from __future__ import annotations

import sqlite3
import time

import pytest

from _net_support import free_port
from _qr_support import (
    MATCH_ROWS,
    audit_rows,
    find,
    make_qr_archive,
    serve,
    values,
)

pytestmark = pytest.mark.timeout(90)
ALLOWED = ("QRSCU", "CANCELSCU")
BULK = 20000        # patients: a cancel after 2 responses must land long before the last


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("qrfind")
    archive = make_qr_archive(root)
    conn = sqlite3.connect(archive.database)
    with conn:          # many patients, for a cancel to land in the middle of the responses
        conn.executemany("INSERT INTO DICOMPatients (PatientID, PatientNam) VALUES (?, ?)",
                         [(f"BULK{n:05d}", f"BULK^{n:05d}") for n in range(BULK)])
    conn.close()
    with serve(archive, "--allow", *ALLOWED) as (proc, port, log):
        yield archive, port, root / "rsp", log


def _studies(server, *keys, **kw):
    archive, port, out, _ = server
    return find(port, out, "STUDY", "StudyInstanceUID", *keys, **kw)


def test_universal_matching_returns_every_study_with_its_counts(server):
    archive, *_ = server
    responses, done = _studies(server, "PatientName", "ModalitiesInStudy",
                               "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
    assert done.returncode == 0, done.stderr
    conn = sqlite3.connect(archive.database)
    expected = {uid: (series, images) for uid, series, images in conn.execute(
        "SELECT st.StudyInsta, (SELECT count(*) FROM DICOMSeries s WHERE s.StudyInsta = "
        "st.StudyInsta), (SELECT count(*) FROM DICOMImages i JOIN DICOMSeries s ON "
        "i.SeriesInst = s.SeriesInst WHERE s.StudyInsta = st.StudyInsta) FROM DICOMStudies st")}
    modalities = {uid: "\\".join(sorted({m for (m,) in conn.execute(
        "SELECT Modality FROM DICOMSeries WHERE StudyInsta = ?", (uid,))})) for uid in expected}
    conn.close()
    got = {str(r.StudyInstanceUID): r for r in responses}
    assert len(responses) == len(got) == len(expected) == 2 + len(MATCH_ROWS)   # one each
    for uid, (series, images) in expected.items():
        r = got[uid]
        assert (int(r.NumberOfStudyRelatedSeries), int(r.NumberOfStudyRelatedInstances)) == \
            (series, images)
        assert "\\".join(r.ModalitiesInStudy if r["ModalitiesInStudy"].VM > 1
                         else [r.ModalitiesInStudy]) == modalities[uid]
        assert r.QueryRetrieveLevel == "STUDY"


@pytest.mark.parametrize("name, expected", [
    ("SMITH*", ["SMITHSON^ANNA", "Smith^John"]),         # wildcard, case-insensitive
    ("smith^john", ["Smith^John"]),                       # exact, case-insensitive
    ("?OE^J*", ["Doe^John", "doe^jane"]),                 # ? and *
    ("*^JOHN", ["Doe^John", "Smith^John"]),
    ("NOBODY*", []),
])
def test_person_names_match_case_insensitively_with_wildcards(server, name, expected):
    responses, done = _studies(server, f"PatientName={name}")
    assert done.returncode == 0, done.stderr
    assert values(responses, "PatientName") == sorted(expected)


@pytest.mark.parametrize("dates, expected", [
    ("20240101-20241231", ["20240102", "20240102", "20240615", "20241231"]),   # a-b, inclusive
    ("20241231-", ["20241231", "20250301"]),                                  # a-
    ("-20231231", ["20230115"]),                                              # -b
    ("20240615", ["20240615"]),                                               # one date
    ("2023*", ["20230115"]),                                                  # a wildcard
])
def test_date_ranges(server, dates, expected):
    responses, done = _studies(server, f"StudyDate={dates}")
    assert done.returncode == 0, done.stderr
    assert values(responses, "StudyDate") == expected


def test_uid_lists_match_any_of_them(server):
    uids = [MATCH_ROWS[0][3], MATCH_ROWS[2][3], "1.2.3.404"]
    archive, port, out, _ = server
    responses, done = find(port, out, "STUDY", f"StudyInstanceUID={chr(92).join(uids)}")
    assert done.returncode == 0, done.stderr
    assert values(responses, "StudyInstanceUID") == sorted(uids[:2])


@pytest.mark.parametrize("modality, patients", [
    ("CT", ["M001", "M003", "NET000", "NET001"]),     # CT matches the CT\PT study
    ("PT", ["M001"]),
    ("RT*", ["M003", "NET000", "NET001"]),
    ("MR\\US", ["M002", "M004"]),                     # a list: any of them
    ("NM", []),
])
def test_modalities_in_study_match_one_of_a_multi_valued_list(server, modality, patients):
    responses, done = _studies(server, f"ModalitiesInStudy={modality}", "PatientID")
    assert done.returncode == 0, done.stderr
    assert values(responses, "PatientID") == patients


def test_series_level_counts_instances_and_matches_modality(server):
    archive, port, out, _ = server
    study = MATCH_ROWS[0][3]
    responses, done = find(port, out, "SERIES", f"StudyInstanceUID={study}",
                           "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances")
    assert done.returncode == 0, done.stderr
    got = {str(r.SeriesInstanceUID): (r.Modality, int(r.NumberOfSeriesRelatedInstances))
           for r in responses}
    assert got == {uid: (m, n) for uid, m, n in MATCH_ROWS[0][5]}
    responses, _ = find(port, out, "SERIES", f"StudyInstanceUID={study}", "Modality=PT",
                        "SeriesInstanceUID")
    assert values(responses, "Modality") == ["PT"]


def test_patient_root_patient_and_image_levels(server):
    archive, port, out, _ = server
    responses, done = find(port, out, "PATIENT", "PatientID=M00*", "PatientName",
                           "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances",
                           model="-P")
    assert done.returncode == 0, done.stderr
    assert values(responses, "PatientID") == ["M001", "M002", "M003", "M004"]   # one each
    first = next(r for r in responses if r.PatientID == "M001")
    assert int(first.NumberOfPatientRelatedStudies) == 1
    assert int(first.NumberOfPatientRelatedInstances) == 5
    series = MATCH_ROWS[1][5][0][0]
    responses, done = find(port, out, "IMAGE", "PatientID=M002",
                           f"StudyInstanceUID={MATCH_ROWS[1][3]}",
                           f"SeriesInstanceUID={series}", "SOPInstanceUID", "InstanceNumber",
                           model="-P")
    assert done.returncode == 0, done.stderr
    assert values(responses, "SOPInstanceUID") == [f"{series}.{n}" for n in range(1, 5)]
    assert values(responses, "InstanceNumber") == ["1", "2", "3", "4"]


def test_keys_dicom_sql_does_not_define_come_back_empty(server):
    archive, port, out, _ = server
    responses, done = find(port, out, "STUDY", f"StudyInstanceUID={MATCH_ROWS[0][3]}",
                           "PatientComments", "InstitutionalDepartmentName", "SOPInstanceUID",
                           "RetrieveAETitle")
    assert done.returncode == 0, done.stderr
    (r,) = responses
    for keyword in ("PatientComments", "InstitutionalDepartmentName", "SOPInstanceUID"):
        assert keyword in r and not r[keyword].value
    assert r.RetrieveAETitle == "CRUN"
    # matching on an undefined key does not filter (it is not in the index)
    responses, _ = _studies(server, "PatientComments=NOBODY")
    assert len(responses) == 2 + len(MATCH_ROWS)


def test_a_level_the_model_lacks_is_refused(server):
    archive, port, out, _ = server
    responses, done = find(port, out, "PATIENT", "PatientID", model="-S")
    assert responses == []
    assert "Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in done.stderr  # 0xA900


def test_cancel_stops_the_responses(server):
    archive, port, out, _ = server
    started = time.monotonic()
    responses, done = find(port, out, "PATIENT", "PatientID", model="-P", aet="CANCELSCU",
                           extra=("--cancel", "2"))
    text = done.stdout + done.stderr
    assert "Cancel" in text, text[-2000:]
    assert 2 <= len(responses) < BULK      # stopped long before the end
    assert time.monotonic() - started < 10
    rows = [r for r in audit_rows(archive.database, "find") if "CANCELSCU" in r["Target"]]
    assert rows and "cancelled" in rows[-1]["Reason"]


def test_allow_gates_queries_too(server):
    archive, port, out, _ = server
    responses, done = find(port, out, "STUDY", "StudyInstanceUID", aet="INTRUDER")
    assert responses == [] and done.returncode != 0
    assert "reject" in (done.stdout + done.stderr).lower()


def test_each_query_and_association_is_audited(server):
    archive, port, out, _ = server
    responses, done = _studies(server, "PatientName=doe*")
    assert len(responses) == 2
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:          # the association row follows its close
        finds = [r for r in audit_rows(archive.database, "find") if "doe*" in (r["Detail"] or "")]
        assocs = audit_rows(archive.database, "associate")
        if finds and assocs:
            break
        time.sleep(0.1)
    assert finds[-1]["Target"].startswith("QRSCU@127.0.0.1:")
    assert '"PatientName": "doe*"' in finds[-1]["Detail"] and "2 match" in finds[-1]["Reason"]
    assert any('"calling_ae": "QRSCU"' in (a["Detail"] or "") and '"instances": 0' in a["Detail"]
               for a in assocs)


def test_serve_refuses_a_bad_node_with_a_sentence(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "conquest_run", "serve", "--port",
                           str(free_port()), "--node", "DEST=127.0.0.1:notaport",
                           "--data", str(tmp_path / "d"), "--database", str(tmp_path / "c.db")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--node DEST=127.0.0.1:notaport: the port 'notaport'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("image_type, count", [("AXIAL", 3), ("PRIM*", 3), ("ORIGINAL\\X", 3),
                                               ("SECONDARY", 0)])
def test_a_multi_valued_column_matches_any_of_its_values(server, image_type, count):
    archive, port, out, _ = server
    conn = sqlite3.connect(archive.database)
    study, series = conn.execute("SELECT StudyInsta, SeriesInst FROM DICOMSeries WHERE "
                                 "SeriesPat = 'NET000' AND Modality = 'CT'").fetchone()
    conn.close()
    responses, done = find(port, out, "IMAGE", f"StudyInstanceUID={study}",
                           f"SeriesInstanceUID={series}", f"ImageType={image_type}",
                           "SOPInstanceUID")
    assert done.returncode == 0, done.stderr
    assert len(responses) == count
    assert all(list(r.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"] for r in responses)
