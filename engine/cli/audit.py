"""``conquest-run history``: past runs and outcomes from the audit log in the archive's database.

    conquest-run history [--limit N] [--job J] [--since D] [--state S] [--json]   runs
    conquest-run history --run RUN_ID [--failed] [--json]        one run's outcomes
    conquest-run history --patient P | --series S | --sop U | --action A | --status S | --failed
                                                                 outcomes across runs
    conquest-run history export --since D [--out FILE]           outcomes as CSV

The database is only read (through a connection that cannot write and leaves no trace).  A run
id may be abbreviated to any unique prefix, as git does with commits.  ``--since`` takes an ISO
date or time (UTC unless it says otherwise).
"""

from __future__ import annotations

__all__ = ["register", "run"]

import argparse
import csv
import json
import sys
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..audit import read_outcomes, read_runs
from ..history import OUTCOME_KEYS
from . import add_archive_flags
from ..errors import ArchiveError, ConquestRunError

_STATES = ("ok", "failed", "interrupted", "crashed", "running", "unfinished")
_OUTCOME_FILTERS = ("patient", "series", "sop", "action", "status")


def register(name: str, parser: argparse.ArgumentParser) -> None:
    parser.description = "List past runs and outcomes (from the audit log in the archive's " \
                         "database); 'history export' writes outcomes as CSV."
    parser.add_argument("what", nargs="?", choices=["export"],
                        help="export: write the outcomes (with --since, those since then) as CSV")
    parser.add_argument("--limit", type=int, default=20, metavar="N",
                        help="how many runs (or outcomes across runs) to list, newest runs "
                             "first (default 20; 0: all)")
    parser.add_argument("--run", metavar="RUN_ID",
                        help="show one run's outcomes (a unique prefix is enough)")
    parser.add_argument("--failed", action="store_true",
                        help="only the failed outcomes (of --run, or across runs)")
    parser.add_argument("--patient", metavar="ID", help="outcomes of this PatientID")
    parser.add_argument("--series", metavar="UID", help="outcomes of this series")
    parser.add_argument("--sop", metavar="UID", help="outcomes of this SOP instance")
    parser.add_argument("--action", choices=["copy", "dump", "delete", "rebuild", "send",
                                             "retrieve"],
                        help="outcomes of this action")
    parser.add_argument("--status", choices=["done", "skipped", "failed"],
                        help="outcomes with this status")
    parser.add_argument("--job", metavar="JOB", help="runs (or outcomes) of this job path or name")
    parser.add_argument("--since", metavar="DATE",
                        help="runs started (outcomes recorded) at or after this ISO date/time")
    parser.add_argument("--state", choices=_STATES, help="runs in this final state")
    parser.add_argument("--out", metavar="FILE.csv", help="export: write here (default stdout)")
    parser.add_argument("--json", action="store_true", help="print the full records as JSON")
    add_archive_flags(parser)


def _open(database: str):
    from ..backends import is_postgres_url
    from ..db import connect_reader
    if is_postgres_url(database):
        return connect_reader(database)     # no audit tables there: no runs
    path = Path(database)
    if not path.is_file() and not path.is_dir():  # a folder: connect_reader says so
        raise ArchiveError("database not found (no runs recorded here)", file=str(path))
    return connect_reader(path)


def _since(text: str | None) -> str | None:
    """An ISO date or time as the UTC text the log keeps, or a plain error."""
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConquestRunError(f"--since {text!r} is not an ISO date or time (for example "
                               "2026-12-01 or 2026-12-01T14:30)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _one_run(conn, prefix: str) -> dict[str, Any]:
    runs = read_runs(conn, limit=None, run_id_prefix=prefix)
    if not runs:
        raise ConquestRunError(f"no run {prefix!r} in the audit log")
    if len(runs) > 1:
        ids = ", ".join(r["run_id"] for r in runs[:5])
        raise ConquestRunError(f"run id prefix {prefix!r} is ambiguous: {ids}")
    return runs[0]


def _console():
    from rich.console import Console
    return Console(width=None if sys.stdout.isatty() else 160, highlight=False)


def _state(run: dict[str, Any]) -> str:
    state = run.get("state") or "unfinished"
    colour = {"ok": "green", "running": "cyan"}.get(state, "red" if state != "unfinished"
                                                    else "yellow")
    extra = f" ({run['signal']})" if run.get("signal") else ""
    return f"[{colour}]{state}{extra}[/]"


def _outcome_filters(args) -> dict[str, Any]:
    got = {k: getattr(args, k) for k in _OUTCOME_FILTERS if getattr(args, k) is not None}
    if args.failed:
        if got.get("status", "failed") != "failed":
            raise ConquestRunError("--failed and --status " + got["status"] + " contradict "
                                   "each other")
        got["status"] = "failed"
    return got


def _tsv(header: list[str], rows: list[list[Any]]) -> None:
    """Piped output: tab-separated, full values, no colours (as ``query`` prints)."""
    def cell(v: Any) -> str:
        return "" if v is None else str(v).replace("\t", " ").replace("\n", "\\n")
    print("\t".join(header))
    for row in rows:
        print("\t".join(cell(v) for v in row))


def run(name: str, args: argparse.Namespace) -> int:
    """With --json, an error is JSON on stdout too ({"error": ...}), with the same exit code."""
    try:
        return _run(name, args)
    except ConquestRunError as exc:
        if not args.json:
            raise
        print(json.dumps({"error": {"message": exc.message, "file": exc.file,
                                    "exit_code": exc.exit_code}}, indent=2))
        print(str(exc), file=sys.stderr)
        return exc.exit_code


def _run(name: str, args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise ConquestRunError("--limit must be 0 (all) or more")
    since = _since(args.since)
    filters = _outcome_filters(args)
    if args.what == "export":
        return _export(args, since, filters)
    if args.out:
        raise ConquestRunError("--out goes with 'history export'")
    with closing(_open(args.database)) as conn:
        if args.run:
            info = _one_run(conn, args.run)
            outcomes = read_outcomes(conn, info["run_id"], since=since, **filters)
            return _show_run(info, outcomes, args.json)
        if filters:
            outcomes = read_outcomes(conn, None, job=args.job, since=since,
                                     limit=args.limit or None, **filters)
            return _show_outcomes(outcomes, args.json)
        runs = read_runs(conn, limit=args.limit or None, job=args.job, since=since,
                         state=args.state)
    return _show_runs(runs, args.json)


def _show_run(info: dict[str, Any], outcomes: list[dict], as_json: bool) -> int:
    from rich.markup import escape
    if as_json:
        print(json.dumps({**info, "outcomes": outcomes}, indent=2, sort_keys=True))
        return 0
    console = _console()
    console.print(f"run [bold]{escape(info['run_id'])}[/]  {escape(info['job_name'] or '')} "
                  f"({escape(info['job_path'] or '')})  {escape(info['started'] or '')} -> "
                  f"{escape(info['ended'] or '?')}  {_state(info)}")
    facts = [f"{k} {info[k]}" for k in ("user", "host", "pid", "version", "job_commit")
             if info.get(k)]
    if info.get("variables"):
        facts.append("variables " + json.dumps(info["variables"], sort_keys=True))
    if facts:
        console.print("  " + escape(", ".join(facts)))
    if info.get("error"):
        console.print(f"  [red]{escape(info['error'])}[/]")
    # runs recorded before whole-step failures had rows of their own: from the summary
    stepped = {o["step"] for o in outcomes if o["detail"].get("scope") == "step"}
    for s in (info.get("summary") or {}).get("steps", []):
        if s.get("error") and s.get("index") not in stepped:
            console.print(f"  [red]step {s.get('index')} ({escape(str(s.get('name')))}): "
                          f"{escape(str(s['error']))}[/]")
    _outcome_table(console, outcomes, with_run=False)
    return 0


def _outcome_table(console, outcomes: list[dict], *, with_run: bool) -> None:
    from rich.markup import escape
    from rich.table import Table
    columns = (["run"] if with_run else []) + ["step", "action", "target", "patient",
                                               "SOP instance", "status", "reason / path"]
    if not sys.stdout.isatty():
        _tsv([c.replace(" / ", "_").replace(" ", "_") for c in columns], [
            ([o["run_id"]] if with_run else []) + [
                f"{o['step']} {o['step_name'] or ''}".strip(), o["action"], o["target"],
                o["patient_id"],
                "(whole step)" if o["detail"].get("scope") == "step" else o["sop_uid"],
                o["status"], " ".join(x for x in (o["reason"] or "", str(
                    o["detail"].get("path") or o["detail"].get("file") or "")) if x)]
            for o in outcomes])
        return
    table = Table(*columns)
    for o in outcomes:
        colour = {"done": "green", "skipped": "yellow", "failed": "red"}.get(o["status"], "")
        where = o["detail"].get("path") or o["detail"].get("file") or ""
        what = "(whole step)" if o["detail"].get("scope") == "step" else (o["sop_uid"] or
                                                                          "(step)")
        row = ([escape((o["run_id"] or "")[:12])] if with_run else []) + [
            escape(f"{o['step']} {o['step_name'] or ''}"), escape(o["action"] or ""),
            escape(o["target"] or ""), escape(o["patient_id"] or ""), escape(what),
            f"[{colour}]{o['status']}[/]" if colour else escape(o["status"] or ""),
            escape(" ".join(x for x in (o["reason"] or "", str(where)) if x))]
        table.add_row(*row)
    console.print(table)


def _show_outcomes(outcomes: list[dict], as_json: bool) -> int:
    if as_json:
        print(json.dumps(outcomes, indent=2, sort_keys=True))
        return 0
    if not outcomes:
        print("no outcomes match", file=sys.stderr)
        return 0
    _outcome_table(_console(), outcomes, with_run=True)
    return 0


def _show_runs(runs: list[dict], as_json: bool) -> int:
    from rich.markup import escape
    from rich.table import Table
    if as_json:
        print(json.dumps(runs, indent=2, sort_keys=True))
        return 0
    if not runs:
        print("no runs recorded yet", file=sys.stderr)
        return 0
    if not sys.stdout.isatty():
        _tsv(["run", "started", "job", "user", "result", "done", "skipped", "failed"],
             [[r["run_id"], r["started"], r["job_name"] or r["job_path"], r["user"],
               (r.get("state") or "unfinished") + (f" ({r['signal']})" if r.get("signal")
                                                   else ""),
               r["done"], r["skipped"], r["failed"]] for r in runs])
        return 0
    table = Table("run", "started", "job", "user", "result", "done", "skipped", "failed")
    for r in runs:
        table.add_row(escape(r["run_id"][:12]), escape(r["started"] or ""),
                      escape(r["job_name"] or r["job_path"] or ""), escape(r["user"] or ""),
                      _state(r), str(r["done"]), str(r["skipped"]), str(r["failed"]))
    _console().print(table)
    return 0


def _export(args, since: str | None, filters: dict[str, Any]) -> int:
    """The matching outcomes as CSV, one row each, with their run's facts beside them."""
    with closing(_open(args.database)) as conn:
        outcomes = read_outcomes(conn, None, job=args.job, since=since, **filters)
        runs = {r["run_id"]: r for r in read_runs(conn, limit=None)}
    run_keys = ("state", "user", "host", "version", "job_commit")
    header = list(OUTCOME_KEYS) + [f"run_{k}" for k in run_keys]
    if args.out:
        out_path = Path(args.out)
        if out_path.is_dir():
            raise ConquestRunError("is a folder; --out names the CSV file to write",
                                   file=str(out_path))
        try:
            stream = open(out_path, "w", newline="", encoding="utf-8")
        except OSError as exc:
            raise ConquestRunError(f"cannot write the export: {exc.strerror or exc}",
                                   file=str(out_path)) from None
    else:
        stream = sys.stdout
    try:
        writer = csv.writer(stream)
        writer.writerow(header)
        for o in outcomes:
            r = runs.get(o["run_id"], {})
            writer.writerow([json.dumps(o[k], sort_keys=True) if k == "detail" and o[k] else
                             ("" if o[k] is None or o[k] == {} else o[k]) for k in OUTCOME_KEYS]
                            + ["" if r.get(k) is None else r.get(k) for k in run_keys])
    finally:
        if stream is not sys.stdout:
            stream.close()
    if args.out:
        print(f"{len(outcomes)} outcomes written to {args.out}", file=sys.stderr)
    return 0
