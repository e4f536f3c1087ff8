"""The project file ``conquest-run.yml``: what a job repository's jobs share.

Like dbt's ``dbt_project.yml``, it sits at the repository's root and holds the shared
``archive:`` and ``nodes:`` (``schemas/project.schema.json``).  ``find_project(job_path)`` looks
for it in the job file's folder and its parents, up to the git repository's root; ``load_project`` checks it (errors located
``file:line:col``).  ``inherit`` gives a job's data what it leaves out: the project's archive
keys and nodes (the job's own win).  With a project file every relative archive path, the
project's and the job's, is from the project file's folder, so jobs run the same from any
working directory; without one, relative paths stay from the working directory.
"""

from __future__ import annotations

__all__ = ["PROJECT_FILE", "Project", "find_project", "load_project", "inherit",
           "project_schema"]

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import JobError
from .source import Source, load_source

PROJECT_FILE = "conquest-run.yml"
_ARCHIVE_KEYS = ("data", "database", "dicom_sql")


@dataclass(frozen=True)
class Project:
    path: str                       # the project file, as found
    root: str                       # its folder, absolute: relative paths are from here
    name: str
    description: str
    archive: dict[str, str]
    nodes: dict[str, dict[str, Any]]
    jobs_dir: str                   # absolute
    log_file: str | None = None     # absolute, when given
    source: Source | None = field(default=None, compare=False, repr=False)


def project_schema() -> dict[str, Any]:
    text = resources.files("conquest_run").joinpath("schemas/project.schema.json") \
        .read_text("utf-8")
    return json.loads(text)


def _validator():
    import jsonschema
    from referencing import Registry, Resource
    from .jobs import job_schema
    job = job_schema()
    registry = Registry().with_resource(job["$id"], Resource.from_contents(job))
    return jsonschema.Draft202012Validator(project_schema(), registry=registry)


def find_project(start: str | os.PathLike) -> Path | None:
    """The nearest ``conquest-run.yml`` in ``start`` (a job file's folder) or its parents.

    The search stops, as git's does, at the root of the git repository the job is in (a
    folder holding ``.git``) and where a parent is on another file system: a
    ``conquest-run.yml`` above a job repository, or in ``/tmp`` above a stray job file
    on another mount, is not that job's project file."""
    here = Path(start).absolute()
    if here.is_file() or not here.exists():
        here = here.parent
    device = _device(here)
    for folder in (here, *here.parents):
        if device is not None and _device(folder) not in (None, device):
            return None
        candidate = folder / PROJECT_FILE
        if candidate.is_file():
            return candidate
        if (folder / ".git").exists():
            return None
    return None


def _device(folder: Path) -> int | None:
    try:
        return folder.stat().st_dev
    except OSError:
        return None


def load_project(path: str | os.PathLike) -> Project:
    """Read and check a project file; every schema error located, all at once."""
    from .jobs import JobErrors, _Humanizer
    source = load_source(path)
    data = source.data
    if not isinstance(data, dict):
        raise source.error(f"a project file must be a mapping (version: 1, archive:, nodes:), "
                           f"not {'empty' if data is None else type(data).__name__}",
                           source.value_at(()))
    human = _Humanizer(source)
    errors: list[JobError] = []
    for error in _validator().iter_errors(data):
        for e in human.convert(error, data):
            errors.append(JobError(e.message.replace("the job needs", "the project file needs")
                                   .replace("in the job", "in the project file"),
                                   file=e.file, line=e.line, column=e.column))
    if errors:
        raise JobErrors(errors)
    root = Path(path).absolute().parent
    archive = {k: str(root / v) for k, v in (data.get("archive") or {}).items()}
    return Project(str(path), str(root), data.get("name") or root.name,
                   data.get("description", ""), archive,
                   {k: dict(v) for k, v in (data.get("nodes") or {}).items()},
                   str(root / data.get("jobs", "jobs")),
                   str(root / data["log_file"]) if data.get("log_file") else None, source)


def inherit(data: dict[str, Any], project: Project) -> dict[str, Any]:
    """A job's data with the project's archive and nodes filled in; relative archive paths
    (the job's too) made absolute from the project's folder, defaults included."""
    out = dict(data)
    own = data.get("archive") or {}
    archive = {"data": str(Path(project.root) / "data"),
               "database": str(Path(project.root) / "conquest.db")}
    archive.update(project.archive)
    for key in _ARCHIVE_KEYS:
        if isinstance(own.get(key), str):
            archive[key] = str(Path(project.root) / own[key])
    if "dicom_sql" not in archive and (Path(project.root) / "dicom.sql").is_file():
        archive["dicom_sql"] = str(Path(project.root) / "dicom.sql")
    out["archive"] = archive
    if isinstance(data.get("action"), dict):
        out["action"] = _action_paths(data["action"], Path(project.root))
    if isinstance(data.get("steps"), list):
        out["steps"] = [dict(s, action=_action_paths(s["action"], Path(project.root)))
                        if isinstance(s, dict) and isinstance(s.get("action"), dict) else s
                        for s in data["steps"]]
    if project.nodes or data.get("nodes"):
        out["nodes"] = {**project.nodes, **(data.get("nodes") or {})}
    return out


# the output paths of an action that are relative to where the job is run from without a
# project file, and to the project's folder with one
_OUTPUT_PATHS = {"copy": ("destination",), "dump": ("file",)}


def _action_paths(action: dict[str, Any], root: Path) -> dict[str, Any]:
    """An action with its relative output paths (copy destination, dump file, a de-identified
    export's mapping) made absolute from the project's folder; anything else as it is (the
    schema reports wrong types, with their positions)."""
    out = dict(action)
    for name, options in action.items():
        if not isinstance(options, dict):
            continue
        options = dict(options)
        for key in _OUTPUT_PATHS.get(name, ()):
            if isinstance(options.get(key), str) and options[key] and \
                    not Path(options[key]).is_absolute():
                options[key] = str(root / options[key])
        deid = options.get("deidentify")
        if isinstance(deid, dict) and isinstance(deid.get("mapping"), str) and \
                deid["mapping"] and not Path(deid["mapping"]).is_absolute():
            options["deidentify"] = dict(deid, mapping=str(root / deid["mapping"]))
        out[name] = options
    return out

