"""delete: the planned series (or instances) out of the index and, with ``files: true``, the disk.

The rows go in ONE transaction, cascading the way Conquest does: the planned DICOMImages rows
and their RTExtras rows; a series left with no images; a study left with no series; a patient
left with no studies.  A series that gained instances since the plan keeps them (and itself):
only what the plan names is deleted.

Inside the transaction each planned row is checked to be the one planned (same ObjectFile, its
file unchanged since the plan); a row a later store replaced is kept, with its file.  The same
transaction writes the delete journal (``removals.py``): every deleted row with what becomes of
its file (kept; removed with ``files: true``; moved to ``data/.quarantine/<run id>/`` with
``files: quarantine``) and the file's identity.  After the commit the journal is settled: a file
is removed only if it is still the one journaled (a newer copy is put back), and each entry's
audit outcome is written as it is cleared.  What a killed run leaves is settled at the next
start of any command that writes the archive.  A file that cannot be removed (or whose resolved
path leaves the data directory, which is refused) is a failed outcome carrying its path.

A dry run walks the same code on a read-only connection: the same queries decide the same rows,
the one place that would change them (``_Changes``) does nothing, and the file outcomes are
worked out without touching a file (``removals.dry_outcomes``).
"""

from __future__ import annotations

__all__ = ["run", "delete_series", "delete_instances"]

import os
import sqlite3
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from ..backends.errors import database_errors, describe
from ..db import connect, is_postgres
from ..errors import ActionError, ArchiveError
from ..removals import (KEEP, QUARANTINE, REMOVE, Removal, carry_out, checked_path,
                        ensure_table, failed_removal, hold_path, identity, journal,
                        journal_lock, outcome_of, quarantine_root)
from ..report import DONE, FAILED, SKIPPED, Outcome, StepReport
from ..schema import EXTRAS_TABLE
from ._local import (StepRecorder, archive_facts, connect_reader, progress, safe_component,
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

    def begin(self, tables: Sequence[str] = ()) -> None:
        """SQLite's ``BEGIN IMMEDIATE`` takes the write lock; on PostgreSQL the index tables
        are locked against other writers (SHARE ROW EXCLUSIVE: readers go on, a store's
        transaction waits, or is waited for) so the rows decided are the rows deleted."""
        self.conn.execute("BEGIN" if self.dry_run else "BEGIN IMMEDIATE")
        if tables and not self.dry_run and is_postgres(self.conn):
            from ..backends.pglocks import exclude_store_batches
            exclude_store_batches(self.conn)     # no file renamed in with its rows to come
            self.conn.execute(f"LOCK TABLE {', '.join(_q(t) for t in tables)} "
                              "IN SHARE ROW EXCLUSIVE MODE")

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

    def journal(self, removals: list[Removal]) -> None:
        """The removals go into the delete journal in the same transaction as the rows."""
        if not self.dry_run:
            journal(self.conn, removals)

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


def _changed_since_plan(data_dir: Path, inst: Any, object_file: str | None) -> str | None:
    """Why the row of a planned instance is not the one planned (None: it is): it names
    another file now, or its file differs from the plan (a later store replaced it)."""
    rel = (object_file or "").replace("\\", "/")
    if inst.path and rel and rel != inst.path.replace("\\", "/"):
        return (f"stored again since the plan (now {rel}, planned {inst.path}): row and file "
                "kept")
    try:
        path = source_path(data_dir, rel or inst.path)
    except ActionError:
        return None                  # refused when the file is removed, with its reason
    now = identity(path)
    if now is None:                  # gone, or not a regular file: the removal reports it
        return None
    if inst.size is None:
        return "a file appeared at its path since the plan (stored again?): row and file kept"
    if now[0] != inst.size or (inst.mtime is not None and now[1] != inst.mtime):
        return ("its file changed since the plan (size or mtime; stored again?): row and "
                "file kept")
    return None


def _decide(conn, schema, step: "PlanStep", data_dir: Path) -> dict[str, Any]:
    """Every row the plan's deletion removes, read inside the transaction."""
    im, se, st, pa = schema.images, schema.series, schema.studies, schema.patients
    planned = {i.sop_uid: i for s in step.series for i in s.instances}
    images = _existing(conn, im.name, im.key, (im.link, "ObjectFile"), planned)
    changed = {}
    from ..recovery import database_file, pending_stores
    where = database_file(conn) if images else None
    storing = pending_stores(where) if where is not None else set()
    for sop, (_, rel) in list(images.items()):
        why = ("being stored again right now (a writer renamed it in and has not committed "
               "its rows yet): row and file kept"
               if (rel or planned[sop].path or "").replace("\\", "/") in storing
               else _changed_since_plan(data_dir, planned[sop], rel))
        if why is not None:
            changed[sop] = why
            del images[sop]
    extras = _existing(conn, EXTRAS_TABLE, "SOPInstanc", (), images)
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
            "studies": gone_studies, "patients": gone_patients, "kept_series": kept_series,
            "changed": changed}


def files_mode(options: dict[str, Any] | None) -> str:
    """``keep`` (files: false), ``remove`` (files: true) or ``quarantine``."""
    value = (options or {}).get("files", False)
    return REMOVE if value is True else QUARANTINE if value == QUARANTINE else KEEP


def _removals(step: "PlanStep", ctx: "ActionContext", gone: dict[str, Any], mode: str,
              data_dir: Path) -> list[Removal]:
    """The journal entries of the rows being deleted, with each file's identity now."""
    out = []
    for series in step.series:
        for inst in series.instances:
            row = gone["images"].get(inst.sop_uid)
            if row is None:
                continue
            rel = (row[1] or inst.path).replace("\\", "/")
            ident = None
            if mode != KEEP:
                try:
                    ident = identity(source_path(data_dir, rel))
                except ActionError:
                    ident = None
            size, mtime, inode = ident or (None, None, None)
            out.append(Removal(ctx.run_id, step.index, step.name, step.action, step.target,
                               inst.sop_uid, series.series_uid, series.patient_id, rel, mode,
                               size, mtime, inode, inst.size))
    return out


def run(step: "PlanStep", ctx: "ActionContext") -> StepReport:
    facts = archive_facts(ctx.archive)
    if ctx.dry_run:
        return _run(step, ctx, facts)
    try:
        with journal_lock(facts.database):
            return _run(step, ctx, facts)
    except ActionError as exc:
        return StepRecorder(step, ctx).fail_step(str(exc))


def _run(step: "PlanStep", ctx: "ActionContext", facts: Any) -> StepReport:
    rec = StepRecorder(step, ctx)
    schema = facts.schema
    mode = files_mode(step.options)
    try:
        conn = connect_reader(facts.database) if ctx.dry_run else connect(facts.database)
    except ArchiveError as exc:
        return rec.fail_step(str(exc))
    if not ctx.dry_run:
        try:
            ensure_table(conn)
        except database_errors() as exc:
            conn.close()
            return rec.fail_step(f"delete: cannot prepare the delete journal: {describe(exc)}")
    changes = _Changes(conn, ctx.dry_run)
    try:
        changes.begin((schema.patients.name, schema.studies.name, schema.series.name,
                       schema.images.name, EXTRAS_TABLE))
        gone = _decide(conn, schema, step, facts.data_dir)
        removals = _removals(step, ctx, gone, mode, facts.data_dir)
        changes.delete(EXTRAS_TABLE, "SOPInstanc", sorted(gone["extras"]))
        changes.delete(schema.images.name, schema.images.key, sorted(gone["images"]))
        changes.delete(schema.series.name, schema.series.key, sorted(gone["series"]))
        changes.delete(schema.studies.name, schema.studies.key, sorted(gone["studies"]))
        changes.delete(schema.patients.name, schema.patients.key, sorted(gone["patients"]))
        changes.journal(removals)
        changes.commit()
    except database_errors() as exc:
        changes.rollback()
        conn.close()
        return rec.fail_step("delete: the database change failed and was rolled back: "
                             f"{describe(exc)}")
    except BaseException:
        changes.rollback()
        conn.close()
        raise

    try:
        with progress(ctx, len(removals), "delete") as advance:
            if ctx.dry_run:
                settled = _dry_outcomes(facts.data_dir, removals)
            else:
                settled = {r.sop_uid: o for r, o in carry_out(
                    conn, facts.data_dir, removals, schema=schema,
                    audit=ctx.audit is not None, advance=advance)}
    finally:
        conn.close()
    removed = quarantined = 0
    kept: list[str] = []
    newer: list[str] = []
    for series in step.series:
        for inst in series.instances:
            outcome = settled.get(inst.sop_uid)
            if outcome is not None:
                detail = outcome.detail or {}
                removed += bool(detail.get("file_removed"))
                quarantined += bool(detail.get("quarantined"))
                if outcome.status == FAILED:
                    kept.append(detail["path"])
                elif detail.get("newer_copy"):
                    newer.append(detail["path"])
                rec.add(outcome, recorded=not ctx.dry_run)
            elif inst.sop_uid in gone["changed"]:
                rec.add(Outcome(inst.sop_uid, series.series_uid, SKIPPED,
                                gone["changed"][inst.sop_uid], {"path": inst.path}))
            else:
                rec.add(Outcome(inst.sop_uid, series.series_uid, SKIPPED,
                                "not in the database any more"))
    summary: dict[str, Any] = {"rows": changes.counts, "files": mode != KEEP}
    if mode == REMOVE:
        summary["files_removed"] = removed
        summary["files_not_removed"] = kept
    elif mode == QUARANTINE:
        summary["files"] = QUARANTINE
        summary["files_quarantined"] = quarantined
        summary["files_not_quarantined"] = kept
        summary["quarantine"] = os.path.abspath(quarantine_root(facts.data_dir)
                                                / safe_component(ctx.run_id))
    if newer:
        summary["files_kept_newer_copy"] = newer
    if gone["changed"]:
        summary["changed_since_plan"] = sorted(gone["changed"])
    if gone["kept_series"]:
        summary["series_kept"] = gone["kept_series"]
    return rec.finish(**summary)


def _dry_outcomes(data_dir: Path, removals: list[Removal]) -> dict[str, Outcome]:
    """What ``removals.carry_out`` would report, touching nothing (a dry run)."""
    out: dict[str, Outcome] = {}
    for r in removals:
        checked = None if r.files == KEEP else checked_path(data_dir, r)
        verb = "remove" if r.files == REMOVE else "quarantine"
        if checked is None:
            o = outcome_of(r, DONE, "row deleted, file kept", path=r.object_file,
                           file_removed=False)
        elif isinstance(checked, Outcome):
            o = checked
        elif not os.path.lexists(checked[0]):
            o = outcome_of(r, DONE, "the file was already gone", path=checked[1],
                           file_removed=False)
        elif os.path.isdir(checked[0]) and not os.path.islink(checked[0]):
            o = failed_removal(r, f"could not {verb} the file: Is a directory; its row is "
                               "deleted, remove it by hand", checked[1])
        elif r.files == QUARANTINE:
            o = outcome_of(r, DONE, "row deleted, file quarantined", path=checked[1],
                           file_removed=False, quarantined=os.path.abspath(
                               hold_path(data_dir, r, checked[0])))
        else:
            o = outcome_of(r, DONE, "row and file deleted", path=checked[1], file_removed=True)
        out[r.sop_uid] = o
    return out


# -- Python API ----------------------------------------------------------------------------
def _api_target(files: bool | str) -> str:
    return "archive" + (" and quarantine" if files == QUARANTINE else " and files" if files
                        else "")


def delete_series(archive: Any, series_uids: Sequence[str], files: bool | str = False,
                  dry_run: bool = False) -> StepReport:
    """Delete series (cascading to empty studies and patients); their files with ``files``
    (``True``; ``"quarantine"`` moves them to ``data/.quarantine/<run id>/``)."""
    from ._local import api_run
    return api_run(archive, "delete", {"files": files}, list(series_uids), dry_run=dry_run,
                   target=_api_target(files))


def delete_instances(archive: Any, sop_uids: Sequence[str], files: bool | str = False,
                     dry_run: bool = False) -> StepReport:
    """Delete single instances (an emptied series, study, patient goes too)."""
    from ._local import api_run
    return api_run(archive, "delete", {"files": files}, list(sop_uids), level="instance",
                   dry_run=dry_run, target=_api_target(files))
