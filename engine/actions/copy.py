"""copy: the planned instances to a destination folder, byte for byte, with a manifest.

Options (from the job's ``action: copy: {...}``):

* ``destination`` (required): folder, relative to the current directory.
* ``layout``: ``patient`` (default, ``<PatientID>/<SeriesUID>/<SOPUID>.dcm``), ``series``
  (``<SeriesUID>/<SOPUID>.dcm``), ``flat`` (``<SOPUID>.dcm``), or a template such as
  ``"{PatientID}/{Modality}_{SeriesInst}/{SOPInstanc}.dcm"`` whose fields are index columns.
  Every value is made safe for paths (patient IDs the way Conquest names patient folders) and the
  resolved path must stay under the destination, outside the data directory, and be neither the
  database nor its ``-wal``/``-shm``/``-journal``.  A destination that is, or contains, or lies
  in the archive (data directory or database) is refused before anything is copied.
* ``overwrite``: ``never`` (default: a different file already there fails, an identical one is
  skipped), ``if_different`` (a different one is replaced, an identical one skipped) or
  ``always`` (every file written again).
* ``manifest``: ``json`` (default, ``manifest.json``), ``csv`` (``manifest.csv``) or ``false``.
* ``deidentify``: a PS3.15 Annex E profile (``engine/deid/``): each file is written
  de-identified instead of copied, named by its new UIDs and pseudonym (the layout may use only
  the plan's fields), with ``deidentification.json`` (per-file actions) beside the manifest.

Each copy is written to a temporary file and renamed; the bytes written are read back and must
have the SHA-256 of the bytes read.  The manifest lists every instance now at the destination
(done or identical), sorted by patient, series and SOP UID, so the same job over the same
archive gives the same files and the same manifest entries; only its time differs.
"""

from __future__ import annotations

__all__ = ["run", "copy_series", "check_layout", "destination_problem", "LAYOUTS",
           "OVERWRITE_MODES", "MANIFEST_FORMATS"]

import csv
import errno
import json
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..audit import now_iso
from ..deid import SecretError, open_export, write_file
from ..deid.export import deid_layout_problem
from ..deid.report import REPORT_NAME
from ..modify import ModifyError, chain, open_modify
from ..errors import ActionError, ArchiveError, JobError
from ..report import DONE, FAILED, SKIPPED, Outcome, StepReport
from ._local import (StepRecorder, archive_facts, connect_reader, filesystem, inside,
                     is_database_file, os_reason, progress, safe_component, safe_patient_dir,
                     sha256_file, source_path)

if TYPE_CHECKING:
    from ..plan import PlannedInstance, PlannedSeries, PlanStep
    from ..schema import Schema
    from . import ActionContext

LAYOUTS = {
    "patient": "{PatientID}/{SeriesInst}/{SOPInstanc}.dcm",
    "series": "{SeriesInst}/{SOPInstanc}.dcm",
    "flat": "{SOPInstanc}.dcm",
}
OVERWRITE_MODES = ("never", "if_different", "always")
MANIFEST_FORMATS = ("json", "csv")
MANIFEST_FORMAT_VERSION = 1
MANIFEST_FIELDS = ("sop_uid", "series_uid", "patient_id", "path", "size", "sha256")
# fields every layout may use without reading the index (they are in the plan)
_PLAN_FIELDS = ("SOPInstanc", "SeriesInst", "PatientID", "StudyInsta", "Modality", "SOPClassUI")
_PATIENT_FIELDS = ("patientid", "imagepat", "seriespat")


@dataclass(frozen=True)
class Layout:
    template: str
    fields: tuple[str, ...]          # canonical column names used, in order of appearance
    columns: dict[str, tuple[str, str]]  # field -> (table, column) read from the index

    @property
    def needs_index(self) -> bool:
        return any(f not in _PLAN_FIELDS for f in self.fields)


def _known_columns(schema: "Schema") -> dict[str, tuple[str, str]]:
    """lower-case name -> (table, column): images first, then series, study, patient."""
    out: dict[str, tuple[str, str]] = {}
    for table in (schema.images, schema.series, schema.studies, schema.patients):
        for name in table.column_names():
            out.setdefault(name.lower(), (table.name, name))
    return out


def check_layout(layout: str, schema: "Schema") -> Layout:
    """Parse a layout name or template; unknown fields or unsafe literals raise ``JobError``."""
    template = LAYOUTS.get(layout, layout)
    if not isinstance(template, str) or not template.strip():
        raise JobError("copy: layout must be patient, series, flat or a template such as "
                       "\"{PatientID}/{SeriesInst}/{SOPInstanc}.dcm\"")
    known = _known_columns(schema)
    fields: list[str] = []
    columns: dict[str, tuple[str, str]] = {}
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise JobError(f"copy: layout {template!r} is not a valid template: {exc}") from None
    literals = []
    for literal, field, spec, conversion in parsed:
        literals.append(literal)
        if field is None:
            continue
        if not field.isidentifier():
            raise JobError(f"copy: layout field {{{field}}} must be a plain column name")
        if conversion or (spec and "{" in spec):
            raise JobError(f"copy: layout field {{{field}}} may not use conversions or nested "
                           "fields")
        hit = known.get(field.lower())
        if hit is None:
            import difflib
            names = sorted({c for _, c in known.values()})
            close = difflib.get_close_matches(field, names, n=1, cutoff=0.6)
            raise JobError(f"copy: layout field {{{field}}} is not a column of the index"
                           + (f" (did you mean {close[0]}?)" if close
                              else f"; known columns: {', '.join(names)}"))
        fields.append(hit[1])
        columns[hit[1]] = hit
    if template.startswith("/") or "\\" in "".join(literals):
        raise JobError(f"copy: layout {template!r} must be a relative path with '/' separators")
    for part in template.split("/"):
        if part in ("", ".", ".."):
            raise JobError(f"copy: layout {template!r} has an empty, '.' or '..' folder")
    if not fields:
        raise JobError(f"copy: layout {template!r} names no field: every file would collide")
    return Layout(template, tuple(fields), columns)


def destination_problem(destination: "str | os.PathLike", data_dir: "str | os.PathLike | None",
                        database: "str | os.PathLike | None") -> str | None:
    """Why a copy may not write into ``destination`` (None: it may): it is, contains or lies
    in the data directory, or it contains the database (symlinks followed)."""
    dest = Path(os.path.realpath(destination))
    if data_dir is not None:
        data = Path(os.path.realpath(data_dir))
        if dest == data or dest.is_relative_to(data):
            return "is inside the archive's data directory; choose a folder outside it"
        if data.is_relative_to(dest):
            return ("contains the archive's data directory; choose a folder that holds "
                    "neither the data directory nor the database")
    from ..backends import is_postgres_url
    if database is not None and not is_postgres_url(database):
        db_path = Path(os.path.realpath(database))
        if db_path == dest or db_path.is_relative_to(dest):
            return ("contains the archive's database; choose a folder that holds neither "
                    "the data directory nor the database")
    return None


def _safe(field: str, value: Any) -> str:
    text = "" if value is None else str(value).strip()
    if field.lower() in _PATIENT_FIELDS:
        return safe_patient_dir(text)
    return safe_component(text)


def _index_values(conn, schema: "Schema", layout: Layout, series_uid: str) -> dict[str, dict]:
    """SOP UID -> {column: value} for one series, for the columns the layout reads."""
    im, se, st, pa = schema.images, schema.series, schema.studies, schema.patients
    alias = {im.name: "i", se.name: "s", st.name: "t", pa.name: "p"}
    cols = [f'{alias[t]}."{c}"' for f, (t, c) in layout.columns.items()]
    sql = (f'SELECT i."{im.key}", {", ".join(cols)} FROM "{im.name}" i '
           f'LEFT JOIN "{se.name}" s ON s."{se.key}" = i."{im.link}" '
           f'LEFT JOIN "{st.name}" t ON t."{st.key}" = s."{se.link}" '
           f'LEFT JOIN "{pa.name}" p ON p."{pa.key}" = t."{st.link}" '
           f'WHERE i."{im.link}" = ?')
    names = list(layout.columns)
    return {row[0]: dict(zip(names, row[1:])) for row in conn.execute(sql, (series_uid,))}


def _relative_path(layout: Layout, series: "PlannedSeries", inst: "PlannedInstance",
                   indexed: dict[str, Any], deid: Any = None) -> str:
    values = {"SOPInstanc": inst.sop_uid, "SeriesInst": series.series_uid,
              "PatientID": series.patient_id, "StudyInsta": series.study_uid,
              "Modality": series.modality, "SOPClassUI": inst.sop_class}
    if deid is not None:                # de-identified: named by the new values only
        values = deid.path_values(series, inst)
    for k, v in indexed.items():
        if v is not None or k not in values:
            values[k] = v
    safe = {f: _safe(f, values.get(f)) for f in layout.fields}
    try:
        rel = layout.template.format(**safe)
    except (ValueError, TypeError) as exc:
        raise ActionError(f"copy: layout {layout.template!r}: {exc}") from None
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ActionError(f"copy: layout gives an unsafe path {rel!r}")
    return rel


def _manifest_name(fmt: str) -> str:
    return f"manifest.{fmt}"


def _write_manifest(fs, path: Path, fmt: str, ctx: "ActionContext", layout: Layout,
                    entries: list[dict[str, Any]]) -> None:
    created = now_iso()
    if fmt == "json":
        doc = {"format": MANIFEST_FORMAT_VERSION, "job": ctx.plan.job_name,
               "job_sha256": ctx.plan.job_sha256, "created": created,
               "run_id": ctx.run_id,     # the run in the audit log (ConquestRunRuns.RunId)
               "layout": layout.template, "count": len(entries),
               "bytes": sum(e["size"] for e in entries), "instances": entries}
        with fs.atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    else:
        with fs.atomic_open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(MANIFEST_FIELDS + ("job", "job_sha256", "created", "run_id"))
            for e in entries:
                w.writerow([e[k] for k in MANIFEST_FIELDS]
                           + [ctx.plan.job_name, ctx.plan.job_sha256, created, ctx.run_id])


def _options(step: "PlanStep") -> tuple[str, str, str, str | None]:
    o = step.options or {}
    destination = o.get("destination")
    if not isinstance(destination, str) or not destination.strip():
        raise JobError("copy: option destination (a folder) is required")
    overwrite = o.get("overwrite", "never")
    if overwrite not in OVERWRITE_MODES:
        raise JobError(f"copy: overwrite must be one of {', '.join(OVERWRITE_MODES)}, "
                       f"not {overwrite!r}")
    manifest = o.get("manifest", "json")
    if manifest is False or manifest in ("none", "false"):
        manifest = None
    elif manifest not in MANIFEST_FORMATS:
        raise JobError(f"copy: manifest must be json, csv or false, not {manifest!r}")
    return destination, str(o.get("layout", "patient")), overwrite, manifest


def run(step: "PlanStep", ctx: "ActionContext") -> StepReport:
    rec = StepRecorder(step, ctx)
    facts = archive_facts(ctx.archive)
    try:
        destination, layout_name, overwrite, manifest_fmt = _options(step)
        layout = check_layout(layout_name, facts.schema)
    except JobError as exc:
        return rec.fail_step(exc.message)
    dest = Path(destination)
    dest_abs = Path(os.path.abspath(dest))
    try:
        deid = open_export(step.options, [s.patient_id or "" for s in step.series])
    except SecretError as exc:
        return rec.fail_step(f"copy: {exc}")
    try:
        writer, modify_summary = chain(deid, open_modify(step.options))
    except ModifyError as exc:
        return rec.fail_step(f"copy: {exc}")
    if deid is not None and (problem := deid_layout_problem(deid, layout, dest_abs)):
        return rec.fail_step(f"copy: {problem}")
    if problem := destination_problem(dest_abs, facts.data_dir, facts.database):
        return rec.fail_step(f"copy: the destination {destination} {problem}")
    if os.path.lexists(dest_abs) and not dest_abs.is_dir():
        return rec.fail_step(f"copy: the destination {destination} exists and is not a folder")
    fs = filesystem(ctx.dry_run)
    manifest_name = _manifest_name(manifest_fmt) if manifest_fmt else None

    conn = None
    if layout.needs_index:
        try:
            conn = connect_reader(facts.database)
        except ArchiveError as exc:
            return rec.fail_step(str(exc))
    entries: list[dict[str, Any]] = []
    used: dict[str, str] = {}  # relative path -> SOP UID that took it
    copied = 0
    try:
        fs.makedirs(dest_abs)
        with progress(ctx, step.instance_count, f"copy to {destination}", rec) as advance:
            for series in step.series:
                indexed = (_index_values(conn, facts.schema, layout, series.series_uid)
                           if conn is not None else {})
                for inst in series.instances:
                    outcome = _copy_one(fs, facts, dest_abs, layout, series, inst,
                                        indexed.get(inst.sop_uid, {}), overwrite, used,
                                        manifest_name, deid, writer)
                    rec.add(outcome)
                    if outcome.status in (DONE, SKIPPED) and "sha256" in outcome.detail:
                        shown = outcome.detail if deid is not None else {}
                        entries.append({"sop_uid": shown.get("sop_uid", inst.sop_uid),
                                        "series_uid": shown.get("series_uid",
                                                                series.series_uid),
                                        "patient_id": shown.get("patient_id",
                                                                series.patient_id or ""),
                                        "path": outcome.detail["path"],
                                        "size": outcome.detail["size"],
                                        "sha256": outcome.detail["sha256"]})
                        copied += outcome.status == DONE
                    advance(1)
        summary: dict[str, Any] = {"destination": destination, "layout": layout.template,
                                   "files": len(entries), "copied": copied,
                                   "bytes": sum(e["size"] for e in entries)}
        if manifest_name:
            entries.sort(key=lambda e: (e["patient_id"], e["series_uid"], e["sop_uid"]))
            _write_manifest(fs, dest_abs / manifest_name, manifest_fmt, ctx, layout, entries)
            summary["manifest"] = str(dest / manifest_name)
        if deid is not None:
            deid.report.write(fs, dest_abs / REPORT_NAME)
            deid.write_mapping(fs)
            summary.update(deid.summary(), deidentification=str(dest / REPORT_NAME))
        summary.update(modify_summary())
    except OSError as exc:
        return rec.fail_step(f"copy: {os_reason(exc)}")
    finally:
        if conn is not None:
            conn.close()
    return rec.finish(**summary)


def _copy_one(fs, facts, dest: Path, layout: Layout, series: "PlannedSeries",
              inst: "PlannedInstance", indexed: dict[str, Any], overwrite: str,
              used: dict[str, str], manifest_name: str | None, deid: Any = None,
              writer: Any = None) -> Outcome:
    def failed(reason: str, **detail: Any) -> Outcome:
        return Outcome(inst.sop_uid, series.series_uid, FAILED, reason, detail)

    try:
        rel = _relative_path(layout, series, inst, indexed, deid)
        src = source_path(facts.data_dir, inst.path)
    except ActionError as exc:
        return failed(exc.message)
    if rel == manifest_name or (deid is not None and rel == REPORT_NAME):
        return failed(f"the layout puts this instance at {rel}, the manifest's name")
    if rel in used:
        return failed(f"the layout puts this instance at {rel}, where {used[rel]} already "
                      "goes", path=rel)
    used[rel] = inst.sop_uid
    target = dest / rel
    if not inside(dest, target):
        return failed(f"the layout path {rel} leaves the destination", path=rel)
    if is_database_file(target, facts.database):
        return failed(f"the layout path {rel} is the archive's database (or one of its "
                      "-wal/-shm/-journal files); refused", path=rel)
    if inside(facts.data_dir, target):
        return failed(f"the layout path {rel} lies in the archive's data directory; refused",
                      path=rel)
    if not src.is_file():
        return failed(f"source file missing: {inst.path}", source=inst.path, path=rel)
    if writer is not None:              # de-identified and/or edited (modify:)
        try:
            status, reason, detail = write_file(writer, fs, src, target, rel, overwrite)
        except OSError as exc:
            what = "de-identified" if deid is not None else "modified"
            return failed(f"{what} copy failed: {exc.strerror or exc}", path=rel)
        return Outcome(inst.sop_uid, series.series_uid, status, reason, detail)
    try:
        if os.path.lexists(target):
            if target.is_symlink() or not target.is_file():
                return failed(f"{rel} exists at the destination and is not a regular file",
                              path=rel)
            if overwrite != "always":
                src_sha = sha256_file(src)
                if sha256_file(target) == src_sha:
                    return Outcome(inst.sop_uid, series.series_uid, SKIPPED,
                                   "an identical file is already there",
                                   {"path": rel, "size": os.path.getsize(src), "sha256": src_sha})
                if overwrite == "never":
                    return failed(f"a different file is already at {rel} (overwrite: never)",
                                  path=rel)
        fs.makedirs(target.parent)
        digest, size = fs.copy_verified(src, target)
    except OSError as exc:
        full = "the disk is full: " if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        return failed(f"copy failed: {full}{exc.strerror or exc}", path=rel)
    return Outcome(inst.sop_uid, series.series_uid, DONE, "",
                   {"path": rel, "size": size, "sha256": digest})


def copy_series(archive: Any, series_uids: "list[str] | tuple[str, ...]",
                destination: "str | os.PathLike", layout: str = "patient",
                overwrite: str = "never", manifest: "str | bool" = "json",
                dry_run: bool = False, deidentify: "dict[str, Any] | None" = None,
                modify: "dict[str, Any] | None" = None) -> StepReport:
    """Python API: copy the named series' files to ``destination`` (see the module doc);
    ``deidentify`` is a job's ``deidentify:`` block (profile, options, secret_env, ...),
    ``modify`` its ``modify:`` block (set, remove, rename_roi; engine/modify.py)."""
    from ._local import api_run
    options = {"destination": os.fspath(destination), "layout": layout, "overwrite": overwrite,
               "manifest": manifest}
    if deidentify is not None:
        options["deidentify"] = dict(deidentify)
    if modify is not None:
        options["modify"] = dict(modify)
    return api_run(archive, "copy", options, list(series_uids), dry_run=dry_run,
                   target=os.fspath(destination))
