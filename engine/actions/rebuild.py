"""rebuild: re-index the archive through the archive core (``Archive.rebuild``).

Options: ``only_missing`` (index only files not in the index yet) or ``refresh`` (re-read new
and changed files, forget vanished ones); neither: index everything again.  The scope is the
whole archive, or, when the step has a selection, the patients it names: the planner passes
them as ``options["patients"]`` (a list, possibly empty); without it the patients of the
planned series are used, and a step with neither rebuilds everything.

Files the indexer cannot read (not DICOM, truncated, damaged) are failed outcomes with their
path and reason, so the audit log lists them (and the job exits 1, as ``conquest-run rebuild``
does); files indexed with flags (``no-pixel-data``, ...) are counted as ``flagged``, warnings that
fail nothing.  A dry run changes nothing: it reports the mode,
the patients and how many files the scope holds on disk.
"""

from __future__ import annotations

__all__ = ["run", "scope"]

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConquestRunError
from ..report import DONE, FAILED, Outcome, StepReport
from ..indexer import data_dir_error
from ._local import StepRecorder, archive_facts, safe_patient_dir

if TYPE_CHECKING:
    from ..plan import PlanStep
    from . import ActionContext


def _mode(options: dict[str, Any]) -> str:
    if options.get("only_missing") and options.get("refresh"):
        raise ConquestRunError("rebuild: choose only_missing or refresh, not both")
    if options.get("only_missing"):
        return "missing"
    if options.get("refresh"):
        return "refresh"
    return "all"


def scope(step: "PlanStep") -> list[str] | None:
    """The PatientIDs to re-index, or None for the whole archive."""
    options = step.options or {}
    if "patients" in options and options["patients"] is not None:
        return sorted({str(p) for p in options["patients"]})
    if step.series:
        return sorted({s.patient_id or "" for s in step.series})
    return None


def _files_on_disk(data_dir: Path, patients: list[str] | None) -> int:
    roots = [data_dir] if patients is None else sorted(
        {data_dir / safe_patient_dir(p) for p in patients})
    count = 0
    for root in roots:
        for _, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            count += sum(1 for f in files if not f.startswith("."))
    return count


def run(step: "PlanStep", ctx: "ActionContext") -> StepReport:
    rec = StepRecorder(step, ctx)
    facts = archive_facts(ctx.archive)
    options = step.options or {}
    try:
        mode = _mode(options)
    except ConquestRunError as exc:
        return rec.fail_step(exc.message)
    patients = scope(step)
    if patients == []:
        rec.add(Outcome(None, None, DONE, "the selection names no patient: nothing to index",
                        {"mode": mode, "patients": []}))
        return rec.finish(mode=mode, patients=[])
    summary: dict[str, Any] = {"mode": mode,
                               "patients": "all" if patients is None else patients}
    if ctx.dry_run:
        if not facts.data_dir.is_dir():
            return rec.fail_step(str(data_dir_error(facts.data_dir)))
        files = _files_on_disk(facts.data_dir, patients)
        rec.add(Outcome(None, None, DONE, "", {"mode": mode, "files_in_scope": files}))
        return rec.finish(files_in_scope=files, **summary)
    try:
        result = ctx.archive.rebuild(patients=patients, mode=mode, progress=ctx.progress)
    except ConquestRunError as exc:
        return rec.fail_step(str(exc))
    for bad in result.bad:
        rec.add(Outcome(None, None, FAILED, f"not indexed: {bad.reason}", {"path": bad.path}))
    counts = {"indexed": result.indexed, "unchanged": result.unchanged,
              "removed": result.removed, "skipped": result.skipped, "bad": len(result.bad),
              "duplicates": len(result.duplicates), "flagged": len(result.flagged),
              "facts_filled": result.facts_filled, "seconds": round(result.seconds, 3)}
    rec.add(Outcome(None, None, DONE, result.summary(), counts))
    return rec.finish(**summary, **counts)
