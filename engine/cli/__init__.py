"""Command line entry point: argument parsing, dispatch and exit codes only.

    conquest-run JOB.yml... [--dry-run] [--validate] [--json] ...   run jobs      (cli/jobs)
    conquest-run rebuild|store|summary|query ...                      the archive   (cli/archive)
    conquest-run serve|echo ...                                       the network   (cli/network)
    conquest-run history ...                                          past runs     (cli/audit)
    conquest-run restore RUN                                          quarantine    (cli/restore)
    conquest-run migrate --from conquest.db --to postgresql://...     to PostgreSQL (cli/migrate)

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
    "migrate": "migrate",
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
    def error(self, message: str):  # usage errors exit 2 with argparse's message
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():
        # pydicom warns about each odd value it meets in other people's files; the commands
        # report unusable files themselves (bad files, failed outcomes), so keep stderr for that
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
        return _main(argv)


def _main(argv: list[str]) -> int:
    try:
        if argv and argv[0] in SUBCOMMANDS:
            name = argv[0]
            module = importlib.import_module(f"{__package__}.{SUBCOMMANDS[name]}")
            parser = _Parser(prog=f"conquest-run {name}")
            module.register(name, parser)
            args = parser.parse_args(argv[1:])
            return module.run(name, args)
        module = importlib.import_module(f"{__package__}.jobs")
        parser = _Parser(prog="conquest-run", epilog="subcommands: " + ", ".join(SUBCOMMANDS))
        module.register(None, parser)
        from .. import __version__
        parser.add_argument("--version", action="version", version=f"conquest-run {__version__}")
        args = parser.parse_args(argv)
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _unusable(exc: sqlite3.DatabaseError) -> int:
    print(f"the database cannot be used: {exc} (if it is damaged, check it with sqlite3's "
          f"PRAGMA integrity_check, or rebuild the index into a new file)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
