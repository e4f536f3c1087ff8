"""Job parameters: ``vars:`` declared in a job, values from ``--var`` / ``--vars-file``.

A job declares each variable with a ``type`` (``string``, ``integer``, ``date``, ``list``: a list
of strings), a ``description``, an optional ``default`` and an optional ``pattern`` (a regular
expression each value must match whole).  Uses:

* in ``select.query`` a variable is a bound parameter, ``:name``; its value never enters the SQL
  text (``bound_params``);
* everywhere else in ``select:`` and ``action:`` it is written ``${name}`` and substituted as a
  value (``bind_job_vars``).  In the path options (``destination``, ``file``, ``layout``,
  ``mapping``) the value passes through ``store.safe_component`` first, like a DICOM value in a
  layout, so it can never add a folder level or climb out of its root.  A list variable that is
  a whole select value (``patient: ${patients}``) stands for its values.

Every problem is a located ``JobError``: an undeclared use, a declared variable never used, a
default of the wrong type, a missing or ill-typed value (all exit 2).
"""

from __future__ import annotations

__all__ = ["VarSpec", "GivenValue", "bind_job_vars", "bound_params", "parse_var_args",
           "load_vars_file", "query_placeholders", "VAR_TYPES", "PATH_OPTIONS"]

import datetime as _dt
import difflib
import re
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConquestRunError, JobError
from .source import PathKey, Source

VAR_TYPES = ("string", "integer", "date", "list")
PATH_OPTIONS = ("destination", "file", "layout", "mapping")
_USE = re.compile(r"\$\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLACEHOLDERS = {"string": "x", "integer": 0, "date": "19700101", "list": ["x"]}


@dataclass(frozen=True)
class VarSpec:
    name: str
    type: str
    description: str = ""
    default: Any = None
    pattern: str | None = None

    @property
    def required(self) -> bool:
        return self.default is None


@dataclass(frozen=True)
class GivenValue:
    """A value set from outside the job, with where it was set (for messages)."""

    value: Any
    label: str                     # "--var patient" or "vars.yml"
    file: str | None = None
    line: int | None = None
    column: int | None = None

    def error(self, message: str) -> JobError:
        if self.file is None:
            return JobError(f"{self.label}: {message}")
        return JobError(message, file=self.file, line=self.line, column=self.column)


# -- values from the command line and files ----------------------------------------------------
def parse_var_args(items: list[str] | None) -> dict[str, GivenValue]:
    """``--var name=value`` (repeatable) -> values; a malformed one is an error (exit 2)."""
    out: dict[str, GivenValue] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not _NAME.fullmatch(name):
            raise JobError(f"--var {item!r}: write --var NAME=VALUE (NAME: letters, digits, _)")
        out[name] = GivenValue(value, f"--var {name}")
    return out


def load_vars_file(path: str) -> dict[str, GivenValue]:
    """A YAML mapping of variable values (``--vars-file``), each located for messages."""
    from .source import load_source
    try:
        source = load_source(path)
    except JobError as exc:
        if exc.message == "job file not found":
            raise JobError("vars file not found", file=path) from None
        raise
    if not isinstance(source.data, dict):
        raise source.error("a vars file must be a mapping (name: value)", source.value_at(()))
    out: dict[str, GivenValue] = {}
    for name, value in source.data.items():
        pos = source.key_at((name,))
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise source.error(f"{name!r} is not a variable name", pos)
        vpos = source.value_at((name,))
        out[name] = GivenValue(value, path, path, vpos.line, vpos.column)
    return out


# -- typing ---------------------------------------------------------------------------------------
def _coerce(spec: VarSpec, value: Any) -> tuple[Any, str | None]:
    """(the typed value, None) or (None, what is wrong)."""
    kind = spec.type
    if kind == "string":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            return None, f"must be a string, not {type(value).__name__}"
        if not isinstance(value, str):
            return None, f"must be a string; quote it: \"{value}\""
        typed: Any = value
    elif kind == "integer":
        if isinstance(value, bool):
            return None, "must be an integer"
        if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
            value = int(value)
        if not isinstance(value, int):
            return None, f"must be an integer, not {value!r}"
        typed = value
    elif kind == "date":
        if isinstance(value, _dt.date):
            value = value.strftime("%Y%m%d")
        text = str(value).strip().replace("-", "") if isinstance(value, (str, int)) else ""
        try:
            _dt.datetime.strptime(text, "%Y%m%d")
            if len(text) != 8:
                raise ValueError
        except ValueError:
            return None, f"must be a date (YYYYMMDD or YYYY-MM-DD), not {value!r}"
        typed = text
    else:   # list
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not value or \
                not all(isinstance(v, str) and v for v in value):
            return None, "must be a list of strings (on the command line: A,B,C)"
        typed = list(value)
    if spec.pattern is not None:
        for item in (typed if isinstance(typed, list) else [typed]):
            if not re.fullmatch(spec.pattern, str(item)):
                return None, f"{item!r} does not match the pattern {spec.pattern!r}"
    return typed, None


# -- declarations and uses ----------------------------------------------------------------------
def _specs(source: Source, data: dict[str, Any]) -> tuple[dict[str, VarSpec], list[JobError]]:
    specs: dict[str, VarSpec] = {}
    errors: list[JobError] = []
    for name, decl in (data.get("vars") or {}).items():
        decl = decl or {}
        spec = VarSpec(name, decl.get("type", "string"), decl.get("description", ""),
                       decl.get("default"), decl.get("pattern"))
        if spec.pattern is not None:
            try:
                re.compile(spec.pattern)
            except re.error as exc:
                errors.append(source.error(f"vars.{name}.pattern is not a valid regular "
                                           f"expression: {exc}",
                                           source.value_at(("vars", name, "pattern"))))
                spec = VarSpec(name, spec.type, spec.description, spec.default, None)
        if spec.default is not None:
            _, problem = _coerce(spec, spec.default)
            if problem:
                errors.append(source.error(f"vars.{name}.default {problem} (type: {spec.type})",
                                           source.value_at(("vars", name, "default"))))
        specs[name] = spec
    return specs, errors


def query_placeholders(sql: str) -> list[tuple[str, int]]:
    """The ``:name`` parameters of a query with their offsets (outside strings and comments)."""
    out = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`[":
            close = "]" if ch == "[" else ch
            j = sql.find(close, i + 1)
            i = n if j < 0 else j + 1
            continue
        if sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
            continue
        if sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        if ch in ":@$" and (m := _NAME.match(sql, i + 1)) and not sql.startswith("::", i):
            if ch == ":" or sql[i + 1:i + 2] != "{":
                out.append((m.group(0), i))
            i = m.end()
            continue
        i += 1
    return out


def _strings(node: Any, path: PathKey):
    """Every (path, string) below ``node``."""
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, path + (i,))


def _step_paths(data: dict[str, Any]) -> list[PathKey]:
    if isinstance(data.get("steps"), list):
        return [("steps", i) for i in range(len(data["steps"]))]
    return [()]


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]}?)"
    return f" (declared: {', '.join(known)})" if known else " (the job declares no vars:)"


# -- binding -----------------------------------------------------------------------------------------
def bind_job_vars(source: Source, given: dict[str, GivenValue] | None, *,
                  validating: bool = False
                  ) -> tuple[dict[str, Any], dict[str, VarSpec], dict[str, Any]]:
    """(job data with ``${name}`` substituted, the declarations, the values used).

    ``validating``: a variable without a value takes a stand-in of its type, so the rest of the
    job is checked; otherwise a missing value is an error.  Raises ``JobErrors``.
    """
    from .jobs import JobErrors
    from .store import safe_component
    data = source.data
    specs, errors = _specs(source, data)
    given = given or {}
    values: dict[str, Any] = {}
    for name, spec in specs.items():
        if name in given:
            typed, problem = _coerce(spec, given[name].value)
            if problem:
                errors.append(given[name].error(f"variable {name} {problem}"))
                continue
            values[name] = typed
        elif spec.default is not None:
            values[name] = _coerce(spec, spec.default)[0]
        elif validating:
            continue
        else:
            hint = f" ({spec.description})" if spec.description else ""
            errors.append(source.error(
                f"variable {name} has no value: give --var {name}=VALUE{hint}",
                source.key_at(("vars", name))))
    stand_in = {n: values.get(n, _PLACEHOLDERS[s.type]) for n, s in specs.items()}
    used: set[str] = set()
    out = dict(data)
    if isinstance(data.get("steps"), list):
        out["steps"] = list(data["steps"])

    def value_of(name: str, path: PathKey) -> Any:
        if name not in specs:
            if not _NAME.fullmatch(name):
                errors.append(source.error(f"${{{name}}} is not a variable name (letters, "
                                           "digits and _)", source.value_at(path)))
            else:
                errors.append(source.error(f"${{{name}}} is not declared under vars:"
                                           + _suggest(name, list(specs)),
                                           source.value_at(path)))
            return None
        used.add(name)
        return stand_in.get(name)

    for step_path in _step_paths(data):
        step = _get(data, step_path)
        if not isinstance(step, dict):
            continue
        new_step = dict(step)
        select = step.get("select")
        if isinstance(select, dict):
            new_step["select"] = _bind_select(select, step_path + ("select",), source, specs,
                                              used, errors, value_of)
        action = step.get("action")
        if isinstance(action, dict):
            new_step["action"] = _substitute(action, step_path + ("action",), value_of, errors,
                                             source, safe_component)
        if step_path:
            out["steps"][step_path[1]] = new_step
        else:
            out.update(new_step)
    for name in specs:
        if name not in used:
            errors.append(source.error(f"variable {name} is declared but never used (write "
                                       f"${{{name}}}, or :{name} in select.query)",
                                       source.key_at(("vars", name))))
    if errors:
        raise JobErrors(list(errors))
    return out, specs, values


def _bind_select(select: dict[str, Any], base: PathKey, source: Source,
                 specs: dict[str, VarSpec], used: set[str], errors: list,
                 value_of: Callable[[str, PathKey], Any]) -> dict[str, Any]:
    out = dict(select)
    query = select.get("query")
    if isinstance(query, str):
        qpath = base + ("query",)
        for name, offset in query_placeholders(query):
            pos = source.locate_in_scalar(qpath, query, offset)
            if name not in specs:
                errors.append(source.error(f"select.query: :{name} is not declared under vars:"
                                           + _suggest(name, list(specs)), pos))
            elif specs[name].type == "list":
                errors.append(source.error(
                    f"select.query: :{name} is a list variable, which SQL cannot bind; use it "
                    f"in a select key instead (patient: ${{{name}}})", pos))
            else:
                used.add(name)
        for m in _USE.finditer(query):
            errors.append(source.error(
                f"select.query: write :{m.group(1)} (a bound parameter), not {m.group(0)}: "
                "values never enter the SQL text",
                source.locate_in_scalar(qpath, query, m.start())))
    for key, value in select.items():
        if key == "query":
            continue
        items = value if isinstance(value, list) else [value]
        expanded: list[Any] = []
        for i, item in enumerate(items):
            path = base + ((key, i) if isinstance(value, list) else (key,))
            whole = _USE.fullmatch(item) if isinstance(item, str) else None
            if whole:
                v = value_of(whole.group(1), path)
                expanded.extend(v if isinstance(v, list) else [_text(v)])
            elif isinstance(item, str):
                expanded.append(_replace(item, path, value_of, errors, source, None))
            else:
                expanded.append(item)
        out[key] = expanded if isinstance(value, list) or len(expanded) != 1 else expanded[0]
    return out


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _replace(text: str, path: PathKey, value_of, errors: list, source: Source,
             safe: Callable[[str], str] | None) -> str:
    def one(m: re.Match) -> str:
        v = value_of(m.group(1), path)
        if isinstance(v, list):
            errors.append(source.error(f"${{{m.group(1)}}} is a list: use it as the whole value "
                                       "of a select key", source.value_at(path)))
            return ""
        return safe(_text(v)) if safe is not None else _text(v)
    return _USE.sub(one, text)


def _substitute(node: Any, path: PathKey, value_of, errors: list, source: Source,
                safe_component: Callable[[str], str]) -> Any:
    if isinstance(node, str):
        if "${" not in node:
            return node
        safe = None
        if path and path[-1] in PATH_OPTIONS:
            def safe(value: str, layout: bool = path[-1] == "layout") -> str:
                part = safe_component(value)
                return part.replace("{", "{{").replace("}", "}}") if layout else part
        return _replace(node, path, value_of, errors, source, safe)
    if isinstance(node, dict):
        return {k: _substitute(v, path + (k,), value_of, errors, source, safe_component)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, path + (i,), value_of, errors, source, safe_component)
                for i, v in enumerate(node)]
    return node


def _get(data: Any, path: PathKey) -> Any:
    for p in path:
        data = data[p]
    return data


def bound_params(values: dict[str, Any], sql: str | None) -> dict[str, Any]:
    """The named parameters ``sql`` uses, from a job's values (for ``sqlite3`` binding)."""
    if not sql:
        return {}
    return {name: values[name] for name, _ in query_placeholders(sql) if name in values}


def check_given(given: dict[str, GivenValue], declared: set[str]) -> None:
    """A value for a variable that no job declares is a mistake (a typo): said, exit 2."""
    unknown = [n for n in given if n not in declared]
    if unknown:
        raise ConquestRunError("; ".join(
            given[n].error(f"no job declares the variable {n}"
                           + _suggest(n, sorted(declared))).__str__() for n in unknown))
