"""What happened: per-instance outcomes, per-step totals, the whole run; JSON and text."""

from __future__ import annotations

__all__ = ["Outcome", "StepReport", "RunReport", "DONE", "SKIPPED", "FAILED"]

from dataclasses import asdict, dataclass, field
from typing import Any

DONE, SKIPPED, FAILED = "done", "skipped", "failed"


@dataclass
class Outcome:
    sop_uid: str | None        # None for a step-level outcome (e.g. a written CSV file)
    series_uid: str | None
    status: str                # done | skipped | failed
    reason: str = ""           # why skipped or failed; peer status for send
    detail: dict[str, Any] = field(default_factory=dict)  # e.g. {"path": ..., "status": 0xB000}


@dataclass
class StepReport:
    index: int
    name: str
    action: str
    target: str
    dry_run: bool
    started: str = ""
    ended: str = ""
    outcomes: list[Outcome] = field(default_factory=list)
    error: str | None = None   # a failure of the whole step (e.g. peer not reachable)
    summary: dict[str, Any] = field(default_factory=dict)  # action-specific (manifest path, ...)

    def totals(self) -> dict[str, int]:
        t = {DONE: 0, SKIPPED: 0, FAILED: 0}
        for o in self.outcomes:
            t[o.status] = t.get(o.status, 0) + 1
        return t

    @property
    def ok(self) -> bool:
        return self.error is None and self.totals()[FAILED] == 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["totals"] = self.totals()
        d["ok"] = self.ok
        # a failure of the whole step, beside the per-instance ones (the report counts it)
        d["step_failed"] = self.step_failed
        return d

    @property
    def step_failed(self) -> bool:
        return self.error is not None and not self.summary.get("not_run")


@dataclass
class RunReport:
    run_id: str
    job_path: str
    job_sha256: str
    dry_run: bool
    started: str = ""
    ended: str = ""
    steps: list[StepReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "job_path": self.job_path, "job_sha256": self.job_sha256,
                "dry_run": self.dry_run, "started": self.started, "ended": self.ended,
                "ok": self.ok, "steps": [s.to_dict() for s in self.steps]}
