"""The index writer on PostgreSQL: ``indexwriter.Writer``'s rules (absent values never overwrite,
inconsistent links refused, duplicates noted) with PostgreSQL's statements.

* Values longer than their column are cut to its width before they are written, as dgate does
  (``***Truncated``), with one notice each on the connection (``PgConnection.notices``):
  PostgreSQL would refuse them (22001) and fail the whole batch.
* Upserts go patient, study, series, image, then RTExtras, each ``INSERT ... ON CONFLICT (key)
  DO UPDATE SET c = COALESCE(EXCLUDED.c, t.c)``.
* The study's modality list is merged inside the database (``conquest_run_merge_modality``),
  so a concurrent writer's modality is kept.
* A batch whose connection was lost is written again on a new connection
  (``PgConnection.retrying``), its refusals, duplicates and flags counted once.
"""

from __future__ import annotations

__all__ = ["PgWriter", "pg_statements"]

from typing import Any

from ..dicomread import HeaderRecord
from ..indexwriter import Writer
from ..schema import EXTRAS_COLUMNS, EXTRAS_TABLE, Schema
from .pgschema import MERGE_FUNCTION, column_widths

_STUDY_MODALITY_TAG = 0x00080061


def _columns(schema: Schema, table) -> list[str]:
    cols = [c.name for c in table.columns if c.tag is not None] + ["AccessTime"]
    if table is schema.images:
        cols += ["ObjectFile", "DeviceName"]
    return cols


def pg_statements(schema: Schema) -> dict[str, str]:
    """table -> its upsert with ``?`` parameters (the study's takes two more at the end: the
    batch's modalities, twice)."""
    out: dict[str, str] = {}
    widths = column_widths(schema)
    modality = next((c.name for c in schema.studies.columns if c.tag == _STUDY_MODALITY_TAG),
                    None)
    for table in (schema.patients, schema.studies, schema.series, schema.images):
        cols = _columns(schema, table)
        values = ["?"] * len(cols)
        sets = [f"{c} = COALESCE(EXCLUDED.{c}, t.{c})" for c in cols[1:]]
        if table is schema.studies and modality is not None:
            i = cols.index(modality)
            width = widths[table.name].get(modality, 64)
            values[i] = f"{MERGE_FUNCTION}(NULL, ?::text[], ?::text, {width})"
            sets[i - 1] = (f"{modality} = {MERGE_FUNCTION}(t.{modality}, ?::text[], "
                           f"EXCLUDED.{modality}, {width})")
        out[table.name] = (f"INSERT INTO {table.name} AS t ({', '.join(cols)}) "
                           f"VALUES ({', '.join(values)}) "
                           f"ON CONFLICT ({table.key}) DO UPDATE SET {', '.join(sets)}")
    ecols = [n for n, _ in EXTRAS_COLUMNS]
    out[EXTRAS_TABLE] = (f"INSERT INTO {EXTRAS_TABLE} ({', '.join(ecols)}) "
                         f"VALUES ({', '.join('?' * len(ecols))}) ON CONFLICT (SOPInstanc) "
                         f"DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in ecols[1:])}")
    return out


class PgWriter(Writer):
    """``Writer`` whose ``flush`` speaks PostgreSQL; ``conn`` is a ``PgConnection``."""

    def __init__(self, conn: Any, schema: Schema, access_time: int, statements: Any = None) -> None:
        super().__init__(conn, schema, access_time, statements)
        self.pg_sql = pg_statements(schema)
        self.widths = column_widths(schema)
        levels = (schema.patients, schema.studies, schema.series, schema.images)
        # per level: (table name, [(position in the row, column, width)])
        self.cuts = []
        for table in levels:
            cols = [c.name for c in table.columns if c.tag is not None]
            w = self.widths[table.name]
            self.cuts.append((table.name, [(i, c, w[c]) for i, c in enumerate(cols) if c in w]))
        self.extras_cuts = [(c, self.widths[EXTRAS_TABLE][c]) for c, _ in EXTRAS_COLUMNS
                            if c in self.widths[EXTRAS_TABLE]]
        self.modality_at = self.study_modality

    def _notice(self, record: HeaderRecord, table: str, column: str, value: str,
                width: int) -> None:
        self.conn.notices.append(f"{record.object_file}: ***Truncated {table.lower()}."
                                 f"{column.lower()} from {len(value)} to {width} characters")

    def _cut(self, record: HeaderRecord) -> HeaderRecord:
        """The record with every text value fitting its column (and no NUL characters,
        which PostgreSQL's text cannot hold)."""
        rows = []
        for row, (table, cuts) in zip(record.rows, self.cuts):
            row = [v.replace("\x00", "") if isinstance(v, str) else v for v in row]
            for i, col, width in cuts:
                v = row[i]
                if isinstance(v, str) and len(v) > width:
                    self._notice(record, table, col, v, width)
                    row[i] = v[:width]
            rows.append(tuple(row))
        record.rows = tuple(rows)
        for col, width in self.extras_cuts:
            v = record.extras.get(col)
            if isinstance(v, str):
                v = v.replace("\x00", "")
                if len(v) > width:
                    self._notice(record, EXTRAS_TABLE, col, v, width)
                    v = v[:width]
                record.extras[col] = v
        return record

    def _cut_path(self, record: HeaderRecord) -> str:
        """The ObjectFile as its column holds it (dgate cuts a long path too)."""
        width = self.widths[self.schema.images.name].get("ObjectFile", 255)
        if len(record.object_file) <= width:
            return record.object_file
        self._notice(record, self.schema.images.name, "ObjectFile", record.object_file, width)
        return record.object_file[:width]

    # -- Writer's hooks: the cut values, the cut path, PostgreSQL's statements, the modality
    # list merged inside the database
    def _taken(self, records: list[HeaderRecord]) -> list[HeaderRecord]:
        return [self._cut(r) for r in records]

    def _object_file(self, record: HeaderRecord) -> str:
        return self._cut_path(record)

    def _upserts(self) -> dict[str, str]:
        return self.pg_sql

    def _study_rows(self, studies: dict[str, list],
                    modalities: dict[str, list[str | None]]) -> list[tuple]:
        rows = []
        for uid, row in studies.items():
            if self.modality_at is not None:
                # the merge takes the batch's modalities and the file's own value
                # (VALUES), then the modalities again (DO UPDATE SET)
                i, mods = self.modality_at, [m for m in modalities[uid] if m]
                row = row[:i] + [mods, row[i]] + row[i + 1:] + [mods]
            rows.append(tuple(row))
        return rows

    # -- a lost connection: the batch again, from where it started ---------------------------
    def flush(self) -> None:
        if not self.pending:
            return
        pending = list(self.pending)
        kept = (len(self.rejected), len(self.duplicates), len(self.flagged), self.written,
                self.facts_written)
        said = len(self.conn.notices)

        def attempt() -> None:
            del self.rejected[kept[0]:], self.duplicates[kept[1]:], self.flagged[kept[2]:]
            self.written, self.facts_written = kept[3], kept[4]
            self.pending = list(pending)
            Writer.flush(self)
        try:
            self.conn.retrying(attempt)
        finally:        # a path cut again on the second attempt is said once
            self.conn.notices[said:] = list(dict.fromkeys(self.conn.notices[said:]))

    def delete_images(self, sops: list[str]) -> int:
        return self.conn.retrying(lambda: Writer.delete_images(self, sops))

    def cascade(self) -> None:
        affected = set(self.affected_series)

        def attempt() -> None:
            self.affected_series = set(affected)
            Writer.cascade(self)
        self.conn.retrying(attempt)

    def _write_facts_only(self, records: list[HeaderRecord]) -> list[HeaderRecord]:
        saved = self.sql
        self.sql = dict(saved, **{EXTRAS_TABLE: self.pg_sql[EXTRAS_TABLE]})
        try:
            return super()._write_facts_only(records)
        finally:
            self.sql = saved
