"""Received datasets into the archive: ``store_dataset`` (one) and ``DatasetStore`` (a receiver's,
with batched index writes; ``prepare`` / ``write`` / ``place`` let a receiver write the files of
simultaneous associations in parallel and group their renames and commits).  The placing rules
are ``store.py``'s: ``data/<safe PatientID>/<SOPInstanceUID>.dcm``, atomically, an older copy
of the same instance removed, an inconsistent link refused.
"""

from __future__ import annotations

__all__ = ["DatasetStore", "ReceivedItem", "store_dataset"]

import io
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dicomread import HeaderRecord, ReadSpec, read_header
from .durable import discard, fsync_path, staged
from .errors import DicomFileError
from .indexer import Indexer, LinkChecker
from .schema import Schema
from .store import StoredFile, _Placer


def _dataset_bytes(data: Any) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    buf = io.BytesIO()
    try:
        data.save_as(buf, enforce_file_format=True)
    except Exception as exc:
        raise DicomFileError(f"cannot encode the dataset: {exc}") from None
    return buf.getvalue()


@dataclass(eq=False)
class ReceivedItem:
    """One dataset on its way into the archive (``DatasetStore.prepare`` .. ``place``)."""
    raw: bytes
    record: HeaderRecord
    target: Path
    rel: str
    tmp: Path | None = None
    error: OSError | None = None
    stored: StoredFile | None = None
    seq: int = 0                 # for a receiver: the order it was placed in


class DatasetStore:
    """Writes received datasets into the archive; index rows are written every ``batch_size``
    datasets (and on ``flush()`` / ``close()``), so a busy receiver commits in batches.

    Each dataset's file is in place (atomically) when ``store()`` returns; its path is in the
    intent journal (``recovery``) from before the rename until its rows are committed.
    """

    def __init__(self, conn: sqlite3.Connection, schema: Schema, data_dir: str | Path, *,
                 batch_size: int = 1) -> None:
        self.placer = _Placer(conn, schema, Path(data_dir))
        self.spec = ReadSpec.from_schema(schema)
        self.indexer = Indexer(conn, schema, data_dir)
        self.batch_size = max(1, batch_size)
        self.pending: dict[str, HeaderRecord] = {}
        self.inflight: list[ReceivedItem] = []      # prepared, not yet placed
        from .recovery import IntentJournal
        self.journal = IntentJournal.for_connection(conn)

    def store(self, data: Any) -> StoredFile:
        """Write one dataset (a pydicom Dataset with file meta, or Part-10 bytes)."""
        item = self.prepare(data)
        try:
            self.write(item)
        except BaseException:
            self.abandon(item)
            raise
        self.place([item])
        if item.error is not None:
            raise item.error
        if len(self.pending) >= self.batch_size:
            self.flush()
        return item.stored

    # The pieces of store(), for a receiver that groups the renames and commits of
    # simultaneous associations: prepare() and place() under its lock, write() outside it.
    def prepare(self, data: Any) -> "ReceivedItem":
        """Read and check one dataset; raises ``DicomFileError`` for one Conquest refuses."""
        raw = _dataset_bytes(data)
        record = read_header("<dataset>", "<dataset>", self.spec, data=raw)
        checker = LinkChecker(self.placer.conn, self.placer.schema)
        for other in [*self.pending.values(), *(i.record for i in self.inflight)]:
            checker.note(other)
        conflict = checker.check(record)
        if conflict is not None:          # Conquest refuses it: nothing is written
            raise DicomFileError(conflict)
        target, rel = self.placer.destination(record)
        item = ReceivedItem(raw, record, target, rel)
        self.inflight.append(item)
        return item

    def write(self, item: "ReceivedItem") -> None:
        """The file under its temporary name, fsync'ed (needs no lock)."""
        item.tmp = staged(item.target, data=item.raw)

    def abandon(self, item: "ReceivedItem") -> None:
        self.abandon_inflight(item)
        if item.tmp is not None:
            discard(item.tmp)

    def place(self, items: list["ReceivedItem"]) -> None:
        """One intent write for all, then each renamed into place, each folder fsync'ed once;
        their rows wait in ``pending`` for ``flush()``.  A failed item gets ``error``."""
        if not items:
            return
        self.journal.intend([i.rel for i in items])     # before they can appear in data/
        folders: dict[Path, list[ReceivedItem]] = {}
        for item in items:
            self.abandon_inflight(item)
            try:
                os.replace(item.tmp, item.target)
            except OSError as exc:
                discard(item.tmp)
                item.error = exc
                continue
            folders.setdefault(item.target.parent, []).append(item)
        for folder, placed in folders.items():
            try:
                fsync_path(folder)
            except OSError as exc:        # in place but not surely durable: not a success
                for item in placed:
                    item.error = exc
        for placed in folders.values():
            for item in placed:
                record, rel = item.record, item.rel
                old = self.placer.previous(record.sop_uid)
                earlier = self.pending.get(record.sop_uid)
                self.placer.drop_old_copy(old, rel)
                if earlier is not None:
                    self.placer.drop_old_copy(earlier.object_file, rel)
                self.pending[record.sop_uid] = self.placer.finish(record, item.target, rel)
                item.stored = StoredFile("<dataset>", rel, record.sop_uid, record.patient_id,
                                         old is not None or earlier is not None)

    def abandon_inflight(self, item: "ReceivedItem") -> None:
        if item in self.inflight:
            self.inflight.remove(item)

    def flush(self) -> None:
        if self.pending:
            records, self.pending = list(self.pending.values()), {}
            self.indexer.add_records(records)   # checked in store(): nothing is refused here
        self.journal.clear()                    # every file renamed in is committed now

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.journal.close()

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
