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


def test_rebuild_summary_query(archive_dir, capsys):
    assert main(["rebuild"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("5 files indexed, 0 unchanged, 0 skipped, 0 bad")
    assert (archive_dir / "conquest.db").is_file()
    assert main(["rebuild", "--refresh"]) == 0
    assert capsys.readouterr().out.startswith("0 files indexed, 5 unchanged")
    assert main(["rebuild", "--only-missing", "--workers", "2"]) == 0
    assert capsys.readouterr().out.startswith("0 files indexed, 5 unchanged")
    assert main(["summary"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["PatientID", "Study", "Series", "Modality", "Description",
                                    "Date", "Instances", "Bytes"]
    assert sorted(line.split("\t")[3] for line in lines[1:]) == [
        "CT", "RTDOSE", "RTPLAN", "RTSTRUCT"]
    assert main(["query", "SELECT Modality, count(*) FROM DICOMSeries WHERE Modality LIKE ? "
                 "GROUP BY 1 ORDER BY 1", "--param", "RT%"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "Modality\tcount(*)", "RTDOSE\t1", "RTPLAN\t1", "RTSTRUCT\t1"]


def test_rebuild_patient_flag(archive_dir, capsys):
    synthetic.write_patient(archive_dir / "data", seed=8, patient_id="OTHER", ct_slices=1,
                            rt=False)
    assert main(["rebuild", "--patient", "OTHER"]) == 0
    assert capsys.readouterr().out.startswith("1 files indexed")


def test_query_cannot_write(archive_dir, capsys):
    assert main(["rebuild"]) == 0
    capsys.readouterr()
    assert main(["query", "DELETE FROM DICOMImages"]) == 2
    err = capsys.readouterr().err
    assert "read-only query (SELECT)" in err and "Traceback" not in err
    assert main(["query", "SELECT count(*) FROM DICOMImages", "--no-header"]) == 0
    assert capsys.readouterr().out.strip() == "5"
    assert main(["query", "SELECT 1; DROP TABLE DICOMImages"]) == 2
    assert "one SQL statement" in capsys.readouterr().err


def test_store_command(archive_dir, tmp_path, capsys):
    incoming = tmp_path / "incoming"
    synthetic.write_patient(incoming, seed=12, patient_id="../../evil", ct_slices=2, rt=False)
    (incoming / "x.txt").write_text("hello")
    code = main(["store", str(incoming)])
    captured = capsys.readouterr()
    assert code == 1                                    # one bad file
    assert "2 files stored" in captured.out
    assert "x.txt: not DICOM" in captured.err
    assert sorted(p.name for p in (archive_dir / "data").iterdir()) == ["CLI1", "______evil"]


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
