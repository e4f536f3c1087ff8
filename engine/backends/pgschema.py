"""The schema on PostgreSQL, as dgate creates it there: the statements of ``Schema.conquest_ddl``
(unquoted names, so PostgreSQL folds them to lower case; the same varchar widths, keys and
indexes), then conquest-run's ``RTExtras`` (its integer columns ``bigint``: sizes and
nanosecond mtimes outgrow ``int``), the study-modality merge function and the two views (their
columns listed, as PostgreSQL refuses a view with two columns of one name; a repeated name
takes SQLite's ``name:1``)."""

from __future__ import annotations

__all__ = ["ensure_schema", "pg_ddl", "column_widths", "remake_views", "MERGE_FUNCTION"]

from ..errors import ArchiveError
from ..schema import EXTRAS_COLUMNS, EXTRAS_TABLE, Schema

MERGE_FUNCTION = "conquest_run_merge_modality"
_LOCK_KEY = 0x436F6E71     # advisory lock held while a schema is made (two writers at once)

# Conquest's StudyModality rule (indexwriter.merge_modality) over a batch's series modalities,
# in the database so that two writers of one study at once both keep theirs; with no modality
# the study's current value wins over the incoming one, as in the SQLite writer.
_MERGE_SQL = f"""
CREATE OR REPLACE FUNCTION {MERGE_FUNCTION}(cur text, incoming text[], fallback text, width int)
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE m text; v text := cur; any_mod boolean := false;
BEGIN
  FOREACH m IN ARRAY coalesce(incoming, ARRAY[]::text[]) LOOP
    IF m IS NULL OR m = '' THEN CONTINUE; END IF;
    any_mod := true;
    IF v IS NULL OR v = '' THEN v := m;
    ELSIF NOT (m = ANY (string_to_array(v, E'\\\\'))) THEN v := m || E'\\\\' || v;
    END IF;
  END LOOP;
  IF NOT any_mod THEN v := coalesce(cur, fallback); END IF;
  RETURN left(v, width);
END $$"""


def column_widths(schema: Schema) -> dict[str, dict[str, int]]:
    """table -> column -> the most characters it holds (varchar(n), char(n))."""
    out: dict[str, dict[str, int]] = {}
    tables = [(t.name, [(c.name, c.sql_type) for c in t.columns]) for t in schema.tables.values()]
    tables.append((EXTRAS_TABLE, [(n, t.split()[0]) for n, t in EXTRAS_COLUMNS]))
    for name, cols in tables:
        widths = {}
        for col, sql_type in cols:
            if sql_type.startswith(("varchar(", "char(")):
                widths[col] = int(sql_type.split("(")[1].rstrip(")"))
        out[name] = widths
    return out


def _extras_ddl() -> str:
    cols = ", ".join(f"{n} {'bigint' if t == 'int' else t}" for n, t in EXTRAS_COLUMNS)
    return f"CREATE TABLE IF NOT EXISTS {EXTRAS_TABLE} ({cols})"


def _views_ddl(schema: Schema) -> list[str]:
    se, st, im = schema.series, schema.studies, schema.images
    names = schema.view_columns()
    extras = [(EXTRAS_TABLE, n) for n, _ in EXTRAS_COLUMNS[2:]]

    def select(sources: list[tuple[str, str]], view: str) -> str:
        parts = []
        for (table, col), name in zip(sources, names[view]):
            parts.append(f"{table}.{col}" if name == col else f'{table}.{col} AS "{name.lower()}"')
        return ", ".join(parts)
    v1 = [(se.name, c) for c in se.column_names()] + [(st.name, c) for c in st.column_names()]
    v2 = v1 + [(im.name, c) for c in im.column_names()] + extras
    join = f"FROM {se.name} INNER JOIN {st.name} ON {se.name}.{se.link} = {st.name}.{st.key}"
    return [
        f"CREATE VIEW v_series AS SELECT {select(v1, 'v_series')} {join}",
        f"CREATE VIEW v_seriesRT AS SELECT {select(v2, 'v_seriesRT')} {join} "
        f"INNER JOIN {im.name} ON {im.name}.{im.link} = {se.name}.{se.key} "
        f"LEFT JOIN {EXTRAS_TABLE} ON {EXTRAS_TABLE}.SOPInstanc = {im.name}.{im.key} "
        f"WHERE {se.name}.Modality IN ('RTSTRUCT', 'RTDOSE', 'RTPLAN')",
    ]


def remake_views(conn, schema: Schema) -> None:
    """The two views dropped and made again from ``schema`` (a column was added), inside the
    caller's transaction."""
    conn.execute("DROP VIEW IF EXISTS v_seriesRT, v_series")
    for stmt in _views_ddl(schema):
        conn.execute(stmt)


def pg_ddl(schema: Schema) -> list[str]:
    """Every statement of a new PostgreSQL index, in order."""
    return schema.conquest_ddl() + [_extras_ddl(), _MERGE_SQL] + _views_ddl(schema)


def _tables(conn) -> dict[str, set[str]]:
    """Lower-case table name -> its lower-case column names, in the connection's schema."""
    out: dict[str, set[str]] = {}
    for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema()").fetchall():
        out.setdefault(table.lower(), set()).add(column.lower())
    return out


def ensure_schema(conn, schema: Schema) -> None:
    """Create the tables, RTExtras, the function and the views where they are missing (under
    an advisory lock, in one transaction); a database whose Conquest tables came from another
    dicom.sql is refused."""
    conn.execute("BEGIN")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(?)", (_LOCK_KEY,))
        have = _tables(conn)
        if not any(t.lower() in have for t in schema.tables):
            for stmt in schema.conquest_ddl():
                conn.execute(stmt)
        else:
            for table in schema.tables.values():
                cols = have.get(table.name.lower())
                if cols is None:
                    raise ArchiveError(f"{conn.shown}: the database has no table {table.name} "
                                       "although it has other Conquest tables; it was made "
                                       "from another dicom.sql")
                missing = [c for c in table.column_names() if c.lower() not in cols]
                if missing:
                    raise ArchiveError(f"{conn.shown}: table {table.name.lower()} lacks the "
                                       f"columns {', '.join(missing)} of {schema.source}; if "
                                       "you added them there, run conquest-run rebuild "
                                       f"--refresh --columns {','.join(missing)}; otherwise the "
                                       "database was made from another dicom.sql")
        conn.execute(_extras_ddl())
        extras = have.get(EXTRAS_TABLE.lower(), set())
        added = False
        for name, sql_type in EXTRAS_COLUMNS:
            if extras and name.lower() not in extras:
                conn.execute(f"ALTER TABLE {EXTRAS_TABLE} ADD COLUMN {name} "
                             f"{'bigint' if sql_type == 'int' else sql_type}")
                added = True
        conn.execute(_MERGE_SQL)
        if added or "v_series" not in have or "v_seriesrt" not in have:
            remake_views(conn, schema)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
