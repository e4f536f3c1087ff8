"""Walk ``data/`` and fill Conquest's tables (and ``RTExtras``) in batched transactions.

Modes (``mode=``):

* ``"all"``: clear the index (or, with ``patients``, those patients' rows) and index every file;
* ``"missing"``: index only files whose ``ObjectFile`` is not in the index yet;
* ``"refresh"``: index new files and files whose size or mtime changed; drop the rows of files
  that vanished, with Conquest's cascade (a series without images goes, then a study without
  series, then a patient without studies).

``patients`` (raw PatientIDs) narrows any mode to those patients' folders and indexed files.
Bad files (empty, not DICOM, truncated, damaged) are listed in the result with a reason and never
stop the run; so are files Conquest would refuse as an "inconsistent link" (a series already
indexed under another study, a study under another patient, an image under another series).
Rows are written the way dgate's UpdateOrAddToTable writes them (absent values never overwrite,
the study's modality list grows).  With ``workers`` > 1, that many forked helper processes read
headers while the calling process writes (and reads too when it would otherwise wait); all
writing happens in the calling process, ``batch_size`` files per transaction.
"""

from __future__ import annotations

__all__ = ["IndexResult", "TooManyToHold", "data_dir_error", "BadFile", "FlaggedFile", "Indexer", "LinkChecker", "index_tree", "merge_modality",
           "DEVICE_NAME"]

import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .dicomread import HeaderRecord, ReadSpec
from .errors import ArchiveError
from .indexwalk import BadFile, FlaggedFile, read_all, read_one, shown_name, storable_name, walk
from .indexwriter import (DEVICE_NAME, LinkChecker, Statements, Writer, chunks, merge_modality,
                          write_transaction)
from .schema import EXTRAS_TABLE, Schema

MODES = ("all", "missing", "refresh")
Progress = Callable[[int, int], None]


@dataclass
class IndexResult:
    """What one indexing run did."""

    indexed: int = 0                  # files read and written into the index
    unchanged: int = 0                # files already indexed and left as they are
    removed: int = 0                  # index rows dropped for files that vanished
    skipped: int = 0                  # hidden / temporary / database files not looked at
    bad: list[BadFile] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # files whose SOP UID another file had
    flagged: list[FlaggedFile] = field(default_factory=list)   # indexed, with warnings
    facts_filled: int = 0             # of ``indexed``: only RTExtras written (Conquest's rows kept)
    seconds: float = 0.0

    @property
    def files_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        text = (f"{self.indexed} files indexed, {self.unchanged} unchanged, "
                f"{self.skipped} skipped, {len(self.bad)} bad")
        if self.removed:
            text += f", {self.removed} removed"
        if self.duplicates:
            text += f", {len(self.duplicates)} duplicate SOP UIDs"
        if self.facts_filled:
            text += f" ({self.facts_filled} already in Conquest's tables: RTExtras filled)"
        if self.flagged:
            text += f", {len(self.flagged)} flagged"
        return text + f" in {self.seconds:.1f} s"


# -- the indexer ---------------------------------------------------------------------------

class TooManyToHold(Exception):
    """A one-transaction run would hold more headers in memory than it was allowed."""


def data_dir_error(path: str | os.PathLike) -> ArchiveError:
    """Why ``path`` cannot be the data directory: missing, or a file rather than a folder."""
    if os.path.lexists(path):
        return ArchiveError("the data directory is a file, not a folder", file=str(path))
    return ArchiveError("data directory not found", file=str(path))


class Indexer:
    """Fills one archive's index.  ``conn`` is a read-write connection with the schema in place."""

    def __init__(self, conn: sqlite3.Connection, schema: Schema, data_dir: str | Path, *,
                 exclude: Iterable[str | Path] = (), batch_size: int = 2000) -> None:
        self.conn = conn
        self.schema = schema
        self.data_dir = Path(data_dir)
        self.spec = ReadSpec.from_schema(schema)
        self.batch_size = batch_size
        self.statements: Statements | None = None     # built by the first writer, then kept
        self.excluded = set()
        self.walked: dict[str, os.stat_result] = {}   # what the last run() found on disk
        for p in exclude:
            p = str(Path(p).absolute())
            self.excluded.update({p, p + "-wal", p + "-shm", p + "-journal"})

    def _writer(self) -> Writer:
        # a PostgreSQL connection brings its own writer (backends/pgwriter.py)
        writer_class = getattr(self.conn, "writer_class", Writer)
        writer = writer_class(self.conn, self.schema, int(time.time()), self.statements)
        self.statements = writer.statements
        return writer

    # -- what is indexed now -------------------------------------------------------------------
    def _known(self, patients: list[str] | None) -> dict[str, tuple[str, Any, Any, bool]]:
        """ObjectFile -> (SOP UID, FileSize, FileMtime, has an RTExtras row) of this data
        directory's rows (of the given patients' studies only, when patients are given)."""
        sc = self.schema
        im, se, st = sc.images, sc.series, sc.studies
        sql = (f"SELECT i.ObjectFile, i.{im.key}, e.FileSize, e.FileMtime, "
               f"e.SOPInstanc IS NOT NULL FROM {im.name} i "
               f"LEFT JOIN {EXTRAS_TABLE} e ON e.SOPInstanc = i.{im.key} ")
        where = "WHERE (i.DeviceName = ? OR i.DeviceName IS NULL)"
        rows: list[tuple] = []
        if patients is None:
            rows = self.conn.execute(sql + where, (DEVICE_NAME,)).fetchall()
        else:
            sql += (f"JOIN {se.name} s ON i.{im.link} = s.{se.key} "
                    f"JOIN {st.name} t ON s.{se.link} = t.{st.key} ")
            for part in chunks(patients):
                rows += self.conn.execute(
                    sql + where + f" AND t.{st.link} IN ({','.join('?' * len(part))})",
                    [DEVICE_NAME, *part]).fetchall()
        out: dict[str, tuple[str, Any, Any, bool]] = {}
        for objfile, sop, size, mtime, has_extras in rows:
            if objfile:
                out[objfile.replace("\\", "/")] = (sop, size, mtime, bool(has_extras))
        return out

    def _clear_all(self) -> None:
        sc = self.schema
        with write_transaction(self.conn):
            for t in (sc.images, sc.series, sc.studies, sc.patients):
                self.conn.execute(f"DELETE FROM {t.name}")
            self.conn.execute(f"DELETE FROM {EXTRAS_TABLE}")

    # -- the run --------------------------------------------------------------------------------
    def run(self, *, mode: str = "all", patients: Iterable[str] | None = None, workers: int = 1,
            progress: Progress | None = None, one_transaction: int | None = None) -> IndexResult:
        """Index the archive.  ``one_transaction=N``: read the headers first and make every
        change in one transaction, or raise ``TooManyToHold`` (before any change) when more
        than N files are to be read."""
        if mode not in MODES:
            raise ArchiveError(f"unknown rebuild mode {mode!r}; expected one of {', '.join(MODES)}")
        if not self.data_dir.is_dir():
            raise data_dir_error(self.data_dir)
        from .store import safe_patient_dir  # store imports this module

        started = time.perf_counter()
        result = IndexResult()
        self.conn.execute("PRAGMA cache_size = -65536")   # 64 MB: index pages stay in memory
        plist = None if patients is None else list(dict.fromkeys(str(p) for p in patients))
        known = self._known(plist)
        roots = ([self.data_dir] if plist is None
                 else sorted({self.data_dir / safe_patient_dir(p) for p in plist}))
        seen: dict[str, os.stat_result] = {}
        for root in roots:
            for rel, st in walk(root, self.data_dir, self.excluded):
                if st is None:
                    result.skipped += 1
                elif not storable_name(rel):     # SQLite text is UTF-8: left out, reported
                    result.bad.append(BadFile(shown_name(rel), "the file name is not valid "
                                              "UTF-8 (rename it to index it)"))
                else:
                    seen[rel] = st
        if plist is not None:  # indexed files of these patients outside their folders
            for rel in known:
                if rel not in seen:
                    try:
                        seen[rel] = os.stat(self.data_dir / rel)
                    except OSError:
                        pass
        self.walked = seen
        writer = self._writer()
        todo: list[str] = []
        writes: list[Callable[[], Any]] = []     # the deletes, done before the new rows
        if mode == "all":
            if plist is None:
                writes.append(self._clear_all)
            else:
                writes += [lambda: writer.delete_images([k[0] for k in known.values()]),
                           writer.cascade]
            todo = sorted(seen)
        elif mode == "missing":
            todo = sorted(rel for rel in seen if rel not in known)
            # indexed (by Conquest, say) but without conquest-run's facts: those are read
            # and only their RTExtras row is written; Conquest's rows stay as they are
            facts_only = {rel: known[rel][0] for rel in seen
                          if rel in known and not known[rel][3]}
            todo = sorted(todo + list(facts_only))
            writer.facts_only = facts_only
            result.unchanged = len(seen) - len(todo)
        else:
            changed_sops = []
            for rel, st in seen.items():
                old = known.get(rel)
                if old is None:
                    todo.append(rel)
                elif not old[3]:        # no facts to compare with: filled, rows kept
                    todo.append(rel)
                    writer.facts_only[rel] = old[0]
                elif old[1] != st.st_size or old[2] != st.st_mtime_ns:
                    todo.append(rel)
                    changed_sops.append(old[0])
                else:
                    result.unchanged += 1
            todo.sort()
            vanished = [k[0] for rel, k in known.items() if rel not in seen]

            def drop_changed_and_vanished() -> None:
                writer.delete_images(changed_sops)
                result.removed = writer.delete_images(vanished)
                writer.cascade()        # before re-reading, so changed files start clean
            writes.append(drop_changed_and_vanished)
        if one_transaction is not None:
            if len(todo) > one_transaction:
                raise TooManyToHold(len(todo))
            return self._write_at_once(result, writer, writes, todo, workers, progress, started)
        for write in writes:
            write()
        for item in self._read(todo, workers, progress):
            if isinstance(item, BadFile):
                result.bad.append(item)
            else:
                writer.add(item)
                if len(writer.pending) >= self.batch_size:
                    writer.flush()
        writer.flush()
        writer.cascade()
        return self._finish(result, writer, started)

    def _read(self, todo: list[str], workers: int,
              progress: Progress | None) -> Iterator[HeaderRecord | BadFile]:
        total = len(todo)
        if progress:
            progress(0, total)
        for done, item in enumerate(read_all(self.data_dir, todo, self.spec, workers), 1):
            yield item
            if progress and (done % 100 == 0 or done == total):
                progress(done, total)

    def _write_at_once(self, result: IndexResult, writer: Writer, writes: list, todo: list[str],
                       workers: int, progress: Progress | None, started: float) -> IndexResult:
        """Read every header first, then make all the changes in one transaction: readers
        see the index before or after, never between (the atomic incremental rebuild)."""
        items = list(self._read(todo, workers, progress))
        with write_transaction(self.conn):
            for write in writes:
                write()
            for item in items:
                if isinstance(item, BadFile):
                    result.bad.append(item)
                elif os.path.lexists(self.data_dir / item.object_file):  # not deleted since
                    writer.add(item)
                    if len(writer.pending) >= self.batch_size:
                        writer.flush()
            writer.flush()
            writer.cascade()
        return self._finish(result, writer, started)

    @staticmethod
    def _finish(result: IndexResult, writer: Writer, started: float) -> IndexResult:
        result.indexed = writer.written + writer.facts_written
        result.facts_filled = writer.facts_written
        result.bad.extend(writer.rejected)
        result.bad.sort(key=lambda b: b.path)
        result.duplicates = writer.duplicates
        result.flagged = sorted(writer.flagged, key=lambda f: f.path)
        result.seconds = time.perf_counter() - started
        return result

    def index_files(self, rels: Iterable[str]) -> IndexResult:
        """Index the given files (paths relative to the data directory) and nothing else."""
        started = time.perf_counter()
        result = IndexResult()
        writer = self._writer()
        for rel in rels:
            item = read_one(str(self.data_dir), rel, self.spec)
            if isinstance(item, BadFile):
                result.bad.append(item)
            else:
                writer.add(item)
        writer.flush()
        writer.cascade()
        return self._finish(result, writer, started)

    def add_records(self, records: Iterable[HeaderRecord]) -> list[BadFile]:
        """Write already-read records (one transaction); returns those refused (inconsistent
        links), which are not written."""
        writer = self._writer()
        for r in records:
            writer.add(r)
        writer.flush()
        writer.cascade()
        return writer.rejected



def index_tree(conn: sqlite3.Connection, schema: Schema, data_dir: str | Path, *,
               mode: str = "all", patients: Iterable[str] | None = None, workers: int = 1,
               progress: Progress | None = None, exclude: Iterable[str | Path] = ()) -> IndexResult:
    """Convenience: ``Indexer(conn, schema, data_dir, exclude=exclude).run(...)``."""
    return Indexer(conn, schema, data_dir, exclude=exclude).run(
        mode=mode, patients=patients, workers=workers, progress=progress)
