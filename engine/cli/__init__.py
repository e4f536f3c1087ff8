"""Command line entry point: argument parsing, dispatch and exit codes only.

    conquest-run JOB.yml... [--dry-run] [--validate] [--json] ...   run jobs      (cli/jobs)
    conquest-run rebuild|store|summary|query ...                      the archive   (cli/archive)
    conquest-run serve|echo ...                                       the network   (cli/network)
    conquest-run history ...                                          past runs     (cli/audit)
    conquest-run restore RUN                                          quarantine    (cli/restore)
    conquest-run load-csv|image-stats ...                             own tables    (cli/tables)
    conquest-run init|list|show ...                                   job repositories (cli/repo)
    conquest-run completion bash|zsh | help [CMD]      (cli/completion, cli/helptext)
    conquest-run migrate --from conquest.db --to postgresql://...     to PostgreSQL (cli/migrate)
    conquest-run worker --database postgresql://... --data DIR        send queue    (cli/worker)

Exit codes: 0 all done, 1 some work failed, 2 invalid job or usage.  A user error is printed as
``PATH:LINE:COL: message`` on stderr, never as a traceback.
"""

from __future__ import annotations

__all__ = ["main", "add_archive_flags"]

import argparse
import importlib
import sqlite3
import sys
import warnings

from ..errors import ConquestRunError

# subcommand -> module (relative to this package) that defines register(name, parser) and
# run(name, args) -> int
SUBCOMMANDS = {
    "rebuild": "archive",
    "store": "archive",
    "summary": "archive",
    "query": "archive",
    "serve": "network",
    "echo": "network",
    "history": "audit",
    "restore": "restore",
    "load-csv": "tables",
    "image-stats": "tables",
    "init": "repo",
    "list": "repo",
    "show": "repo",
    "completion": "completion",
    "migrate": "migrate",
    "worker": "worker",
}


def add_archive_flags(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """--data, --database, --dicom-sql. With defaults=False they stay None (job files decide)."""
    g = parser.add_argument_group("archive")
    g.add_argument("--data", default="data" if defaults else None,
                   help="the archive's data directory (default: data)")
    g.add_argument("--database", default="conquest.db" if defaults else None,
                   help="the SQLite index (default: conquest.db)")
    g.add_argument("--dicom-sql", default=None,
                   help="the dicom.sql layout (default: ./dicom.sql if present, else built-in)")


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # read by main() before parsing (errorlog.take_log_file); listed here for --help
        self.add_argument("--log-file", metavar="PATH", default=None,
                          help="also write warnings and errors to PATH (size-rotated)")

    def error(self, message: str):  # usage errors exit 2 with argparse's message
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    from ..errorlog import log_file_of, logging_to, take_log_file
    argv = list(sys.argv[1:] if argv is None else argv)
    # --log-file PATH, for every command (engine/errorlog.py); log_file_of() is where the
    # project file's log_file: joins in
    argv, log_file = take_log_file(argv)
    with warnings.catch_warnings():
        # pydicom warns about each odd value it meets in other people's files; the commands
        # report unusable files themselves (bad files, failed outcomes), so keep stderr for that
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
        try:
            with logging_to(log_file_of(log_file, {"log_file": _project_log_file(argv)})):
                return _main(argv)
        except ConquestRunError as exc:        # an unusable --log-file
            print(f"{exc}", file=sys.stderr)
            return exc.exit_code


def _project_log_file(argv: list[str]) -> str | None:
    """``log_file:`` of the project file that governs this command: the one beside (or above)
    the first job file named, else the working directory's, as git finds its repository.  An
    unreadable project file is the command's own error to report, not this one's."""
    from pathlib import Path

    from ..project import PROJECT_FILE, find_project, load_project
    jobs = [Path(a) for a in argv if a.endswith((".yml", ".yaml")) and Path(a).name != PROJECT_FILE]
    start = next((p.parent for p in jobs if p.is_file()), Path.cwd())
    try:
        found = find_project(start)
        return load_project(found).log_file if found is not None else None
    except (ConquestRunError, OSError):
        return None


def build_parser(name: str | None) -> argparse.ArgumentParser:
    """The parser of one command (None: running job files), with its help text."""
    from .helptext import SUMMARY, epilog
    module = importlib.import_module(f"{__package__}.{SUBCOMMANDS.get(name, 'jobs')}")
    text = epilog(name)
    if name is None:
        width = max(len(n) for n in SUBCOMMANDS)
        text = "commands:\n" + "\n".join(
            f"  {n:<{width}}  {SUMMARY.get(n, '')}".rstrip() for n in (*SUBCOMMANDS, "help")
            ) + "\n\n" + text
    parser = _Parser(prog="conquest-run" + (f" {name}" if name else ""), epilog=text,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.register(name, parser)
    if not parser.description and SUMMARY.get(name):
        parser.description = SUMMARY[name][:1].upper() + SUMMARY[name][1:] + "."
    if name is None:
        from .. import __version__
        parser.add_argument("--version", action="version", version=f"conquest-run {__version__}")
    return parser


def _help(words: list[str]) -> int:
    from .helptext import unknown_command
    if not words:
        build_parser(None).print_help()
        return 0
    if words[0] == "help":
        print("usage: conquest-run help [COMMAND]\n\nShow the help of conquest-run or of one "
              "command.")
        return 0
    if words[0] not in SUBCOMMANDS:
        print(unknown_command(words[0], [*SUBCOMMANDS, "help"]), file=sys.stderr)
        return 2
    build_parser(words[0]).print_help()
    return 0


def _main(argv: list[str]) -> int:
    from .helptext import looks_like_job, unknown_command
    try:
        if argv and argv[0] == "help":
            return _help(argv[1:])
        if argv and argv[0] in SUBCOMMANDS:
            name = argv[0]
            module = importlib.import_module(f"{__package__}.{SUBCOMMANDS[name]}")
            args = build_parser(name).parse_args(argv[1:])
            return module.run(name, args)
        if argv and not argv[0].startswith("-") and not looks_like_job(argv[0]):
            print(unknown_command(argv[0], [*SUBCOMMANDS, "help"]), file=sys.stderr)
            return 2
        module = importlib.import_module(f"{__package__}.jobs")
        args = build_parser(None).parse_args(argv)
        return module.run(None, args)
    except ConquestRunError as exc:
        print(f"{exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return 1
    except (sqlite3.OperationalError, OSError) as exc:    # a full disk, said as such
        from ..db import disk_full_message, is_disk_full
        if not is_disk_full(exc):
            if isinstance(exc, sqlite3.DatabaseError):
                return _unusable(exc)
            raise
        print(f"{disk_full_message(exc)}; free some space and run the command again",
              file=sys.stderr)
        return 1
    except sqlite3.DatabaseError as exc:  # a damaged file fails at whichever statement meets it
        return _unusable(exc)
    except Exception as exc:              # a PostgreSQL error met midway: one sentence
        from ..backends.errors import describe, is_postgres_error
        if not is_postgres_error(exc):
            raise
        print(f"the PostgreSQL server refused or failed a statement: {describe(exc)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _unusable(exc: sqlite3.DatabaseError) -> int:
    print(f"the database cannot be used: {exc} (if it is damaged, check it with sqlite3's "
          f"PRAGMA integrity_check, or rebuild the index into a new file)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
