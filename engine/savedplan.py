"""Saved plans: ``save_plan`` (``--plan-out``, JSON, written atomically), ``load_plan`` (checked
against the plan's own JSON Schema, every problem a sentence), and what ``--apply`` checks
before running one: ``check_plan_sql`` (its queries against the archive's tables) and
``verify_plan`` (refused with ``PlanChangedError`` when a planned series gained or lost
instances, or a planned file changed size, mtime or content since).
"""

from __future__ import annotations

__all__ = ["save_plan", "load_plan", "check_plan_sql", "verify_plan"]

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import ArchiveError, ConquestRunError, JobError, PlanChangedError
from .plan import Plan
from .planner import _CHUNK, _reading, _Resolver
from .sqlcheck import check_query

# -- saved plans ------------------------------------------------------------------------------------
def save_plan(plan: Plan, path: str | Path) -> None:
    """Write the plan as JSON atomically (temp file + rename)."""
    path = Path(path)
    if not path.parent.is_dir():
        if os.path.lexists(path.parent):
            raise ConquestRunError(f"the folder for the plan is a file, not a folder: "
                                   f"{path.parent}")
        raise ConquestRunError(f"the folder for the plan does not exist: {path.parent}")
    if path.is_dir():
        raise ConquestRunError("is a folder; --plan-out names the plan file to write",
                               file=str(path))
    from .backends import is_postgres_url
    if plan.database and not is_postgres_url(plan.database) and os.path.realpath(path) in {
            os.path.realpath(plan.database) + suffix
            for suffix in ("", "-wal", "-shm", "-journal")}:
        raise ConquestRunError("is the archive's database; write the plan somewhere else",
                               file=str(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ConquestRunError(f"cannot write the plan: {exc.strerror or exc}",
                               file=str(path)) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(plan.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ConquestRunError(f"cannot write the plan: {exc.strerror or exc}",
                               file=str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_plan(path: str | Path) -> Plan:
    from .source import is_device
    if is_device(path):
        raise ConquestRunError("not a plan file: a device, not a file (it could be read forever)", file=str(path))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConquestRunError(f"cannot read the plan: {exc.strerror or exc}",
                               file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConquestRunError(f"not a plan file (not UTF-8 text at byte {exc.start})",
                               file=str(path)) from None
    try:
        data = json.loads(text)
        problem = _plan_problem(data)
        if problem:
            raise ConquestRunError(f"not a conquest-run plan file ({problem})",
                                   file=str(path))
        return Plan.from_dict(data)
    except json.JSONDecodeError as exc:
        raise ConquestRunError(f"not a plan file (JSON error: {exc.msg})", file=str(path),
                               line=exc.lineno, column=exc.colno) from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConquestRunError(f"not a conquest-run plan file ({type(exc).__name__}: {exc})",
                               file=str(path)) from None


def _plan_schema(defs: dict[str, Any]) -> dict[str, Any]:
    """What ``Plan.to_dict`` writes, as a JSON Schema (a hand-edited plan is checked first)."""
    text, text_or_null = {"type": "string"}, {"type": ["string", "null"]}
    path = {"type": "string", "minLength": 1}
    instance = {"type": "object", "required": ["sop_uid", "path"], "properties": {
        "sop_uid": path, "sop_class": text_or_null, "path": path,
        "size": {"type": ["integer", "null"], "minimum": 0},
        "flags": {"type": "array", "items": text},
        "mtime": {"type": ["integer", "null"]}}}
    series = {"type": "object", "required": ["series_uid", "instances"], "properties": {
        "series_uid": path, "patient_id": text_or_null, "study_uid": text_or_null,
        "modality": text_or_null, "description": text_or_null,
        "instances": {"type": "array", "items": instance}}}
    step = {"type": "object", "required": ["index", "name", "action", "options", "target",
                                           "destructive", "level", "series"], "properties": {
        "index": {"type": "integer", "minimum": 1}, "name": text,
        "action": {"enum": ["copy", "dump", "delete", "rebuild", "send", "retrieve"]},
        "options": {"type": "object"}, "target": text, "destructive": {"type": "boolean"},
        "level": {"enum": ["series", "instance"]}, "series": {"type": "array", "items": series},
        "query": text_or_null, "line": {"type": ["integer", "null"]}}}
    return {"$defs": defs, "type": "object",
            "required": ["job_path", "job_sha256", "job_name", "data_dir", "database", "steps"],
            "properties": {
                "format": {"const": 1}, "job_path": text, "job_sha256": text, "job_name": text,
                "data_dir": path, "database": path, "dicom_sql": {"type": ["string", "null"],
                                                                  "minLength": 1},
                "created": text, "steps": {"type": "array", "minItems": 1, "items": step},
                "variables": {"type": "object", "additionalProperties": {"anyOf": [
                    {"type": ["string", "integer"]},
                    {"type": "array", "items": {"type": "string"}}]}}}}


def _plan_problem(data: Any) -> str | None:
    """The first thing wrong in a plan's JSON (shape, types, each step's options), or None."""
    import jsonschema

    from .jobs import job_schema

    def where(error) -> str:
        parts = "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                        for p in error.absolute_path).lstrip(".")
        return f"{parts}: " if parts else ""

    defs = job_schema()["$defs"]
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(_plan_schema(defs)).iter_errors(data))
    if error is not None:
        return f"{where(error)}{error.message}"
    for i, step in enumerate(data["steps"]):
        if step["destructive"] != (step["action"] == "delete"):
            return f"steps[{i}].destructive: must be {str(step['action'] == 'delete').lower()} " \
                   f"for a {step['action']} step"
        options = dict(step["options"])
        for key in ("roi_matched", "roi_referenced"):   # what a roi: selection matched
            options.pop(key, None)
        if step["action"] in ("send", "retrieve"):
            options.pop("node", None)   # the plan holds the node's settings, resolved
        if step["action"] == "dump":
            params = options.pop("params", None)
            if params is not None and not (isinstance(params, list) and all(
                    v is None or isinstance(v, (str, int, float)) for v in params)):
                return f"steps[{i}].options.params: must be a list of values (strings or numbers)"
        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(
            {"$defs": defs, "$ref": f"#/$defs/{step['action']}"}).iter_errors(options))
        if error is not None:
            return f"steps[{i}].options{where(error) and '.' + where(error)}{error.message}"
    return None


def _file_changes(plan: Plan, archive, conn) -> list[str]:
    """Planned files whose size or mtime differ from the plan, or whose bytes no longer have the
    SHA-256 the index holds (RTExtras.hash, where there is one)."""
    import hashlib
    from .schema import EXTRAS_TABLE
    hashes: dict[str, str] = {}
    from .db import table_names
    if EXTRAS_TABLE.lower() in table_names(conn):
        sops = sorted({i.sop_uid for st in plan.steps for s in st.series for i in s.instances})
        for n in range(0, len(sops), _CHUNK):
            chunk = sops[n:n + _CHUNK]
            hashes.update((r[0], r[1]) for r in conn.execute(
                f"SELECT SOPInstanc, hash FROM {EXTRAS_TABLE} WHERE hash IS NOT NULL AND "
                f"SOPInstanc IN ({', '.join('?' * len(chunk))})", chunk))
    root = os.fspath(archive.data_dir)
    out: list[str] = []
    seen: set[str] = set()
    for step in plan.steps:
        for s in step.series:
            for inst in s.instances:
                if inst.path in seen or inst.size is None:
                    continue
                seen.add(inst.path)
                rel = os.path.normpath(inst.path)
                if os.path.isabs(rel) or rel == ".." or rel.startswith(".." + os.sep):
                    continue        # the actions refuse such a path themselves
                full = os.path.join(root, rel)
                where = f"step {step.index} ({step.name}): file {inst.path}"
                try:
                    st = os.stat(full)
                except OSError:
                    out.append(f"{where} is gone")
                    continue
                if st.st_size != inst.size:
                    out.append(f"{where} is {st.st_size} bytes, the plan says {inst.size}")
                elif inst.mtime is not None and st.st_mtime_ns != inst.mtime:
                    out.append(f"{where} was modified since the plan")
                elif inst.sop_uid in hashes:
                    h = hashlib.sha256()
                    try:
                        with open(full, "rb") as f:
                            for block in iter(lambda: f.read(1 << 20), b""):
                                h.update(block)
                    except OSError as exc:
                        out.append(f"{where} cannot be read ({exc.strerror or exc})")
                        continue
                    if h.hexdigest() != hashes[inst.sop_uid]:
                        out.append(f"{where} does not have the SHA-256 the index holds")
    return out


def check_plan_sql(plan: Plan, schema, plan_file: str) -> None:
    """``--apply``: a plan is editable text, so each step's query passes the job check again."""
    from .errors import SqlCheckError
    for step in plan.steps:
        if step.query is None:
            continue
        try:
            check_query(step.query, schema)
        except SqlCheckError as exc:
            raise JobError(f"step {step.index} ({step.name}): its query is refused: "
                           f"{exc.message} (query line {exc.line}, column {exc.column})",
                           file=plan_file) from None


def verify_plan(plan: Plan, archive) -> None:
    """Refuse a saved plan when a planned series gained or lost instances since."""
    from .db import index_exists, index_label
    if not index_exists(archive.database):
        raise ArchiveError("database not found", file=index_label(archive.database))
    changes: list[str] = []
    with _reading(archive) as conn:
        resolver = _Resolver(archive, conn)
        for step in plan.steps:
            if step.remote is not None:     # remote series: nothing local to compare
                continue
            for s in step.series:
                planned = {i.sop_uid for i in s.instances}
                files = resolver.current_files(s.series_uid)
                now = set(files)
                moved = [i for i in s.instances if i.sop_uid in files
                         and files[i.sop_uid] != i.path]
                if moved:
                    changes.append(f"step {step.index} ({step.name}): instance "
                                   f"{moved[0].sop_uid} is indexed at "
                                   f"{files[moved[0].sop_uid]}, not at {moved[0].path}"
                                   + (f" (and {len(moved) - 1} more)" if len(moved) > 1 else ""))
                lost = planned - now
                gained = (now - planned) if step.level == "series" else set()
                if lost or gained:
                    what = []
                    if gained:
                        what.append(f"gained {len(gained)}")
                    if lost:
                        what.append(f"lost {len(lost)}")
                    changes.append(f"step {step.index} ({step.name}): series {s.series_uid} "
                                   f"(patient {s.patient_id}) {' and '.join(what)} "
                                   f"instance{'s' if len(gained | lost) != 1 else ''}")
        changes += _file_changes(plan, archive, conn)
    if changes:
        shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
        raise PlanChangedError(f"the archive changed since the plan was made ({plan.created}): "
                               f"{shown}. Nothing was done; plan again.")
