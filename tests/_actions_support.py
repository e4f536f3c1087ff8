"""Helpers for the local-action tests: a small real archive, hand-made plans, contexts."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pydicom

from conftest import place_pydicom_files, pydicom_file

from conquest_run.actions import ActionContext
from conquest_run.archive import Archive
from conquest_run.audit import AuditLog
from conquest_run.db import connect, connect_reader
from conquest_run.plan import Plan, PlannedInstance, PlannedSeries, PlanStep



def make_archive(root: Path, extra: dict[str, Path] | None = None):
    """pydicom's RT/CT/MR files under root/data/<PatientID>/, indexed by the archive core into
    root/conquest.db; returns the ``Archive``.

    ``extra`` adds more files: {relative path under data/: source file}.
    """
    data = place_pydicom_files(root / "data")
    for rel, src in (extra or {}).items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, data / rel)
    archive = Archive(data, root / "conquest.db")
    result = archive.rebuild()
    assert not result.bad, result.bad
    return archive


def planned_series(archive: Archive, series_uids: list[str] | None = None,
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


def make_step(archive: Archive, action: str, options: dict, *, series=None,
              level: str = "series", query: str | None = None, target: str = "") -> PlanStep:
    if series is None:
        series = planned_series(archive)
    return PlanStep(1, action, action, dict(options), target or action, action == "delete",
                    level, tuple(series), query, None)


def make_plan(archive: Archive, steps: tuple[PlanStep, ...], name: str = "test-job") -> Plan:
    return Plan("jobs/test.yml", "ab" * 32, name, str(archive.data_dir), str(archive.database),
                None, steps, "2026-01-01T00:00:00+00:00")


def make_ctx(archive: Archive, step: PlanStep, *, dry_run: bool = False,
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


def run_action(archive: Archive, step: PlanStep, *, dry_run: bool = False):
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


def audit_rows(archive: Archive, run_id: str) -> list[tuple]:
    conn = connect_reader(archive.database)
    try:
        return conn.execute("SELECT SOPInstanc, Status, Reason, Detail FROM ConquestRunAudit "
                            "WHERE RunId = ? ORDER BY rowid", (run_id,)).fetchall()
    finally:
        conn.close()


def table_counts(archive: Archive) -> dict[str, int]:
    conn = connect_reader(archive.database)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("DICOMPatients", "DICOMStudies", "DICOMSeries", "DICOMImages",
                          "RTExtras")}
    finally:
        conn.close()
