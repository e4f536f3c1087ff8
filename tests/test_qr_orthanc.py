"""Orthanc configured with ``conquest-run serve`` as a modality: it queries the archive (study
and series level) and C-MOVEs a study from it to itself."""

from __future__ import annotations

import json
import urllib.request

import pytest

from _net_support import free_port, http_json, orthanc
from _qr_support import AET, audit_rows, make_qr_archive, serve

pytestmark = pytest.mark.timeout(120)


def _post(url: str, body: object) -> object:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as rsp:
        return json.loads(rsp.read() or b"null")


def test_orthanc_queries_and_moves_from_serve(tmp_path):
    archive = make_qr_archive(tmp_path / "archive")
    serve_port = free_port()
    config = {"DicomModalities": {"crun": [AET, "127.0.0.1", serve_port]}}
    with orthanc(tmp_path / "orthanc", config) as (dicom_port, http_port):
        base = f"http://127.0.0.1:{http_port}"
        with serve(archive, "--node", f"ORTHANC=127.0.0.1:{dicom_port}", "--allow", "ORTHANC",
                   port=serve_port):
            query = _post(f"{base}/modalities/crun/query",
                          {"Level": "Study", "Query": {"PatientID": "NET0*",
                                                       "StudyInstanceUID": "",
                                                       "ModalitiesInStudy": "RTPLAN",
                                                       "NumberOfStudyRelatedInstances": ""}})
            answers = http_json(f"{base}/queries/{query['ID']}/answers?expand&simplify")
            assert sorted(a["PatientID"] for a in answers) == ["NET000", "NET001"]
            assert {a["NumberOfStudyRelatedInstances"] for a in answers} == {"6"}
            study = next(a["StudyInstanceUID"] for a in answers if a["PatientID"] == "NET000")
            series = _post(f"{base}/modalities/crun/query",
                           {"Level": "Series", "Query": {"StudyInstanceUID": study,
                                                         "Modality": "CT",
                                                         "NumberOfSeriesRelatedInstances": ""}})
            (ct,) = http_json(f"{base}/queries/{series['ID']}/answers?expand&simplify")
            assert ct["Modality"] == "CT" and ct["NumberOfSeriesRelatedInstances"] == "3"
            index = next(n for n, a in enumerate(answers) if a["PatientID"] == "NET000")
            _post(f"{base}/queries/{query['ID']}/answers/{index}/retrieve",
                  {"TargetAet": "ORTHANC", "Synchronous": True})
            instances = http_json(f"{base}/instances")
            assert len(instances) == 6
            patients = http_json(f"{base}/patients?expand")
            assert [p["MainDicomTags"]["PatientID"] for p in patients] == ["NET000"]
    finds = audit_rows(archive.database, "find")
    assert any(r["Target"].startswith("ORTHANC@127.0.0.1:") for r in finds)
    moves = [r for r in audit_rows(archive.database, "move") if r["SOPInstanc"]]
    assert len(moves) == 6 and all(r["Target"] == f"ORTHANC@127.0.0.1:{dicom_port}"
                                   for r in moves)
