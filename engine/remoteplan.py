"""A remote selection (``select.remote: NODE``) -> its ``PlanStep``: a C-FIND of the node.

The node is asked at STUDY level, then at SERIES level (study root, ``net/qrscu.py``); the plan
lists each remote series with its patient, study, modality, description and the node's instance
count (``PlannedSeries.remote_instances``), and no local instances.  A retrieve step carries the
node's settings in ``options["node"]``; a dump step writes these rows as CSV.  Planning is the
only traffic of a dry run.
"""

from __future__ import annotations

__all__ = ["plan_remote_step", "node_of", "remote_node", "remote_select_errors"]

from typing import Any

from .errors import JobError, NetworkError
from .plan import PlannedSeries, PlanStep

DEFAULT_CALLING_AE = "CONQUEST_RUN"


def node_of(nodes: dict[str, dict[str, Any]], name: str, *, file: str | None = None,
            line: int | None = None) -> dict[str, Any]:
    """The node's settings as a plan keeps them (name, host, port, AE titles)."""
    node = nodes.get(name)
    if node is None:
        raise JobError(f"select.remote {name!r} is not declared under nodes:", file=file,
                       line=line)
    return {"name": name, "host": node["host"], "port": int(node["port"]),
            "called_ae": node["called_ae"],
            "calling_ae": node.get("calling_ae") or DEFAULT_CALLING_AE}


def remote_node(settings: dict[str, Any], timeout: float = 30.0):
    """The ``RemoteNode`` of a plan's node settings."""
    from .net.qrscu import RemoteNode
    return RemoteNode(settings["host"], int(settings["port"]), settings["called_ae"],
                      settings.get("calling_ae") or DEFAULT_CALLING_AE, timeout)


def plan_remote_step(archive: Any, *, index: int, name: str, action: str,
                     options: dict[str, Any], sel: Any, nodes: dict[str, dict[str, Any]],
                     line: int | None = None, file: str | None = None) -> PlanStep:
    from .net.qrscu import find_series
    from .planner import step_target
    from .studydate import parse_study_date

    where = f"step {index} ({name})"
    if action not in ("retrieve", "dump"):
        raise JobError(f"{where}: a remote selection allows only retrieve, or dump (the C-FIND "
                       f"results as CSV); not {action}", file=file, line=line)
    if sel.query is not None:
        raise JobError(f"{where}: a remote selection cannot use query: (SQL runs on the local "
                       "index)", file=file, line=line)
    try:
        dates = parse_study_date(sel.study_date) if sel.study_date is not None else None
    except ValueError as exc:
        raise JobError(f"select.study_date: {exc}", file=file, line=line) from None
    settings = node_of(nodes, sel.remote, file=file, line=line)
    node = remote_node(settings, float(options.get("timeout", 30.0)))
    try:
        found = find_series(node, patient=sel.patient, study=sel.study, series=sel.series,
                            modality=sel.modality, study_date=sel.study_date,
                            date_matches=(dates.matches if dates is not None
                                          else (lambda d: True)))
    except NetworkError as exc:
        raise NetworkError(f"{where}: {exc.message}", file=file, line=line) from None
    series = tuple(PlannedSeries(s.series_uid, s.patient_id, s.study_uid, s.modality,
                                 s.description, (), s.instances) for s in found)
    options = dict(options)
    if action == "retrieve":
        options["node"] = settings
    return PlanStep(index, name, action, options, step_target(action, options, archive),
                    False, "series", series, None, line, sel.to_dict())


# -- checking a job (no network) ------------------------------------------------------------
def remote_select_errors(job: Any, step: Any) -> list[JobError]:
    """``select.study_date`` and ``select.remote`` (what a remote selection allows), and a
    ``retrieve`` that needs one."""
    from .jobs import _dotted, _host_problem
    from .studydate import study_date_problem
    errs: list[JobError] = []
    sel, base = step.select, step.path + ("action", step.action)
    if sel is not None and (p := study_date_problem(sel.study_date)):
        errs.append(job.error(f"{_dotted(step.path + ('select', 'study_date'))}: {p}",
                              step.path + ("select", "study_date")))
    remote = sel.remote if sel is not None else None
    if remote is not None:
        if remote not in job.nodes:
            known = f"known: {', '.join(job.nodes)}" if job.nodes else "the job has no nodes:"
            errs.append(job.error(f"{_dotted(step.path + ('select', 'remote'))} {remote!r} is "
                                  f"not declared under nodes: ({known})",
                                  step.path + ("select", "remote")))
        if sel.query is not None:
            errs.append(job.error(f"{_dotted(step.path + ('select', 'query'))}: a remote "
                                  "selection cannot use query: (SQL runs on the local index); "
                                  "use patient, study, series, modality or study_date",
                                  step.path + ("select", "query"), key=True))
        if step.action not in ("retrieve", "dump"):
            errs.append(job.error(f"{_dotted(base)}: a remote selection (select.remote: "
                                  f"{remote}) allows only retrieve, or dump (the C-FIND results "
                                  f"as CSV); not {step.action}", base, key=True))
        elif step.action == "dump" and (step.options.get("format", "csv") != "csv"
                                        or step.options.get("per_instance")):
            errs.append(job.error(f"{_dotted(base)}: a dump of a remote selection writes the "
                                  "C-FIND results as CSV (format: csv, no per_instance)",
                                  base, key=True))
    elif step.action == "retrieve":
        errs.append(job.error(f"{_dotted(base)} needs select.remote: NODE (the node to pull "
                              "from)", base, key=True))
    if step.action == "retrieve" and step.options.get("method", "move") == "move" \
            and "port" not in step.options:
        errs.append(job.error(f"{_dotted(base)} with method: move needs port: (where this job "
                              "listens for the node's C-STOREs)", base, key=True))
    if step.action == "delete" and any(s.action == "retrieve" for s in job.steps
                                       if s.index < step.index):
        errs.append(job.error(f"{_dotted(base)}: a delete after a retrieve would be planned "
                              "(and confirmed) only once the retrieve has run; put it in a job "
                              "of its own", base, key=True))
    if step.action == "retrieve" and isinstance(step.options.get("bind"), str) and \
            (p := _host_problem(step.options["bind"])):
        errs.append(job.error(f"{_dotted(base + ('bind',))} {p}", base + ("bind",)))
    return errs
