"""The full rebuild on PostgreSQL: every row goes with COPY into temporary tables, then one merge
into Conquest's tables, all in one transaction.

* The same walk, reading, batches and rules as the row-by-row writer (``PgWriter``): values cut
  to their column with a notice, inconsistent links refused, duplicates noted, the study's
  modality list merged as ``conquest_run_merge_modality`` merges it.  Only the writing differs:
  each batch's rows (one per key, as ``Writer.flush`` makes them) are copied into
  ``conquest_run_stage_<table>`` with the batch's number.  The merge then takes, per key and
  column, the value of the last batch that had one (what ``COALESCE(EXCLUDED.c, t.c)`` over the
  batches in turn leaves); RTExtras the last batch's row.
* Atomic: until the one COMMIT, readers see the previous index; a rebuild killed at any moment
  leaves it as it was (the server rolls the transaction back).
* Rows another writer (``store``) committed after the rebuild began (their ``AccessTime`` is
  later than the rebuild's) are kept over the rebuild's own; the merge holds the tables' write
  lock, so none commits during it.
* A lost connection starts the whole rebuild again on a new one (``PgConnection.retrying``):
  the server had rolled the transaction back, so nothing is lost and nothing written twice.
"""

from __future__ import annotations

__all__ = ["rebuild_all", "BulkWriter", "STAGE_PREFIX"]

from pathlib import Path
from typing import Any

from ..dicomread import HeaderRecord
from ..indexer import Indexer, IndexResult, Progress
from ..indexwalk import BadFile
from ..indexwriter import LinkChecker, merge_modality
from ..schema import EXTRAS_COLUMNS, EXTRAS_TABLE, Schema
from .pgwriter import PgWriter, _columns

STAGE_PREFIX = "conquest_run_stage_"
_SEQ = "conquest_run_batch"


class _NotedLinks(LinkChecker):
    """The links of the rows staged so far: the index being built holds nothing else."""

    def prefetch(self, records: Any) -> None:
        pass


def _table_columns(schema: Schema) -> dict[str, tuple[str, list[str]]]:
    """table -> (its key, the columns the writer fills), RTExtras last."""
    out = {t.name: (t.key, _columns(schema, t))
           for t in (schema.patients, schema.studies, schema.series, schema.images)}
    out[EXTRAS_TABLE] = ("SOPInstanc", [n for n, _ in EXTRAS_COLUMNS])
    return out


class BulkWriter(PgWriter):
    """``PgWriter`` whose batches go by COPY into the staging tables (see the module)."""

    def __init__(self, conn: Any, schema: Schema, access_time: int, statements: Any = None) -> None:
        super().__init__(conn, schema, access_time, statements)
        self.links = _NotedLinks(conn, schema)
        self.files: dict[str, str] = {}             # SOP UID -> ObjectFile, of staged rows
        self.study_modality_now: dict[str, str | None] = {}
        self.columns = _table_columns(schema)
        self.batch = 0
        self.rows_staged = 0
        if self.modality_at is not None:
            tagged = [c.name for c in schema.studies.columns if c.tag is not None]
            self.modality_width = self.widths[schema.studies.name].get(
                tagged[self.modality_at], 64)

    def _accept(self, records: list[HeaderRecord]) -> list[HeaderRecord]:
        accepted = []
        for r in records:
            reason = self.links.check(r)
            if reason is not None:
                self.rejected.append(BadFile(r.object_file, reason))
            else:
                self.links.note(r)
                accepted.append(r)
        return accepted

    def _indexed_files(self, sops: list[str]) -> list[tuple[str, str]]:
        return [(s, self.files[s]) for s in sops if s in self.files]

    def _study_rows(self, studies: dict[str, list],
                    modalities: dict[str, list[str | None]]) -> list[tuple]:
        """The modality cell after this batch, as the database function would leave it."""
        i = self.modality_at
        if i is None:
            return [tuple(r) for r in studies.values()]
        rows = []
        for uid, row in studies.items():
            value = self.study_modality_now.get(uid)
            mods = [m for m in modalities[uid] if m]
            for m in mods:
                value = merge_modality(value, m)
            if not mods and value is None:
                value = row[i]
            value = value[:self.modality_width] if value is not None else None
            self.study_modality_now[uid] = value
            row[i] = value
            rows.append(tuple(row))
        return rows

    def _write_rows(self, rows: dict[str, list[tuple]]) -> None:
        self.batch += 1
        cur = self.conn.raw.cursor()
        for table, table_rows in rows.items():
            if not table_rows:
                continue
            cols = ", ".join(self.columns[table][1])
            with cur.copy(f"COPY {STAGE_PREFIX}{table.lower()} ({cols}, {_SEQ}) "
                          "FROM STDIN") as copy:
                for row in table_rows:
                    copy.write_row((*row, self.batch))
            self.rows_staged += len(table_rows)
        for row in rows[self.schema.images.name]:
            self.files[row[0]] = row[-2]


class _BulkIndexer(Indexer):
    """``Indexer.run(mode="all")`` writing through a ``BulkWriter``; the clearing is the
    merge's."""

    writer: BulkWriter | None = None

    def _writer(self) -> BulkWriter:
        self.writer = BulkWriter(self.conn, self.schema, self.access_time, self.statements)
        self.statements = self.writer.statements
        return self.writer

    def _known(self, patients: list[str] | None) -> dict:
        return {}

    def _clear_all(self) -> None:
        pass


def _stage_ddl(schema: Schema) -> list[str]:
    return [f"CREATE TEMPORARY TABLE {STAGE_PREFIX}{table.lower()} (LIKE {table}, {_SEQ} int) "
            "ON COMMIT DROP" for table in _table_columns(schema)]


def _merge_sql(schema: Schema, access_time: int) -> list[str]:
    """The statements that replace the index's rows by the staged ones."""
    tables = _table_columns(schema)
    levels = [schema.images, schema.series, schema.studies, schema.patients]
    out = [f"LOCK TABLE {', '.join(tables)} IN SHARE ROW EXCLUSIVE MODE"]
    out += [f"DELETE FROM {t.name} WHERE AccessTime IS NULL OR AccessTime <= {int(access_time)}"
            for t in levels]
    im = schema.images
    out.append(f"DELETE FROM {EXTRAS_TABLE} e WHERE NOT EXISTS (SELECT 1 FROM {im.name} i "
               f"WHERE i.{im.key} = e.SOPInstanc)")
    for table, (key, cols) in tables.items():
        stage = f"{STAGE_PREFIX}{table.lower()}"
        names = ", ".join(cols)
        if table == EXTRAS_TABLE:       # the last batch's row, whole
            select = (f"SELECT DISTINCT ON ({key}) {names} FROM {stage} "
                      f"ORDER BY {key}, {_SEQ} DESC")
        else:                           # per column, the last batch's value that is not NULL
            once = f"SELECT {key} FROM {stage} GROUP BY {key} HAVING count(*) = 1"
            last = ", ".join(f"(array_agg({c} ORDER BY {_SEQ} DESC) FILTER "
                             f"(WHERE {c} IS NOT NULL))[1]" for c in cols[1:])
            select = (f"SELECT {', '.join(f's.{c}' for c in cols)} FROM {stage} s "
                      f"WHERE s.{key} IN ({once}) UNION ALL "
                      f"SELECT {key}, {last} FROM {stage} WHERE {key} NOT IN ({once}) "
                      f"GROUP BY {key}")
        out.append(f"INSERT INTO {table} ({names}) {select} ON CONFLICT ({key}) DO NOTHING")
    return out


def _rollback_quietly(conn: Any) -> None:
    import psycopg
    if conn.in_transaction and not conn.lost:
        try:
            conn.raw.execute("ROLLBACK")
        except psycopg.Error:
            pass          # the error that brought us here is the one to say


def rebuild_all(conn: Any, schema: Schema, data_dir: str | Path, *, workers: int = 1,
                progress: Progress | None = None, batch_size: int = 2000) -> IndexResult:
    """Index every file of ``data_dir`` anew into the PostgreSQL index ``conn`` (a
    ``PgConnection`` with the schema in place), in one transaction."""
    import time

    def attempt() -> IndexResult:
        conn.execute("BEGIN")
        try:
            for stmt in _stage_ddl(schema):
                conn.execute(stmt)
            indexer = _BulkIndexer(conn, schema, data_dir, batch_size=batch_size)
            indexer.access_time = int(time.time())
            result = indexer.run(mode="all", workers=workers, progress=progress)
            for stmt in _merge_sql(schema, indexer.access_time):
                conn.execute(stmt)
            conn.execute("COMMIT")
        except BaseException:
            _rollback_quietly(conn)
            raise
        return result
    return conn.retrying(attempt)
