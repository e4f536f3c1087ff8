"""The plan: pure data saying exactly what a job will do (built by ``planner.py``).

The same object is printed by ``--dry-run``, saved by ``--plan-out``, checked and executed by
``--apply``, and handed to the actions.  Actions never query the database to decide *what* to do;
everything they act on is in the plan.
"""

from __future__ import annotations

__all__ = ["PlannedInstance", "PlannedSeries", "PlanStep", "Plan", "PLAN_FORMAT"]

from dataclasses import asdict, dataclass, field
from typing import Any

PLAN_FORMAT = 1


@dataclass(frozen=True)
class PlannedInstance:
    sop_uid: str
    sop_class: str | None
    path: str             # ObjectFile: relative to the data directory, '/' separated
    size: int | None      # bytes on disk when planned (None: file missing)
    flags: tuple[str, ...] = ()     # the index's findings (RTExtras.Flags), sorted
    mtime: int | None = None  # st_mtime_ns when planned (None: unknown, e.g. an older plan)


@dataclass(frozen=True)
class PlannedSeries:
    series_uid: str
    patient_id: str | None
    study_uid: str | None
    modality: str | None
    description: str | None
    instances: tuple[PlannedInstance, ...]
    remote_instances: int | None = None   # a remote selection: the node's count (C-FIND)

    @property
    def bytes(self) -> int:
        return sum(i.size or 0 for i in self.instances)


@dataclass(frozen=True)
class PlanStep:
    index: int                         # 1-based position in the job
    name: str                          # step name (or the action name)
    action: str                        # copy | dump | delete | rebuild | send
    options: dict[str, Any]            # the action's options as validated from the job
    target: str                        # human-readable: destination folder, peer, file
    destructive: bool                  # delete
    level: str                         # "series" or "instance": what the selection named
    series: tuple[PlannedSeries, ...]  # stable order: patient, study, series UID
    query: str | None = None           # select.query, for dump's own columns
    line: int | None = None            # where the step is in the job file
    select: dict[str, Any] | None = None   # the selection as written (re-planned after a retrieve)

    @property
    def remote(self) -> str | None:
        """The node a remote selection C-FINDs (its series have no local instances)."""
        return (self.select or {}).get("remote")

    @property
    def instance_count(self) -> int:
        if self.remote is not None:
            return sum(s.remote_instances or 0 for s in self.series)
        return sum(len(s.instances) for s in self.series)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.series)


@dataclass(frozen=True)
class Plan:
    job_path: str
    job_sha256: str
    job_name: str
    data_dir: str
    database: str
    dicom_sql: str | None
    steps: tuple[PlanStep, ...]
    created: str = ""                  # ISO time
    format: int = field(default=PLAN_FORMAT)
    variables: dict[str, Any] = field(default_factory=dict)  # the job variables' values used

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for step, sd in zip(self.steps, d["steps"]):
            sd["instance_count"] = step.instance_count
            sd["bytes"] = step.bytes
            for s, ssd in zip(step.series, sd["series"]):
                ssd["instance_count"] = len(s.instances)
                ssd["bytes"] = s.bytes
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        steps = []
        for sd in d["steps"]:
            series = tuple(
                PlannedSeries(
                    s["series_uid"], s.get("patient_id"), s.get("study_uid"), s.get("modality"),
                    s.get("description"),
                    tuple(PlannedInstance(i["sop_uid"], i.get("sop_class"), i["path"],
                                          i.get("size"), tuple(i.get("flags") or ()),
                                          i.get("mtime"))
                          for i in s["instances"]), s.get("remote_instances"))
                for s in sd["series"])
            steps.append(PlanStep(sd["index"], sd["name"], sd["action"], dict(sd["options"]),
                                  sd["target"], bool(sd["destructive"]), sd["level"], series,
                                  sd.get("query"), sd.get("line"), sd.get("select")))
        return cls(d["job_path"], d["job_sha256"], d["job_name"], d["data_dir"], d["database"],
                   d.get("dicom_sql"), tuple(steps), d.get("created", ""),
                   d.get("format", PLAN_FORMAT), dict(d.get("variables") or {}))
