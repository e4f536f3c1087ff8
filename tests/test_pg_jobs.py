"""Job files on a PostgreSQL index (``--database postgresql://...``): the same job gives the same
plan, copies, dump CSV and audit outcomes as on SQLite; a dry run writes nothing to the server;
delete, quarantine and restore keep rows and files together; a second run of a running job is
refused naming the first (two real processes); history reads the server's audit log."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from _jobs_support import tree_state

from conquest_run.cli import main

pytest.importorskip("psycopg")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "sample" / "data"

_JOB = """version: 1
name: same-everywhere
steps:
  - name: ct
    select: {modality: CT}
    action: {copy: {destination: out, layout: patient}}
  - name: patients
    action: {dump: {file: patients.csv, table: DICOMPatients}}
  - name: plans
    select: {modality: RTPLAN}
    action: {dump: {file: plans.csv}}
  - name: structures
    select:
      query: >-
        select SeriesInst, Modality, SeriesDesc from DICOMSeries
         where Modality = 'RTSTRUCT' order by SeriesInst
    action: {dump: {file: structures.csv}}
"""


@pytest.fixture
def two(tmp_path, monkeypatch):
    """The sample archive twice (tmp/sqlite/data, tmp/pg/data), the same job beside each."""
    if not SAMPLE.is_dir():
        pytest.skip("examples/sample/data has not been generated")
    for side in ("sqlite", "pg"):
        shutil.copytree(SAMPLE, tmp_path / side / "data")
        (tmp_path / side / "job.yml").write_text(_JOB, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _in(folder: Path, *argv: str) -> int:
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        return main(list(argv))
    finally:
        os.chdir(cwd)


def _pg(url: str, sql: str, *params) -> list[tuple]:
    from conquest_run.backends.postgres import connect
    with closing(connect(url)) as conn:
        return [tuple(r) for r in conn.execute(sql, params).fetchall()]


def _csv(path: Path, drop: tuple[str, ...] = ("AccessTime",)) -> list[list[str]]:
    rows = list(csv.reader(path.open(encoding="utf-8", newline="")))
    keep = [i for i, name in enumerate(rows[0]) if name not in drop]
    return [[r[i] for i in keep] for r in rows]


def test_the_same_job_gives_the_same_plan_files_dump_and_audit_on_both(two, pg_url, capsys):
    from conquest_run.audit import read_outcomes
    from conquest_run.backends.postgres import connect
    from conquest_run.db import connect_reader
    lite, pg = two / "sqlite", two / "pg"
    assert _in(lite, "job.yml", "--data", "data", "--database", "conquest.db",
               "--plan-out", "plan.json") == 0
    assert _in(pg, "job.yml", "--data", "data", "--database", pg_url,
               "--plan-out", "plan.json") == 0
    assert "has no Conquest tables yet: indexing data first" in capsys.readouterr().err
    from conquest_run.savedplan import load_plan
    plans = [load_plan(side / "plan.json") for side in (lite, pg)]
    assert plans[1].database == pg_url
    shape = [[(s.index, s.action, s.level, [(x.series_uid, x.patient_id, x.modality,
                                              [(i.sop_uid, i.path, i.size) for i in x.instances])
                                             for x in s.series]) for s in p.steps]
             for p in plans]
    assert shape[0] == shape[1] and sum(len(s[3]) for s in shape[0]) >= 5
    assert _in(lite, "--apply", "plan.json") == 0
    assert _in(pg, "--apply", "plan.json") == 0
    trees = [tree_state(side / "out") for side in (lite, pg)]
    manifests = [json.loads((side / "out" / "manifest.json").read_text()) for side in (lite, pg)]
    for tree, manifest in zip(trees, manifests):
        del tree["manifest.json"]
        manifest.pop("created")
        manifest.pop("run_id")
    assert trees[0] == trees[1] and len(trees[1]) >= 10 and manifests[0] == manifests[1]
    for name in ("patients.csv", "plans.csv", "structures.csv"):
        assert _csv(lite / name) == _csv(pg / name)
        assert len(_csv(pg / name)) > 1
    with closing(connect_reader(lite / "conquest.db")) as a, closing(connect(pg_url)) as b:
        outcomes = [sorted((o["step"], o["action"], o["status"], o["sop_uid"] or "",
                            o["series_uid"] or "") for o in read_outcomes(c, None))
                    for c in (a, b)]
    assert outcomes[0] == outcomes[1] and len(outcomes[1]) >= 12
    # the same again: every copy is identical, so skipped, on both
    assert _in(pg, "job.yml", "--data", "data", "--database", pg_url) == 0
    assert main(["history", "--database", pg_url, "--json"]) == 0
    capsys.readouterr()
    assert main(["history", "--database", pg_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all("\tok\t" in line for line in lines[1:])


def test_a_dry_run_writes_nothing_to_the_server(two, pg_url, capsys):
    pg = two / "pg"
    args = ("job.yml", "--data", "data", "--database", pg_url)
    assert _in(pg, "--dry-run", *args) == 2
    err = capsys.readouterr().err
    assert "has no Conquest tables yet and a dry run writes nothing" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _pg(pg_url, "SELECT count(*) FROM information_schema.tables WHERE "
                       "table_schema = current_schema()") == [(0,)]
    assert _in(pg, *args) == 0
    runs = _pg(pg_url, "SELECT count(*) FROM conquestrunruns")
    before = tree_state(pg)
    assert _in(pg, "--dry-run", *args) == 0
    assert tree_state(pg) == before
    assert _pg(pg_url, "SELECT count(*) FROM conquestrunruns") == runs


def test_delete_quarantine_and_restore_keep_rows_and_files_together(two, pg_url, capsys):
    pg = two / "pg"
    (pg / "del.yml").write_text("version: 1\nname: del\nselect: {patient: RT001, modality: CT}"
                                "\naction: {delete: {files: true}}\n")
    (pg / "q.yml").write_text("version: 1\nname: q\nselect: {patient: PAT003}\n"
                              "action: {delete: {files: quarantine}}\n")
    flags = ("--data", "data", "--database", pg_url, "--yes")
    assert _in(pg, "job.yml", *flags) == 0

    def indexed(patient: str) -> set[str]:
        return {r[0] for r in _pg(pg_url, "SELECT objectfile FROM dicomimages WHERE "
                                          "imagepat = ?", patient)}

    def on_disk(patient: str) -> set[str]:
        root = pg / "data"
        return {str(p.relative_to(root)) for p in (root / patient).rglob("*") if p.is_file()}
    ct = {r[0] for r in _pg(pg_url, "SELECT i.objectfile FROM dicomimages i JOIN dicomseries s "
                                    "ON s.seriesinst = i.seriesinst WHERE i.imagepat = 'RT001' "
                                    "AND s.modality = 'CT'")}
    assert ct and ct <= on_disk("RT001")
    assert _in(pg, "del.yml", *flags) == 0
    assert not ct & indexed("RT001") and not ct & on_disk("RT001")
    assert indexed("RT001") == on_disk("RT001") != set()
    before = indexed("PAT003")
    assert before == on_disk("PAT003") != set()
    assert _in(pg, "q.yml", *flags) == 0
    assert indexed("PAT003") == set() and on_disk("PAT003") == set()
    assert _pg(pg_url, "SELECT count(*) FROM conquestrunremovals") == [(0,)]
    run_id = _pg(pg_url, "SELECT runid FROM conquestrunruns WHERE jobname = 'q'")[0][0]
    assert (pg / "data" / ".quarantine" / run_id).is_dir()
    assert main(["restore", run_id[:8], "--data", str(pg / "data"), "--database", pg_url]) == 0
    assert indexed("PAT003") == before == on_disk("PAT003")
    capsys.readouterr()
    assert main(["history", "--database", pg_url, "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [r["state"] for r in runs] == ["ok"] * 4
    assert {r["job_name"] for r in runs} == {"same-everywhere", "del", "q", "restore"}


def _forked(folder: Path, *argv: str, stderr: Path | None = None):
    """``conquest-run ARGV`` in a forked process (the CLI code, no interpreter start-up);
    its stderr into ``stderr`` when given."""
    import multiprocessing

    def child() -> None:
        import io
        os.chdir(folder)
        sys.stdout = io.StringIO()
        sys.stderr = open(stderr or os.devnull, "w", encoding="utf-8")
        code = main(list(argv))
        sys.stderr.flush()
        os._exit(code)
    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    return proc


@pytest.mark.parametrize("signum,state", [(signal.SIGKILL, "crashed"),
                                          (signal.SIGTERM, "interrupted")])
def test_a_second_run_of_a_running_job_is_refused_and_a_stopped_one_says_how(two, pg_url,
                                                                             signum, state):
    """The first run is held inside its delete (the test holds a SHARE lock on DICOMImages,
    which the delete's SHARE ROW EXCLUSIVE waits for); a second process of the same job is
    refused naming it; killed, the first reads as crashed (SIGTERM: interrupted, recorded by
    itself), and its lock is gone."""
    import psycopg
    pg = two / "pg"
    (pg / "del.yml").write_text("version: 1\nname: del\nselect: {patient: RT001}\n"
                                "action: {delete: {files: true}}\n")
    flags = ("--data", "data", "--database", pg_url, "--yes")
    assert _in(pg, "rebuild", "--data", "data", "--database", pg_url) == 0
    holder = psycopg.connect(pg_url)
    first = second = None
    try:
        holder.execute("LOCK TABLE dicomimages IN SHARE MODE")
        first = _forked(pg, "del.yml", *flags)
        deadline = time.monotonic() + 20
        running = []
        while not running and time.monotonic() < deadline and first.is_alive():
            time.sleep(0.05)
            running = _pg(pg_url, "SELECT runid FROM conquestrunruns WHERE jobname = 'del' "
                                  "AND state = 'running'")
        assert running, first.exitcode
        second = _forked(pg, "del.yml", *flags, stderr=pg / "second.err")
        second.join(timeout=30)
        err = (pg / "second.err").read_text()
        assert second.exitcode == 2, err
        assert f"run {running[0][0]}" in err and "already running" in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        os.kill(first.pid, signum)
        first.join(timeout=10)
        assert first.exitcode == (-9 if signum == signal.SIGKILL else 143)
    finally:
        holder.close()
        for proc in (first, second):
            if proc is not None and proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
    from conquest_run.backends.postgres import connect
    from conquest_run.history import read_runs
    with closing(connect(pg_url)) as conn:
        states = {r["run_id"]: r["state"] for r in read_runs(conn, None)}
    assert states[running[0][0]] == state
    deadline = time.monotonic() + 10           # the server notices the dead session
    while _pg(pg_url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") != [(0,)]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert _in(pg, "del.yml", *flags) == 0
    assert _pg(pg_url, "SELECT count(*) FROM dicomimages WHERE imagepat = 'RT001'") == [(0,)]
    assert not any((pg / "data" / "RT001").rglob("*.dcm"))


def test_history_failed_and_export_on_postgresql(two, pg_url, capsys):
    pg = two / "pg"
    (pg / "bad.yml").write_text("version: 1\nname: bad\nselect: {modality: CT}\n"
                                "action: {dump: {file: data}}\n")
    flags = ("--data", "data", "--database", pg_url)
    assert _in(pg, "job.yml", *flags) == 0
    assert _in(pg, "bad.yml", *flags) == 1
    capsys.readouterr()
    assert main(["history", "--database", pg_url, "--failed"]) == 0
    out = capsys.readouterr().out
    assert "(whole step)" in out and "failed" in out and "data is a folder" in out
    assert main(["history", "export", "--database", pg_url, "--out", str(pg / "h.csv")]) == 0
    rows = list(csv.DictReader((pg / "h.csv").open(encoding="utf-8")))
    assert {r["status"] for r in rows} == {"done", "failed"}
    assert {r["run_state"] for r in rows} == {"ok", "failed"}
    assert main(["history", "--database", pg_url, "--state", "failed"]) == 0
    assert "bad" in capsys.readouterr().out


def test_store_and_delete_of_one_study_at_once_keep_rows_and_files_together(two, pg_url):
    """As Orthanc's own concurrency test: a store of a study's files while a delete job of that
    study runs, several times; after each round the study is all there (every row, every file)
    or gone (no row, no file), never one without the other; a delete last leaves nothing."""
    pg = two / "pg"
    flags = ("--data", "data", "--database", pg_url)
    assert main(["rebuild", "--data", str(pg / "data"), "--database", pg_url]) == 0
    study = _pg(pg_url, "SELECT studyinsta FROM dicomstudies WHERE patientid = 'PAT003'")[0][0]
    (pg / "del.yml").write_text(f"version: 1\nname: del\nselect: {{study: '{study}'}}\n"
                                "action: {delete: {files: true}}\n")
    shutil.copytree(pg / "data" / "PAT003", pg / "incoming")
    everything = {str(p.relative_to(pg / "data")) for p in (pg / "data" / "PAT003").rglob("*")
                  if p.is_file()}
    assert len(everything) >= 5

    def state() -> tuple[set[str], set[str]]:
        rows = {r[0] for r in _pg(pg_url, "SELECT i.objectfile FROM dicomimages i JOIN "
                                          "dicomseries s ON s.seriesinst = i.seriesinst "
                                          "WHERE s.studyinsta = ?", study)}
        files = {str(p.relative_to(pg / "data")) for p in (pg / "data").rglob("*")
                 if p.is_file() and ".quarantine" not in p.parts}
        return rows, files & everything
    ends = []
    for round_ in range(4):          # the store lands in the delete's plan, rows or files
        delete = _forked(pg, "del.yml", *flags, "--yes")
        time.sleep(0.3 * round_)
        store = _forked(pg, "store", *flags, "incoming")
        for proc in (delete, store):
            proc.join(timeout=60)
            assert proc.exitcode in (0, 2), proc.exitcode    # 2: the delete found nothing
        assert store.exitcode == 0
        rows, files = state()
        assert rows == files and rows in (set(), everything), (round_, rows ^ files)
        ends.append(bool(rows))
    print("rounds ending with the study there:", ends)
    delete = _forked(pg, "del.yml", *flags, "--yes")
    delete.join(timeout=60)
    assert delete.exitcode in (0, 2)
    assert state() == (set(), set())
    assert _pg(pg_url, "SELECT count(*) FROM conquestrunremovals") == [(0,)]


def test_send_on_postgresql_journals_what_the_peer_confirmed(two, pg_url, capsys):
    """A real send to dcmtk's storescp, its outcomes in the server's audit log: the re-run
    skips every instance the peer confirmed; a dry run reads the same journal."""
    from _net_support import received_sops, storescp
    pg = two / "pg"
    flags = ("--data", "data", "--database", pg_url)
    with storescp(two / "received") as (_, port):
        (pg / "send.yml").write_text(
            "version: 1\nname: snd\nselect: {modality: CT}\naction: {send: {host: 127.0.0.1, "
            f"port: {port}, called_ae: STORESCP}}}}\n")
        assert _in(pg, "send.yml", *flags, "--json") == 0
        first = json.loads(capsys.readouterr().out)["report"]["steps"][0]["outcomes"]
        planned = {r[0] for r in _pg(pg_url, "SELECT i.sopinstanc FROM dicomimages i JOIN "
                                              "dicomseries s ON s.seriesinst = i.seriesinst "
                                              "WHERE s.modality = 'CT'")}
        assert {o["sop_uid"] for o in first if o["status"] == "done"} == planned
        assert set(received_sops(two / "received")) == planned
        for extra in ((), ("--dry-run",)):
            assert _in(pg, "send.yml", *flags, "--json", *extra) == 0
            again = json.loads(capsys.readouterr().out)["report"]["steps"][0]["outcomes"]
            assert {o["status"] for o in again} == {"skipped"} and len(again) == len(planned)
