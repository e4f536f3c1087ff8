"""Extra columns in a layout (pyconquest's ``add_column_to_database``).

A column is one more entry in the archive's ``dicom.sql``.  :func:`add_entry` writes it there
(the built-in layout is copied first when the file does not exist yet), before the level's link
entry, which must stay last; :func:`add_missing_columns` gives an existing database the columns
the layout has and its tables lack (``ALTER TABLE ADD COLUMN``, the views made again); and
:func:`refresh_columns` reads only those columns' values from the indexed files into the rows,
in one transaction, never rebuilding anything else (``rebuild --refresh --columns NAME``).

Column names follow Conquest's rule: the column is the first 10 characters of the name, which
must be an identifier and must not fall on a column the level already has.
"""

from __future__ import annotations

__all__ = ["add_entry", "add_missing_columns", "refresh_columns", "entry_for", "LEVEL_NAMES"]

import os
import re
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Iterable

from .dicomsql import LEVELS, parse_dicom_sql
from .errors import ArchiveError
from . import db
from .db import rollback_quietly

LEVEL_NAMES = ("Patient", "Study", "Series", "Image")
CONQUEST_COLUMN = 10
_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_TAG = re.compile(r"^\(?\s*(?:0x)?([0-9A-Fa-f]{4})\s*,\s*(?:0x)?([0-9A-Fa-f]{4})\s*\)?$")
# VR -> (SQL type, DICOM type, length) of the entry a new column gets by default
_BY_VR = {"UI": ("SQL_C_CHAR", "DT_UI", 64), "DA": ("SQL_C_DATE", "DT_DATE", 8),
          "TM": ("SQL_C_CHAR", "DT_TIME", 16), "US": ("SQL_C_CHAR", "DT_UINT16", 5),
          "UL": ("SQL_C_CHAR", "DT_UINT32", 10), "FL": ("SQL_C_CHAR", "DT_FL", 16),
          "FD": ("SQL_C_CHAR", "DT_FD", 24)}


def _level(level: str) -> str:
    for name in LEVEL_NAMES:
        if level.lower() in (name.lower(), LEVELS[name].lower()):
            return name
    raise ArchiveError(f"level {level!r} is not one of {', '.join(LEVEL_NAMES)}")


def _tag(tag: Any) -> tuple[int, int]:
    from pydicom.datadict import tag_for_keyword
    if isinstance(tag, int) and 0 <= tag <= 0xFFFFFFFF:
        return tag >> 16, tag & 0xFFFF
    if isinstance(tag, tuple) and len(tag) == 2 and all(isinstance(x, int) for x in tag):
        return tag
    if isinstance(tag, str):
        if m := _TAG.match(tag.strip()):
            return int(m.group(1), 16), int(m.group(2), 16)
        found = tag_for_keyword(tag.strip())
        if found is not None:
            return found >> 16, found & 0xFFFF
    raise ArchiveError(f"tag {tag!r} is not a DICOM keyword, (gggg,eeee) or an integer")


def entry_for(schema: Any, level: str, tag: Any, name: str) -> tuple[str, str]:
    """(section, the entry's dicom.sql line) of a new column; ArchiveError when it cannot be."""
    from pydicom.datadict import dictionary_VR
    section = _level(level)
    group, element = _tag(tag)
    if not isinstance(name, str) or not _IDENT.match(name):
        raise ArchiveError(f"column name {name!r} must start with a letter and hold only "
                           "letters, digits and '_'")
    column = name[:CONQUEST_COLUMN]
    lv = schema.levels[section]
    table = schema.tables[lv.table]
    for c in table.columns:
        if c.name.lower() == column.lower():
            cut = f" (Conquest keeps the first {CONQUEST_COLUMN} characters of {name!r})" \
                if len(name) > CONQUEST_COLUMN else ""
            raise ArchiveError(f"{lv.table} already has a column {c.name}{cut}; choose "
                               "another name")
    for e in lv.columns:
        if e.tag == (group << 16 | element):
            raise ArchiveError(f"({group:04X},{element:04X}) is already {lv.table}.{e.column}")
    try:
        vr = dictionary_VR(group << 16 | element)
    except KeyError:
        vr = "LO"
    sql_type, dicom_type, length = _BY_VR.get(vr, ("SQL_C_CHAR", "DT_STR", 64))
    line = (f'\t{{ 0x{group:04x}, 0x{element:04x}, "{name}", {length}, {sql_type}, '
            f'{dicom_type} }},')
    return section, line


def add_entry(dicom_sql: Path, text: str, schema: Any, level: str, tag: Any,
              name: str) -> str:
    """Write the new entry into ``dicom_sql`` (whose current text is ``text``) atomically; the
    new text.  It goes before the level's last entry (the link to the level above)."""
    section, line = entry_for(schema, level, tag, name)
    lv = schema.levels[section]
    first, last = lv.columns[0], lv.entries[-1]
    if first.line == last.line:
        raise ArchiveError(f"{dicom_sql}:{last.line}: put the entries of *{section}* on lines "
                           "of their own to add a column there")
    lines = text.splitlines(keepends=True)
    lines.insert(last.line - 1, line + "\n")
    new = "".join(lines)
    parse_dicom_sql(new, str(dicom_sql))            # still a valid layout, or nothing written
    dicom_sql = Path(dicom_sql)
    fd, tmp = tempfile.mkstemp(prefix=f".{dicom_sql.name}.", dir=dicom_sql.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="latin-1", newline="") as f:
            f.write(new)
        os.replace(tmp, dicom_sql)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return new


def _ddl_type(entry) -> str:
    return "char(8)" if entry.sql_type == "SQL_C_DATE" else f"varchar({entry.length})"


def _retried(conn: Any, work: Any) -> Any:
    """``work()``; on PostgreSQL done again from its start when the connection is lost
    (``PgConnection.retrying``: each of these is one transaction, or reads and one)."""
    return conn.retrying(work) if db.is_postgres(conn) else work()


def add_missing_columns(conn: sqlite3.Connection, schema: Any,
                        names: Iterable[str]) -> list[tuple[str, str]]:
    """``ALTER TABLE`` for each named layout column the database lacks; (table, column) of
    each named column, added or already there.  ArchiveError for a name not in the layout."""
    names = list(names)
    return _retried(conn, lambda: _add_missing_columns(conn, schema, names))


def _add_missing_columns(conn: Any, schema: Any, names: list[str]) -> list[tuple[str, str]]:
    wanted = {n.lower(): n for n in names}
    found: list[tuple[str, str]] = []
    added = False
    conn.execute("BEGIN IMMEDIATE")
    try:
        for section in LEVEL_NAMES:
            lv = schema.levels[section]
            have = {c.lower() for c in db.column_names(conn, lv.table)}
            if not have:
                continue
            for e in lv.columns:
                if e.column.lower() in wanted or e.name.lower() in wanted:
                    wanted.pop(e.column.lower(), None)
                    wanted.pop(e.name.lower(), None)
                    found.append((lv.table, e.column))
                    if e.column.lower() not in have:
                        conn.execute(f'ALTER TABLE "{lv.table}" ADD COLUMN "{e.column}" '
                                     f'{_ddl_type(e)}')
                        added = True
        if wanted:
            raise ArchiveError(f"{', '.join(sorted(wanted.values()))}: not a column of "
                               f"{schema.source} (add it there, or with Archive.add_column)")
        if added:              # the views list the columns: made again to show the new ones
            if db.is_postgres(conn):
                from .backends.pgschema import remake_views
                remake_views(conn, schema)
            else:
                conn.execute("DROP VIEW IF EXISTS v_series")
                conn.execute("DROP VIEW IF EXISTS v_seriesRT")
                for stmt in schema.views_ddl():
                    conn.execute(stmt)
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)          # never hides the error (a full disk) behind its own
        raise
    return found


def refresh_columns(conn: sqlite3.Connection, schema: Any, data_dir: Path,
                    columns: list[tuple[str, str]]) -> dict[str, Any]:
    """Read the values of ``columns`` ((table, column)) from the indexed files and write only
    them, in one transaction.  Upper levels take the first instance that has a value."""
    return _retried(conn, lambda: _refresh_columns(conn, schema, data_dir, columns))


def _refresh_columns(conn: Any, schema: Any, data_dir: Path,
                     columns: list[tuple[str, str]]) -> dict[str, Any]:
    from .dicomread import ReadSpec, read_header
    from .errors import DicomFileError
    spec = ReadSpec.from_schema(schema)
    where: list[tuple[int, int, str, str]] = []   # (level index, column index, table, column)
    for table, column in columns:
        n = [LEVELS[s] for s in LEVEL_NAMES].index(table)
        cols = [e.column for e in schema.levels[LEVEL_NAMES[n]].columns]
        where.append((n, cols.index(column), table, column))
    im, se, st = schema.images, schema.series, schema.studies
    rows = conn.execute(
        f'SELECT i."{im.key}", i.ObjectFile, s."{se.key}", t."{st.key}", t."{st.link}" '
        f'FROM "{im.name}" i LEFT JOIN "{se.name}" s ON s."{se.key}" = i."{im.link}" '
        f'LEFT JOIN "{st.name}" t ON t."{st.key}" = s."{se.link}" '
        f'ORDER BY i."{im.key}"').fetchall()
    values: dict[tuple[str, str], dict[str, Any]] = {(t, c): {} for _, _, t, c in where}
    upper = [w for w in where if w[0] < 3]
    read = bad = 0
    root = Path(data_dir).resolve()
    for sop, object_file, series_uid, study_uid, patient_id in rows:
        keys = (patient_id, study_uid, series_uid, sop)
        if not [w for w in where if w[0] == 3] and all(
                values[(t, c)].get(keys[n]) is not None for n, _, t, c in upper):
            continue                                  # upper levels all known already
        path = (root / (object_file or "").replace("\\", "/")).resolve()
        if not object_file or not path.is_relative_to(root):
            bad += 1
            continue
        try:
            record = read_header(path, object_file, spec)
        except DicomFileError:
            bad += 1
            continue
        read += 1
        for n, i, table, column in where:
            got = values[(table, column)]
            if got.get(keys[n]) is None:
                got[keys[n]] = record.rows[n][i]
    updated = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for n, _, table, column in where:
            key = schema.tables[table].key
            pairs = [(value, k) for k, value in values[(table, column)].items() if k is not None]
            if pairs:               # one executemany (pipelined on PostgreSQL)
                updated += conn.executemany(f'UPDATE "{table}" SET "{column}" = ? WHERE '
                                            f'"{key}" = ?', pairs).rowcount
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)          # never hides the error (a full disk) behind its own
        raise
    return {"columns": [f"{t}.{c}" for t, c in columns], "files_read": read,
            "unreadable": bad, "rows_updated": updated}


def extend_database(archive: Any, names: Iterable[str]) -> dict[str, Any]:
    """``rebuild --refresh --columns NAME``: the named layout columns added to the database
    where missing, and only their values read from the files."""
    if not db.index_exists(archive.database, archive.schema):
        raise ArchiveError("database not found (index the archive first: conquest-run rebuild)",
                           file=db.index_label(archive.database))
    conn = db.connect(archive.database)
    try:
        columns = add_missing_columns(conn, archive.schema, names)
        return refresh_columns(conn, archive.schema, archive.data_dir, columns)
    finally:
        conn.close()


__all__ += ["extend_database"]
