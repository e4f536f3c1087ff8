"""``conquest-run restore RUN``: put back what a ``delete: {files: quarantine}`` run moved to
``data/.quarantine/<run id>/``, re-index it, and record the restore as a run of its own.

    conquest-run restore RUN [--data data] [--database conquest.db] [--dicom-sql F]

Refused (nothing moved) when the run has no quarantine or a file would overwrite a newer one.
"""

from __future__ import annotations

__all__ = ["register", "run"]

import argparse
import sys

from . import add_archive_flags


def register(name: str, parser: argparse.ArgumentParser) -> None:
    parser.description = ("Put back the files a delete with files: quarantine moved to "
                          "data/.quarantine/RUN/, and index them again.")
    parser.add_argument("run", metavar="RUN", help="the delete's run id (or a unique prefix; "
                                                   "see conquest-run history)")
    add_archive_flags(parser)


def run(name: str, args: argparse.Namespace) -> int:
    from contextlib import closing

    from ..archive import Archive
    from ..commandlog import recorded_command
    from ..quarantine import find_run, restore
    from ..removals import finish_at_start
    from ..report import DONE, FAILED, Outcome

    archive = Archive(args.data, args.database, args.dicom_sql)
    from ..db import index_exists, index_label
    if not index_exists(archive.database, archive.schema):
        print(f"{index_label(archive.database)}: database not found; nothing was restored",
              file=sys.stderr)
        return 2
    finish_at_start(archive)                 # an interrupted quarantine delete, finished
    find_run(archive.data_dir, args.run)     # a clear refusal before anything is recorded
    with recorded_command(archive, "restore", args.run) as finish, \
            closing(archive.connect()) as conn:
        result = restore(archive, conn, args.run)
        finish(not result.bad, {"run": result.run_id, "restored": len(result.restored),
                                "bad": len(result.bad)},
               [Outcome(rec.sop_uid, rec.series_uid, DONE, "restored from quarantine",
                        {"path": rel, "quarantined": str(result.folder / rel),
                         "patient_id": rec.patient_id}) for rel, rec in result.restored]
               + [Outcome(None, None, FAILED, b.reason, {"path": b.path}) for b in result.bad])
    for b in result.bad:
        print(f"{b.path}: {b.reason}", file=sys.stderr)
    print(result.summary())
    return 1 if result.bad else 0
