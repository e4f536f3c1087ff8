"""delete: the planned series (or instances) out of the index and, with ``files: true``, the disk.

The rows go in ONE transaction, cascading the way Conquest does: the planned DICOMImages rows
and their RTExtras rows; a series left with no images; a study left with no series; a patient
left with no studies.  A series that gained instances since the plan keeps them (and itself):
only what the plan names is deleted.

Files are removed only after the commit, and only with ``files: true``.  A file that cannot be
removed (or whose resolved path leaves the data directory, which is refused) is a failed outcome
carrying its path, so the audit log says exactly what is left to clean up.

A dry run walks the same code on a read-only connection: the same queries decide the same rows,
and the one place that would change them (``_Changes``) and the one that would remove files
(``DryFileSystem``) do nothing.
"""

from __future__ import annotations

__all__ = ["run", "delete_series", "delete_instances"]

import os
import sqlite3
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from ..db import connect
from ..errors import ActionError, ArchiveError
from ..report import DONE, FAILED, SKIPPED, Outcome, StepReport
from ..schema import EXTRAS_TABLE
from ._local import (StepRecorder, archive_facts, connect_reader, filesystem, inside, progress,
                     source_path)

if TYPE_CHECKING:
    from ..plan import PlanStep
    from . import ActionContext

CHUNK = 500


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _chunks(items: Sequence[str]) -> Iterable[list[str]]:
    items = list(items)
    for i in range(0, len(items), CHUNK):
        yield items[i:i + CHUNK]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class _Changes:
    """The one place rows are deleted; a dry run counts what it would delete."""

    def __init__(self, conn: sqlite3.Connection, dry_run: bool) -> None:
        self.conn = conn
        self.dry_run = dry_run
        self.counts: dict[str, int] = {}

    def begin(self) -> None:
        self.conn.execute("BEGIN" if self.dry_run else "BEGIN IMMEDIATE")

    def delete(self, table: str, key: str, keys: Sequence[str]) -> None:
        done = 0
        for chunk in _chunks(sorted(keys)):
            if self.dry_run:
                done += len(chunk)
            else:
                cur = self.conn.execute(
                    f"DELETE FROM {_q(table)} WHERE {_q(key)} IN ({_marks(len(chunk))})", chunk)
                done += cur.rowcount
        self.counts[table] = self.counts.get(table, 0) + done

    def commit(self) -> None:
        self.conn.execute("ROLLBACK" if self.dry_run else "COMMIT")

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


def _existing(conn, table: str, key: str, cols: Sequence[str],
              keys: Iterable[str]) -> dict[str, tuple]:
    """key -> (cols...) for the keys that have a row in ``table``."""
    out: dict[str, tuple] = {}
    select = ", ".join([_q(key)] + [_q(c) for c in cols])
    for chunk in _chunks(list(keys)):
        for row in conn.execute(f"SELECT {select} FROM {_q(table)} WHERE {_q(key)} IN "
                                f"({_marks(len(chunk))})", chunk):
            out[row[0]] = tuple(row[1:])
    return out


def _child_counts(conn, table: str, link: str, parents: Iterable[str]) -> Counter:
    counts: Counter = Counter()
    for chunk in _chunks(list(parents)):
        for parent, n in conn.execute(
                f"SELECT {_q(link)}, count(*) FROM {_q(table)} WHERE {_q(link)} IN "
                f"({_marks(len(chunk))}) GROUP BY {_q(link)}", chunk):
            counts[parent] = n
    return counts


def _emptied(conn, child_table: str, link: str, parents: set[str],
             gone_per_parent: Counter) -> tuple[set[str], dict[str, int]]:
    """The parents whose children in ``child_table`` all go, and what the others keep."""
    have = _child_counts(conn, child_table, link, parents)
    left = {p: have.get(p, 0) - gone_per_parent.get(p, 0) for p in parents}
    return {p for p, n in left.items() if n <= 0}, {p: n for p, n in left.items() if n > 0}


def _decide(conn, schema, step: "PlanStep") -> dict[str, Any]:
    """Every row the plan's deletion removes, read inside the transaction."""
    im, se, st, pa = schema.images, schema.series, schema.studies, schema.patients
    planned = [i.sop_uid for s in step.series for i in s.instances]
    images = _existing(conn, im.name, im.key, (im.link, "ObjectFile"), planned)
    extras = _existing(conn, EXTRAS_TABLE, "SOPInstanc", (), planned)
    gone_images_per_series = Counter(link for link, _ in images.values())
    if step.level == "instance":
        candidates = set(gone_images_per_series)
    else:
        candidates = {s.series_uid for s in step.series}
    series_rows = _existing(conn, se.name, se.key, (se.link,), candidates)
    gone_series, left = _emptied(conn, im.name, im.link, set(series_rows),
                                 gone_images_per_series)
    # series level: a series that gained instances since the plan keeps them and itself
    kept_series = dict(sorted(left.items())) if step.level == "series" else {}
    gone_series_per_study = Counter(series_rows[s][0] for s in gone_series)
    study_rows = _existing(conn, st.name, st.key, (st.link,), set(gone_series_per_study))
    gone_studies, _ = _emptied(conn, se.name, se.link, set(study_rows), gone_series_per_study)
    gone_studies_per_patient = Counter(study_rows[s][0] for s in gone_studies)
    patient_rows = _existing(conn, pa.name, pa.key, (), set(gone_studies_per_patient))
    gone_patients, _ = _emptied(conn, st.name, st.link, set(patient_rows),
                                gone_studies_per_patient)
    return {"images": images, "extras": set(extras), "series": gone_series,
            "studies": gone_studies, "patients": gone_patients, "kept_series": kept_series}


def run(step: "PlanStep", ctx: "ActionContext") -> StepReport:
    rec = StepRecorder(step, ctx)
    facts = archive_facts(ctx.archive)
    schema = facts.schema
    files = (step.options or {}).get("files", False) is True
    try:
        conn = connect_reader(facts.database) if ctx.dry_run else connect(facts.database)
    except ArchiveError as exc:
        return rec.fail_step(str(exc))
    changes = _Changes(conn, ctx.dry_run)
    try:
        changes.begin()
        gone = _decide(conn, schema, step)
        changes.delete(EXTRAS_TABLE, "SOPInstanc", sorted(gone["extras"]))
        changes.delete(schema.images.name, schema.images.key, sorted(gone["images"]))
        changes.delete(schema.series.name, schema.series.key, sorted(gone["series"]))
        changes.delete(schema.studies.name, schema.studies.key, sorted(gone["studies"]))
        changes.delete(schema.patients.name, schema.patients.key, sorted(gone["patients"]))
        changes.commit()
    except sqlite3.DatabaseError as exc:
        changes.rollback()
        conn.close()
        return rec.fail_step(f"delete: the database change failed and was rolled back: {exc}")
    except BaseException:
        changes.rollback()
        conn.close()
        raise
    conn.close()

    fs = filesystem(ctx.dry_run)
    removed = 0
    kept: list[str] = []
    images = gone["images"]
    with progress(ctx, step.instance_count, "delete", rec) as advance:
        for series in step.series:
            for inst in series.instances:
                row = images.get(inst.sop_uid)
                if row is None:
                    rec.add(Outcome(inst.sop_uid, series.series_uid, SKIPPED,
                                    "not in the database any more"))
                elif not files:
                    rec.add(Outcome(inst.sop_uid, series.series_uid, DONE, "row deleted, file kept",
                                    {"path": row[1] or inst.path, "file_removed": False}))
                else:
                    outcome = _remove_file(fs, facts.data_dir, inst.sop_uid, series.series_uid,
                                           row[1] or inst.path)
                    if outcome.status == DONE:
                        removed += 1
                    else:
                        kept.append(outcome.detail["path"])
                    rec.add(outcome)
                advance(1)
    summary: dict[str, Any] = {"rows": changes.counts, "files": files}
    if files:
        summary["files_removed"] = removed
        summary["files_not_removed"] = kept
    if gone["kept_series"]:
        summary["series_kept"] = gone["kept_series"]
    return rec.finish(**summary)


def _remove_file(fs, data_dir: Path, sop_uid: str, series_uid: str, rel: str) -> Outcome:
    def failed(reason: str, path: str) -> Outcome:
        return Outcome(sop_uid, series_uid, FAILED, reason,
                       {"path": path, "row_deleted": True, "file_kept": True,
                        "file_removed": False})
    try:
        path = source_path(data_dir, rel)
    except ActionError as exc:
        return failed(f"refused to remove: {exc.message}", str(data_dir / rel))
    absolute = os.path.abspath(path)
    if not inside(data_dir, path):
        return failed(f"refused to remove {absolute}: it resolves outside the data directory "
                      f"({os.path.realpath(path)})", absolute)
    try:
        fs.remove(path)
    except FileNotFoundError:
        return Outcome(sop_uid, series_uid, DONE, "the file was already gone",
                       {"path": absolute, "file_removed": False})
    except OSError as exc:
        return failed(f"could not remove the file: {exc.strerror or exc}; its row is deleted, "
                      "remove it by hand", absolute)
    return Outcome(sop_uid, series_uid, DONE, "row and file deleted",
                   {"path": absolute, "file_removed": True})


# -- Python API ----------------------------------------------------------------------------
def delete_series(archive: Any, series_uids: Sequence[str], files: bool = False,
                  dry_run: bool = False) -> StepReport:
    """Delete series (cascading to empty studies and patients); their files with ``files``."""
    from ._local import api_run
    return api_run(archive, "delete", {"files": files}, list(series_uids), dry_run=dry_run,
                   target="archive" + (" and files" if files else ""))


def delete_instances(archive: Any, sop_uids: Sequence[str], files: bool = False,
                     dry_run: bool = False) -> StepReport:
    """Delete single instances (an emptied series, study, patient goes too)."""
    from ._local import api_run
    return api_run(archive, "delete", {"files": files}, list(sop_uids), level="instance",
                   dry_run=dry_run, target="archive" + (" and files" if files else ""))
