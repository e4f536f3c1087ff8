"""Guard rails on a plan before anything runs: a step's ``expect:`` bounds, and a delete that
selected nothing.

A step may declare ``expect: {patients: 1}``, ``{series: {min: 1, max: 20}}`` or
``{instances: {max: 5000}}`` (any of the three, each an exact count or a ``min``/``max`` range).
A plan outside them is refused, located at the bound in the job file.  A ``delete`` step without
``expect:`` refuses an empty selection (a mistyped patient, a lowercase modality): a delete that
matches nothing is almost always a mistake, and an ``expect`` allowing zero says it is not.
"""

from __future__ import annotations

__all__ = ["plan_counts", "check_expectations", "selected_nothing"]

from typing import Any

from .errors import ConquestRunError

KINDS = ("patients", "series", "instances")


def plan_counts(step: Any) -> dict[str, int]:
    """Patients, series and instances a ``PlanStep`` acts on."""
    return {"patients": len({s.patient_id for s in step.series}),
            "series": len(step.series), "instances": step.instance_count}


def _expect_of(job: Any, step: Any) -> dict[str, Any] | None:
    data = job.source.data if job.source is not None else None
    for part in tuple(step.path) + ("expect",):
        if not isinstance(data, (dict, list)):
            return None
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data if isinstance(data, dict) else None


def _bounds(bound: Any) -> tuple[int | None, int | None]:
    if isinstance(bound, dict):
        return bound.get("min"), bound.get("max")
    return bound, bound


def _said(low: int | None, high: int | None) -> str:
    if low is not None and low == high:
        return f"exactly {low}"
    if high is None:
        return f"at least {low}"
    if low is None:
        return f"at most {high}"
    return f"{low} to {high}"


def check_expectations(job: Any, plan: Any) -> None:
    """Raise (``JobErrors``, each located in the job file) when a step's plan is outside its
    ``expect:``, or when a delete without ``expect:`` selected nothing."""
    from .jobs import JobErrors
    errors: list[ConquestRunError] = []
    planned = {s.index: s for s in plan.steps}
    for step in job.steps:
        ps = planned.get(step.index)
        if ps is None or _after_retrieve(plan, ps):
            continue
        counts = plan_counts(ps)
        expect = _expect_of(job, step)
        label = f"step {ps.index} ({ps.name})"
        if expect is None:
            if ps.action == "delete" and counts["instances"] == 0:
                errors.append(job.error(
                    f"{label} selected nothing to delete; nothing was done. Check the select "
                    "(a mistyped PatientID? modality is case-sensitive: CT, not ct), or declare "
                    "expect: {instances: 0} if an empty delete is fine",
                    tuple(step.path) + ("select",) if step.select is not None else
                    tuple(step.path) + ("action",)))
            continue
        for kind in KINDS:
            if kind not in expect:
                continue
            low, high = _bounds(expect[kind])
            n = counts[kind]
            if (low is not None and n < low) or (high is not None and n > high):
                errors.append(job.error(
                    f"{label} expects {_said(low, high)} {kind}, but the plan has {n}; "
                    "nothing was done", tuple(step.path) + ("expect", kind)))
    if errors:
        raise JobErrors(errors)


def _after_retrieve(plan: Any, ps: Any) -> bool:
    """A local step after a retrieve: planned again once the retrieve has run, so its first
    plan (before anything came in) is no measure of it."""
    return getattr(ps, "remote", None) is None and any(
        s.action == "retrieve" for s in plan.steps if s.index < ps.index)


def selected_nothing(job: Any, plan: Any) -> list[str]:
    """Notices for the non-delete steps whose selection matched nothing."""
    out = []
    by_index = {s.index: s for s in job.steps}
    for ps in plan.steps:
        step = by_index.get(ps.index)
        if ps.action == "delete" or step is None or step.select is None or step.select.empty \
                or _after_retrieve(plan, ps):
            continue
        if not ps.series:
            out.append(f"step {ps.index} ({ps.name}) selected nothing: it has nothing to "
                       f"{ps.action}")
    return out
