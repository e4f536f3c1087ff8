"""``conquest-run migrate --from conquest.db --to postgresql://USER@HOST:PORT/DBNAME``: copy a
SQLite index into PostgreSQL (``backends/migrate.py``), then one line per table with the row
counts and checksums of both sides.  Exit 0 when every table agrees, 1 when one differs, 2 for
a bad argument (a missing file, a URL that cannot be used)."""

from __future__ import annotations

__all__ = ["register", "run"]

import argparse
import sys
from contextlib import closing


def register(name: str, parser: argparse.ArgumentParser) -> None:
    parser.description = ("Copy a SQLite index (Conquest's tables, RTExtras, conquest-run's "
                          "own tables) into PostgreSQL; resumable and idempotent.")
    parser.add_argument("--from", dest="source", required=True, metavar="SQLITE_FILE")
    parser.add_argument("--to", dest="target", required=True, metavar="POSTGRESQL_URL")
    parser.add_argument("--dicom-sql", default=None,
                        help="the dicom.sql layout (default: ./dicom.sql if present, else "
                             "built-in)")


def run(name: str, args: argparse.Namespace) -> int:
    from ..archive import Archive
    from ..backends import is_postgres_url
    from ..backends.postgres import connect, mask_url
    from ..db import connect_readonly
    from ..errors import ArchiveError
    if not is_postgres_url(args.target):
        raise ArchiveError(f"--to must be a postgresql://USER@HOST:PORT/DBNAME URL, not "
                           f"{mask_url(args.target)!r}")
    schema = Archive("data", "postgresql", args.dicom_sql).schema
    import psycopg
    from ..backends.migrate import migrate
    with closing(connect_readonly(args.source)) as src, closing(connect(args.target)) as dst:
        try:
            results = migrate(src, dst, schema)
        except psycopg.Error as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise ArchiveError(f"the migration into {mask_url(args.target)} failed: {detail} "
                               "(run it again to resume)") from None
        for line in dst.notices:
            print(f"note: {line}", file=sys.stderr)
    for r in results:
        print(r.line())
    bad = [r for r in results if not r.ok]
    print(f"{len(results)} tables migrated from {args.source} to {mask_url(args.target)}: "
          + ("all agree" if not bad else f"{len(bad)} differ"))
    return 1 if bad else 0
