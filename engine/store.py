"""Put DICOM files into ``data/<safe PatientID>/`` atomically and index them.

* ``safe_patient_dir(patient_id)``: the folder name Conquest makes of a PatientID.
* ``safe_component(text)``: any other path part made from data (file names, descriptions).
* ``store(conn, schema, data_dir, paths, move=False)``: copy (or move) files / folders of files.
* ``datasetstore.py``: ``store_dataset`` / ``DatasetStore``, one received dataset at a time (the
  network receiver's entry), with batched index writes.

Every file is written under a temporary name in its destination folder and renamed into place
(``os.replace``), after checking that the resolved destination lies inside the data directory.
The file is named after its SOP Instance UID (``<SOPInstanceUID>.dcm``), so storing the same
instance twice replaces the file and its rows instead of duplicating them; when the instance
was indexed under another file before, that older file is removed.  An object Conquest would
refuse (its series, study or image already indexed under another study, patient or series: an
"inconsistent link") is reported and nothing is written.
"""

from __future__ import annotations

__all__ = ["safe_patient_dir", "safe_component", "store", "StoreResult", "StoredFile",
           "resolve_inside", "StoreWriteError", "atomic_write"]

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .db import disk_full_message, is_disk_full
from .dicomread import HeaderRecord, ReadSpec, read_header
from .errors import ArchiveError, DicomFileError
from .durable import SourceKept, discard, fsync_path, fsync_all, remove_original, staged, \
    atomic_write
from .indexer import BadFile, Indexer, LinkChecker, data_dir_error
from .schema import Schema

_CONQUEST_UNSAFE = set('/\\;><|,. :?*"')
_COMPONENT_UNSAFE = set('/\\;><|,:?*"')
_MAX_COMPONENT = 200


def safe_patient_dir(patient_id: str | None) -> str:
    """The folder name Conquest makes of a PatientID.

    ``/ \\ ; > < | , . space : ? * "`` become ``_``; a character below 33 (other than the space)
    ends the name; trailing ``_`` are removed; an empty result becomes ``unknown``.
    """
    out = []
    for ch in patient_id or "":
        if ch in _CONQUEST_UNSAFE:
            out.append("_")
        elif ord(ch) < 33:
            break
        else:
            out.append(ch)
    name = "".join(out).rstrip("_")[:_MAX_COMPONENT].rstrip("_")
    return name or "unknown"


def safe_component(text: str | None, default: str = "unknown") -> str:
    """A single safe path component from any text (dots kept, but never leading)."""
    out = []
    for ch in text or "":
        out.append("_" if ch in _COMPONENT_UNSAFE or ord(ch) < 32 or ch == "\x7f" else ch)
    name = "".join(out).strip(" ")
    while name.startswith("."):
        name = "_" + name[1:]
    name = name[:_MAX_COMPONENT].rstrip(" ")
    return name or default


def resolve_inside(root: str | Path, *parts: str) -> Path:
    """``root/parts...`` resolved, refusing any result outside ``root``."""
    base = Path(root).resolve()
    target = base.joinpath(*parts).resolve()
    if target != base and base not in target.parents:
        raise ArchiveError(f"refusing to write outside the data directory: {target}",
                           file=str(base))
    return target


@dataclass(frozen=True)
class StoredFile:
    source: str          # where it came from ('<dataset>' for store_dataset)
    object_file: str     # ObjectFile: relative to the data directory
    sop_uid: str
    patient_id: str | None
    replaced: bool       # the instance was in the archive before
    flags: str | None = None   # RTExtras.Flags: warnings found when indexing (no-pixel-data, ...)


@dataclass
class StoreResult:
    stored: list[StoredFile] = field(default_factory=list)
    bad: list[BadFile] = field(default_factory=list)      # path (as given) + reason

    @property
    def replaced(self) -> int:
        return sum(1 for s in self.stored if s.replaced)

    @property
    def flagged(self) -> list[StoredFile]:
        return [s for s in self.stored if s.flags]

    def summary(self) -> str:
        text = (f"{len(self.stored)} files stored ({self.replaced} replaced), "
                f"{len(self.bad)} bad")
        if self.flagged:
            text += f", {len(self.flagged)} flagged"
        return text


class StoreWriteError(ArchiveError, OSError):
    """The archive cannot be written (read-only, full, a file where a folder goes).

    An ``OSError`` as before, and a located ``ArchiveError`` for the command line."""


class _Placer:
    """Shared by store() and store_dataset(): where a record goes, and the old copy it replaces."""

    def __init__(self, conn: sqlite3.Connection, schema: Schema, data_dir: Path) -> None:
        self.conn = conn
        self.schema = schema
        self.data_dir = Path(data_dir)
        self.root = self.data_dir.resolve()

    def destination(self, record: HeaderRecord) -> tuple[Path, str]:
        folder = safe_patient_dir(record.patient_id)
        name = safe_component(record.sop_uid) + ".dcm"
        target = resolve_inside(self.root, folder, name)
        return target, target.relative_to(self.root).as_posix()

    def previous(self, sop_uid: str) -> str | None:
        im = self.schema.images
        row = self.conn.execute(f"SELECT ObjectFile FROM {im.name} WHERE {im.key} = ?",
                                (sop_uid,)).fetchone()
        return None if row is None else (row[0] or "").replace("\\", "/")

    def drop_old_copy(self, old: str | None, new_rel: str) -> None:
        if not old or old == new_rel:
            return
        try:
            path = resolve_inside(self.root, *old.split("/"))
        except ArchiveError:
            return                       # an ObjectFile outside the archive: leave it alone
        if path.is_file():
            path.unlink()
            try:
                if path.parent != self.root:
                    path.parent.rmdir()      # only succeeds when the folder is now empty
            except OSError:
                pass

    def finish(self, record: HeaderRecord, target: Path, rel: str) -> HeaderRecord:
        st = os.stat(target)
        record.object_file = rel
        record.extras["FileMtime"] = st.st_mtime_ns
        record.extras["FileSize"] = st.st_size
        return record


def _files_under(paths: list[str | Path]) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in sorted(files):
                    if not f.startswith("."):
                        full = Path(folder) / f
                        out.append((str(full), full))
        else:
            out.append((str(p), path))
    return out


@dataclass
class _Item:
    """One file of a store batch: where it comes from and goes, and the copy it replaces."""
    shown: str
    path: Path
    record: HeaderRecord
    target: Path
    rel: str
    old: str | None
    same: bool                   # already the file in data/ (stored from inside the archive)


BATCH = 500                      # files per intent write and index commit in store()


def store(conn: sqlite3.Connection, schema: Schema, data_dir: str | Path,
          paths: list[str | Path], *, move: bool = False) -> StoreResult:
    """Copy (or move) files and folders of files into the archive and index them.

    Files that are not readable DICOM are reported in ``result.bad`` and left where they are.
    In batches of ``BATCH`` files: their paths go into the intent journal (``recovery``), each
    is written under a temporary name and fsync'ed, renamed into place, each folder fsync'ed
    once, the rows committed, the journal emptied, and only then (``move``) the originals
    removed: a kill at any moment loses no original and leaves nothing the next start cannot
    index (``recovery.recover``).
    """
    from .recovery import IntentJournal

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise data_dir_error(data_dir)
    batch = _StoreBatch(conn, schema, data_dir, move, IntentJournal.for_connection(conn))
    spec = ReadSpec.from_schema(schema)
    checker = LinkChecker(conn, schema)
    result = StoreResult()
    items: list[_Item] = []
    try:
        for shown, path in _files_under(paths):
            if not path.exists():
                result.bad.append(BadFile(shown, "a broken symbolic link" if path.is_symlink()
                                          else "no such file or folder"))
                continue
            if not path.is_file():
                result.bad.append(BadFile(shown, "not a regular file (a device, FIFO or "
                                                 "socket)"))
                continue
            try:
                record = read_header(path, shown, spec)
                target, rel = batch.placer.destination(record)
            except DicomFileError as exc:
                result.bad.append(BadFile(shown, exc.message))
                continue
            conflict = checker.check(record)
            if conflict is not None:          # Conquest refuses it: the file is not copied
                result.bad.append(BadFile(shown, conflict))
                continue
            checker.note(record)
            items.append(_Item(shown, path, record, target, rel,
                               batch.placer.previous(record.sop_uid),
                               path.resolve() == target))
            if len(items) >= BATCH:
                batch.run(items, result)
                items = []
        batch.run(items, result)
    finally:
        batch.journal.close()
    return result


class _StoreBatch:
    """store()'s batches: intents, temporary files, renames, folder fsyncs, one commit, and
    then the originals of a move."""

    def __init__(self, conn: sqlite3.Connection, schema: Schema, data_dir: Path, move: bool,
                 journal: Any) -> None:
        self.placer = _Placer(conn, schema, data_dir)
        self.indexer = Indexer(conn, schema, data_dir)
        self.move = move
        self.journal = journal
        self.conn = conn

    def run(self, items: list[_Item], result: StoreResult) -> None:
        from .db import store_batch_guard
        with store_batch_guard(self.conn):    # a delete decides between batches (PostgreSQL)
            self._run(items, result)

    def _run(self, items: list[_Item], result: StoreResult) -> None:
        if not items:
            return
        self.journal.intend([it.rel for it in items if not it.same])
        failure: tuple[_Item, OSError] | None = None
        cut = len(items)                  # items[:cut] end up in place
        tmps: dict[int, Path] = {}
        for i, it in enumerate(items):
            if not it.same:
                try:
                    tmps[i] = staged(it.target, source=it.path, link=self.move, sync=False)
                except OSError as exc:    # the archive side: read-only, full, ...
                    failure, cut = (it, exc), i
                    break
        try:
            fsync_all(list(tmps.values()))   # every file durable before any rename
        except OSError as exc:
            failure, cut = (items[min(tmps)], exc), min(tmps)
        folders: dict[Path, None] = {}
        for i, tmp in tmps.items():
            if i < cut:
                try:
                    os.replace(tmp, items[i].target)
                except OSError as exc:
                    failure, cut = (items[i], exc), i
                else:
                    folders[items[i].target.parent] = None
            if i >= cut or self.move:
                discard(tmp)    # not placed; or a link onto the same file (rename() left both)
        placed = items[:cut]
        try:
            for folder in folders:
                fsync_path(folder)
        except OSError as exc:
            failure = failure or (placed[-1], exc)
        records = []
        for it in placed:
            self.placer.drop_old_copy(it.old, it.rel)
            records.append(self.placer.finish(it.record, it.target, it.rel))
        try:
            refused = self.indexer.add_records(records)
        except sqlite3.Error as exc:
            self._index_failed(exc, placed)
        self.journal.clear()
        result.bad += refused
        for it in placed:
            if self.move and not it.same:
                try:
                    remove_original(it.path)
                except SourceKept as exc:
                    result.bad.append(BadFile(it.shown, f"stored, but the original could not "
                                                        f"be removed ({exc})"))
            result.stored.append(StoredFile(it.shown, it.rel, it.record.sop_uid,
                                            it.record.patient_id, it.old is not None,
                                            it.record.extras.get("Flags")))
        if failure is not None:
            it, exc = failure
            why = disk_full_message(exc) if is_disk_full(exc) else exc.strerror or exc
            raise StoreWriteError(
                f"cannot store {it.shown}: {why}; stopped after "
                f"{len(result.stored)} files, which are stored and indexed",
                file=str(exc.filename or it.target)) from None


    def _index_failed(self, exc: sqlite3.Error, placed: list[_Item]) -> None:
        """The rows of a batch could not be written: the new copies it added go again (their
        originals are kept, a move's too) so that the archive holds no file the index does not
        know; a replaced file stays for the next store, rebuild or serve to index (the journal
        keeps its intent)."""
        copies = [it for it in placed if it.old is None and not it.same]
        undone = 0
        for it in copies:
            try:
                os.unlink(it.target)
                undone += 1
            except OSError:
                pass
        if undone == len(placed):
            self.journal.clear()
        why = disk_full_message(exc) if is_disk_full(exc) else f"cannot write the index: {exc}"
        kept = len(placed) - undone
        raise StoreWriteError(
            f"{why}; the index rows of the last {len(placed)} files could not be written"
            + (f": their {undone} copies were removed again (the originals are kept)"
               if undone else "")
            + (f"; {kept} of them are in the data folder, not indexed yet (the next store, "
               f"rebuild or serve indexes them)" if kept else ""),
            file=str(self.placer.data_dir)) from None
