"""Helpers for the local-action tests: a small real archive, hand-made plans, contexts."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from conquest_run.actions import ActionContext
from conquest_run.audit import AuditLog
from conquest_run.actions._local import connect_reader
from conquest_run.db import connect, ensure_schema
from conquest_run.plan import Plan, PlannedInstance, PlannedSeries, PlanStep
from conquest_run.schema import Schema, load_schema

FILES = ("rtplan.dcm", "rtdose.dcm", "rtstruct.dcm", "CT_small.dcm", "MR_small.dcm")


@dataclass
class MiniArchive:
    """What the actions need from an ``Archive``: the data folder, database and schema."""

    data_dir: Path
    database: Path
    schema: Schema


def pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available")
    return Path(path)


def _s(ds, keyword):
    v = ds.get(keyword)
    return None if v is None or v == "" else str(v)


def index_file(conn, data_dir: Path, path: Path) -> None:
    """Put one file's rows into the Conquest tables (the columns the actions read)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    rel = path.relative_to(data_dir).as_posix()
    pid = _s(ds, "PatientID") or ""
    conn.execute("INSERT OR IGNORE INTO DICOMPatients (PatientID, PatientNam, PatientSex) "
                 "VALUES (?, ?, ?)", (pid, _s(ds, "PatientName"), _s(ds, "PatientSex")))
    conn.execute("INSERT OR IGNORE INTO DICOMStudies (StudyInsta, StudyDate, StudyDescr, "
                 "PatientID, PatientNam) VALUES (?, ?, ?, ?, ?)",
                 (_s(ds, "StudyInstanceUID"), _s(ds, "StudyDate"), _s(ds, "StudyDescription"),
                  pid, _s(ds, "PatientName")))
    conn.execute("INSERT OR IGNORE INTO DICOMSeries (SeriesInst, SeriesNumb, SeriesDesc, "
                 "Modality, SeriesPat, StudyInsta) VALUES (?, ?, ?, ?, ?, ?)",
                 (_s(ds, "SeriesInstanceUID"), _s(ds, "SeriesNumber"),
                  _s(ds, "SeriesDescription"), _s(ds, "Modality"), pid,
                  _s(ds, "StudyInstanceUID")))
    conn.execute("INSERT INTO DICOMImages (SOPInstanc, SOPClassUI, ImageNumbe, ImagePat, "
                 "SeriesInst, ObjectFile, DeviceName) VALUES (?, ?, ?, ?, ?, ?, 'MAG0')",
                 (_s(ds, "SOPInstanceUID"), _s(ds, "SOPClassUID"), _s(ds, "InstanceNumber"),
                  pid, _s(ds, "SeriesInstanceUID"), rel))
    data = path.read_bytes()
    conn.execute("INSERT INTO RTExtras (SOPInstanc, Modality, hash, FileSize) VALUES (?,?,?,?)",
                 (_s(ds, "SOPInstanceUID"), _s(ds, "Modality"),
                  hashlib.sha256(data).hexdigest(), len(data)))


def make_archive(root: Path, extra: dict[str, Path] | None = None) -> MiniArchive:
    """pydicom's RT/CT/MR files under root/data/<PatientID>/, indexed into root/conquest.db.

    ``extra`` adds more files: {relative path under data/: source file}.
    """
    from conquest_run.actions._local import safe_patient_dir

    data = root / "data"
    schema = load_schema()
    root.mkdir(parents=True, exist_ok=True)
    conn = connect(root / "conquest.db")
    ensure_schema(conn, schema)
    placed = []
    for name in FILES:
        src = pydicom_file(name)
        ds = pydicom.dcmread(src, stop_before_pixels=True, force=True)
        folder = data / safe_patient_dir(str(ds.get("PatientID", "") or ""))
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, folder / name)
        placed.append(folder / name)
    for rel, src in (extra or {}).items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, data / rel)
        placed.append(data / rel)
    conn.execute("BEGIN")
    for p in placed:
        index_file(conn, data, p)
    conn.execute("COMMIT")
    conn.close()
    return MiniArchive(data, root / "conquest.db", schema)


def planned_series(archive: MiniArchive, series_uids: list[str] | None = None,
                   modality: str | None = None) -> tuple[PlannedSeries, ...]:
    conn = connect_reader(archive.database)
    sql = ("SELECT s.SeriesInst, s.SeriesPat, s.StudyInsta, s.Modality, s.SeriesDesc "
           "FROM DICOMSeries s")
    rows = conn.execute(sql).fetchall()
    out = []
    for uid, pid, study, mod, desc in rows:
        if series_uids is not None and uid not in series_uids:
            continue
        if modality is not None and mod != modality:
            continue
        insts = []
        for sop, cls, rel in conn.execute(
                "SELECT SOPInstanc, SOPClassUI, ObjectFile FROM DICOMImages WHERE SeriesInst = ? "
                "ORDER BY SOPInstanc", (uid,)):
            full = archive.data_dir / rel
            insts.append(PlannedInstance(sop, cls, rel,
                                         full.stat().st_size if full.exists() else None))
        out.append(PlannedSeries(uid, pid, study, mod, desc, tuple(insts)))
    conn.close()
    out.sort(key=lambda s: (s.patient_id or "", s.study_uid or "", s.series_uid))
    return tuple(out)


def make_step(archive: MiniArchive, action: str, options: dict, *, series=None,
              level: str = "series", query: str | None = None, target: str = "") -> PlanStep:
    if series is None:
        series = planned_series(archive)
    return PlanStep(1, action, action, dict(options), target or action, action == "delete",
                    level, tuple(series), query, None)


def make_plan(archive: MiniArchive, steps: tuple[PlanStep, ...], name: str = "test-job") -> Plan:
    return Plan("jobs/test.yml", "ab" * 32, name, str(archive.data_dir), str(archive.database),
                None, steps, "2026-01-01T00:00:00+00:00")


def make_ctx(archive: MiniArchive, step: PlanStep, *, dry_run: bool = False,
             audit: bool = True) -> tuple[ActionContext, object]:
    """A context; with ``audit`` a real AuditLog on the archive database (closed by caller)."""
    plan = make_plan(archive, (step,))
    conn = None
    log = None
    run_id = uuid.uuid4().hex
    if audit and not dry_run:
        conn = connect(archive.database)
        log = AuditLog(conn)
        log.start_run(run_id, plan.job_path, plan.job_sha256, plan.job_name)
    return ActionContext(archive, plan, dry_run=dry_run, audit=log, run_id=run_id), conn


def tree_state(*roots: Path) -> dict[str, bytes | str]:
    """Every path under the roots with its bytes (files) or a marker (folders, links)."""
    state: dict[str, bytes | str] = {}
    for root in roots:
        if root.is_file():
            state[str(root)] = root.read_bytes()
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                state[os.path.join(dirpath, d)] = "dir"
            for f in filenames:
                p = Path(dirpath, f)
                state[str(p)] = "link" if p.is_symlink() else p.read_bytes()
    return state


def variant(name: str, dest: Path, **changes: str) -> Path:
    """A pydicom test file rewritten with changed attributes (new UIDs, IDs, ...)."""
    ds = pydicom.dcmread(pydicom_file(name), force=True)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
        if keyword == "SOPInstanceUID" and getattr(ds, "file_meta", None) is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = value
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest)
    return dest


def ct_study(tmp: Path) -> dict[str, Path]:
    """Extra files for make_archive: patient CTX with one study holding series A (two CT
    instances) and series B (one), built from CT_small."""
    src = tmp / "src"
    common = dict(PatientID="CTX", PatientName="Study^Two", StudyInstanceUID="1.2.826.0.1.9.1")
    files = {
        "CTX/a1.dcm": variant("CT_small.dcm", src / "a1.dcm", SeriesInstanceUID="1.2.826.0.1.9.1.1",
                              SOPInstanceUID="1.2.826.0.1.9.1.1.1", **common),
        "CTX/a2.dcm": variant("CT_small.dcm", src / "a2.dcm", SeriesInstanceUID="1.2.826.0.1.9.1.1",
                              SOPInstanceUID="1.2.826.0.1.9.1.1.2", **common),
        "CTX/b1.dcm": variant("CT_small.dcm", src / "b1.dcm", SeriesInstanceUID="1.2.826.0.1.9.1.2",
                              SOPInstanceUID="1.2.826.0.1.9.1.2.1", **common),
    }
    return files


def run_action(archive: MiniArchive, step: PlanStep, *, dry_run: bool = False):
    """Run the step's action with a real audit log (not in a dry run); returns (report, run_id)."""
    from conquest_run.actions import get_action
    ctx, conn = make_ctx(archive, step, dry_run=dry_run)
    try:
        report = get_action(step.action)(step, ctx)
        if ctx.audit is not None:
            ctx.audit.end_run(ctx.run_id, report.ok)
    finally:
        if conn is not None:
            conn.close()
    return report, ctx.run_id


def audit_rows(archive: MiniArchive, run_id: str) -> list[tuple]:
    conn = connect_reader(archive.database)
    try:
        return conn.execute("SELECT SOPInstanc, Status, Reason, Detail FROM ConquestRunAudit "
                            "WHERE RunId = ? ORDER BY rowid", (run_id,)).fetchall()
    finally:
        conn.close()


def table_counts(archive: MiniArchive) -> dict[str, int]:
    conn = connect_reader(archive.database)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("DICOMPatients", "DICOMStudies", "DICOMSeries", "DICOMImages",
                          "RTExtras")}
    finally:
        conn.close()
