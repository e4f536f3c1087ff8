"""``conquest-run history``: past runs from the audit log in the archive's database.

    conquest-run history [--limit N] [--json] [--data D --database DB]
    conquest-run history --run RUN_ID [--failed] [--json]    one run's per-instance outcomes

The database is only read (through a connection that cannot write and leaves no trace).  A run
id may be abbreviated to any unique prefix, as git does with commits.
"""

from __future__ import annotations

__all__ = ["register", "run"]

import argparse
import json
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

from ..audit import read_outcomes, read_runs
from . import add_archive_flags
from ..errors import ArchiveError, ConquestRunError


def register(name: str, parser: argparse.ArgumentParser) -> None:
    parser.description = "List past runs (from the audit log in the archive's database)."
    parser.add_argument("--limit", type=int, default=20, metavar="N",
                        help="how many runs to list, newest first (default 20; 0: all)")
    parser.add_argument("--run", metavar="RUN_ID",
                        help="show one run's per-instance outcomes (a unique prefix is enough)")
    parser.add_argument("--failed", action="store_true",
                        help="with --run: only the failed outcomes (what is left to clean up)")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    add_archive_flags(parser)


def _open(database: str):
    from ..db import connect_reader
    path = Path(database)
    if not path.is_file() and not path.is_dir():  # a folder: connect_reader says so
        raise ArchiveError("database not found (no runs recorded here)", file=str(path))
    return connect_reader(path)


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


def _status(ok: bool | None) -> str:
    return {True: "[green]ok[/]", False: "[red]failed[/]", None: "[yellow]unfinished[/]"}[ok]


def run(name: str, args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    with closing(_open(args.database)) as conn:
        if args.run:
            info = _one_run(conn, args.run)
            outcomes = read_outcomes(conn, info["run_id"])
        else:
            runs = read_runs(conn, limit=args.limit or None)
    if args.run:
        if args.failed:
            outcomes = [o for o in outcomes if o["status"] == "failed"]
        if args.json:
            print(json.dumps({**info, "outcomes": outcomes}, indent=2, sort_keys=True))
            return 0
        console = _console()
        console.print(f"run [bold]{escape(info['run_id'])}[/]  {escape(info['job_name'] or '')} "
                      f"({escape(info['job_path'] or '')})  {escape(info['started'] or '')} -> "
                      f"{escape(info['ended'] or '?')}  {_status(info['ok'])}")
        table = Table("step", "action", "target", "SOP instance", "status", "reason / path")
        for o in outcomes:
            colour = {"done": "green", "skipped": "yellow", "failed": "red"}.get(o["status"], "")
            where = o["detail"].get("path") or o["detail"].get("file") or ""
            table.add_row(escape(f"{o['step']} {o['step_name'] or ''}"),
                          escape(o["action"] or ""), escape(o["target"] or ""),
                          escape(o["sop_uid"] or "(step)"),
                          f"[{colour}]{o['status']}[/]" if colour else escape(o["status"] or ""),
                          escape(" ".join(x for x in (o["reason"] or "", str(where)) if x)))
        console.print(table)
        return 0
    if args.json:
        print(json.dumps(runs, indent=2, sort_keys=True))
        return 0
    if not runs:
        print("no runs recorded yet", file=sys.stderr)
        return 0
    table = Table("run", "started", "job", "result", "done", "skipped", "failed")
    for r in runs:
        table.add_row(escape(r["run_id"][:12]), escape(r["started"] or ""),
                      escape(r["job_name"] or r["job_path"] or ""),
                      _status(r["ok"]), str(r["done"]), str(r["skipped"]), str(r["failed"]))
    _console().print(table)
    return 0
