"""De-identified exports end to end: ``copy`` and ``send`` with ``deidentify:`` on linked
synthetic CT/MR/RTSTRUCT/RTPLAN/RTDOSE sets and pydicom's RT files."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from _net_support import received_sops, storescp

from conquest_run import synthetic
from conquest_run.archive import Archive
from conquest_run.cli import main
from conquest_run.errors import ActionError

SECRET = "trial-42-secret-value-0123456789"
OTHER = "a-completely-different-secret-key"
NAMES = ("DOE^JOHN", "ROE^JANE")
IDS = ("PAT-12345", "PAT-67890")


def _read(path, **kw):
    return pydicom.dcmread(path, force=True, **kw)


def _walk(ds, path=()):
    """(path, element) for every element, nested and file meta included."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and not path:
        for elem in meta:
            yield ("meta", elem.tag), elem
    for elem in ds:
        yield path + (elem.tag,), elem
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                yield from _walk(item, path + (elem.tag, i))


def _uids(ds) -> dict[tuple, str]:
    return {p: str(v) for p, e in _walk(ds) if e.VR == "UI"
            for v in (e.value if e.VM > 1 else [e.value]) if v}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("deid")
    data = root / "data"
    synthetic.write_linked_rt_set(data, seed=11, patient_id=IDS[0], patient_name=NAMES[0],
                                  ct_slices=3)
    synthetic.write_patient(data, seed=12, patient_id=IDS[1], patient_name=NAMES[1],
                            mr_slices=2, ct_slices=2)
    for name in ("rtplan.dcm", "rtstruct.dcm", "rtdose.dcm", "CT_small.dcm"):
        (data / "pyd").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(get_testdata_file(name), data / "pyd" / name)
    sc = synthetic.ct_series(synthetic.PatientSpec("PAT-SC", "SC^PATIENT"), 13, "1.2.3.4", slices=1)[0]
    sc.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"       # secondary capture, no BurnedInAnnotation
    synthetic.write_dataset(sc, data / "PAT-SC" / "sc.dcm")
    arc = Archive(data, root / "conquest.db")
    arc.rebuild()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DEID_TEST_SECRET", SECRET)
        env.setenv("DEID_TEST_OTHER", OTHER)
        yield arc


def _series(arc) -> list[str]:
    with sqlite3.connect(arc.database) as conn:
        return [r[0] for r in conn.execute("SELECT SeriesInst FROM DICOMSeries")]


def _originals(arc) -> list[Path]:
    return sorted(p for p in arc.data_dir.rglob("*.dcm"))


def _export(arc, dest: Path, env="DEID_TEST_SECRET", **extra):
    block = {"secret_env": env, **extra}
    return arc.copy_series(_series(arc), dest, deidentify=block)


@pytest.fixture(scope="module")
def exported(archive, tmp_path_factory):
    dest = tmp_path_factory.mktemp("out") / "export"
    mapping = dest.parent / "mapping.json"
    report = _export(archive, dest, mapping=str(mapping))
    return dest, report, json.loads(mapping.read_text())


def _files(dest: Path) -> list[Path]:
    return sorted(dest.rglob("*.dcm"))


def test_no_original_identifying_value_survives(archive, exported):
    dest, report, mapping = exported
    originals = [_read(p) for p in _originals(archive)]
    secret_words = set(NAMES) | set(IDS) | {n.split("^")[0] for n in NAMES}
    for ds in originals:
        secret_words |= {str(ds.PatientName), str(ds.PatientID)} - {""}
        secret_words |= {v for v in _uids(ds).values()
                         if not v.startswith("1.2.840.10008.")} - {
            str(ds.SOPClassUID), str(getattr(ds, "file_meta", {}).get("ImplementationClassUID", ""))}
        if ds.get("StudyDate"):
            secret_words.add(str(ds.StudyDate))
    secret_words = {w for w in secret_words if len(w) >= 4}
    files = _files(dest)
    assert len(files) == report.summary["deidentified"] > 10
    for path in files:
        ds = _read(path)
        for where, elem in _walk(ds):
            values = elem.value if elem.VM > 1 and elem.VR != "SQ" else [elem.value]
            for v in values:
                if isinstance(v, (str, pydicom.valuerep.PersonName)):
                    assert str(v) not in secret_words, (path.name, where, v)
            assert not (isinstance(elem.tag, int) and pydicom.tag.Tag(elem.tag).is_private)
        raw = path.read_bytes()
        for word in secret_words:
            assert word.encode() not in raw, (path.name, word)
        assert ds.PatientIdentityRemoved == "YES"
    # the names in the export (folders, manifest, report) are pseudonyms too
    listing = "\n".join(str(p.relative_to(dest)) for p in dest.rglob("*"))
    listing += (dest / "manifest.json").read_text() + (dest / "deidentification.json").read_text()
    for word in secret_words:
        assert word not in listing, word
    assert SECRET not in listing
    assert set(mapping["patients"]) >= set(IDS) and "warning" in mapping


def test_every_reference_resolves_inside_the_export(exported):
    dest = exported[0]
    datasets = [_read(p) for p in _files(dest)]
    defined = set()
    for ds in datasets:
        defined |= {str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID),
                    str(ds.StudyInstanceUID)} | {str(ds.get("FrameOfReferenceUID", ""))}
    refs = 0
    for ds in datasets:
        if ds.get("Manufacturer") != "conquest-run synthetic":
            continue            # pydicom's RT files reference objects they do not ship
        for where, elem in _walk(ds):
            if elem.keyword in ("ReferencedSOPInstanceUID", "ReferencedFrameOfReferenceUID",
                                "SeriesInstanceUID", "FrameOfReferenceUID",
                                "StudyInstanceUID") and len(where) > 1:
                assert str(elem.value) in defined, (ds.Modality, elem.keyword)
                refs += 1
    assert refs >= 10
    by_modality = {}
    for ds in datasets:
        by_modality.setdefault(str(ds.Modality), []).append(ds)
    plan = next(d for d in by_modality["RTPLAN"] if d.Manufacturer == "conquest-run synthetic")
    ss_uid = plan.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID
    ss = next(d for d in by_modality["RTSTRUCT"] if d.SOPInstanceUID == ss_uid)
    contour_refs = {c.ReferencedSOPInstanceUID for roi in ss.ROIContourSequence
                    for contour in roi.ContourSequence
                    for c in contour.ContourImageSequence}
    cts = {d.SOPInstanceUID for d in by_modality["CT"]}
    assert contour_refs and contour_refs <= cts
    dose = next(d for d in by_modality["RTDOSE"] if d.Manufacturer == "conquest-run synthetic")
    assert dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == plan.SOPInstanceUID


def test_uids_are_mapped_by_value_everywhere(archive, exported):
    dest, _, mapping = exported
    uids = mapping["uids"]
    by_new_sop = {str(_read(p).SOPInstanceUID): p for p in _files(dest)}
    checked = 0
    for path in _originals(archive):
        before = _read(path)
        new_sop = uids.get(str(before.SOPInstanceUID))
        if new_sop not in by_new_sop:
            continue                                     # refused (burned in)
        after = _read(by_new_sop[new_sop])
        old, new = _uids(before), _uids(after)
        for where in set(old) & set(new):
            if where[-1] == 0x00020012:          # ours, as the writer of the new file
                continue
            if where[-1] == 0x00020003:          # the meta is rebuilt from the dataset
                assert new[where] == uids[str(before.SOPInstanceUID)]
                continue
            if old[where].startswith("1.2.840.10008."):
                assert new[where] == old[where]
            elif pydicom.datadict.keyword_for_tag(where[-1]).endswith("ClassUID"):
                assert new[where] == old[where]
            else:
                assert new[where] == uids[old[where]] and new[where].startswith("2.25.")
                checked += 1
    assert checked > 50


def test_same_secret_identical_other_secret_disjoint(archive, exported, tmp_path):
    dest = exported[0]
    again, other = tmp_path / "again", tmp_path / "other"
    _export(archive, again)
    _export(archive, other, env="DEID_TEST_OTHER")
    first = {p.relative_to(dest): p.read_bytes() for p in _files(dest)}
    assert first == {p.relative_to(again): p.read_bytes() for p in _files(again)}
    ids_a = {str(_read(p).PatientID) for p in _files(dest)}
    ids_b = {str(_read(p).PatientID) for p in _files(other)}
    uids_a = {v for p in _files(dest) for v in _uids(_read(p)).values()
              if v.startswith("2.25.")}
    uids_b = {v for p in _files(other) for v in _uids(_read(p)).values()
              if v.startswith("2.25.")}
    assert ids_a and not ids_a & ids_b
    assert uids_a and not uids_a & uids_b
    manifest = json.loads((again / "manifest.json").read_text())
    for entry in manifest["instances"]:
        assert entry["sha256"] == __import__("hashlib").sha256(
            (again / entry["path"]).read_bytes()).hexdigest()
        assert entry["sop_uid"].startswith("2.25.")


def test_burned_in_file_is_refused_and_reported(exported, archive, tmp_path):
    dest, report, _ = exported
    refused = [o for o in report.outcomes if o.detail.get("burned_in")]
    assert len(refused) == 1 and "secondary capture" in refused[0].reason
    doc = json.loads((dest / "deidentification.json").read_text())
    assert len(doc["refused"]) == 1 and doc["refused"][0]["sop_uid"].startswith("2.25.")
    assert all("PatientName" in f["actions"] for f in doc["instances"])
    allowed = _export(archive, tmp_path / "all", allow_burned_in=True)
    assert allowed.summary["refused_burned_in"] == 0
    assert allowed.summary["deidentified"] == report.summary["deidentified"] + 1


def _dciodvfy_errors(path: Path) -> int:
    got = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=30)
    return sum(1 for line in (got.stdout + got.stderr).splitlines()
               if line.startswith("Error"))


def test_dciodvfy_finds_no_new_errors(archive, exported):
    if not shutil.which("dciodvfy"):
        pytest.fail("dciodvfy (Debian package dicom3tools) is not installed")
    dest, _, mapping = exported
    by_sop = {str(_read(p, stop_before_pixels=True).SOPInstanceUID): p
              for p in _files(dest)}
    seen = set()
    for path in _originals(archive):
        ds = _read(path, stop_before_pixels=True)
        kind = (str(ds.Modality), ds.get("Manufacturer") == "conquest-run synthetic")
        new = by_sop.get(mapping["uids"].get(str(ds.SOPInstanceUID), ""))
        if new is None or kind in seen:
            continue
        seen.add(kind)
        assert _dciodvfy_errors(new) <= _dciodvfy_errors(path), (kind, new)
    assert len(seen) >= 7        # synthetic CT/MR/RTSTRUCT/RTPLAN/RTDOSE, pydicom's RT and CT


def test_dry_run_changes_nothing(archive, tmp_path):
    dest = tmp_path / "dry"
    report = archive.copy_series(_series(archive), dest, dry_run=True,
                                 deidentify={"secret_env": "DEID_TEST_SECRET",
                                             "mapping": str(tmp_path / "map.json")})
    assert not dest.exists() and not (tmp_path / "map.json").exists()
    assert report.summary["deidentified"] > 10 and report.summary["actions"]["U"] > 0


def test_missing_secret_stops_the_api_before_anything_is_exported(archive, tmp_path):
    with pytest.raises(ActionError, match="DEID_TEST_NOPE is not set"):
        _export(archive, tmp_path / "x", env="DEID_TEST_NOPE")
    assert not (tmp_path / "x").exists()


def test_cli_job_without_secret_exits_2_and_never_shows_it(archive, tmp_path, monkeypatch,
                                                           capsys):
    monkeypatch.chdir(tmp_path)
    job = tmp_path / "export.yml"
    job.write_text("version: 1\nselect: {modality: RTPLAN}\naction:\n  copy:\n"
                   "    destination: exports/t42\n    deidentify:\n"
                   "      secret_env: T42_SECRET\n      patient_id: \"T42-{n:04d}\"\n")
    args = [str(job), "--data", str(archive.data_dir), "--database", str(archive.database)]
    monkeypatch.delenv("T42_SECRET", raising=False)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "T42_SECRET is not set" in err and not (tmp_path / "exports").exists()
    monkeypatch.setenv("T42_SECRET", "short")
    assert main(args) == 2 and "fewer than 16 bytes" in capsys.readouterr().err
    monkeypatch.setenv("T42_SECRET", SECRET)
    assert main(args + ["--plan-out", "plan.json"]) == 0
    assert main(["--apply", "plan.json", "--data", str(archive.data_dir), "--database",
                 str(archive.database), "--yes"]) == 0
    out = capsys.readouterr()
    files = _files(tmp_path / "exports/t42")
    assert files and all(p.relative_to(tmp_path / "exports/t42").parts[0].startswith("T42-")
                         for p in files)
    with sqlite3.connect(archive.database) as conn:
        audit = "\n".join(str(r) for r in conn.execute("SELECT * FROM ConquestRunAudit"))
        audit += "\n".join(str(r) for r in conn.execute("SELECT * FROM ConquestRunRuns"))
    for text in (out.out, out.err, audit, (tmp_path / "plan.json").read_text(),
                 *(p.read_text() for p in (tmp_path / "exports/t42").glob("*.json"))):
        assert SECRET not in text


def test_send_deidentified_to_storescp(archive, tmp_path):
    series = _series(archive)
    with storescp(tmp_path / "recv") as (_, port):
        report = archive.send(series, "127.0.0.1", port, "STORESCP",
                              deidentify={"secret_env": "DEID_TEST_SECRET"})
    got = received_sops(tmp_path / "recv")
    done = [o for o in report.outcomes if o.status == "done"]
    assert len(got) == len(done) == report.summary["deidentified"] > 10
    assert all(uid.startswith("2.25.") for uid in got)
    originals = {str(_read(p, stop_before_pixels=True).SOPInstanceUID)
                 for p in _originals(archive)}
    assert not set(got) & originals
    assert {o.sop_uid for o in done} <= originals         # the journal keeps the originals
    for path in got.values():
        raw = path.read_bytes()
        assert not any(w.encode() in raw for w in NAMES + IDS)
    assert not list(Path("/tmp").glob("conquest-run-deid-*"))


def test_deidentified_send_is_journaled_apart_from_a_plain_one(archive, tmp_path):
    """What a peer confirmed for a plain send is not what a de-identified send delivers: the
    de-identified send after a plain one to the same peer sends everything again, and its own
    rerun skips what it delivered."""
    series = _series(archive)
    with storescp(tmp_path / "recv") as (_, port):
        plain = archive.send(series, "127.0.0.1", port, "STORESCP")
        deid = archive.send(series, "127.0.0.1", port, "STORESCP",
                            deidentify={"secret_env": "DEID_TEST_SECRET"})
        again = archive.send(series, "127.0.0.1", port, "STORESCP",
                             deidentify={"secret_env": "DEID_TEST_SECRET"})
    assert len([o for o in plain.outcomes if o.status == "done"]) > 10
    delivered = [o for o in deid.outcomes if o.status == "done"]
    assert len(delivered) == deid.summary["deidentified"] > 10     # none skipped as sent
    assert not [o for o in again.outcomes if o.status == "done"]
    assert {o.sop_uid for o in again.outcomes} >= {o.sop_uid for o in delivered}
    plain_uids = {o.sop_uid for o in plain.outcomes if o.status == "done"}
    got = received_sops(tmp_path / "recv")
    assert len(set(got) - plain_uids) == len(delivered)


def test_mapping_inside_the_export_is_refused(archive, tmp_path):
    with pytest.raises(ActionError, match="mapping .* lies inside the export"):
        _export(archive, tmp_path / "x", mapping=str(tmp_path / "x" / "map.json"))
    assert not (tmp_path / "x").exists()
