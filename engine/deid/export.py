"""One de-identified export (a copy or send step): settings, key, pseudonyms, report.

:func:`open_export` checks a step's ``deidentify:`` block and reads the secret (``SecretError``
naming the variable when it is missing, empty or short), before anything is exported.
:func:`check_plan_secrets` does the same for every step of a plan before a run starts.
"""

from __future__ import annotations

__all__ = ["DeidExport", "open_export", "check_plan_secrets", "Refused"]

from pathlib import Path
from typing import Any

from .apply import BurnedIn, deidentify_bytes
from .profile import DeidSettings, Profile, SecretError, check_settings, read_secret
from .report import MAPPING_WARNING, DeidReport, write_mapping
from .uids import Pseudonyms


class Refused(Exception):
    """A file that is not exported (burned-in text); the message says why."""


class DeidExport:
    def __init__(self, settings: DeidSettings, secret: bytes,
                 patient_ids: "list[str] | tuple[str, ...]" = ()) -> None:
        self.settings = settings
        self.profile = Profile(settings.options)
        self.names = Pseudonyms(secret, settings.patient_id, patient_ids)
        self.report = DeidReport(settings.profile, self.profile.options, self.profile.release)
        self.post: Any = None    # (bytes, ds, counts) -> the same, run after (engine/modify.py)

    def __repr__(self) -> str:
        return f"DeidExport({self.settings.to_dict()})"

    def file_bytes(self, path: Path) -> tuple[bytes, Any, dict[str, dict[str, int]]]:
        """(bytes, dataset, counts) of the de-identified file; ``Refused`` for burned-in text."""
        data = Path(path).read_bytes()
        try:
            got = deidentify_bytes(data, self.profile, self.names,
                                   allow_burned_in=self.settings.allow_burned_in)
        except BurnedIn as exc:
            raise Refused(f"not exported: {exc} (burned-in text; allow_burned_in: true "
                          "exports it anyway)") from None
        return got if self.post is None else self.post(*got)

    def path_values(self, series: Any, inst: Any) -> dict[str, str]:
        """The plan's fields for a copy layout, as the export shows them."""
        return {"SOPInstanc": self.names.uid(inst.sop_uid),
                "SeriesInst": self.names.uid(series.series_uid),
                "StudyInsta": self.names.uid(series.study_uid or ""),
                "PatientID": self.names.patient_id(series.patient_id or ""),
                "Modality": series.modality or "", "SOPClassUI": inst.sop_class or ""}

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"deidentified": len(self.report.files),
                               "refused_burned_in": len(self.report.refused),
                               "profile": self.settings.profile,
                               "options": list(self.profile.options),
                               "table_release": self.profile.release,
                               "actions": self.report.totals()}
        if self.settings.mapping:
            out["mapping"] = self.settings.mapping
            out["warning"] = MAPPING_WARNING
        return out

    def write_mapping(self, fs: Any) -> None:
        if self.settings.mapping:
            target = Path(self.settings.mapping)
            fs.makedirs(target.parent.resolve())
            write_mapping(fs, target.resolve(), self.names.mapping())


def settings_of(options: dict[str, Any]) -> DeidSettings | None:
    """The checked settings of a step's options (None: the step does not de-identify)."""
    block = (options or {}).get("deidentify")
    if block is None:
        return None
    settings, problems = check_settings(block)
    if problems:
        raise SecretError("; ".join(message for _, message in problems))
    return settings


def open_export(options: dict[str, Any], patient_ids: "list[str] | tuple[str, ...]" = (),
                environ: "dict[str, str] | None" = None) -> DeidExport | None:
    """The export session of a step (None without ``deidentify:``); SecretError when the
    block is invalid or its secret unusable."""
    settings = settings_of(options)
    if settings is None:
        return None
    return DeidExport(settings, read_secret(settings.secret_env, environ), patient_ids)


def check_plan_secrets(plan: Any, environ: "dict[str, str] | None" = None) -> None:
    """Every de-identifying step's secret is usable, or JobError (exit 2) naming the step and
    the variable, before any step runs."""
    from ..errors import JobError
    for step in plan.steps:
        try:
            settings = settings_of(step.options)
            if settings is not None:
                read_secret(settings.secret_env, environ)
        except SecretError as exc:
            raise JobError(f"step {step.index} ({step.name}): {exc}; nothing was exported",
                           file=plan.job_path, line=step.line) from None


def write_file(export: DeidExport, fs: Any, src: Path, target: Path, rel: str,
               overwrite: str) -> tuple[str, str, dict[str, Any]]:
    """De-identify ``src`` into ``target``: (status, reason, detail) for the step's outcome.

    The bytes are written atomically and read back (not in a dry run); an identical file
    already there is skipped, a different one follows ``overwrite`` as for a plain copy."""
    import hashlib
    import os

    from ..report import DONE, FAILED, SKIPPED
    try:
        data, ds, counts = export.file_bytes(src)
    except Refused as exc:
        new_sop = export.names.uid(str(_sop_of(src)))
        export.report.refuse(new_sop, str(exc).removeprefix("not exported: "))
        return SKIPPED, str(exc), {"burned_in": True}
    except Exception as exc:          # pydicom cannot read or write it
        return FAILED, f"cannot de-identify: {exc}", {"path": rel}
    digest = hashlib.sha256(data).hexdigest()
    detail = {"path": rel, "size": len(data), "sha256": digest,
              "sop_uid": str(ds.get("SOPInstanceUID", "")),
              "series_uid": str(ds.get("SeriesInstanceUID", "")),
              "patient_id": str(ds.get("PatientID", ""))}
    if os.path.lexists(target):
        if target.is_symlink() or not target.is_file():
            return FAILED, f"{rel} exists at the destination and is not a regular file", \
                {"path": rel}
        if overwrite != "always":
            if hashlib.sha256(target.read_bytes()).hexdigest() == digest:
                export.report.add(rel, detail["sop_uid"], counts)
                return SKIPPED, "an identical file is already there", detail
            if overwrite == "never":
                return FAILED, f"a different file is already at {rel} (overwrite: never)", \
                    {"path": rel}
    fs.makedirs(target.parent)
    with fs.atomic_open(target, "wb") as f:
        f.write(data)
    if not fs.dry_run and hashlib.sha256(target.read_bytes()).hexdigest() != digest:
        return FAILED, f"the de-identified {rel} does not read back identical", {"path": rel}
    export.report.add(rel, detail["sop_uid"], counts)
    return DONE, "", detail


def _sop_of(path: Path) -> str:
    from pydicom import dcmread
    try:
        return str(dcmread(path, force=True, stop_before_pixels=True,
                           specific_tags=["SOPInstanceUID"]).get("SOPInstanceUID", ""))
    except Exception:
        return ""


__all__ += ["write_file", "settings_of"]


def deid_layout_problem(export: DeidExport, layout: Any, destination: Path) -> str | None:
    """Why a copy layout or mapping path cannot go with de-identification (None: they can)."""
    if layout.needs_index:
        return ("with deidentify, the layout may use only PatientID, StudyInsta, SeriesInst, "
                "SOPInstanc, Modality and SOPClassUI (other index columns hold original "
                "values)")
    mapping = export.settings.mapping
    if mapping:
        where = Path(mapping).resolve()
        if where == destination.resolve() or where.is_relative_to(destination.resolve()):
            return (f"deidentify.mapping {mapping} lies inside the export; the mapping is "
                    "identifying data and must be kept apart from it")
    return None


__all__ += ["deid_layout_problem"]


def deid_send_item(export: DeidExport, src: Path, scratch: Path, sop_uid: str,
                   series_uid: str | None) -> Any:
    """A ``SendItem`` for the de-identified copy of ``src`` written under ``scratch`` (kept
    under the original SOP UID for the journal), or the Outcome of a file not sent."""
    import dataclasses

    from ..net import read_send_item
    from ..report import FAILED, SKIPPED, Outcome
    try:
        data, ds, counts = export.file_bytes(src)
    except Refused as exc:
        export.report.refuse(export.names.uid(_sop_of(src)),
                             str(exc).removeprefix("not exported: "))
        return Outcome(sop_uid, series_uid, SKIPPED, str(exc), {"burned_in": True})
    except Exception as exc:
        return Outcome(sop_uid, series_uid, FAILED, f"cannot de-identify: {exc}", {})
    new_sop = str(ds.get("SOPInstanceUID", ""))
    tmp = scratch / f"{new_sop}.dcm"
    tmp.write_bytes(data)
    export.report.add(tmp.name, new_sop, counts)
    got = read_send_item(tmp, new_sop, series_uid, str(ds.get("SOPClassUID", "")))
    if isinstance(got, Outcome):
        return Outcome(sop_uid, series_uid, got.status, got.reason, {})
    return dataclasses.replace(got, sop_uid=sop_uid)


__all__ += ["deid_send_item"]
