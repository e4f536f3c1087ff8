"""Own data beside the archive: ``load-csv``, ``image-stats``.

    conquest-run load-csv FILE.csv --table T [--as-text]
    conquest-run image-stats [--modality CT ...] [--patient ID ...] [--query SQL] [--table T]

Appends the CSV's rows (a header line names the columns) to the user table ``T`` of the
archive's database, created on first use, in one transaction (``usertables.insert_rows``).
Cells written as integers or decimals (no leading zeros) are stored as numbers, empty cells as
NULL; ``--as-text`` keeps every cell as text.  Job queries can then read ``T``.  Both work on a
PostgreSQL index (``--database postgresql://...``; ``backends/pgusertables.py``).
"""

from __future__ import annotations

__all__ = ["register", "run"]

import argparse
import sys

from ..archive import Archive
from . import add_archive_flags


def register(name: str, parser: argparse.ArgumentParser) -> None:
    add_archive_flags(parser)
    if name == "image-stats":
        register_image_stats(parser)
        return
    parser.description = ("Append the rows of a CSV file (with a header line) to a table of "
                           "your own in the archive's database.")
    parser.add_argument("file", metavar="FILE")
    parser.add_argument("--table", required=True, metavar="T",
                        help="the table (created on first use; not one of Conquest's or ours)")
    parser.add_argument("--as-text", action="store_true",
                        help="store every cell as text (default: numbers as numbers)")


def run(name: str, args: argparse.Namespace) -> int:
    if name == "image-stats":
        return run_image_stats(args)
    from ..usertables import csv_rows
    archive = Archive(args.data, args.database, args.dicom_sql)
    count = archive.insert_rows(args.table, csv_rows(args.file, as_text=args.as_text))
    print(f"{count} row{'' if count == 1 else 's'} added to {args.table} in {archive.database}")
    return 0


def register_image_stats(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Pixel statistics per series (instances, frames, rows, columns, min, "
                          "max, mean, std after the modality rescale) into a table of your own.")
    for flag, what in (("--patient", "PatientID"), ("--modality", "Modality"),
                       ("--series", "SeriesInstanceUID")):
        parser.add_argument(flag, action="append", metavar="VALUE",
                            help=f"only this {what} (repeatable)")
    parser.add_argument("--query", metavar="SQL", help="only the series this job-style query "
                                                       "selects (SeriesInst or SOPInstanc)")
    parser.add_argument("--table", metavar="T", help="append the rows to this table (created "
                                                     "on first use); without it, print them")


def run_image_stats(args: argparse.Namespace) -> int:
    from ..imagestats import STAT_COLUMNS
    from ..usertables import check_target
    archive = Archive(args.data, args.database, args.dicom_sql)
    if args.table is not None:
        check_target(args.table, archive.schema)
    select = {k: v for k, v in (("patient", args.patient), ("modality", args.modality),
                                ("series", args.series), ("query", args.query)) if v}
    rows, problems = archive.image_statistics(select=select, with_problems=True)
    for problem in problems:
        print(f"conquest-run image-stats: cannot decode {problem}", file=sys.stderr)
    if args.table is not None:
        archive.insert_rows(args.table, rows)
        print(f"{len(rows)} series added to {args.table} in {archive.database}")
    else:
        print("\t".join(STAT_COLUMNS))
        for row in rows:
            print("\t".join("" if row[c] is None else str(row[c]) for c in STAT_COLUMNS))
    return 1 if problems else 0
