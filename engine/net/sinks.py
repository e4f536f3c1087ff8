"""Where ``serve``'s receiver puts what it receives: ``FileSink`` (files only, ``--no-index``)
and ``ArchiveSink`` (files and index rows through ``datasetstore.DatasetStore``, a C-STORE answered
only once its file is durable and its rows committed, commits grouped across associations).
"""

from __future__ import annotations

__all__ = ["Sink", "FileSink", "ArchiveSink"]

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..errors import ArchiveError
from .part10 import patient_id_of


def _to_stderr(line: str) -> None:
    import sys
    print(f"conquest-run: {line}", file=sys.stderr, flush=True)


class Sink(Protocol):
    def put(self, encoded: bytes, sop_uid: str) -> str: ...     # -> ObjectFile
    def flush(self) -> None: ...
    def close(self) -> None: ...


class FileSink:
    """Files only (``--no-index``): ``data/<safe PatientID>/<SOP UID>.dcm``, atomically."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.root = self.data_dir.resolve()

    def put(self, encoded: bytes, sop_uid: str) -> str:
        from ..store import (
            atomic_write,
            resolve_inside,
            safe_component,
            safe_patient_dir,
        )

        target = resolve_inside(self.root, safe_patient_dir(patient_id_of(encoded)),
                                safe_component(sop_uid) + ".dcm")
        atomic_write(target, data=encoded)
        return target.relative_to(self.root).as_posix()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class ArchiveSink:
    """Files and index rows, through the archive core's ``DatasetStore`` on one WAL connection.

    Durable before acknowledged: ``put()`` returns only once the file is fsync'ed and renamed,
    its folder fsync'ed and its index rows committed.  Each association writes and fsyncs its
    file under a temporary name on its own (in parallel); renames and commits are grouped:
    whoever commits places every file ready so far (one intent-journal write for all, one fsync
    per folder) and commits every row placed so far, so the associations waiting meanwhile
    return without a commit of their own.  A commit that fails raises
    (``ArchiveError``: the C-STORE fails with 0xA700) and keeps its rows for the next one, which
    the flusher retries every ``BATCH_SECONDS``.
    """

    def __init__(self, data_dir: str | Path, database: str | Path,
                 dicom_sql: str | Path | None = None, busy_timeout: float | None = None,
                 notice: Callable[[str], None] | None = None) -> None:
        from ..db import connect, ensure_schema
        from ..recovery import recover
        from ..schema import load_schema
        from ..datasetstore import DatasetStore

        schema = load_schema(dicom_sql)
        self.conn = connect(database)
        try:
            if busy_timeout is not None:
                self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            ensure_schema(self.conn, schema)
            # what a killed receiver or store left: files renamed in but not indexed
            self.recovered = recover(self.conn, schema, data_dir, database)
            line = self.recovered.line()
            if line is not None:
                (notice or _to_stderr)(line)
        except BaseException:
            self.conn.close()
            raise
        self.store = DatasetStore(self.conn, schema, data_dir, batch_size=1 << 30)
        self.lock = threading.Lock()       # the connection and the store
        self.commit_lock = threading.Lock()
        self.ready: list[Any] = []         # written under their temporary names, not placed
        self.placed = 0                    # items placed so far (their seq)
        self.committed = 0                 # ... of which the rows are committed
        self.data_dir = Path(data_dir)
        self.new_files: dict[str, str] = {}   # SOP -> ObjectFile of new files not committed

    def put(self, encoded: bytes, sop_uid: str) -> str:
        with self.lock:
            item = self.store.prepare(encoded)
        try:
            self.store.write(item)         # file and fsync outside the lock: in parallel
        except BaseException:
            with self.lock:
                self.store.abandon(item)
            raise
        with self.lock:
            self.ready.append(item)
        self._commit(item)
        return item.rel

    def _commit(self, item: Any | None) -> None:
        """Place what is ready (one intent write, the renames, one fsync per folder) and
        commit every row placed so far, unless another association's commit did already."""
        import sqlite3

        with self.commit_lock:
            with self.lock:
                batch, self.ready = self.ready, []
                self.store.place(batch)
                for placed in batch:
                    self.placed += 1
                    placed.seq = self.placed
                    if placed.stored is not None and not placed.stored.replaced:
                        self.new_files[placed.stored.sop_uid] = placed.rel
                if item is not None and item.error is not None:
                    raise item.error
                if self.committed >= (self.placed if item is None else item.seq):
                    return                 # in another association's commit meanwhile
                placed, pending = self.placed, dict(self.store.pending)
                try:
                    self.store.flush()
                except (sqlite3.Error, OSError) as exc:
                    from ..db import is_disk_full
                    self.store.pending = {**pending, **self.store.pending}
                    full = "the disk is full: " if is_disk_full(exc) else ""
                    raise ArchiveError(f"{full}the index rows could not be committed ({exc}); "
                                       "kept for the next commit") from None
                self.committed = placed
                self.new_files = {k: v for k, v in self.new_files.items()
                                  if k in self.store.pending}

    def flush(self) -> None:
        self._commit(None)

    def close(self) -> None:
        """The last commit; when it fails (a full disk), the new files whose rows are not in
        (their C-STOREs were answered 0xA700, so the sender kept them) are removed, and the
        error is raised: nothing stays in ``data/`` that the index does not know."""
        try:
            self.flush()
        except ArchiveError as exc:
            removed = 0
            with self.lock:
                for sop, rel in self.new_files.items():
                    if sop in self.store.pending:
                        try:
                            os.unlink(self.data_dir / rel)
                            removed += 1
                        except OSError:
                            pass
                kept = len(self.store.pending) - removed
                self.store.pending = {}
                self.new_files = {}
            raise ArchiveError(
                f"{exc.message.split('; kept for')[0]} at the end: their {removed} new files "
                f"were removed (the senders were told 0xA700)"
                + (f"; {kept} replaced files keep their older rows" if kept else "")) from None
        finally:
            self.store.journal.close()     # removed unless rows are still uncommitted
            self.conn.close()
