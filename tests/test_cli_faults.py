"""Hostile inputs through the real CLI: each gives a clear, located message and a non-zero exit,
never a traceback, and leaves the archive as it was."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from conquest_run.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``conquest-run ARGS`` in this process: (exit code, stdout, stderr).

    In process, a traceback would be an exception escaping ``main`` and fail the test."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err




# -- job files ------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [70, 5000])
def test_deeply_nested_yaml_is_a_located_job_error(scratch, capsys, depth):
    Path("deep.yml").write_text("version: 1\nname: t\nx: " + "[" * depth + "]" * depth + "\n")
    code, _, err = run_cli(capsys, "--validate", "deep.yml")
    assert code == 2
    assert err.startswith("deep.yml:3:") and "nested" in err


def write_job(name: str, action: str, select: str = "{modality: RTPLAN}") -> str:
    Path(name).write_text("version: 1\nname: t\narchive: {data: data, database: conquest.db}\n"
                          f"select: {select}\naction: {action}\n")
    return name


@pytest.mark.parametrize("dry", [False, True])
@pytest.mark.parametrize("action, message", [
    ("{copy: {destination: afile/sub}}", "afile exists and is not a folder"),
    ("{dump: {file: afile/x.csv}}", "afile exists and is not a folder"),
    ("{dump: {file: adir}}", "adir is a folder"),
])
def test_a_file_where_a_folder_belongs_fails_the_step_clearly_also_in_a_dry_run(
        scratch, capsys, dry, action, message):
    Path("afile").write_text("not a folder")
    Path("adir").mkdir()
    job = write_job("j.yml", action)
    assert run_cli(capsys, "rebuild")[0] == 0
    code, out, _ = run_cli(capsys, *(["--dry-run"] if dry else []), "--json", job)
    assert code == 1
    doc = json.loads(out)
    assert message in doc["report"]["steps"][0]["error"]
    assert Path("afile").read_text() == "not a folder"
    assert list(Path("adir").iterdir()) == []


# -- saved plans ----------------------------------------------------------------------------------
def _edit(plan: dict, where: str, value) -> dict:
    """plan with the value at a dotted path ('steps.0.options.destination') replaced."""
    keys = [int(k) if k.isdigit() else k for k in where.split(".")]
    node = plan
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return plan


@pytest.mark.parametrize("where, value, message", [
    ("steps.0.action", 5, "steps[0].action: 5 is not one of"),
    ("data_dir", 5, "data_dir: 5 is not of type 'string'"),
    ("database", None, "database: None is not of type 'string'"),
    ("format", 9, "format: 1 was expected"),
    ("steps.0.series.0.instances.0.size", "big", "instances[0].size: 'big' is not of type"),
    ("steps.0.series", [5], "steps[0].series[0]: 5 is not of type 'object'"),
    ("steps.0.options.destination", 5, "steps[0].options.destination: 5 is not of type"),
    ("steps.0.action", "delete", "steps[0].destructive: must be true for a delete step"),
    ("steps", [], "steps: [] should be non-empty"),
])
def test_apply_of_a_hand_edited_plan_with_wrong_types_names_the_wrong_field(
        scratch, capsys, where, value, message):
    job = write_job("j.yml", "{copy: {destination: out}}")
    assert run_cli(capsys, "rebuild")[0] == 0
    assert run_cli(capsys, "--plan-out", "plan.json", job)[0] == 0
    plan = json.loads(Path("plan.json").read_text())
    Path("edited.json").write_text(json.dumps(_edit(plan, where, value)))
    code, _, err = run_cli(capsys, "--apply", "edited.json")
    assert code == 2
    assert err.startswith("edited.json: not a conquest-run plan file (")
    assert message in err
    assert not Path("out").exists()


@pytest.mark.parametrize("target, message", [
    ("missing/plan.json", "the folder for the plan does not exist: missing"),
    ("afile/plan.json", "the folder for the plan is a file, not a folder: afile"),
    ("adir", "adir: is a folder; --plan-out names the plan file to write"),
])
def test_plan_out_to_an_unusable_place_says_why(scratch, capsys, target, message):
    Path("afile").write_text("x")
    Path("adir").mkdir()
    job = write_job("j.yml", "{copy: {destination: out}}")
    code, _, err = run_cli(capsys, "--plan-out", target, job)
    assert code == 2
    assert message in err
    assert list(Path("adir").iterdir()) == [] and Path("afile").read_text() == "x"


# -- --data / --database --------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--data", "afile"], "afile: the data directory is a file, not a folder"),
    (["--database", "adir"], "adir: the database is a folder, not a file"),
    (["--dry-run", "--data", "afile"], "afile: the data directory is a file, not a folder"),
    (["--dry-run", "--database", "adir"], "adir: the database is a folder, not a file"),
    (["rebuild", "--data", "afile"], "afile: the data directory is a file, not a folder"),
    (["store", "--data", "afile", "data/RT001"], "afile: the data directory is a file, not a "
                                                 "folder"),
    (["rebuild", "--database", "adir"], "adir: the database is a folder, not a file"),
    (["summary", "--database", "adir"], "adir: the database is a folder, not a file"),
    (["query", "--database", "adir", "select 1"], "adir: the database is a folder, not a file"),
    (["history", "--database", "adir"], "adir: the database is a folder, not a file"),
])
def test_a_file_for_the_data_folder_or_a_folder_for_the_database_is_named(
        scratch, capsys, args, message):
    Path("afile").write_text("x")
    Path("adir").mkdir()
    assert run_cli(capsys, "rebuild")[0] == 0
    job = write_job("j.yml", "{copy: {destination: out}}")
    argv = args if args[0] in ("rebuild", "store", "summary", "query", "history") else [*args, job]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.strip().endswith(message)
    assert list(Path("adir").iterdir()) == [] and Path("afile").read_text() == "x"
    assert not Path("out").exists()


def _foreign_database(path: str) -> None:
    """An SQLite file with Conquest-named tables of another layout."""
    import sqlite3
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE DICOMPatients (PatientID text, Foo text)")
    conn.execute("CREATE TABLE DICOMSeries (SeriesInst text)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("args, message", [
    (["rebuild"], "other.db: table DICOMPatients lacks the columns PatientNam"),
    (["store", "data/RT001"], "other.db: table DICOMPatients lacks the columns PatientNam"),
    (["summary"], "other.db: cannot read the index: no such table: DICOMStudies"),
])
def test_a_database_of_another_layout_is_refused_with_its_name(scratch, capsys, args, message):
    import sqlite3
    _foreign_database("other.db")

    def content() -> list[str]:
        conn = sqlite3.connect("other.db")
        try:
            return list(conn.iterdump())
        finally:
            conn.close()
    before = content()
    code, _, err = run_cli(capsys, *args, "--database", "other.db")
    assert code == 2
    assert err.startswith(message)
    assert content() == before


@pytest.mark.parametrize("wal", [True, False])
@pytest.mark.parametrize("args", [["rebuild"], ["store", "data/RT001"], ["JOB"]])
def test_a_database_locked_by_another_writer_is_a_plain_error(scratch, capsys, monkeypatch,
                                                              wal, args):
    import sqlite3

    from conquest_run import db
    assert run_cli(capsys, "rebuild")[0] == 0
    if not wal:
        conn = sqlite3.connect("conquest.db")
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.close()
    job = write_job("j.yml", "{copy: {destination: out}}")
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 200)
    holder = sqlite3.connect("conquest.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        code, _, err = run_cli(capsys, *[job if a == "JOB" else a for a in args])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 2
    assert err.startswith("conquest.db: the database is locked: another process holds a "
                          "write transaction")
    assert not Path("out").exists()


# -- archive commands -----------------------------------------------------------------------------
def test_store_of_links_fifos_and_devices_names_each_and_move_copies_a_link_target(
        scratch, capsys, tmp_path):
    import os
    source = sorted(Path("data/RT001").glob("*.dcm"))[0]
    target = tmp_path / "elsewhere.dcm"
    target.write_bytes(source.read_bytes())
    inc = Path("incoming")
    inc.mkdir()
    (inc / "link.dcm").symlink_to(target)
    (inc / "broken.dcm").symlink_to("nowhere")
    os.mkfifo(inc / "fifo.dcm")
    Path("archive").mkdir()
    code, out, err = run_cli(capsys, "store", "--move", "--data", "archive", "--database",
                             "a.db", str(inc), "/dev/null")
    assert code == 1
    assert "1 files stored" in out
    assert f"{inc / 'broken.dcm'}: a broken symbolic link" in err
    assert f"{inc / 'fifo.dcm'}: not a regular file" in err
    assert "/dev/null: not a regular file" in err
    stored = list(Path("archive").rglob("*.dcm"))
    assert len(stored) == 1
    assert not stored[0].is_symlink() and stored[0].read_bytes() == source.read_bytes()
    assert not (inc / "link.dcm").is_symlink()          # the link was moved ...
    assert target.read_bytes() == source.read_bytes()   # ... not what it points to
    # the stored file is a real file, so a rebuild finds it again
    assert run_cli(capsys, "rebuild", "--data", "archive", "--database", "a.db")[1].startswith(
        "1 files indexed")


def test_rich_markup_in_names_and_dicom_values_is_printed_as_text(scratch, capsys, monkeypatch):
    """``[/x]`` in a job name, a step name, a target or a PatientID is text, not rich markup
    (a closing tag without an opening one made rich raise)."""
    import pydicom
    Path("j.yml").write_text(
        'version: 1\nname: "[/x]"\narchive: {data: data, database: conquest.db}\n'
        'steps:\n  - name: "[/y]"\n    select: {modality: RTPLAN}\n'
        '    action: {copy: {destination: "out/[/z]"}}\n')
    assert run_cli(capsys, "j.yml")[0] == 0
    code, out, _ = run_cli(capsys, "history")
    assert code == 0 and "[/x]" in out
    run_id = json.loads(run_cli(capsys, "history", "--json")[1])[0]["run_id"]
    code, out, _ = run_cli(capsys, "history", "--run", run_id)
    assert code == 0 and "[/y]" in out and "out/[/z]" in out
    ds = pydicom.dcmread(sorted(Path("data/RT001").glob("*.dcm"))[0])
    ds.PatientID = "[/bad]"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.99"
    ds.SeriesInstanceUID, ds.StudyInstanceUID = "1.2.5.99", "1.2.4.99"
    ds.save_as("markup.dcm")
    assert run_cli(capsys, "store", "markup.dcm")[0] == 0
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)   # the rich table of a terminal
    code, out, _ = run_cli(capsys, "summary")
    assert code == 0 and "[/bad]" in out
    code, out, _ = run_cli(capsys, "query", 'select PatientID as "[/h]" from DICOMPatients')
    assert code == 0 and "[/h]" in out and "[/bad]" in out


def test_a_progress_bar_shows_a_destination_with_markup_as_text(scratch, capsys, monkeypatch):
    write_job("j.yml", '{copy: {destination: "out/[/z]"}}')
    assert run_cli(capsys, "rebuild")[0] == 0
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)   # progress bars on a terminal
    code, out, _ = run_cli(capsys, "j.yml")
    assert code == 0, out
    assert len(list(Path("out/[/z]").rglob("*.dcm"))) == 4


# -- network (no traffic: each is refused before an association) ----------------------------------
@pytest.mark.parametrize("args, message", [
    (["serve", "--port", "0", "--aet", ""], "our AE title (--aet) '' is blank"),
    (["serve", "--port", "0", "--aet", "A" * 17], "is longer than 16 characters"),
    (["serve", "--port", "0", "--aet", "BAD\\AE"], "contains a backslash"),
    (["serve", "--port", "0", "--allow", ""], "the allowed calling AE title '' is blank"),
    (["echo", "127.0.0.1", "9", "--aet", ""], "the calling AE title '' is blank"),
    (["echo", " ", "9"], "the host is empty; give a host name or IP address"),
    (["echo", "127.0.0.1", "9", "--called-ae", "A" * 17], "the called AE title 'AAAAAAAAAAAAAAAAA' "
                                                         "is longer than 16 characters"),
    (["echo", "127.0.0.1", "9", "--timeout", "-1"], "the timeout must be a positive number"),
    (["echo", "127.0.0.1", "9", "--timeout", "nan"], "the timeout must be a positive number"),
    (["echo", "127.0.0.1", "9", "--timeout", "1e300"], "the timeout must be a positive number "
                                                       "of seconds up to 86400, not 1e+300"),
])
def test_an_unusable_ae_title_or_timeout_is_a_usage_error(scratch, capsys, args, message):
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert message in err


def test_echo_and_send_to_a_host_name_that_cannot_resolve_say_so(scratch, capsys):
    host = "a" * 64 + ".invalid"           # refused by the resolver without asking DNS
    code, _, err = run_cli(capsys, "echo", host, "104")
    assert code == 1
    assert f"C-ECHO to ANY-SCP@{host}:104: {host!r} is not a valid host name" in err
    from conquest_run import Archive
    from conquest_run.errors import NetworkError
    archive = Archive("data", "conquest.db")
    archive.rebuild()
    uids = archive.query("select SeriesInst from DICOMSeries where Modality = 'RTPLAN'",
                         column="SeriesInst")
    with pytest.raises(NetworkError, match=f"cannot send to PACS@{host}:104: "
                                           f"'{host}' is not a valid host name"):
        archive.send(uids, host=host, port=104, called_ae="PACS", retries=0)


@pytest.fixture
def refusing_peer():
    """A pynetdicom SCP on 127.0.0.1 that accepts associations and refuses the rest:
    ``start(mode)`` -> port; mode "status" answers every C-STORE 0xA700, "contexts" accepts
    only Verification (no storage context), "accept" stores nothing but answers success.
    Stopped at the end of the test."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification
    servers = []

    def start(mode: str) -> int:
        ae = AE(ae_title="PACS")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        if mode in ("status", "accept"):
            ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        status = 0xA700 if mode == "status" else 0x0000
        server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
            (evt.EVT_C_STORE, lambda event: status)])
        servers.append(server)
        return server.server_address[1]
    yield start
    for server in servers:
        server.shutdown()


@pytest.mark.parametrize("mode, reason", [
    ("status", "refused by the peer: status 0xA700"),
    ("contexts", "the peer accepted the association but none of the proposed presentation "
                 "contexts (RT Plan Storage)"),
])
def test_send_to_a_peer_that_accepts_the_association_but_refuses_everything(
        scratch, capsys, refusing_peer, mode, reason):
    port = refusing_peer(mode)
    write_job("j.yml", f"{{send: {{host: 127.0.0.1, port: {port}, called_ae: PACS, "
                       f"retries: 0, timeout: 5}}}}")
    assert run_cli(capsys, "rebuild")[0] == 0
    code, out, err = run_cli(capsys, "--json", "j.yml")
    assert code == 1, err
    step = json.loads(out)["report"]["steps"][0]
    reasons = [o["reason"] for o in step["outcomes"]] + [step["error"] or ""]
    assert any(reason in r for r in reasons), reasons
    assert not any(o["status"] == "done" for o in step["outcomes"])
    # nothing is journaled as confirmed: a rerun would try all four again
    code, out, _ = run_cli(capsys, "--json", "--dry-run", "j.yml")
    assert json.loads(out)["report"]["steps"][0]["totals"]["skipped"] == 0


def test_two_steps_writing_the_same_file_are_refused_before_anything_runs(scratch, capsys):
    Path("j.yml").write_text(
        "version: 1\nname: ov\narchive: {data: data, database: conquest.db}\nsteps:\n"
        "  - select: {modality: RTPLAN}\n    action: {copy: {destination: ov/a}}\n"
        "  - select: {modality: CT}\n    action: {copy: {destination: ./ov/a/}}\n"
        "  - select: {modality: CT}\n    action: {copy: {destination: ov/a, manifest: csv}}\n"
        "  - select: {modality: RTPLAN}\n    action: {dump: {file: ov/a/manifest.json}}\n"
        "  - select: {modality: RTPLAN}\n    action: {dump: {file: ov/a, format: text, "
        "per_instance: true}}\n")
    code, _, err = run_cli(capsys, "j.yml")
    assert code == 2
    assert err.splitlines() == [
        "j.yml:8:34: steps[1].action.copy.destination: this step writes ./ov/a/manifest.json, "
        "which step 1 (copy) writes too; the later one would replace it (give each step its own "
        "destination)",
        "j.yml:12:27: steps[3].action.dump.file: this step writes ov/a/manifest.json, which "
        "step 1 (copy) writes too; the later one would replace it (give each step its own file)"]
    assert not Path("ov").exists() and not Path("conquest.db").exists()


def test_store_that_cannot_write_into_the_archive_stops_with_what_it_stored_indexed(
        scratch, capsys):
    Path("archive").mkdir()
    Path("archive/RT001").write_text("a file where the patient folder goes")
    pat003 = sorted(Path("data/PAT003").glob("*.dcm"))
    code, out, err = run_cli(capsys, "store", "--data", "archive", "--database", "a.db",
                             "data/PAT003", "data/RT001")
    assert code == 2
    first = sorted(Path("data/RT001").glob("*.dcm"))[0]
    assert err.endswith(f"archive/RT001: cannot store {first}: File exists; stopped after "
                        f"{len(pat003)} files, which are stored and indexed\n")
    code, out, _ = run_cli(capsys, "query", "--data", "archive", "--database", "a.db",
                           "--no-header", "select ImagePat, count(*) from DICOMImages "
                           "group by ImagePat")
    assert out.split() == ["PAT003", str(len(pat003))]
    assert len(list(Path("archive/PAT003").glob("*.dcm"))) == len(pat003)
    assert Path("archive/RT001").read_text() == "a file where the patient folder goes"


def test_a_file_name_that_is_not_utf8_is_reported_and_does_not_wipe_the_index(scratch, capsys):
    import os
    assert run_cli(capsys, "rebuild")[1].startswith("23 files indexed")
    source = sorted(Path("data/RT001").glob("*.dcm"))[0]
    try:
        with open(os.fsencode("data/RT001") + b"/x\xff.dcm", "wb") as f:
            f.write(source.read_bytes())
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    for args in (["rebuild"], ["rebuild", "--refresh"], ["rebuild", "--patient", "RT001"]):
        code, out, err = run_cli(capsys, *args)
        assert code == 1            # a file that could not be indexed: exit 1 (README)
        assert "1 bad" in out
        assert err == "RT001/x\ufffd.dcm: the file name is not valid UTF-8 (rename it to index it)\n"
        code, out, _ = run_cli(capsys, "query", "--no-header", "select count(*) from DICOMImages")
        assert out.split() == ["23"]


def test_a_text_dump_of_a_header_with_a_corrupt_element_fails_that_instance_only(
        scratch, capsys):
    """pydicom decodes elements lazily: an unknown VR surfaced as an 'internal error' of the
    whole dump step."""
    victim = sorted(Path("data/PAT003").glob("*.dcm"))[0]
    raw = bytearray(victim.read_bytes())
    at = raw.find(b"\x08\x00\x90\x00PN")            # ReferringPhysicianName, explicit VR
    assert at > 0
    raw[at + 5] = 0x9B                                # VR "P\x9b": unknown
    victim.write_bytes(bytes(raw))
    write_job("j.yml", "{dump: {file: out/h.txt, format: text}}", "{patient: PAT003}")
    assert run_cli(capsys, "rebuild")[0] == 0
    code, out, _ = run_cli(capsys, "--json", "j.yml")
    assert code == 1
    step = json.loads(out)["report"]["steps"][0]
    assert step["error"] is None
    failed = [o for o in step["outcomes"] if o["status"] == "failed"]
    assert [o["sop_uid"] for o in failed] == [victim.stem]
    assert failed[0]["reason"].startswith("cannot read the DICOM header: NotImplementedError: "
                                          "Unknown Value Representation")
    done = [o for o in step["outcomes"] if o["status"] == "done"]
    assert len(done) == len(list(Path("data/PAT003").glob("*.dcm"))) - 1
    assert Path("out/h.txt").read_text().count("\n# PAT003/") == len(done) - 1


def test_send_of_a_file_whose_meta_uid_cannot_be_encoded_fails_that_file_only(
        scratch, capsys, refusing_peer):
    """A non-ASCII SOP class UID in one file's meta made pynetdicom's association request
    unencodable: a traceback from its reactor thread and no file sent at all."""
    plan_uid = b"1.2.840.10008.5.1.4.1.1.481.5"
    victim = next(p for p in sorted(Path("data").rglob("*.dcm"))
                  if plan_uid in p.read_bytes()[:400])
    raw = victim.read_bytes()
    at = raw.index(plan_uid)
    victim.write_bytes(raw[:at + 10] + b"\xff" + raw[at + 11:])
    port = refusing_peer("accept")
    write_job("j.yml", f"{{send: {{host: 127.0.0.1, port: {port}, called_ae: PACS, "
                       f"retries: 0, timeout: 5}}}}")
    assert run_cli(capsys, "rebuild")[0] == 0
    code, out, err = run_cli(capsys, "--json", "j.yml")
    assert code == 1
    assert "Traceback" not in err
    step = json.loads(out)["report"]["steps"][0]
    failed = [o for o in step["outcomes"] if o["status"] == "failed"]
    assert [o["sop_uid"] for o in failed] == [victim.stem]
    assert "the file meta's SOP class" in failed[0]["reason"]
    assert "is not a valid UID" in failed[0]["reason"]
    assert step["totals"]["done"] == 3


def test_a_received_request_with_a_uid_that_is_not_ascii_is_a_plain_dicom_error():
    from conquest_run.errors import DicomFileError
    from conquest_run.net.receiver import part10_bytes
    with pytest.raises(DicomFileError, match="the request names a UID that is not valid: "
                                             "'2.25.4\u00e3'"):
        part10_bytes("1.2.840.10008.5.1.4.1.1.2", "2.25.4\u00e3", "1.2.840.10008.1.2", b"")


def test_apply_refuses_a_plan_whose_file_paths_were_edited_to_other_files(scratch, capsys):
    """A delete with files: true would otherwise remove another instance's file and leave
    that instance indexed without its file."""
    write_job("j.yml", "{delete: {files: true}}", "{modality: RTPLAN, patient: RT001}")
    assert run_cli(capsys, "rebuild")[0] == 0
    assert run_cli(capsys, "--plan-out", "plan.json", "j.yml")[0] == 0
    plan = json.loads(Path("plan.json").read_text())
    inst = plan["steps"][0]["series"][0]["instances"][0]
    other = next(p for p in sorted(Path("data/RT001").glob("*.dcm"))
                 if p.stem != inst["sop_uid"])
    inst["path"] = f"RT001/{other.name}"
    Path("edited.json").write_text(json.dumps(plan))
    before = sorted(p.name for p in Path("data").rglob("*.dcm"))
    code, _, err = run_cli(capsys, "--apply", "edited.json")
    assert code == 2
    assert err.startswith("edited.json: the archive changed since the plan was made")
    assert f"instance {inst['sop_uid']} is indexed at RT001/{inst['sop_uid']}.dcm, " \
           f"not at RT001/{other.name}" in err
    assert sorted(p.name for p in Path("data").rglob("*.dcm")) == before
    code, out, _ = run_cli(capsys, "query", "--no-header", "select count(*) from DICOMImages")
    assert out.split() == [str(len(before))]


@pytest.mark.parametrize("dry", [False, True])
def test_a_dump_or_a_plan_onto_the_database_itself_is_refused(scratch, capsys, dry):
    """A dump with file: conquest.db replaced the index (and the audit log) with a CSV."""
    assert run_cli(capsys, "rebuild")[0] == 0
    before = Path("conquest.db").read_bytes()[:16]
    write_job("j.yml", "{dump: {file: conquest.db}}")
    code, out, _ = run_cli(capsys, *(["--dry-run"] if dry else []), "--json", "j.yml")
    assert code == 1
    assert json.loads(out)["report"]["steps"][0]["error"] == (
        "dump: conquest.db is the archive's database; write the dump somewhere else")
    for target in ("conquest.db", "./conquest.db-wal"):
        code, _, err = run_cli(capsys, "--plan-out", target, "j.yml")
        assert code == 2
        assert err == (f"{Path(target)}: is the archive's database; write the plan "
                       "somewhere else\n")
    assert Path("conquest.db").read_bytes()[:16] == before == b"SQLite format 3\0"
    assert run_cli(capsys, "summary")[0] == 0


def test_echo_and_send_to_a_listener_that_never_answers_say_so_within_the_timeout(
        scratch, capsys):
    import socket
    import threading
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:                 # takes connections, never says a word
        while not done.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    silent = "the peer took the connection but did not answer the association request within 1 s"
    try:
        code, _, err = run_cli(capsys, "echo", "127.0.0.1", str(port), "--timeout", "1")
        assert code == 1
        assert err == f"C-ECHO to ANY-SCP@127.0.0.1:{port}: {silent} (is it a DICOM peer?)\n"
        write_job("j.yml", f"{{send: {{host: 127.0.0.1, port: {port}, called_ae: PACS, "
                           f"retries: 0, timeout: 1}}}}")
        assert run_cli(capsys, "rebuild")[0] == 0
        code, out, _ = run_cli(capsys, "--json", "j.yml")
        assert code == 1
        assert silent in json.loads(out)["report"]["steps"][0]["error"]
    finally:
        done.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()


@pytest.mark.parametrize("args, message", [
    (["--validate", "/dev/zero"], "/dev/zero: a device, not a file"),
    (["--apply", "/dev/zero"], "/dev/zero: not a plan file: a device, not a file"),
    (["summary", "--dicom-sql", "/dev/zero"], "/dev/zero: cannot read: a device, not a file"),
])
def test_a_device_as_a_job_plan_or_dicom_sql_is_refused_not_read_forever(
        scratch, capsys, args, message):
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero here")
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert err.startswith(message)


def test_a_damaged_database_is_a_plain_error_not_a_traceback(scratch, capsys):
    assert run_cli(capsys, "rebuild")[0] == 0
    assert not Path("conquest.db-wal").exists()       # all of it is in the file
    with open("conquest.db", "r+b") as f:              # pages 2 and 3 overwritten
        f.seek(4096)
        f.write(b"\xff" * 8192)
    code, _, err = run_cli(capsys, "rebuild")
    assert code == 2
    assert err.startswith("the database cannot be used: database disk image is malformed")


@pytest.mark.parametrize("dry", [True, False])
def test_a_step_using_what_an_earlier_step_deletes_is_refused_before_anything_runs(
        scratch, capsys, dry):
    """The dry run said 'all done'; the real run deleted the files, then failed the copy."""
    Path("j.yml").write_text(
        "version: 1\nname: d\narchive: {data: data, database: conquest.db}\nsteps:\n"
        "  - select: {modality: RTPLAN}\n    action: {delete: {files: true}}\n"
        "  - select: {modality: RTPLAN}\n    action: {copy: {destination: out}}\n")
    assert run_cli(capsys, "rebuild")[0] == 0
    before = sorted(p.name for p in Path("data").rglob("*.dcm"))
    code, _, err = run_cli(capsys, *(["--dry-run"] if dry else []), "j.yml")
    assert code == 2
    assert err == ("j.yml:7:5: step 2 (copy) would copy 4 instances that step 1 (delete) "
                   "deletes first; put it before the delete or narrow its select\n")
    assert sorted(p.name for p in Path("data").rglob("*.dcm")) == before
    assert not Path("out").exists()


def test_store_move_that_cannot_remove_the_original_says_so_and_indexes_the_copy(
        scratch, capsys, monkeypatch):
    """A source on a read-only mount: the rename fails, the copy works, the unlink fails."""
    import errno
    import os

    from conquest_run import store as store_module
    incoming = Path("incoming")
    shutil.copytree("data/RT001", incoming)
    real_replace, real_unlink = os.replace, os.unlink

    def replace(src, dst):
        if Path(src).parent.resolve() == incoming.resolve():
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(src, dst)

    def unlink(path, *a, **k):
        if Path(path).parent.resolve() == incoming.resolve():
            raise PermissionError(errno.EROFS, "Read-only file system", str(path))
        return real_unlink(path, *a, **k)
    Path("archive").mkdir()
    with monkeypatch.context() as patched:
        patched.setattr(store_module.os, "replace", replace)
        patched.setattr(store_module.os, "unlink", unlink)
        code, out, err = run_cli(capsys, "store", "--move", "--data", "archive",
                                 "--database", "a.db", str(incoming))
    files = sorted(incoming.glob("*.dcm"))
    assert code == 1
    assert f"{len(files)} files stored" in out
    assert err.splitlines() == [f"{f}: stored, but the original could not be removed "
                                f"(Read-only file system)" for f in files]
    code, out, _ = run_cli(capsys, "query", "--data", "archive", "--database", "a.db",
                           "--no-header", "select count(*) from DICOMImages")
    assert out.split() == [str(len(files))]
    assert sorted(p.name for p in Path("archive/RT001").glob("*.dcm")) == [f.name for f in files]
