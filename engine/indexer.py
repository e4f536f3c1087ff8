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

__all__ = ["IndexResult", "data_dir_error", "BadFile", "FlaggedFile", "Indexer", "LinkChecker", "index_tree", "merge_modality",
           "DEVICE_NAME"]

import collections
import multiprocessing
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .dicomread import HeaderRecord, ReadSpec, read_header
from .errors import ArchiveError, DicomFileError
from .schema import EXTRAS_COLUMNS, EXTRAS_TABLE, Schema

DEVICE_NAME = "MAG0"
MODES = ("all", "missing", "refresh")
_STUDY_MODALITY_TAG = 0x00080061
_CHUNK = 64            # files per task sent to a worker process
_SQL_VARS = 500        # parameters per IN (...) query
_HELPER_TIMEOUT = 600.0  # seconds for one chunk of files in a helper process

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BadFile:
    path: str      # relative to the data directory
    reason: str


@dataclass(frozen=True)
class FlaggedFile:
    """A file indexed with warnings: RTExtras.Flags (e.g. ``meta-mismatch\\no-pixel-data``)."""

    path: str      # relative to the data directory (as given, for store)
    flags: str


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


# -- reading (in this process or in workers) ------------------------------------------------------

def _read_one(data_dir: str, rel: str, spec: ReadSpec) -> HeaderRecord | BadFile:
    try:
        return read_header(os.path.join(data_dir, rel), rel, spec)
    except DicomFileError as exc:
        return BadFile(rel, exc.message)
    except Exception as exc:  # never let one file stop the run
        return BadFile(rel, f"unreadable: {type(exc).__name__}: {exc}")


def _read_chunk(data_dir: str, spec: ReadSpec, chunk: list[str]) -> list[HeaderRecord | BadFile]:
    return [_read_one(data_dir, rel, spec) for rel in chunk]


def _read_all(data_dir: Path, rels: list[str], spec: ReadSpec,
              workers: int) -> Iterator[HeaderRecord | BadFile]:
    """Read every file, in order.  With ``workers`` > 1, that many helper processes take
    chunks from a window kept ahead of them; whenever the oldest chunk is not back yet the
    calling process (which writes the index) reads the next chunk itself, so no core idles
    and the helpers never wait for the writer."""
    folder = str(data_dir)
    # Helpers are forked (cheap, nothing to re-import).  Forking a process that runs other
    # threads (a receiver, say) is unsafe and spawning depends on how the program was started,
    # so then the files are read in this process.
    can_fork = ("fork" in multiprocessing.get_all_start_methods()
                and threading.active_count() == 1)
    if workers <= 1 or len(rels) < 4 * _CHUNK or not can_fork:
        for rel in rels:
            yield _read_one(folder, rel, spec)
        return
    ctx = multiprocessing.get_context("fork")
    chunks = iter([rels[i:i + _CHUNK] for i in range(0, len(rels), _CHUNK)])
    helpers = workers
    ahead = 16 * helpers                      # chunks queued for the helpers
    window: collections.deque = collections.deque()   # AsyncResult or a finished list
    queued = 0
    with ctx.Pool(helpers) as pool:
        while True:
            while queued < ahead:
                chunk = next(chunks, None)
                if chunk is None:
                    break
                window.append(pool.apply_async(_read_chunk, (folder, spec, chunk)))
                queued += 1
            if not window:
                break
            head = window[0]
            if isinstance(head, list):
                window.popleft()
                yield from head
            elif head.ready() or not _take_local(window, chunks, folder, spec):
                window.popleft()
                queued -= 1
                try:
                    results = head.get(timeout=_HELPER_TIMEOUT)
                except multiprocessing.TimeoutError:
                    raise ArchiveError(f"a worker process gave no result within "
                                       f"{_HELPER_TIMEOUT:.0f} s; run with one worker") from None
                yield from results


def _take_local(window: collections.deque, chunks: Iterator[list[str]], folder: str,
                spec: ReadSpec) -> bool:
    """Read the next chunk in this process (appended to the window); False when none is left."""
    chunk = next(chunks, None)
    if chunk is None:
        return False
    window.append(_read_chunk(folder, spec, chunk))
    return True


# -- walking -------------------------------------------------------------------------------

def _walk(root: Path, base: Path, excluded: set[str]) -> Iterator[tuple[str, os.stat_result | None]]:
    """(relative path with '/', stat) of every regular file under root; hidden names yield
    (rel, None) so they can be counted as skipped; the database's own files are left out."""
    prefix = len(str(base.absolute())) + 1
    stack = [str(root.absolute())]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ArchiveError(f"cannot list folder: {exc.strerror}", file=folder) from None
        for entry in entries:
            path = entry.path
            rel = path[prefix:] if os.sep == "/" else path[prefix:].replace(os.sep, "/")
            if path in excluded:
                continue
            if entry.name.startswith("."):
                if not entry.is_dir(follow_symlinks=False):
                    yield rel, None
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(path)
            elif entry.is_file(follow_symlinks=False):
                try:
                    yield rel, entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue


def _storable_name(rel: str) -> bool:
    """Whether a path from the file system can be an ObjectFile (no undecodable bytes)."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown_name(rel: str) -> str:
    """A path with undecodable bytes, printable (each such byte as U+FFFD)."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# -- the index writer ----------------------------------------------------------------------

def _chunks(items: list, size: int = _SQL_VARS) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def merge_modality(current: str | None, modality: str | None) -> str | None:
    """Conquest's StudyModality: the incoming series modality goes first unless it is already
    one of the backslash-separated values (``RTPLAN`` then ``CT`` gives ``CT\\RTPLAN``)."""
    if not modality:
        return current
    if not current:
        return modality
    if modality in current.split("\\"):
        return current
    return f"{modality}\\{current}"


def _same(old: str, new: str) -> bool:
    return old.lower() == new.lower()


class LinkChecker:
    """Conquest refuses an object whose image (series, study) is already indexed under another
    series (study, patient): "inconsistent link".  ``check(record)`` gives that reason or None,
    from the index and from the records ``note``d before (e.g. a batch not yet written)."""

    def __init__(self, conn: sqlite3.Connection, schema: Schema) -> None:
        self.conn = conn
        # (name, table, level index in HeaderRecord.rows)
        self.levels = (("image", schema.images, 3), ("series", schema.series, 2),
                       ("study", schema.studies, 1))
        self.parents: dict[str, dict[str, Any]] = {name: {} for name, _, _ in self.levels}
        self.looked_up: dict[str, set[str]] = {name: set() for name, _, _ in self.levels}

    def prefetch(self, records: Iterable[HeaderRecord]) -> None:
        """Look the records' keys up in the index at once (instead of one by one)."""
        records = list(records)
        for name, table, i in self.levels:
            keys = [k for k in {r.rows[i][0] for r in records} if k not in self.looked_up[name]]
            for part in _chunks(keys):
                marks = ",".join("?" * len(part))
                for key, link in self.conn.execute(
                        f"SELECT {table.key}, {table.link} FROM {table.name} "
                        f"WHERE {table.key} IN ({marks})", part):
                    self.parents[name].setdefault(key, link)
            self.looked_up[name].update(keys)

    def check(self, record: HeaderRecord) -> str | None:
        self.prefetch([record])
        for name, table, i in self.levels:
            key, link = record.rows[i][0], record.rows[i][-1]
            old = self.parents[name].get(key)
            if old and link is not None and not _same(old, link):
                return (f"inconsistent link: {name} {key} is indexed under {table.link} "
                        f"{old!r}, this file says {link!r}; not indexed")
        return None

    def note(self, record: HeaderRecord) -> None:
        for name, _, i in self.levels:
            self.looked_up[name].add(record.rows[i][0])
            if record.rows[i][-1] is not None:
                self.parents[name][record.rows[i][0]] = record.rows[i][-1]


class _Writer:
    """Upserts HeaderRecords level by level; one transaction per ``flush``.

    As Conquest's dgate does it: a value that is absent (NULL) never overwrites one in the
    index; the study's modality list grows with each series' modality; and a file whose series
    (study, patient) is already indexed under another study (patient) is refused as an
    inconsistent link instead of moving the existing rows.
    """

    def __init__(self, conn: sqlite3.Connection, schema: Schema, access_time: int) -> None:
        self.conn = conn
        self.schema = schema
        self.access_time = access_time
        self.pending: list[HeaderRecord] = []
        self.affected_series: set[str] = set()
        self.duplicates: list[str] = []
        self.rejected: list[BadFile] = []
        self.flagged: list[FlaggedFile] = []
        self.facts_only: dict[str, str] = {}   # ObjectFile -> indexed SOP UID: RTExtras only
        self.facts_written = 0
        self.written = 0
        self.sql: dict[str, str] = {}
        for table in (schema.patients, schema.studies, schema.series, schema.images):
            cols = [c.name for c in table.columns if c.tag is not None] + ["AccessTime"]
            if table is schema.images:
                cols += ["ObjectFile", "DeviceName"]
            updates = ", ".join(f"{c} = COALESCE(excluded.{c}, {c})" for c in cols[1:])
            self.sql[table.name] = (
                f"INSERT INTO {table.name} ({', '.join(cols)}) "
                f"VALUES ({', '.join('?' * len(cols))}) "
                f"ON CONFLICT({table.key}) DO UPDATE SET {updates}")
        ecols = [n for n, _ in EXTRAS_COLUMNS]
        self.extras_cols = ecols
        self._extras_getter = operator.itemgetter(*ecols)
        self.sql[EXTRAS_TABLE] = (f"INSERT OR REPLACE INTO {EXTRAS_TABLE} ({', '.join(ecols)}) "
                                  f"VALUES ({', '.join('?' * len(ecols))})")
        study_tags = [c.tag for c in schema.studies.columns if c.tag is not None]
        self.study_modality = (study_tags.index(_STUDY_MODALITY_TAG)
                               if _STUDY_MODALITY_TAG in study_tags else None)

    def extras_row(self, extras: dict[str, Any]) -> tuple:
        try:
            return self._extras_getter(extras)          # read_header fills every column
        except KeyError:
            return tuple(extras.get(c) for c in self.extras_cols)

    def add(self, record: HeaderRecord) -> None:
        self.pending.append(record)

    def _write_facts_only(self, records: list[HeaderRecord]) -> list[HeaderRecord]:
        """Write the RTExtras rows of files already indexed without one (keyed by the SOP UID
        the index holds for the file); the other records are returned to be written fully."""
        rest, facts = [], []
        for r in records:
            sop = self.facts_only.get(r.object_file)
            if sop is None:
                rest.append(r)
            else:
                extras = dict(r.extras, SOPInstanc=sop)
                facts.append(self.extras_row(extras))
                if r.extras.get("Flags"):
                    self.flagged.append(FlaggedFile(r.object_file, r.extras["Flags"]))
        if facts:
            self.conn.executemany(self.sql[EXTRAS_TABLE], facts)
            self.facts_written += len(facts)
        return rest

    def _existing(self, sql: str, keys: list[str]) -> list[tuple]:
        out: list[tuple] = []
        for part in _chunks(keys):
            out += self.conn.execute(sql.format(",".join("?" * len(part))), part).fetchall()
        return out

    def _accept(self, records: list[HeaderRecord]) -> list[HeaderRecord]:
        """The records whose links agree with the index and with the records before them."""
        checker = LinkChecker(self.conn, self.schema)
        checker.prefetch(records)
        accepted = []
        for r in records:
            reason = checker.check(r)
            if reason is not None:
                self.rejected.append(BadFile(r.object_file, reason))
            else:
                checker.note(r)
                accepted.append(r)
        return accepted

    def flush(self) -> None:
        if not self.pending:
            return
        records, self.pending = self.pending, []
        at = self.access_time
        sc = self.schema
        extras_row = self.extras_row
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            if self.facts_only:
                records = self._write_facts_only(records)
            records = self._accept(records)
            patients: dict[str, tuple] = {}
            studies: dict[str, list] = {}
            series: dict[str, tuple] = {}
            images: dict[str, tuple] = {}
            extras: dict[str, tuple] = {}
            modalities: dict[str, list[str | None]] = {}
            for r in records:
                p, st, se, im = r.rows
                if p[0] is not None:
                    patients[p[0]] = p + (at,)
                studies[st[0]] = list(st) + [at]
                modalities.setdefault(st[0], []).append(r.modality)
                series[se[0]] = se + (at,)
                if im[0] in images and images[im[0]][-2] != r.object_file:
                    self.duplicates.append(r.object_file)
                images[im[0]] = im + (at, r.object_file, DEVICE_NAME)
                extras[im[0]] = extras_row(r.extras)
            im_table = sc.images
            for sop, objfile in self._existing(
                    f"SELECT {im_table.key}, ObjectFile FROM {im_table.name} "
                    f"WHERE {im_table.key} IN ({{}})", list(images)):
                if objfile and objfile.replace("\\", "/") != images[sop][-2]:
                    self.duplicates.append(images[sop][-2])
            if self.study_modality is not None:
                i = self.study_modality
                known = dict(self._existing(
                    f"SELECT {sc.studies.key}, {sc.studies.columns[i].name} FROM "
                    f"{sc.studies.name} WHERE {sc.studies.key} IN ({{}})", list(studies)))
                for uid, row in studies.items():
                    value = known.get(uid)
                    for modality in modalities[uid]:
                        value = merge_modality(value, modality)
                    row[i] = value if value is not None else row[i]
            ex = self.conn.executemany
            ex(self.sql[sc.patients.name], list(patients.values()))
            ex(self.sql[sc.studies.name], [tuple(r) for r in studies.values()])
            ex(self.sql[sc.series.name], list(series.values()))
            ex(self.sql[im_table.name], list(images.values()))
            ex(self.sql[EXTRAS_TABLE], list(extras.values()))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.written += len(records)
        self.flagged += [FlaggedFile(r.object_file, r.extras["Flags"]) for r in records
                         if r.extras.get("Flags")]

    def delete_images(self, sops: list[str]) -> int:
        """Drop image rows (and their extras) by SOP UID; remember their series for cascade()."""
        if not sops:
            return 0
        im = self.schema.images
        removed = 0
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for part in _chunks(sops):
                marks = ",".join("?" * len(part))
                for (s,) in self.conn.execute(
                        f"SELECT DISTINCT {im.link} FROM {im.name} WHERE {im.key} IN ({marks})",
                        part):
                    if s is not None:
                        self.affected_series.add(s)
                removed += self.conn.execute(
                    f"DELETE FROM {im.name} WHERE {im.key} IN ({marks})", part).rowcount
                self.conn.execute(f"DELETE FROM {EXTRAS_TABLE} WHERE SOPInstanc IN ({marks})",
                                  part)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return removed

    def cascade(self) -> None:
        """Conquest's cascade: drop affected series without images, then their studies without
        series, then those studies' patients without studies."""
        if not self.affected_series:
            return
        sc = self.schema
        # (level, the level below it): a row of ``level`` goes when no row below links to it
        levels = ((sc.series, sc.images), (sc.studies, sc.series), (sc.patients, sc.studies))
        keys: set[str] = set(self.affected_series)
        self.affected_series = set()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for table, below in levels:
                parents: set[str] = set()
                for part in _chunks(sorted(keys)):
                    marks = ",".join("?" * len(part))
                    if table.link is not None:
                        parents.update(p for (p,) in self.conn.execute(
                            f"SELECT DISTINCT {table.link} FROM {table.name} "
                            f"WHERE {table.key} IN ({marks})", part) if p is not None)
                    self.conn.execute(
                        f"DELETE FROM {table.name} WHERE {table.key} IN ({marks}) AND NOT EXISTS "
                        f"(SELECT 1 FROM {below.name} "
                        f"WHERE {below.name}.{below.link} = {table.name}.{table.key})", part)
                keys = parents
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise


# -- the indexer ---------------------------------------------------------------------------

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
        self.excluded = set()
        for p in exclude:
            p = str(Path(p).absolute())
            self.excluded.update({p, p + "-wal", p + "-shm", p + "-journal"})

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
            for part in _chunks(patients):
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
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for t in (sc.images, sc.series, sc.studies, sc.patients):
                self.conn.execute(f"DELETE FROM {t.name}")
            self.conn.execute(f"DELETE FROM {EXTRAS_TABLE}")
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    # -- the run --------------------------------------------------------------------------------
    def run(self, *, mode: str = "all", patients: Iterable[str] | None = None, workers: int = 1,
            progress: Progress | None = None) -> IndexResult:
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
            for rel, st in _walk(root, self.data_dir, self.excluded):
                if st is None:
                    result.skipped += 1
                elif not _storable_name(rel):     # SQLite text is UTF-8: left out, reported
                    result.bad.append(BadFile(_shown_name(rel), "the file name is not valid "
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
        writer = _Writer(self.conn, self.schema, int(time.time()))
        todo: list[str] = []
        if mode == "all":
            if plist is None:
                self._clear_all()
            else:
                writer.delete_images([k[0] for k in known.values()])
                writer.cascade()
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
            writer.delete_images(changed_sops)
            result.removed = writer.delete_images(vanished)
            writer.cascade()            # before re-reading, so changed files start clean
        total = len(todo)
        done = 0
        if progress:
            progress(0, total)
        for item in _read_all(self.data_dir, todo, self.spec, workers):
            done += 1
            if isinstance(item, BadFile):
                result.bad.append(item)
            else:
                writer.add(item)
                if len(writer.pending) >= self.batch_size:
                    writer.flush()
            if progress and (done % 100 == 0 or done == total):
                progress(done, total)
        writer.flush()
        writer.cascade()
        return self._finish(result, writer, started)

    @staticmethod
    def _finish(result: IndexResult, writer: _Writer, started: float) -> IndexResult:
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
        writer = _Writer(self.conn, self.schema, int(time.time()))
        for rel in rels:
            item = _read_one(str(self.data_dir), rel, self.spec)
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
        writer = _Writer(self.conn, self.schema, int(time.time()))
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
