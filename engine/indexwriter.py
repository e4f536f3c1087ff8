"""The index writer: HeaderRecords into Conquest's tables and RTExtras, as dgate's
UpdateOrAddToTable writes them (absent values never overwrite, the study's modality list grows,
inconsistent links refused), in one transaction per batch; deletes with Conquest's cascade."""

from __future__ import annotations

__all__ = ["Writer", "Statements", "LinkChecker", "merge_modality", "chunks",
           "write_transaction", "rollback_quietly", "DEVICE_NAME"]

import operator
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from .db import rollback_quietly
from .dicomread import HeaderRecord
from .indexwalk import BadFile, FlaggedFile
from .schema import EXTRAS_COLUMNS, EXTRAS_TABLE, Schema

DEVICE_NAME = "MAG0"
_STUDY_MODALITY_TAG = 0x00080061
_SQL_VARS = 500        # parameters per IN (...) query


# -- the index writer ----------------------------------------------------------------------

def chunks(items: list, size: int = _SQL_VARS) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]



@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; a savepoint when a transaction is already open (the
    atomic rebuild's swap catches up through the same writer).  On an error the work is undone
    and that error is raised as it is."""
    savepoint = "conquest_run_write" if conn.in_transaction else None
    conn.execute(f"SAVEPOINT {savepoint}" if savepoint else "BEGIN IMMEDIATE")
    try:
        yield
        conn.execute(f"RELEASE {savepoint}" if savepoint else "COMMIT")
    except BaseException:
        rollback_quietly(conn, savepoint)
        raise


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
            for part in chunks(keys):
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


class Statements:
    """The upsert statements of a schema, built once and shared by the writers of an
    ``Indexer`` (building them took ~0.18 ms, once per commit of a receiver or store)."""

    def __init__(self, schema: Schema) -> None:
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
        self.extras_getter = operator.itemgetter(*ecols)
        self.sql[EXTRAS_TABLE] = (f"INSERT OR REPLACE INTO {EXTRAS_TABLE} ({', '.join(ecols)}) "
                                  f"VALUES ({', '.join('?' * len(ecols))})")
        study_tags = [c.tag for c in schema.studies.columns if c.tag is not None]
        self.study_modality = (study_tags.index(_STUDY_MODALITY_TAG)
                               if _STUDY_MODALITY_TAG in study_tags else None)


class Writer:
    """Upserts HeaderRecords level by level; one transaction per ``flush``.

    As Conquest's dgate does it: a value that is absent (NULL) never overwrites one in the
    index; the study's modality list grows with each series' modality; and a file whose series
    (study, patient) is already indexed under another study (patient) is refused as an
    inconsistent link instead of moving the existing rows.
    """

    def __init__(self, conn: sqlite3.Connection, schema: Schema, access_time: int,
                 statements: "Statements | None" = None) -> None:
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
        self.statements = statements if statements is not None else Statements(schema)
        self.sql = self.statements.sql
        self.extras_cols = self.statements.extras_cols
        self._extras_getter = self.statements.extras_getter
        self.study_modality = self.statements.study_modality

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
        for part in chunks(keys):
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
        """Write the pending records in one transaction, level by level (the backend's hooks:
        ``_taken``, ``_object_file``, ``_study_rows``, ``_upserts``)."""
        if not self.pending:
            return
        records, self.pending = self._taken(self.pending), []
        at = self.access_time
        sc = self.schema
        with write_transaction(self.conn):
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
                objfile = self._object_file(r)
                if im[0] in images and images[im[0]][-2] != objfile:
                    self.duplicates.append(r.object_file)
                images[im[0]] = im + (at, objfile, DEVICE_NAME)
                extras[im[0]] = self.extras_row(r.extras)
            for sop, objfile in self._indexed_files(list(images)):
                if objfile and objfile.replace("\\", "/") != images[sop][-2]:
                    self.duplicates.append(images[sop][-2])
            self._write_rows({sc.patients.name: list(patients.values()),
                              sc.studies.name: self._study_rows(studies, modalities),
                              sc.series.name: list(series.values()),
                              sc.images.name: list(images.values()),
                              EXTRAS_TABLE: list(extras.values())})
        self.written += len(records)
        self.flagged += [FlaggedFile(r.object_file, r.extras["Flags"]) for r in records
                         if r.extras.get("Flags")]

    # -- what a backend may do differently ------------------------------------------------------
    def _taken(self, records: list[HeaderRecord]) -> list[HeaderRecord]:
        """The pending records as this backend writes them."""
        return records

    def _object_file(self, record: HeaderRecord) -> str:
        """The ObjectFile cell of a record."""
        return record.object_file

    def _upserts(self) -> dict[str, str]:
        """The upsert statement of each table."""
        return self.sql

    def _indexed_files(self, sops: list[str]) -> list[tuple[str, str]]:
        """(SOP UID, ObjectFile) of those of ``sops`` already indexed."""
        im = self.schema.images
        return self._existing(f"SELECT {im.key}, ObjectFile FROM {im.name} "
                              f"WHERE {im.key} IN ({{}})", sops)

    def _write_rows(self, rows: dict[str, list[tuple]]) -> None:
        """Write each table's rows (patients, studies, series, images, RTExtras, in order)."""
        sql = self._upserts()
        for table, table_rows in rows.items():
            self.conn.executemany(sql[table], table_rows)

    def _study_rows(self, studies: dict[str, list],
                    modalities: dict[str, list[str | None]]) -> list[tuple]:
        """The study rows, each with its modality list merged into what is indexed (as
        dgate does it, see ``merge_modality``)."""
        if self.study_modality is not None:
            sc, i = self.schema, self.study_modality
            known = dict(self._existing(
                f"SELECT {sc.studies.key}, {sc.studies.columns[i].name} FROM "
                f"{sc.studies.name} WHERE {sc.studies.key} IN ({{}})", list(studies)))
            for uid, row in studies.items():
                value = known.get(uid)
                for modality in modalities[uid]:
                    value = merge_modality(value, modality)
                row[i] = value if value is not None else row[i]
        return [tuple(r) for r in studies.values()]

    def delete_images(self, sops: list[str]) -> int:
        """Drop image rows (and their extras) by SOP UID; remember their series for cascade()."""
        if not sops:
            return 0
        im = self.schema.images
        removed = 0
        with write_transaction(self.conn):
            for part in chunks(sops):
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
        with write_transaction(self.conn):
            for table, below in levels:
                parents: set[str] = set()
                for part in chunks(sorted(keys)):
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

