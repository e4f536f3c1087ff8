"""Put DICOM files into ``data/<safe PatientID>/`` atomically and index them.

* ``safe_patient_dir(patient_id)``: the folder name Conquest makes of a PatientID.
* ``safe_component(text)``: any other path part made from data (file names, descriptions).
* ``store(conn, schema, data_dir, paths, move=False)``: copy (or move) files / folders of files.
* ``store_dataset(data, conn=..., schema=..., data_dir=...)``: one received dataset (the network
  receiver's entry); ``DatasetStore`` does the same with batched index writes.

Every file is written under a temporary name in its destination folder and renamed into place
(``os.replace``), after checking that the resolved destination lies inside the data directory.
The file is named after its SOP Instance UID (``<SOPInstanceUID>.dcm``), so storing the same
instance twice replaces the file and its rows instead of duplicating them; when the instance
was indexed under another file before, that older file is removed.  An object Conquest would
refuse (its series, study or image already indexed under another study, patient or series: an
"inconsistent link") is reported and nothing is written.
"""

from __future__ import annotations

__all__ = ["safe_patient_dir", "safe_component", "store", "store_dataset", "DatasetStore",
           "StoreResult", "StoredFile", "resolve_inside", "StoreWriteError", "atomic_write"]

import io
import os
import secrets
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .db import disk_full_message, is_disk_full
from .dicomread import HeaderRecord, ReadSpec, read_header
from .errors import ArchiveError, DicomFileError
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


class _SourceKept(Exception):
    """--move stored the file but could not remove the original."""


class StoreWriteError(ArchiveError, OSError):
    """The archive cannot be written (read-only, full, a file where a folder goes).

    An ``OSError`` as before, and a located ``ArchiveError`` for the command line."""


def atomic_write(target: Path, data: bytes | None = None, source: Path | None = None,
                  move: bool = False) -> None:
    """Write bytes (or copy/move ``source``) to ``target`` via a temp name + os.replace; the
    file and then its folder are fsync'ed before this returns (durable, not just in place)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if move and source is not None and not source.is_symlink():
        try:
            os.replace(source, target)   # same file system: one atomic rename
        except OSError:
            pass
        else:
            _fsync(target)
            _fsync(target.parent)
            return
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        if data is not None:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        else:
            shutil.copyfile(source, tmp)
            _fsync(tmp)
        os.replace(tmp, target)
        _fsync(target.parent)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    if move and source is not None:
        try:
            os.unlink(source)
        except OSError as exc:   # stored all the same: the caller reports the original kept
            raise _SourceKept(exc.strerror or str(exc)) from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def store(conn: sqlite3.Connection, schema: Schema, data_dir: str | Path,
          paths: list[str | Path], *, move: bool = False) -> StoreResult:
    """Copy (or move) files and folders of files into the archive and index them.

    Files that are not readable DICOM are reported in ``result.bad`` and left where they are.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise data_dir_error(data_dir)
    placer = _Placer(conn, schema, data_dir)
    spec = ReadSpec.from_schema(schema)
    indexer = Indexer(conn, schema, data_dir)
    checker = LinkChecker(conn, schema)
    result = StoreResult()
    records: list[HeaderRecord] = []
    copied: set[str] = set()          # files this run added as copies (their originals kept)

    def commit(batch: list[HeaderRecord]) -> None:
        """Index a batch; when its rows cannot be written, the copies it added go again (the
        originals are kept), so the archive holds no file the index does not know."""
        try:
            result.bad += indexer.add_records(batch)
        except (sqlite3.Error, OSError) as exc:
            lost = {r.object_file for r in batch}
            undone = _remove_copies(data_dir, lost & copied)
            result.stored[:] = [f for f in result.stored if f.object_file not in lost]
            why = disk_full_message(exc) if is_disk_full(exc) else f"cannot write the index: {exc}"
            kept = len(lost) - len(undone)
            raise StoreWriteError(
                f"{why}; the index rows of the last {len(lost)} files could not be written: "
                + (f"their {len(undone)} copies were removed again (the originals are kept)"
                   if undone else "")
                + ("; " if undone and kept else "")
                + (f"{kept} of them are in the data folder unindexed (run 'conquest-run "
                   f"rebuild --only-missing' once the index can be written)" if kept else "")
                + f"; {len(result.stored)} files before them are stored and indexed",
                file=str(getattr(exc, "filename", None) or data_dir)) from None
    for shown, path in _files_under(paths):
        if not path.exists():
            result.bad.append(BadFile(shown, "a broken symbolic link" if path.is_symlink()
                                      else "no such file or folder"))
            continue
        if not path.is_file():
            result.bad.append(BadFile(shown, "not a regular file (a device, FIFO or socket)"))
            continue
        try:
            record = read_header(path, shown, spec)
            target, rel = placer.destination(record)
        except DicomFileError as exc:
            result.bad.append(BadFile(shown, exc.message))
            continue
        conflict = checker.check(record)
        if conflict is not None:          # Conquest refuses it: the file is not copied
            result.bad.append(BadFile(shown, conflict))
            continue
        old = placer.previous(record.sop_uid)
        same = path.resolve() == target
        if not same:
            try:
                atomic_write(target, source=path, move=move)
            except _SourceKept as exc:
                result.bad.append(BadFile(shown, f"stored, but the original could not be "
                                                 f"removed ({exc})"))
            except OSError as exc:        # the archive side: read-only, full, ...
                commit(records)           # what is in the archive is in the index
                why = disk_full_message(exc) if is_disk_full(exc) else exc.strerror or exc
                raise StoreWriteError(
                    f"cannot store {shown}: {why}; stopped after "
                    f"{len(result.stored)} files, which are stored and indexed",
                    file=str(exc.filename or target)) from None
        checker.note(record)
        placer.drop_old_copy(old, rel)
        records.append(placer.finish(record, target, rel))
        result.stored.append(StoredFile(shown, rel, record.sop_uid, record.patient_id,
                                        old is not None, record.extras.get("Flags")))
        if old is None and not same and not move:
            copied.add(rel)
        if len(records) >= 500:
            commit(records)
            records = []
    commit(records)
    return result


def _remove_copies(data_dir: Path, rels: set[str]) -> list[str]:
    removed = []
    for rel in sorted(rels):
        try:
            os.unlink(data_dir / rel)
            removed.append(rel)
        except OSError:
            pass
    return removed


def _dataset_bytes(data: Any) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    buf = io.BytesIO()
    try:
        data.save_as(buf, enforce_file_format=True)
    except Exception as exc:
        raise DicomFileError(f"cannot encode the dataset: {exc}") from None
    return buf.getvalue()


class DatasetStore:
    """Writes received datasets into the archive; index rows are written every ``batch_size``
    datasets (and on ``flush()`` / ``close()``), so a busy receiver commits in batches.

    Each dataset's file is in place (atomically) when ``store()`` returns.
    """

    def __init__(self, conn: sqlite3.Connection, schema: Schema, data_dir: str | Path, *,
                 batch_size: int = 1) -> None:
        self.placer = _Placer(conn, schema, Path(data_dir))
        self.spec = ReadSpec.from_schema(schema)
        self.indexer = Indexer(conn, schema, data_dir)
        self.batch_size = max(1, batch_size)
        self.pending: dict[str, HeaderRecord] = {}

    def store(self, data: Any) -> StoredFile:
        """Write one dataset (a pydicom Dataset with file meta, or Part-10 bytes)."""
        raw = _dataset_bytes(data)
        record = read_header("<dataset>", "<dataset>", self.spec, data=raw)
        checker = LinkChecker(self.placer.conn, self.placer.schema)
        for pending_record in self.pending.values():
            checker.note(pending_record)
        conflict = checker.check(record)
        if conflict is not None:          # Conquest refuses it: nothing is written
            raise DicomFileError(conflict)
        target, rel = self.placer.destination(record)
        old = self.placer.previous(record.sop_uid)
        pending = self.pending.get(record.sop_uid)
        atomic_write(target, data=raw)
        self.placer.drop_old_copy(old, rel)
        if pending is not None:
            self.placer.drop_old_copy(pending.object_file, rel)
        self.pending[record.sop_uid] = self.placer.finish(record, target, rel)
        if len(self.pending) >= self.batch_size:
            self.flush()
        return StoredFile("<dataset>", rel, record.sop_uid, record.patient_id,
                          old is not None or pending is not None)

    def flush(self) -> None:
        if self.pending:
            records, self.pending = list(self.pending.values()), {}
            self.indexer.add_records(records)   # checked in store(): nothing is refused here

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "DatasetStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def store_dataset(data: Any, *, conn: sqlite3.Connection, schema: Schema,
                  data_dir: str | Path) -> StoredFile:
    """Store one dataset and index it now.

    ``data``: a pydicom ``Dataset`` (with ``file_meta``; written in the DICOM file format) or the
    bytes of a Part-10 file (e.g. pynetdicom's ``event.encoded_dataset()``).
    ``conn``: an open read-write connection (keep one open in a long-running receiver; use
    ``DatasetStore(conn, schema, data_dir, batch_size=N)`` to commit every N datasets).
    Returns the ``StoredFile`` (ObjectFile, SOP UID, PatientID, replaced).  Raises
    ``DicomFileError`` for data that is not an indexable DICOM object.
    """
    with DatasetStore(conn, schema, data_dir) as ds_store:
        return ds_store.store(data)
