"""``conquest-run init|list|show``: job repositories.

    conquest-run init [DIR]       the project file, example jobs, pre-commit, CI, .gitignore
    conquest-run list [--json]    the repository's jobs (the project's jobs/ folder, or ./jobs)
    conquest-run show JOB         one job explained: steps, selections, variables, archive
"""

from __future__ import annotations

__all__ = ["register", "run", "describe_selection"]

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConquestRunError
from .shown import shown as _shown, shown_database as _shown_index


def register(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "init":
        parser.description = ("Scaffold a job repository: conquest-run.yml, jobs/ with one "
                              "commented example per action, the JSON Schemas, "
                              ".pre-commit-config.yaml, a CI workflow and a .gitignore.")
        parser.add_argument("dir", nargs="?", default=".", metavar="DIR",
                            help="where (default: the current directory; created if missing)")
    elif name == "list":
        parser.description = ("List the repository's jobs: name, actions, whether they destroy "
                              "anything, variables, description.")
        parser.add_argument("--json", action="store_true", help="print the list as JSON")
        parser.add_argument("--var-names", action="store_true", help=argparse.SUPPRESS)
    else:
        parser.description = ("Explain one job: its steps, what each selects, its variables "
                              "and the archive it resolves to.")
        parser.add_argument("job", metavar="JOB", help="a job file, or a job's name")


def run(name: str, args: argparse.Namespace) -> int:
    if name == "init":
        return _init(Path(args.dir))
    if name == "list":
        return _list(args)
    return _show(args.job)


# -- init ---------------------------------------------------------------------------------------
def _init(folder: Path) -> int:
    from importlib import resources
    from .. import __version__
    from ..scaffold import scaffold_files
    name = folder.absolute().name or "jobs"
    files = scaffold_files(name, __version__)
    for schema in ("job.schema.json", "project.schema.json"):
        files[f"schemas/{schema}"] = resources.files("conquest_run").joinpath(
            f"schemas/{schema}").read_text("utf-8")
    there = [p for p in files if (folder / p).exists()]
    if there:
        print(f"{folder}: refusing to overwrite {', '.join(there)} (init writes only new "
              "files; move them away or pick another folder)", file=sys.stderr)
        return 2
    for rel, text in files.items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    print(f"Created a job repository in {folder}:")
    for rel in files:
        print(f"  {rel}")
    print("Next: put the archive in data/ (or edit conquest-run.yml), then\n"
          "  conquest-run list\n"
          "  conquest-run show jobs/export_patient.yml\n"
          "  conquest-run --dry-run --var patient=ID jobs/export_patient.yml")
    return 0


# -- list -----------------------------------------------------------------------------------
def _jobs_dir() -> tuple[Path, Any]:
    from ..project import find_project, load_project
    found = find_project(Path.cwd())
    project = load_project(found) if found is not None else None
    return (Path(project.jobs_dir) if project else Path("jobs")), project


def _job_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".yml", ".yaml")
                  and p.is_file())


def _entry(path: Path) -> dict[str, Any]:
    from ..jobs import load_job
    shown = _shown(path)
    try:
        job = load_job(path, display=shown, validating=True)
    except ConquestRunError as exc:
        return {"path": shown, "valid": False, "error": str(exc).splitlines()[0]}
    return {"path": shown, "valid": True, "name": job.name, "description": job.description,
            "actions": [s.action for s in job.steps],
            "destructive": any(s.action == "delete" for s in job.steps),
            "vars": {n: {"type": s.type, "description": s.description,
                         "required": s.required} for n, s in job.var_specs.items()}}


def _list(args) -> int:
    folder, project = _jobs_dir()
    entries = [_entry(p) for p in _job_files(folder)]
    if args.var_names:                 # for shell completion
        names = sorted({n for e in entries for n in e.get("vars", {})})
        print("\n".join(f"{n}=" for n in names))
        return 0
    status = 0 if all(e["valid"] for e in entries) else 2
    if args.json:
        print(json.dumps({"project": project.path if project else None,
                          "jobs_dir": _shown(folder), "jobs": entries}, indent=2))
        return status
    if not entries:
        print(f"no job files in {_shown(folder)}/ (conquest-run init makes a repository with "
              "examples)", file=sys.stderr)
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty()
                      else 200)
    table = Table(box=None, header_style="bold", pad_edge=False, show_edge=False)
    for col in ("job", "actions", "destroys", "vars", "path", "description"):
        table.add_column(col, overflow="fold")
    for e in entries:
        if not e["valid"]:
            table.add_row("[red]invalid[/red]", "", "", "", escape(e["path"]),
                          escape(e["error"]))
            continue
        table.add_row(escape(e["name"]), ", ".join(e["actions"]),
                      "[red]yes[/red]" if e["destructive"] else "no",
                      escape(", ".join(e["vars"])), escape(e["path"]),
                      escape(e["description"]))
    console.print(table)
    return status


# -- show -------------------------------------------------------------------------------------
def _values(value: Any) -> str:
    items = value if isinstance(value, list) else [value]
    return " or ".join(str(v) for v in items)


def describe_selection(select: dict[str, Any] | None) -> list[str]:
    """A job's ``select:`` (as written) in words, one clause a line."""
    if not select:
        return ["everything the action covers (no select:)"]
    words = {"patient": "PatientID", "study": "StudyInstanceUID", "series": "SeriesInstanceUID",
             "modality": "Modality"}
    out = []
    if select.get("query"):
        out.append("the series (or instances) this query returns: "
                   + " ".join(str(select["query"]).split()))
    for key, label in words.items():
        if select.get(key) is not None:
            out.append(f"{label} is {_values(select[key])}")
    for key in select:
        if key not in words and key != "query":
            out.append(f"{key}: {select[key]}")
    return out


def _resolve(word: str) -> Path:
    path = Path(word)
    if path.exists():
        return path
    folder, _ = _jobs_dir()
    for p in _job_files(folder):
        entry = _entry(p)
        if entry.get("name") == word or p.stem == word:
            return p
    raise ConquestRunError(f"{word}: no such job file, and no job of {_shown(folder)}/ has "
                           "that name (see conquest-run list)")


def _show(word: str) -> int:
    from ..jobs import load_job
    from ..runner import archive_for_job
    path = _resolve(word)
    job = load_job(path, display=_shown(path), validating=True)
    data = job.source.data
    print(f"job {job.name} ({_shown(path)})")
    if job.description:
        print(f"  {job.description}")
    archive = archive_for_job(job)
    where = (f"from the project file {_shown(Path(job.project.path))}" if job.project
             else "relative to the working directory")
    print(f"archive: data directory {_shown(Path(archive.data_dir))}, database "
          f"{_shown_index(archive.database)} ({where})")
    if job.var_specs:
        print("variables:")
        for n, s in job.var_specs.items():
            facts = [s.type, "required" if s.required else f"default {s.default}"]
            if s.pattern:
                facts.append(f"pattern {s.pattern}")
            print(f"  {n} ({', '.join(facts)})" + (f": {s.description}" if s.description
                                                    else ""))
    raw = data["steps"] if "steps" in data else [data]
    for step, written in zip(job.steps, raw):
        action = written["action"][step.action] or {}
        target = next((f" -> {action[k]}" for k in ("destination", "file", "node", "host")
                       if isinstance(action, dict) and k in action), "")
        label = "" if step.name == step.action else f" {step.name}:"
        print(f"step {step.index}{label} {step.action}{target}"
              + (" (destroys: removes from the index"
                 + (" and deletes files)" if action.get("files") is True else ", files kept)")
                 if step.action == "delete" else ""))
        for line in describe_selection(written.get("select")):
            print(f"  selects {line}" if line == describe_selection(written.get("select"))[0]
                  else f"    and {line}")
        if written.get("expect"):
            print(f"  expects {json.dumps(written['expect'])}")
    return 0
