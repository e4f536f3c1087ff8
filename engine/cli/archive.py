"""The archive subcommands: ``rebuild``, ``store``, ``summary``, ``query``.

    conquest-run rebuild [--patient ID ...] [--only-missing | --refresh] [--workers N]
                         [--json | --verbose]
    conquest-run store PATH... [--move] [--json | --verbose]
    conquest-run summary
    conquest-run query "SELECT ..." [--param VALUE ...] [--no-header]

Each takes the archive flags ``--data``, ``--database``, ``--dicom-sql``.  A progress bar shows
only on a terminal; the result is one line on stdout; bad files are listed on stderr (the
first 20; ``--verbose``: all of them, and every flagged file), or, with ``--json``, one JSON
object on stdout with every bad file and its reason and every flagged file and its flags.

Exit code of rebuild and store (and, through its failed outcomes, of a rebuild job): 1 when some
file could not be indexed (or stored), 0 when every file was; flags (warnings such as
``no-pixel-data``) do not change it.
"""

from __future__ import annotations

__all__ = ["register", "run"]

import argparse
import collections
import json
import sys

from ..archive import Archive
from . import add_archive_flags
from ..fileflags import flag_tokens
from ..indexer import BadFile, FlaggedFile

_SHOW_BAD = 20


def register(name: str, parser: argparse.ArgumentParser) -> None:
    add_archive_flags(parser)
    if name == "rebuild":
        parser.description = "Index the data directory into the database."
        parser.add_argument("--patient", action="append", metavar="ID",
                            help="only this PatientID (repeatable)")
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--only-missing", action="store_true",
                          help="index only files not indexed yet")
        mode.add_argument("--refresh", action="store_true",
                          help="re-index changed files, drop rows of vanished files")
        parser.add_argument("--workers", type=int, default=1, metavar="N",
                            help="parse in N worker processes (default 1)")
        parser.add_argument("--columns", action="append", metavar="NAME",
                            help="with --refresh: add these dicom.sql columns to the database "
                                 "and read only their values (repeatable or comma-separated)")
        parser.add_argument("--dry-run", action="store_true",
                            help="say what would be indexed and removed; change nothing")
        _add_listing_flags(parser)
    elif name == "store":
        parser.description = "Copy files or folders into data/<PatientID>/ and index them."
        parser.add_argument("paths", nargs="+", metavar="PATH")
        parser.add_argument("--move", action="store_true", help="move instead of copy")
        parser.add_argument("--dry-run", action="store_true",
                            help="read each file and say where it would go; change nothing")
        _add_listing_flags(parser)
    elif name == "summary":
        parser.description = ("One line per series: patient, modality, instances, size, and the "
                              "flags of its files (no-pixel-data, meta-mismatch, ...).")
    elif name == "query":
        parser.description = "Run one read-only SQL statement against the index."
        parser.add_argument("sql", metavar="SQL")
        parser.add_argument("--param", action="append", default=[], metavar="VALUE",
                            help="a value for the next '?' (repeatable)")
        parser.add_argument("--no-header", action="store_true", help="no column names line")
        from .jobs import add_query_timeout
        add_query_timeout(parser)


def _archive(args: argparse.Namespace) -> Archive:
    return Archive(args.data, args.database, args.dicom_sql)


def _add_listing_flags(parser: argparse.ArgumentParser) -> None:
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true",
                       help="one JSON object on stdout: every bad file with its reason, every "
                            "flagged file with its flags")
    shown.add_argument("--verbose", action="store_true",
                       help="list every bad file (not only the first 20) and every flagged file")


def _report(args: argparse.Namespace, command: str, summary: str, bad: list[BadFile],
            flagged: list[FlaggedFile], counts: dict[str, object]) -> int:
    """Print the outcome (text or JSON); the exit code: 1 when some file was not indexed."""
    code = 1 if bad else 0
    if args.json:
        print(json.dumps({
            "command": command, "summary": summary, **counts,
            "bad": [{"path": b.path, "reason": b.reason} for b in bad],
            "flagged": [{"path": f.path, "flags": list(flag_tokens(f.flags))} for f in flagged],
            "exit_code": code}, indent=2, ensure_ascii=False))
        return code
    shown = bad if args.verbose else bad[:_SHOW_BAD]
    for b in shown:
        print(f"{b.path}: {b.reason}", file=sys.stderr)
    if len(bad) > len(shown):
        print(f"... and {len(bad) - len(shown)} more bad files (--verbose or --json lists "
              f"them all)", file=sys.stderr)
    if args.verbose:
        for f in flagged:
            print(f"{f.path}: indexed, flagged {f.flags.replace(chr(92), ', ')}", file=sys.stderr)
    elif flagged:
        tokens = collections.Counter(t for f in flagged for t in flag_tokens(f.flags))
        listed = ", ".join(f"{t} {n}" for t, n in sorted(tokens.items()))
        print(f"{len(flagged)} files indexed with flags ({listed}); --verbose lists them",
              file=sys.stderr)
    print(summary)
    return code


def _text(value: object) -> str:
    if value is None:
        return ""
    return str(value).replace("\t", " ").replace("\n", "\\n")


def middle(uid: str | None, width: int = 23) -> str:
    """A UID shortened in the middle on a terminal (its start and end tell series apart)."""
    text = uid or ""
    if len(text) <= width:
        return text
    keep = width - 1
    return text[:keep // 2] + "\u2026" + text[len(text) - (keep - keep // 2):]


def _print_table(title: str, header: list[str], rows: list[tuple], show_header: bool = True,
                 no_wrap: tuple[int, ...] = (), min_widths: dict[int, int] | None = None
                 ) -> None:
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
        table = Table(title=Text(title), show_header=show_header)
        for i, h in enumerate(header):
            table.add_column(Text(h), overflow="ellipsis" if i in no_wrap else "fold",
                             no_wrap=i in no_wrap, min_width=(min_widths or {}).get(i))
        for r in rows:
            table.add_row(*(Text(_text(v)) for v in r))
        Console().print(table)
        return
    if show_header:
        print("\t".join(header))
    for r in rows:
        print("\t".join(_text(v) for v in r))


_QUERY_MAX_ROWS = 1_000_000


def _checked_query(archive: Archive, args: argparse.Namespace) -> tuple[list[str], list[tuple]]:
    """``query``: the same check as a job's SQL (one read-only SELECT, known names, allowed
    functions; any columns), then run bounded on a connection that cannot write."""
    from contextlib import closing

    from ..sqlcheck import QueryLimits, check_query, run_query, schema_of
    checked = check_query(args.sql, schema_of(archive), file="SQL", require_column=False)
    archive.ensure_indexed()
    limits = QueryLimits(timeout=args.query_timeout, max_rows=_QUERY_MAX_ROWS)
    with closing(archive.connect_readonly()) as conn:
        return run_query(conn, checked, params=args.param, limits=limits, file="SQL")


def _refresh_columns(archive: Archive, args: argparse.Namespace) -> int:
    """``rebuild --refresh --columns NAME``: extend the database, re-read those tags only."""
    from ..extracolumns import extend_database
    if not args.refresh or args.patient:
        print("conquest-run rebuild: --columns goes with --refresh (and no --patient)",
              file=sys.stderr)
        return 2
    names = [n.strip() for arg in args.columns for n in arg.split(",") if n.strip()]
    result = extend_database(archive, names)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{', '.join(result['columns'])}: {result['rows_updated']} rows updated from "
              f"{result['files_read']} files" + (f", {result['unreadable']} unreadable"
                                                  if result["unreadable"] else ""))
    return 1 if result["unreadable"] else 0


def _dry_run(args: argparse.Namespace, archive: Archive, mode: str | None) -> int:
    """``rebuild --dry-run`` (mode given) or ``store --dry-run``: said, nothing changed."""
    from ..dryrun import preview_rebuild, preview_store
    if mode is not None:
        preview = preview_rebuild(archive, mode=mode, patients=args.patient)
        if args.json:
            print(json.dumps({"command": "rebuild", "dry_run": True, **vars(preview),
                              "summary": preview.summary()}, indent=2))
        else:
            print(preview.summary())
        return 0
    result = preview_store(archive, [str(p) for p in args.paths])
    if args.json:
        print(json.dumps({"command": "store", "dry_run": True, "summary": result.summary(),
                          "files": [{"path": s, "object_file": o, "replaces": r}
                                    for s, o, r in result.stored],
                          "bad": [{"path": b.path, "reason": b.reason} for b in result.bad]},
                         indent=2, ensure_ascii=False))
    else:
        for b in result.bad:
            print(f"{b.path}: {b.reason}", file=sys.stderr)
        if args.verbose:
            for s, o, r in result.stored:
                print(f"{s} -> {o}{' (replaces)' if r else ''}")
        print(result.summary())
    return 1 if result.bad else 0


def run(name: str, args: argparse.Namespace) -> int:
    from ..backends import is_postgres_url
    if name == "rebuild" and args.columns:        # either backend (extracolumns.py)
        return _refresh_columns(_archive(args), args)
    if is_postgres_url(args.database):
        from .pgarchive import run as run_on_postgres
        return run_on_postgres(name, args)
    archive = _archive(args)
    if name == "rebuild":
        mode = "missing" if args.only_missing else "refresh" if args.refresh else "all"
        if args.workers < 1:
            print("conquest-run rebuild: --workers must be at least 1", file=sys.stderr)
            return 2
        if args.dry_run:
            return _dry_run(args, archive, mode)
        from ..commandlog import recorded_command
        from ..report import DONE, FAILED, Outcome
        with recorded_command(
                archive, "rebuild", " ".join([f"--mode {mode}"] + [
                    f"--patient {p}" for p in args.patient or ()])) as finish:
            result = archive.rebuild(patients=args.patient, mode=mode, workers=args.workers,
                                     progress=sys.stderr.isatty() and not args.json,
                                     sweep_temps=True)
            finish(True, {"mode": mode, "indexed": result.indexed, "removed": result.removed,
                          "bad": len(result.bad)},
                   [Outcome(None, None, FAILED, b.reason, {"path": b.path}) for b in result.bad])
        return _report(args, "rebuild", result.summary(), result.bad, result.flagged,
                       {"indexed": result.indexed, "unchanged": result.unchanged,
                        "removed": result.removed, "skipped": result.skipped})
    if name == "store":
        if args.dry_run:
            return _dry_run(args, archive, None)
        from ..commandlog import recorded_command
        from ..report import DONE, FAILED, Outcome
        with recorded_command(
                archive, "store", " ".join(map(str, args.paths)) + (" --move" if args.move
                                                                     else "")) as finish:
            result = archive.store(args.paths, move=args.move)
            finish(not result.bad, {"stored": len(result.stored), "bad": len(result.bad)},
                   [Outcome(f.sop_uid, None, DONE, "replaced" if f.replaced else "stored",
                            {"path": f.object_file, "source": f.source,
                             "patient_id": f.patient_id}) for f in result.stored]
                   + [Outcome(None, None, FAILED, b.reason, {"path": b.path})
                      for b in result.bad])
        flagged = [FlaggedFile(s.source, s.flags) for s in result.flagged]
        return _report(args, "store", result.summary(), result.bad, flagged,
                       {"stored": len(result.stored), "replaced": result.replaced,
                        "files": [{"path": s.source, "object_file": s.object_file,
                                   "sop_uid": s.sop_uid, "replaced": s.replaced,
                                   "flags": list(flag_tokens(s.flags))}
                                  for s in result.stored]})
    if name == "summary":
        rows = archive.series_summary(
            notice=lambda text: print(f"note: {text}", file=sys.stderr))
        header = ["PatientID", "Study", "Series", "Modality", "Description", "Date",
                  "Instances", "Bytes", "Flags"]
        if not sys.stdout.isatty():         # piped: TSV, full UIDs, sizes in bytes
            _print_table("", header, [(s.patient_id, s.study_uid, s.series_uid, s.modality,
                                       s.description, s.date, s.instances, s.bytes, s.flags)
                                      for s in rows])
            return 0
        from .jobs import _size
        patients = len({s.patient_id for s in rows})
        title = (f"{len(rows)} series of {patients} patient{'s' if patients != 1 else ''}, "
                 f"{sum(s.instances or 0 for s in rows)} instances, "
                 f"{_size(sum(s.bytes or 0 for s in rows))} in {archive.database}")
        header[7] = "Size"
        table = [[s.patient_id, s.study_uid, s.series_uid, s.modality, s.description, s.date,
                  s.instances, _size(s.bytes or 0), s.flags] for s in rows]
        short = (0, 3, 5, 6, 7)          # kept whole: the UIDs give way to them
        widths = {i: min(16, max([len(header[i])] + [len(_text(r[i])) for r in table]))
                  for i in short}
        from rich.console import Console
        room = Console().width - sum(widths.values()) - 3 * len(header) - 12
        uid = max(9, min(23, room // 3))
        for r in table:
            r[1], r[2] = middle(r[1], uid), middle(r[2], uid)
        _print_table(title, header, [tuple(r) for r in table], no_wrap=(1, 2),
                     min_widths=widths)
        return 0
    if name == "query":
        header, rows = _checked_query(archive, args)
        _print_table(f"{len(rows)} rows", header, rows, not args.no_header)
        return 0
    raise AssertionError(name)
