"""``conquest-run JOB.yml...``: validate, plan, dry-run, run, save and apply plans.

    conquest-run JOB.yml...               plan, then run each job
    conquest-run --dry-run JOB.yml...     plan and walk the actions without touching anything
    conquest-run --validate JOB.yml...    YAML, schema, references and SQL only (no database)
    conquest-run --plan-out P.json JOB    save the plan (nothing is run); then
    conquest-run --apply P.json           run exactly that plan, refused if the archive changed

Exit codes: 0 all done, 1 some work failed, 2 invalid job or usage.  Errors go to stderr as
``PATH:LINE:COL: message``.
"""

from __future__ import annotations

__all__ = ["register", "run"]

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import add_archive_flags
from ..errors import ConquestRunError
from .jobinputs import given_vars, paths_note, unknown_vars
from .shown import shown as _shown, shown_database as _shown_database


def register(name: str | None, parser: argparse.ArgumentParser) -> None:
    parser.description = ("Run declarative job files on a Conquest-style archive: select "
                          "series, then copy, dump, delete, rebuild or send them (or retrieve "
                          "them from a remote node).")
    parser.add_argument("jobs", nargs="*", metavar="JOB.yml", help="job files to run in order")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true",
                      help="print the plan and what each step would do; change nothing")
    mode.add_argument("--validate", action="store_true",
                      help="check the job files (YAML, schema, references, SQL) without a "
                           "database, then stop")
    parser.add_argument("--apply", metavar="PLAN.json",
                      help="run a plan saved with --plan-out; refused if the archive changed")
    parser.add_argument("--plan-out", metavar="PLAN.json",
                        help="save the plan of one job to this file and stop (run it later "
                             "with --apply)")
    parser.add_argument("--json", action="store_true",
                        help="print the plan and the report (with --validate: the errors) as "
                             "JSON on stdout; a list when several jobs run")
    parser.add_argument("--force", action="store_true",
                        help="send: resend what the journal says a peer already confirmed")
    parser.add_argument("--yes", "-y", action="store_true",
                        help="confirm destructive (delete) steps without asking; needed when "
                             "no terminal is attached")
    parser.add_argument("--echo", action="store_true",
                        help="with --dry-run: C-ECHO the send peers (the only network traffic)")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="set a job variable declared under vars: (repeatable; a list as "
                             "A,B,C)")
    parser.add_argument("--vars-file", metavar="FILE",
                        help="a YAML mapping of job variables (--var overrides it)")
    add_query_timeout(parser)
    add_archive_flags(parser, defaults=False)


def add_query_timeout(parser: argparse.ArgumentParser) -> None:
    """--query-timeout: how long one user query may run (a stopped query exits 2)."""
    from ..sqlcheck import DEFAULT_QUERY_TIMEOUT

    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not 0 < value <= 86400:
            raise argparse.ArgumentTypeError("must be more than 0 and at most 86400 seconds")
        return value
    parser.add_argument("--query-timeout", type=seconds, default=DEFAULT_QUERY_TIMEOUT,
                        metavar="SECONDS",
                        help=f"stop a job's SQL query after this long (default "
                             f"{DEFAULT_QUERY_TIMEOUT:g})")


# -- output -----------------------------------------------------------------------------------
def _console(stderr: bool = False):
    from rich.console import Console
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 160
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def print_plan(plan, console, *, dry_run: bool, notes: list[str] = (),
               archive=None) -> None:
    """``archive``: when given, a copy step says how many files are new, identical or
    different at their targets (``copypreview``)."""
    from rich.markup import escape
    from rich.table import Table
    console.print(f"[bold]Plan[/bold] for {escape(plan.job_path)} "
                  f"([cyan]{escape(plan.job_name)}[/cyan])"
                  + ("  [yellow](dry run: nothing will be changed)[/yellow]" if dry_run else ""))
    console.print(f"  archive: data directory {escape(_shown(plan.data_dir))}, "
                  f"database {escape(_shown_database(plan.database))}")
    if plan.variables:
        console.print("  variables: " + ", ".join(
            f"{escape(k)}={escape(','.join(v) if isinstance(v, list) else str(v))}"
            for k, v in plan.variables.items()))
    for note in notes:
        console.print(f"  [yellow]{escape(note)}[/yellow]")
    for step in plan.steps:
        console.print()
        sign, colour = ("-", "red") if step.destructive else ("+", "green")
        what = " [bold red](destroys)[/bold red]" if step.destructive else ""
        label = "" if step.name == step.action else f"{escape(step.name)}: "
        console.print(f"[{colour}]{sign}[/{colour}] [bold]step {step.index}[/bold] "
                      f"{label}[bold]{step.action}[/bold]{what} -> "
                      f"{escape(step.target)}"
                      + (f"  [dim]({step.level} level)[/dim]" if step.series or step.query else ""))
        if step.series and step.remote is not None:
            _print_remote_series(step, console)
        elif step.series:
            table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
            for col, justify in (("patient", "left"), ("modality", "left"),
                                 ("series UID", "left"), ("description", "left"),
                                 ("instances", "right"), ("size", "right")):
                table.add_column(col, justify=justify, overflow="fold")
            for s in step.series:
                table.add_row(escape(s.patient_id or ""), escape(s.modality or ""),
                              escape(s.series_uid), escape(s.description or ""),
                              str(len(s.instances)), _size(s.bytes))
            console.print(table)
            from ..roiselect import plan_lines
            for line in plan_lines(step.options):
                console.print(f"  {escape(line)}")
        totals = (f"{len(step.series)} series, {_plural(step.instance_count, 'instance')}, "
                  f"{_size(step.bytes)}" if step.remote is None else
                  f"{len(step.series)} series, {_plural(step.instance_count, 'instance')} on "
                  f"{step.remote} (C-FIND)")
        if step.destructive:
            files = step.options.get("files")
            fate = (" and their files deleted" if files is True else " and their files moved "
                    "to data/.quarantine/" if files == "quarantine" else " (files kept)")
            console.print(f"  [red]{totals} will be removed from the database{fate}[/red]")
        elif not step.series and step.action not in ("rebuild", "dump", "retrieve"):
            console.print(f"  [yellow]step {step.index} selected nothing[/yellow]")
        elif step.series or step.action not in ("rebuild", "dump"):
            console.print(f"  {totals}")
        if archive is not None and step.action == "copy" and step.series:
            from ..copypreview import copy_preview, describe_copy_preview
            counts = copy_preview(step, archive)
            if counts is not None:
                console.print("  " + escape(describe_copy_preview(
                    counts, str(step.options.get("overwrite", "never")))))
        if step.remote is None and any(s.action == "retrieve" for s in plan.steps
                                       if s.index < step.index):
            console.print("  [dim](planned again once the retrieve before it has run)[/dim]")
    console.print()
    adds = sum(s.instance_count for s in plan.steps if not s.destructive)
    destroys = sum(s.instance_count for s in plan.steps if s.destructive)
    console.print(f"[bold]Plan:[/bold] {_plural(len(plan.steps), 'step')}; "
                  f"{_plural(adds, 'instance')} to process, "
                  f"[red]{destroys} to remove[/red].")


def _print_remote_series(step, console) -> None:
    """The series a remote selection found: patient, study, series, modality, description and
    the node's instance count."""
    from rich.markup import escape
    from rich.table import Table
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for col in ("patient", "study UID", "series UID", "modality", "description",
                "remote instances"):
        table.add_column(col, justify="right" if col == "remote instances" else "left",
                         overflow="fold")
    for s in step.series:
        table.add_row(escape(s.patient_id or ""), escape(s.study_uid or ""),
                      escape(s.series_uid), escape(s.modality or ""),
                      escape(s.description or ""),
                      "?" if s.remote_instances is None else str(s.remote_instances))
    console.print(table)


def print_report(report, console) -> None:
    from rich.markup import escape
    from rich.table import Table
    table = Table(title=("Dry run" if report.dry_run else "Report") + f" {report.run_id[:12]}",
                  title_justify="left", box=None, header_style="bold")
    for col in ("step", "action", "target", "done", "skipped", "failed", "note"):
        table.add_column(col, justify="right" if col in ("done", "skipped", "failed") else "left",
                         overflow="fold")
    for s in report.steps:
        t = s.totals()
        if s.step_failed:
            t["failed"] += 1        # the whole step failed: counted, its reason in the note
        note = s.error or ""
        for key in ("manifest", "file", "peer", "node", "quarantine"):
            if not note and s.summary.get(key):
                note = f"{key}: {s.summary[key]}"
        colour = "red" if not s.ok else "green"
        table.add_row(f"{s.index} {escape(s.name)}", s.action, escape(s.target),
                      str(t["done"]), str(t["skipped"]),
                      f"[{colour}]{t['failed']}[/{colour}]", escape(note))
    console.print(table)
    for s in report.steps:        # de-identified exports: the actions, never a value
        if "deidentified" in s.summary:
            options = ", ".join(s.summary["options"]) or "no options"
            actions = " ".join(f"{k}={v}" for k, v in s.summary["actions"].items())
            console.print(f"  step {s.index} de-identified (PS3.15 {s.summary['profile']}, "
                          f"{escape(options)}): {s.summary['deidentified']} files, actions "
                          f"{actions}; refused for burned-in text: "
                          f"{s.summary['refused_burned_in']}")
            if s.summary.get("warning"):
                console.print(f"  [yellow]warning[/yellow] step {s.index}: "
                              f"{escape(s.summary['mapping'])}: {escape(s.summary['warning'])}")
    for s in report.steps:
        failed = [o for o in s.outcomes if o.status == "failed"][:5]
        for o in failed:
            console.print(f"  [red]failed[/red] step {s.index} {escape(o.sop_uid or '')}: "
                          f"{escape(o.reason)}")
    status = "[green]all done[/green]" if report.ok else "[red]some work failed[/red]"
    console.print(f"{'Dry run' if report.dry_run else 'Run'} {report.run_id}: {status}")


# -- confirmation -----------------------------------------------------------------------------
def _removal(step) -> str:
    from ..expect import plan_counts
    n = plan_counts(step)
    files = step.options.get("files")
    return (f"step {step.index} ({step.name}) removes {_plural(n['patients'], 'patient')}, "
            f"{n['series']} series, {_plural(n['instances'], 'instance')} from the index"
            + (f" and deletes {_plural(n['instances'], 'file')} ({_size(step.bytes)})"
               if files is True else
               f" and moves {_plural(n['instances'], 'file')} ({_size(step.bytes)}) to "
               "data/.quarantine/" if files == "quarantine" else " (files kept)"))


def confirmed(plan, args) -> int | None:
    """None to go on; an exit code when a destructive step is not confirmed.

    ``--yes`` confirms; on a terminal the removal is shown and ``yes`` must be typed; without a
    terminal a destructive step needs ``--yes``.
    """
    steps = [s for s in plan.steps if s.destructive and s.instance_count]
    if args.dry_run or args.yes or not steps:
        return None
    if not sys.stdin.isatty():
        print(f"{plan.job_path}: refusing to run destructive steps without confirmation: "
              + "; ".join(_removal(s) for s in steps)
              + ". Pass --yes to confirm (no terminal to ask on); nothing was done.",
              file=sys.stderr)
        return 2
    for s in steps:
        print(f"{plan.job_path}: {_removal(s)}", file=sys.stderr)
    print("Type yes to go on: ", end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline()
    except (OSError, EOFError):
        answer = ""
    if answer.strip() != "yes":
        print("not confirmed: nothing was done", file=sys.stderr)
        return 1
    return None


# -- the command ------------------------------------------------------------------------------
def _overrides(args) -> dict[str, Any]:
    return {"data": args.data, "database": args.database, "dicom_sql": args.dicom_sql}


def _invalid(path: str, exc: ConquestRunError, results: list[dict]) -> int:
    """A file that did not validate: its errors on stderr and in ``results``; its exit code."""
    from ..jobs import JobErrors
    print(str(exc), file=sys.stderr)
    errors = exc.errors if isinstance(exc, JobErrors) else [exc]
    results.append({"path": path, "valid": False, "errors": [
        {"file": e.file, "line": e.line, "column": e.column, "message": e.message}
        for e in errors]})
    return exc.exit_code


def _validate(args, err) -> int:
    from ..jobs import validate_job
    from ..schema import load_schema
    schema = load_schema(args.dicom_sql) if args.dicom_sql else None
    status = 0
    out = _console()
    results = []
    try:
        given = given_vars(args)
    except ConquestRunError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    declared: set[str] = set()
    for path in args.jobs:
        from ..project import PROJECT_FILE, load_project
        if Path(path).name == PROJECT_FILE:
            try:
                load_project(path)
            except ConquestRunError as exc:
                status = max(status, _invalid(path, exc, results))
                continue
            results.append({"path": path, "valid": True, "project": True, "errors": []})
            if not args.json:
                out.print(f"{path}: valid (project file)", markup=False)
            continue
        try:
            job = validate_job(path, schema, given=given)
            declared |= set(job.var_specs)
        except ConquestRunError as exc:
            status = max(status, _invalid(path, exc, results))
            continue
        results.append({"path": path, "valid": True, "steps": len(job.steps), "errors": []})
        if not args.json:
            out.print(f"{path}: valid ({_plural(len(job.steps), 'step')})", markup=False)
    if status == 0 and given:
        status = unknown_vars(given, declared)
    if args.json:
        print(json.dumps({"valid": status == 0, "jobs": results}, indent=2))
    return status


def _finish_removals(archive, notice) -> None:
    """Settle what an interrupted delete left before a real run plans on the archive."""
    from ..removals import finish_at_start
    finish_at_start(archive, notice=notice)


def run(name: str | None, args: argparse.Namespace) -> int:
    """SIGTERM is handled like Ctrl-C: the run is recorded as interrupted, then exit 143."""
    from ..runner import RunInterrupted, sigterm_interrupts
    try:
        with sigterm_interrupts():
            return _run(name, args)
    except RunInterrupted as exc:
        print(f"interrupted ({exc})", file=sys.stderr)
        return 128 + exc.signum


def _run(name: str | None, args: argparse.Namespace) -> int:
    from ..expect import check_expectations, selected_nothing
    from ..jobs import check_job_sql, load_job
    from ..planner import build_plan
    from ..savedplan import check_plan_sql, load_plan, save_plan, verify_plan
    from ..runner import archive_for_job, indexed, run_plan
    from ..sqlcheck import QueryLimits, schema_of

    err = _console(stderr=True)
    out = _console()
    if args.apply and (args.var or args.vars_file):
        err.print("conquest-run: error: --var and --vars-file set a job's variables; a saved "
                  "plan already holds the values it was planned with", markup=False)
        return 2
    if args.apply and args.jobs:
        err.print("conquest-run: error: --apply runs a saved plan; give no job files with it",
                  markup=False)
        return 2
    if not args.apply and not args.jobs:
        err.print("conquest-run: error: give one or more job files (or --apply PLAN.json); "
                  "see --help", markup=False)
        return 2
    if args.plan_out and len(args.jobs) != 1:
        err.print("conquest-run: error: --plan-out saves the plan of exactly one job",
                  markup=False)
        return 2
    if args.echo and not args.dry_run:
        err.print("conquest-run: error: --echo goes with --dry-run (a real send echoes when "
                  "its job says verify: true)", markup=False)
        return 2
    if args.validate:
        if args.apply or args.plan_out:
            err.print("conquest-run: error: --validate checks job files; it does not go with "
                      "--apply or --plan-out", markup=False)
            return 2
        return _validate(args, err)

    progress = sys.stderr.isatty() and not args.json

    def notice(text: str) -> None:
        print(f"note: {text}", file=sys.stderr)

    results: list[dict[str, Any]] = []
    status = 0
    if args.apply:
        from ..archive import Archive
        plan = load_plan(args.apply)
        archive = Archive(args.data or plan.data_dir, args.database or plan.database,
                          args.dicom_sql or plan.dicom_sql)
        try:
            check_plan_sql(plan, schema_of(archive), args.apply)
            if not args.dry_run:
                _finish_removals(archive, notice)
            verify_plan(plan, archive)
        except ConquestRunError as exc:
            print(f"{args.apply}: {exc.message}", file=sys.stderr)
            return exc.exit_code
        if not args.json:
            print_plan(plan, out, dry_run=args.dry_run, archive=archive)
        refused = confirmed(plan, args)
        if refused is not None:
            return refused
        report = run_plan(plan, archive, dry_run=args.dry_run, force=args.force,
                          echo=args.echo, progress=progress)
        if args.json:
            print(json.dumps({"plan": plan.to_dict(), "report": report.to_dict()}, indent=2,
                             default=str))
        else:
            print_report(report, out)
        return report.exit_code

    # every job is checked (YAML, schema, references, SQL) before any runs
    prepared = []
    invalid = 0
    try:
        given = given_vars(args)
    except ConquestRunError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    for path in args.jobs:
        try:
            job = load_job(path, given=given)
            archive = archive_for_job(job, **_overrides(args))
            check_job_sql(job, schema_of(archive))   # + the database's user tables
            prepared.append((job, archive))
        except ConquestRunError as exc:
            print(str(exc), file=sys.stderr)
            invalid = max(invalid, exc.exit_code)
    if not invalid and given:
        invalid = unknown_vars(given, {n for job, _ in prepared for n in job.var_specs})
    if invalid:
        return invalid
    jobs = [job for job, _ in prepared]
    for job, archive in prepared:
        notes: list[str] = [paths_note(job)]
        if not args.dry_run and not args.plan_out:
            _finish_removals(archive, notice)
        rebuilds = all(s.action == "rebuild" and (s.select is None or s.select.empty)
                       for s in job.steps)
        with indexed(archive, dry_run=args.dry_run, notice=notice, progress=progress,
                     rebuilds=rebuilds, pulls=bool(job.steps) and job.steps[0].action == "retrieve"
                     ) as arc:
            if arc is not archive:
                notes.append("planned on a temporary index of the data directory")
            plan = build_plan(job, arc, named=archive,
                              limits=QueryLimits(timeout=args.query_timeout))
            check_expectations(job, plan)
            for text in selected_nothing(job, plan):
                notice(text)
            if args.plan_out:
                save_plan(plan, args.plan_out)
                if args.json:
                    results.append({"plan": plan.to_dict()})
                else:
                    print_plan(plan, out, dry_run=True, notes=notes, archive=arc)
                    out.print(f"Plan saved to {args.plan_out}; run it with "
                              f"conquest-run --apply {args.plan_out}", markup=False)
                continue
            if not args.json:
                print_plan(plan, out, dry_run=args.dry_run, notes=notes, archive=arc)
            refused = confirmed(plan, args)
            if refused is not None:
                return max(status, refused)
            report = run_plan(plan, arc, dry_run=args.dry_run, force=args.force, echo=args.echo,
                              progress=progress)
        status = max(status, report.exit_code)
        if args.json:
            results.append({"plan": plan.to_dict(), "report": report.to_dict()})
        else:
            print_report(report, out)
        if report.exit_code != 0 and not args.dry_run:
            rest = jobs[jobs.index(job) + 1:]
            if rest:
                notice(f"not running {', '.join(j.path for j in rest)}: {job.path} failed")
            break
    if args.json:
        doc = results[0] if len(results) == 1 else results
        print(json.dumps(doc, indent=2, default=str))
    return status
