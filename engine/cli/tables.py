"""Own data beside the archive: ``load-csv``.

    conquest-run load-csv FILE.csv --table T [--as-text]

Appends the CSV's rows (a header line names the columns) to the user table ``T`` of the
archive's database, created on first use, in one transaction (``usertables.insert_rows``).
Cells written as integers or decimals (no leading zeros) are stored as numbers, empty cells as
NULL; ``--as-text`` keeps every cell as text.  Job queries can then read ``T``.
"""

from __future__ import annotations

__all__ = ["register", "run"]

import argparse
import sys

from ..archive import Archive
from . import add_archive_flags


def register(name: str, parser: argparse.ArgumentParser) -> None:
    add_archive_flags(parser)
    parser.description = ("Append the rows of a CSV file (with a header line) to a table of "
                           "your own in the archive's database.")
    parser.add_argument("file", metavar="FILE")
    parser.add_argument("--table", required=True, metavar="T",
                        help="the table (created on first use; not one of Conquest's or ours)")
    parser.add_argument("--as-text", action="store_true",
                        help="store every cell as text (default: numbers as numbers)")


def run(name: str, args: argparse.Namespace) -> int:
    from ..usertables import csv_rows
    archive = Archive(args.data, args.database, args.dicom_sql)
    count = archive.insert_rows(args.table, csv_rows(args.file, as_text=args.as_text))
    print(f"{count} row{'' if count == 1 else 's'} added to {args.table} in {archive.database}")
    return 0
