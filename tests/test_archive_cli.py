"""The archive subcommands through conquest_run.cli.main: output, exit codes, no tracebacks."""

from __future__ import annotations

import pytest

from conquest_run import synthetic
from conquest_run.cli import main


@pytest.fixture
def archive_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    synthetic.write_linked_rt_set(tmp_path / "data", seed=5, patient_id="CLI1", ct_slices=2)
    return tmp_path


def test_rebuild_summary_query(archive_dir, index_db, capsys):
    db = ["--database", index_db.arg]
    assert main(["rebuild", *db]) == 0
    out = capsys.readouterr().out
    assert out.startswith("5 files indexed, 0 unchanged, 0 skipped, 0 bad")
    assert index_db.exists()
    assert index_db.rows("SELECT count(*) FROM DICOMImages") == [(5,)]
    assert main(["rebuild", "--refresh", *db]) == 0
    assert capsys.readouterr().out.startswith("0 files indexed, 5 unchanged")
    assert main(["rebuild", "--only-missing", "--workers", "2", *db]) == 0
    assert capsys.readouterr().out.startswith("0 files indexed, 5 unchanged")
    assert main(["summary", *db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["PatientID", "Study", "Series", "Modality", "Description",
                                    "Date", "Instances", "Bytes", "Flags"]
    assert sorted(line.split("\t")[3] for line in lines[1:]) == [
        "CT", "RTDOSE", "RTPLAN", "RTSTRUCT"]
    assert main(["query", "SELECT Modality, count(*) FROM DICOMSeries WHERE Modality LIKE ? "
                 "GROUP BY 1 ORDER BY 1", "--param", "rt%", *db]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "Modality\tcount(*)", "RTDOSE\t1", "RTPLAN\t1", "RTSTRUCT\t1"]


def test_rebuild_patient_flag(archive_dir, index_db, capsys):
    synthetic.write_patient(archive_dir / "data", seed=8, patient_id="OTHER", ct_slices=1,
                            rt=False)
    assert main(["rebuild", "--patient", "OTHER", "--database", index_db.arg]) == 0
    assert capsys.readouterr().out.startswith("1 files indexed")
    assert index_db.rows("SELECT DISTINCT ImagePat FROM DICOMImages") == [("OTHER",)]


def test_query_cannot_write(archive_dir, index_db, capsys):
    db = ["--database", index_db.arg]
    assert main(["rebuild", *db]) == 0
    capsys.readouterr()
    assert main(["query", "DELETE FROM DICOMImages", *db]) == 2
    err = capsys.readouterr().err
    assert "read-only query (SELECT)" in err and "Traceback" not in err
    assert main(["query", "SELECT count(*) FROM DICOMImages", "--no-header", *db]) == 0
    assert capsys.readouterr().out.strip() == "5"
    assert main(["query", "SELECT 1; DROP TABLE DICOMImages", *db]) == 2
    assert "one SQL statement" in capsys.readouterr().err
    assert index_db.rows("SELECT count(*) FROM DICOMImages") == [(5,)]


def test_store_command(archive_dir, tmp_path, index_db, capsys):
    incoming = tmp_path / "incoming"
    synthetic.write_patient(incoming, seed=12, patient_id="../../evil", ct_slices=2, rt=False)
    (incoming / "x.txt").write_text("hello")
    code = main(["store", str(incoming), "--database", index_db.arg])
    captured = capsys.readouterr()
    assert code == 1                                    # one bad file
    assert "2 files stored" in captured.out
    assert "x.txt: not DICOM" in captured.err
    assert sorted(p.name for p in (archive_dir / "data").iterdir()) == ["CLI1", "______evil"]
    # the folder was indexed first (the index did not exist), then the stored files
    assert sorted(index_db.rows("SELECT DISTINCT ImagePat FROM DICOMImages")) == \
        [("../../evil",), ("CLI1",)]


@pytest.mark.parametrize("argv, message", [
    (["rebuild", "--data", "nowhere"], "nowhere: data directory not found"),
    (["summary", "--data", "nowhere", "--database", "none.db"],
     "nowhere: data directory not found"),
    (["rebuild", "--dicom-sql", "missing.sql"], "missing.sql: cannot read"),
])
def test_errors_are_one_line_without_traceback(archive_dir, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() == message or err.startswith(message)
    assert "Traceback" not in err


def test_malformed_dicom_sql_gives_line(archive_dir, capsys):
    (archive_dir / "bad.sql").write_text("*Patient*\n{\n  { 0x0010, 0x0020, PatientID }\n}\n")
    assert main(["rebuild", "--dicom-sql", "bad.sql"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bad.sql:3: expected a quoted column name")
    assert "Traceback" not in err


def test_local_dicom_sql_is_used_by_default(archive_dir, capsys, test_data):
    import shutil
    shutil.copy(test_data / "conquest" / "dicom.sql.dbase", archive_dir / "dicom.sql")
    assert main(["rebuild"]) == 0
    capsys.readouterr()
    # the dBase layout has PatientNam in DICOMImages
    assert main(["query", "SELECT DISTINCT PatientNam FROM DICOMImages", "--no-header"]) == 0
    assert capsys.readouterr().out.strip() == "SYNTHETIC^RT"


def test_usage_errors_exit_2(archive_dir, capsys):
    with pytest.raises(SystemExit) as info:
        main(["rebuild", "--refresh", "--only-missing"])
    assert info.value.code == 2
    assert main(["rebuild", "--workers", "0"]) == 2


def _bad_and_flagged(archive_dir, count: int = 25):
    """``count`` junk files (not DICOM) and one header-only image in the data directory."""
    import pydicom
    junk = archive_dir / "data" / "junk"
    junk.mkdir()
    for i in range(count):
        (junk / f"note{i:02d}.txt").write_text("not dicom\n")
    ct = next((archive_dir / "data" / "CLI1").rglob("*.dcm"))
    ds = pydicom.dcmread(ct)
    del ds.PixelData
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(archive_dir / "data" / "CLI1" / "header_only.dcm")


def test_rebuild_lists_bad_files_by_default_verbose_and_json(archive_dir, capsys):
    import json
    _bad_and_flagged(archive_dir)
    assert main(["rebuild"]) == 1           # some file could not be indexed
    captured = capsys.readouterr()
    assert captured.out.startswith("6 files indexed, 0 unchanged, 0 skipped, 25 bad")
    assert "1 flagged" in captured.out
    err = captured.err.splitlines()
    assert len([e for e in err if e.startswith("junk/")]) == 20
    assert "... and 5 more bad files (--verbose or --json lists them all)" in err
    assert "1 files indexed with flags (no-pixel-data 1); --verbose lists them" in err
    assert main(["rebuild", "--verbose"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len([e for e in err if e.startswith("junk/")]) == 25
    assert "CLI1/header_only.dcm: indexed, flagged no-pixel-data" in err
    assert main(["rebuild", "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert captured.err == ""
    assert report["indexed"] == 6 and report["exit_code"] == 1
    assert sorted(b["path"] for b in report["bad"]) == [f"junk/note{i:02d}.txt" for i in range(25)]
    assert {b["reason"] for b in report["bad"]} == {
        "not DICOM (no 'DICM' marker and no data set at the start)"}
    assert report["flagged"] == [{"path": "CLI1/header_only.dcm", "flags": ["no-pixel-data"]}]
    assert main(["query", "--no-header", "select Flags from RTExtras where Flags is not null"]) == 0
    assert capsys.readouterr().out.split() == ["no-pixel-data"]


def test_flags_are_warnings_only_exit_code_zero(archive_dir, capsys):
    import json
    _bad_and_flagged(archive_dir, count=0)
    assert main(["rebuild"]) == 0
    capsys.readouterr()
    assert main(["summary"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()[1:]]
    assert sorted(line[8] for line in lines) == ["", "", "", "no-pixel-data"]
    store_in = archive_dir / "incoming"
    store_in.mkdir()
    (archive_dir / "data" / "CLI1" / "header_only.dcm").rename(store_in / "h.dcm")
    (store_in / "junk.txt").write_text("no")
    assert main(["store", "--json", str(store_in)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(f["path"], f["flags"]) for f in report["files"]] == [
        (str(store_in / "h.dcm"), ["no-pixel-data"])]
    assert [b["path"] for b in report["bad"]] == [str(store_in / "junk.txt")]
    (store_in / "junk.txt").unlink()
    assert main(["store", str(store_in)]) == 0          # flagged only: exit 0


def test_a_job_selects_by_flags(archive_dir, capsys):
    import json
    _bad_and_flagged(archive_dir, count=0)
    assert main(["rebuild"]) == 0
    job = archive_dir / "flagged.yml"
    job.write_text("version: 1\nname: flagged\n"
                   "select: {query: \"select SOPInstanc from RTExtras "
                   "where Flags like '%no-pixel-data%'\"}\n"
                   "action: {copy: {destination: out}}\n")
    capsys.readouterr()
    assert main(["--json", "--dry-run", str(job)]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):]) and "header_only.dcm" in out
    assert main([str(job)]) == 0
    copied = list((archive_dir / "out").rglob("*.dcm"))
    assert [p.read_bytes() for p in copied] == [
        (archive_dir / "data" / "CLI1" / "header_only.dcm").read_bytes()]
