"""A job file against the JSON Schema (``schemas/job.schema.json``): jsonschema's errors made
located, readable sentences (``_Humanizer``: the key that is wrong, did-you-mean for a misspelled
one, what a value must be), one per place."""

from __future__ import annotations

__all__ = ["job_schema", "SELECT_KEYS", "ACTIONS", "schema_errors"]

import datetime as _dt
import difflib
import json
from importlib import resources
from typing import Any, Iterable

from .errors import JobError
from .source import PathKey, Source

SELECT_KEYS = ("query", "patient", "study", "series", "modality", "study_date", "remote", "roi")
_ACTIONS = ("copy", "dump", "delete", "rebuild", "send", "retrieve")
ACTIONS = _ACTIONS


def job_schema() -> dict[str, Any]:
    """The job JSON Schema shipped inside the package."""
    text = resources.files("conquest_run").joinpath("schemas/job.schema.json").read_text("utf-8")
    return json.loads(text)


def _validator():
    import jsonschema
    schema = job_schema()
    return jsonschema.Draft202012Validator(schema)


def _dotted(path: Iterable[Any]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "the job"


def _kind(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, _dt.datetime):
        return "a date and time"
    if isinstance(value, _dt.date):
        return "a date"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


_TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number",
               "boolean": "true or false", "object": "a mapping", "array": "a list",
               "null": "empty"}


class _Humanizer:
    """jsonschema errors -> located, readable JobErrors."""

    def __init__(self, source: Source) -> None:
        self.source = source

    def at(self, path: PathKey, message: str, *, key: bool = False) -> JobError:
        pos = self.source.key_at(path) if key else self.source.value_at(path)
        return self.source.error(message, pos)

    def quote_it(self, path: PathKey, value: Any) -> JobError | None:
        """A scalar YAML resolved to a non-string where a string is needed."""
        info = self.source.scalars.get(tuple(path))
        if info is None or isinstance(value, str) or info.style is not None:
            return None
        if value is None:
            return self.at(path, f"{_dotted(path)} has no value")
        text = info.text.replace("\\", "\\\\").replace('"', '\\"')
        return self.at(path, f"{_dotted(path)} is {_kind(value)}; quote it: \"{text}\"")

    def _string_type_error(self, error) -> Any:
        """The deepest 'type: string' failure in an error or its context, if any."""
        best = None
        stack = [error]
        while stack:
            e = stack.pop()
            types = e.validator_value if e.validator == "type" else None
            if types is not None:
                types = [types] if isinstance(types, str) else list(types)
                if "string" in types and not isinstance(e.instance, (str, list, dict)):
                    if best is None or len(e.absolute_path) > len(best.absolute_path):
                        best = e
            stack.extend(e.context or [])
        return best

    def convert(self, error, data: Any) -> list[JobError]:
        path = tuple(error.absolute_path)
        where = _dotted(path)
        v, inst = error.validator, error.instance
        spath = list(error.schema_path)

        string_err = self._string_type_error(error)
        if string_err is not None:
            quoted = self.quote_it(tuple(string_err.absolute_path), string_err.instance)
            if quoted is not None:
                return [quoted]

        if v == "additionalProperties" and isinstance(inst, dict):
            allowed = list(error.schema.get("properties", {}))
            out = []
            for k in inst:
                if k in allowed:
                    continue
                if spath[-2:] == ["action", "additionalProperties"] or \
                        (len(path) >= 1 and path[-1] == "action"):
                    msg = f"unknown action {k!r} (one of {', '.join(_ACTIONS)})"
                else:
                    msg = f"unknown key {k!r} in {where}"
                close = [c for c in difflib.get_close_matches(str(k), allowed, n=3, cutoff=0.6)
                         if c[:1].lower() == str(k)[:1].lower()][:1]
                if close:
                    msg += f" (did you mean {close[0]!r}?)"
                elif not msg.startswith("unknown action"):
                    msg += f" (allowed: {', '.join(allowed)})"
                out.append(self.at(path + (k,), msg, key=True))
            return out
        if v == "required":
            missing = [k for k in error.validator_value if k not in (inst or {})]
            out = []
            for k in missing:
                if k == "select":
                    msg = (f"{where} needs select: (which series? e.g. select: "
                           "{modality: RTPLAN})" if path else
                           "the job needs select: (which series? e.g. select: {modality: RTPLAN})")
                elif path and path[-1] == "send" and k in ("host", "port", "called_ae"):
                    msg = f"send needs {k} (or node: naming a peer under nodes:)"
                else:
                    msg = f"{where} needs {k}" if path else f"the job needs {k}:"
                out.append(self.at(path, msg, key=True))
            return out
        if v == "oneOf" and spath[:2] == ["allOf", 0]:
            keys = set(inst) if isinstance(inst, dict) else set()
            if "steps" in keys:
                extra = [k for k in ("action", "select") if k in keys]
                return [self.at((extra[0],) if extra else ("steps",),
                                f"a job with steps: has its select and action inside each step; "
                                f"move {' and '.join(extra)} into a step", key=True)]
            return [self.at((), "the job needs action: (with select:) or steps:")]
        if v is None and "then" in spath and "send" in path:
            while path and path[-1] != "send":
                path = path[:-1]
            obj = _get(data, path)
            given = [k for k in ("host", "port", "called_ae") if isinstance(obj, dict) and k in obj]
            return [self.at(path + (k,), f"send with node: takes {k} from the node; "
                            f"leave {k} out", key=True) for k in given] or \
                [self.at(path, "send with node: takes host, port and called_ae from the node")]
        if v == "type":
            want = error.validator_value
            want = [want] if isinstance(want, str) else list(want)
            if isinstance(inst, type(None)) and path and path[-1] in _ACTIONS:
                return [self.at(path, f"{path[-1]} needs its options, e.g. "
                                f"{_EXAMPLES.get(path[-1], '{...}')}")]
            words = " or ".join(_TYPE_WORDS.get(w, w) for w in want if w != "null")
            return [self.at(path, f"{where} must be {words}, not {_kind(inst)}")]
        if v == "const":
            return [self.at(path, f"{where} must be {error.validator_value!r}"
                            + (" (the only job format so far)" if path == ("version",) else ""))]
        if v == "enum":
            opts = ", ".join(str(o) for o in error.validator_value)
            shown = repr(inst) if isinstance(inst, str) and len(inst) <= 40 else _kind(inst)
            return [self.at(path, f"{where} must be one of {opts}; not {shown}")]
        if v == "minProperties":
            if path and path[-1] == "action":
                return [self.at(path, f"{where} needs one of {', '.join(_ACTIONS)}", key=True)]
            if path and path[-1] == "select":
                return [self.at(path, f"{where} needs at least one of {', '.join(SELECT_KEYS)}",
                                key=True)]
            return [self.at(path, f"{where} must not be empty", key=True)]
        if v == "maxProperties" and path and path[-1] == "action":
            names = [k for k in inst if k in _ACTIONS]
            if len(names) < 2:      # the unknown keys are reported on their own
                return []
            return [self.at(path + (names[1],), f"one action per step, not {', '.join(names)}; "
                            "use steps: to run several", key=True)]
        if v in ("minLength",):
            return [self.at(path, f"{where} must not be empty")]
        if v == "maxLength":
            return [self.at(path, f"{where} is longer than {error.validator_value} characters "
                            f"({len(inst)})")]
        if v == "minItems" and path == ("steps",):
            return [self.at(path, "steps must list at least one step")]
        if v == "minItems":
            return [self.at(path, f"{where} must list at least {error.validator_value} "
                            f"{'item' if error.validator_value == 1 else 'items'}")]
        if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            bounds = {"minimum": "at least", "maximum": "at most",
                      "exclusiveMinimum": "more than", "exclusiveMaximum": "less than"}
            return [self.at(path, f"{where} must be {bounds[v]} {error.validator_value}, "
                            f"not {inst!r}")]
        if v == "pattern" and "propertyNames" in spath and isinstance(inst, str):
            return [self.at(path + (inst,), f"node name {inst!r} may hold only letters, digits, "
                            "'_', '.' and '-'", key=True)]
        if v == "pattern":
            if path and path[-1] == "node":
                return [self.at(path, f"{where}: node names may hold only letters, digits, "
                                "'_', '.' and '-'")]
            return [self.at(path, f"{where} does not match {error.validator_value}")]
        if v in ("anyOf", "oneOf"):
            if path and path[-1] == "layout":
                return [self.at(path, f"{where} must be patient, series, flat, or a template of "
                                "index columns like \"{PatientID}/{SeriesInst}/{SOPInstanc}.dcm\"")]
            if path and path[-1] in SELECT_KEYS:
                if isinstance(inst, str):
                    return [self.at(path, f"{where} must not be empty")]
                if isinstance(inst, list) and not inst:
                    return [self.at(path, f"{where} must list at least one value")]
                deeper = [c for c in (error.context or []) if len(c.absolute_path) > len(path)]
                if deeper:
                    return self.convert(deeper[0], data)
                return [self.at(path, f"{where} must be a string or a list of strings, "
                                f"not {_kind(inst)}")]
            return [self.at(path, f"{where} is not valid here")]
        return [self.at(path, f"{where}: {error.message}")]


def _get(data: Any, path: PathKey) -> Any:
    for p in path:
        try:
            data = data[p]
        except (KeyError, IndexError, TypeError):
            return None
    return data


_EXAMPLES = {"copy": "{destination: exports/x}", "dump": "{file: out.csv}",
             "send": "{host: 127.0.0.1, port: 104, called_ae: PACS}"}


def _schema_errors(source: Source) -> list[JobError]:
    validator = _validator()
    human = _Humanizer(source)
    errors: list[JobError] = []
    raw = list(validator.iter_errors(source.data))
    for e in raw:
        errors.extend(human.convert(e, source.data))
    # a misspelled key also shows as a missing one: keep the clearer "did you mean"
    suggested = {e.message.split("did you mean ")[1].strip("?)'")
                 for e in errors if "did you mean " in e.message}
    errors = [e for e in errors
              if not any(e.message.endswith(f"needs {k}") or f"needs {k}:" in e.message
                         for k in suggested)]
    unique: dict[tuple, JobError] = {}
    for e in errors:
        unique.setdefault((e.line, e.column, e.message), e)
    return list(unique.values())


schema_errors = _schema_errors
