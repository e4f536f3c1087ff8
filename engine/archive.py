"""``Archive``: the Python API over a Conquest-style archive (a data folder + its SQLite index).

    from conquest_run import Archive
    arc = Archive("data", "conquest.db")          # dicom.sql: ./dicom.sql if present, else built-in
    arc.rebuild()                                  # pyconquest: rebuild_database_from_dicom()
    arc.store(["incoming/"])                       # pyconquest: store_dicom_files / folder
    arc.query("SELECT SeriesInst FROM DICOMSeries WHERE Modality = ?", ("RTPLAN",), column=0)
    arc.series_summary()

Every method opens its own connection and closes it; ``connect()`` / ``connect_readonly()``
give one to callers that do more.
"""

from __future__ import annotations

__all__ = ["Archive", "SeriesInfo"]

import sqlite3
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import db
from .errors import ArchiveError
from .fileflags import flag_tokens, flags_cell
from .indexer import IndexResult, data_dir_error
from .schema import EXTRAS_TABLE, Schema, load_schema
from .datasetstore import DatasetStore
from .store import StoredFile, StoreResult, resolve_inside, store

_MODALITY, _SERIES_DESC, _SERIES_DATE, _STUDY_DATE = 0x00080060, 0x0008103E, 0x00080021, 0x00080020


@dataclass(frozen=True)
class SeriesInfo:
    patient_id: str | None
    study_uid: str | None
    series_uid: str
    modality: str | None
    description: str | None
    date: str | None
    instances: int
    bytes: int | None          # None when no instance has conquest-run's facts (Conquest-made)
    flags: str | None = None   # the union of the instances' RTExtras.Flags, sorted, '\\'-joined


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return name.lower() in db.table_names(conn)


def _column(schema: Schema, table: str, tag: int) -> str | None:
    for c in schema.tables[table].columns:
        if c.tag == tag:
            return c.name
    return None


class Archive:
    """A data directory, its index (a SQLite file, or a ``postgresql://`` URL kept as the
    string it is) and the dicom.sql layout of that index."""

    def __init__(self, data: str | Path = "data", database: str | Path = "conquest.db",
                 dicom_sql: str | Path | None = None) -> None:
        from .backends import is_postgres_url
        self.data_dir = Path(data)
        self.database: Path | str = database if is_postgres_url(database) else Path(database)
        if dicom_sql is None and Path("dicom.sql").is_file():
            dicom_sql = Path("dicom.sql")
        self.dicom_sql = None if dicom_sql is None else Path(dicom_sql)
        self.schema: Schema = load_schema(self.dicom_sql)

    def __repr__(self) -> str:
        from .backends.postgres import mask_url
        shown = mask_url(self.database) if self.on_postgres else str(self.database)
        return (f"Archive(data={str(self.data_dir)!r}, database={shown!r}, "
                f"dicom_sql={None if self.dicom_sql is None else str(self.dicom_sql)!r})")

    @property
    def on_postgres(self) -> bool:
        """Whether the index is on a PostgreSQL server (``database`` a ``postgresql://`` URL)."""
        return isinstance(self.database, str)

    # -- connections -------------------------------------------------------------------------
    def connect(self) -> sqlite3.Connection:
        """A read-write connection with the schema in place (created if missing)."""
        conn = db.connect(self.database)
        try:
            db.ensure_schema(conn, self.schema)
        except ArchiveError as exc:
            conn.close()
            if exc.file is not None:
                raise
            raise ArchiveError(exc.message, file=str(self.database)) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def recover(self, conn: sqlite3.Connection | None = None,
                notice: Callable[[str], None] | None = None, sweep_temps: bool = False) -> Any:
        """Reconcile what a killed writer left (``recovery.recover``: files renamed into
        data/ but not indexed, stale temporary files; ``sweep_temps``: those anywhere under
        data/); one line to ``notice`` (default: stderr) when something was recovered.  Every
        writing method calls it first."""
        from .recovery import recover, sweep_stale_temps
        if conn is None:
            with closing(self.connect()) as own:
                return self.recover(own, notice, sweep_temps)
        # the intent journal sits beside a SQLite file; none for a PostgreSQL index yet
        result = recover(conn, self.schema, self.data_dir,
                         None if self.on_postgres else self.database)
        if sweep_temps:
            sweep_stale_temps(self.data_dir, result)
        line = result.line()
        if line is not None:
            (notice or _to_stderr)(line)
        return result

    def connect_readonly(self) -> sqlite3.Connection:
        """A connection that cannot write (the database must exist)."""
        return db.connect_readonly(self.database)

    def path_of(self, object_file: str) -> Path:
        """The absolute path of an ObjectFile, refused when it points outside the data dir."""
        return resolve_inside(self.data_dir, *object_file.replace("\\", "/").split("/"))

    # -- indexing ----------------------------------------------------------------------------
    def _require_data(self) -> None:
        if not self.data_dir.is_dir():
            raise data_dir_error(self.data_dir)

    def rebuild(self, patients: Iterable[str] | None = None, mode: str = "all",
                workers: int = 1,
                progress: bool | Callable[[int, int], None] = False,
                sweep_temps: bool = False) -> IndexResult:
        """(Re)index the data directory.  mode: "all" | "missing" | "refresh"; ``patients``
        narrows it to those PatientIDs.  ``progress``: True for a bar on stderr, or a
        callback(done, total).  ``sweep_temps``: also remove the temporary files of dead
        processes anywhere under data/ (``conquest-run rebuild``)."""
        self._require_data()
        from .indexswap import rebuild_atomically
        with closing(self.connect()) as conn:
            self.recover(conn, sweep_temps=sweep_temps)
            self._finish_removals(conn)

            def run(cb: Callable[[int, int], None] | None) -> IndexResult:
                if self.on_postgres:           # no shadow file: the rows in batches
                    from .indexer import Indexer
                    return Indexer(conn, self.schema, self.data_dir).run(
                        mode=mode, patients=patients, workers=workers, progress=cb)
                return rebuild_atomically(conn, self.database, self.schema, self.data_dir,
                                          mode=mode, patients=patients, workers=workers,
                                          progress=cb)
            if progress is True:
                return _with_progress_bar(run)
            return run(progress or None)

    def ensure_indexed(self) -> IndexResult | None:
        """Index the data directory first when the database does not exist yet."""
        if db.index_exists(self.database, self.schema):
            return None
        self._require_data()
        return self.rebuild()

    def store(self, paths: str | Path | Sequence[str | Path], move: bool = False) -> StoreResult:
        """Copy (or move) files / folders into data/<PatientID>/ and index them."""
        if isinstance(paths, (str, Path)):
            paths = [paths]
        self._require_data()
        self.ensure_indexed()
        with closing(self.connect()) as conn:
            self.recover(conn)
            self._finish_removals(conn)
            return store(conn, self.schema, self.data_dir, list(paths), move=move)

    def store_dataset(self, data: Any) -> StoredFile:
        """Store one pydicom Dataset (or Part-10 bytes) and index it."""
        self._require_data()
        with closing(self.connect()) as conn:
            self.recover(conn)
            self._finish_removals(conn)
            with DatasetStore(conn, self.schema, self.data_dir) as ds_store:
                return ds_store.store(data)

    def _finish_removals(self, conn: sqlite3.Connection | None = None) -> None:
        """Settle what an interrupted delete left (``removals.finish_at_start``) before this
        archive is written; one line on stderr when there was something."""
        from .removals import finish_at_start
        finish_at_start(self, conn)

    # -- reading -----------------------------------------------------------------------------
    def query_with_names(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()
                         ) -> tuple[list[str], list[tuple]]:
        """(column names, rows) of one read-only SQL statement with parameters."""
        self.ensure_indexed()
        with closing(self.connect_readonly()) as conn:
            try:
                cur = conn.execute(sql, params)
                rows = cur.fetchall()
            except (sqlite3.Error, sqlite3.Warning) as exc:
                raise ArchiveError(f"query failed: {exc}") from None
            return [d[0] for d in cur.description or ()], rows

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = (),
              column: int | str | None = None) -> list:
        """Run one read-only SQL statement with parameters; rows as tuples, or one column's
        values (by index or name) when ``column`` is given."""
        names, rows = self.query_with_names(sql, params)
        if column is None:
            return rows
        if isinstance(column, str):
            lowered = [n.lower() for n in names]
            if column.lower() not in lowered:
                raise ArchiveError(f"the query has no column {column!r} "
                                   f"(it has {', '.join(names) or 'none'})")
            column = lowered.index(column.lower())
        elif not -len(names) <= column < len(names):
            raise ArchiveError(f"the query has no column {column} (it has {len(names)})")
        return [r[column] for r in rows]

    def series_summary(self, notice: Callable[[str], None] | None = None) -> list[SeriesInfo]:
        """One entry per series: patient, study, series UID, modality, description, date,
        number of instances, bytes on disk (as indexed) and the instances' flags.

        On a database Conquest made (no RTExtras table, or instances without a row there) the
        bytes and flags of those instances are unknown; ``notice`` gets one sentence naming
        the command that fills them (``conquest-run rebuild --only-missing``)."""
        self.ensure_indexed()
        sc = self.schema
        se, st, im = sc.series, sc.studies, sc.images

        def col(table: str, tag: int) -> str:
            name = _column(sc, table, tag)
            return f"{table}.{name}" if name else "NULL"
        date = _column(sc, se.name, _SERIES_DATE)
        date_sql = (f"COALESCE({se.name}.{date}, {col(st.name, _STUDY_DATE)})" if date
                    else col(st.name, _STUDY_DATE))
        with closing(self.connect_readonly()) as conn:
            try:
                have_extras = _has_table(conn, EXTRAS_TABLE)
                ex = EXTRAS_TABLE
                facts = (f"sum({ex}.FileSize), group_concat(DISTINCT {ex}.Flags), "
                         f"count({im.name}.{im.key}) - count({ex}.SOPInstanc) "
                         if have_extras else f"NULL, NULL, count({im.name}.{im.key}) ")
                join = (f"LEFT JOIN {ex} ON {ex}.SOPInstanc = {im.name}.{im.key} "
                        if have_extras else "")
                sql = (f"SELECT {st.name}.{st.link}, {se.name}.{se.link}, {se.name}.{se.key}, "
                       f"{col(se.name, _MODALITY)}, {col(se.name, _SERIES_DESC)}, {date_sql}, "
                       f"count({im.name}.{im.key}), {facts}"
                       f"FROM {se.name} LEFT JOIN {st.name} "
                       f"ON {se.name}.{se.link} = {st.name}.{st.key} "
                       f"LEFT JOIN {im.name} ON {im.name}.{im.link} = {se.name}.{se.key} "
                       f"{join}GROUP BY {se.name}.{se.key} ORDER BY 1, 2, 3")
                rows = conn.execute(sql).fetchall()
            except sqlite3.Error as exc:
                raise ArchiveError(f"cannot read the index: {exc} (is it a Conquest database "
                                   "made from this dicom.sql?)",
                                   file=str(self.database)) from None
        out = []
        lacking = 0
        for *head, instances, size, flags, without in rows:
            lacking += without
            out.append(SeriesInfo(*head, instances, None if instances and size is None
                                  else (size or 0),
                                  flags_cell(t for f in (flags or "").split(",")
                                             for t in flag_tokens(f))))
        if lacking and notice is not None:
            notice(f"{self.database}: {lacking} indexed instances have no conquest-run facts "
                   f"(sizes, hashes, flags; a database Conquest made); their bytes and flags "
                   f"show blank. Run 'conquest-run rebuild --only-missing' to fill them from "
                   f"the files (Conquest's own rows are not rewritten)")
        return out

    # -- actions on selections (delete / copy / dump / send / listen) --------------------------
    # Thin wrappers over the action and network modules (imported when used); add new ones here.

    def copy_series(self, series_uids: Sequence[str], destination: str | Path,
                    **options: Any) -> Any:
        """Copy the series' files to ``destination`` (see ``actions.copy.copy_series``)."""
        from .actions.copy import copy_series
        return copy_series(self, list(series_uids), destination, **options)

    def dump_csv(self, out: str | Path, query: str | None = None, **options: Any) -> Any:
        """Write a query's rows or a table to CSV (see ``actions.dump.dump_csv``)."""
        from .actions.dump import dump_csv
        return dump_csv(self, out, query, **options)

    def delete_series(self, series_uids: Sequence[str], files: bool = False,
                      **options: Any) -> Any:
        """Delete series from the index, cascading; their files with ``files``
        (see ``actions.delete.delete_series``)."""
        from .actions.delete import delete_series
        return delete_series(self, list(series_uids), files=files, **options)

    def send(self, series_uids: Sequence[str], host: str, port: int, called_ae: str,
             **options: Any) -> Any:
        """C-STORE the series to ``called_ae@host:port``, audited and resumable: what the peer
        confirmed before is skipped unless ``force=True`` (see ``actions.send.send_series``).
        An empty list sends nothing."""
        from .actions.send import send_series
        return send_series(self, [str(u) for u in series_uids], host, port, called_ae,
                           **options)

    def find(self, node: dict[str, Any], *, timeout: float = 30.0, **keys: Any) -> list[Any]:
        """C-FIND a node (``{host, port, called_ae, calling_ae}``; study root, study then
        series level) with ``patient``, ``study``, ``series``, ``modality``, ``study_date``;
        a list of ``net.qrscu.RemoteSeries`` (with the node's instance counts)."""
        from .actions.retrieve import remote_selection
        from .net.qrscu import find_series
        from .remoteplan import node_of, remote_node
        from .studydate import parse_study_date
        sel = remote_selection(node, keys)
        dates = parse_study_date(sel.study_date) if sel.study_date is not None else None
        return find_series(remote_node(node_of({sel.remote: node}, sel.remote), timeout),
                           patient=sel.patient, study=sel.study, series=sel.series,
                           modality=sel.modality, study_date=sel.study_date,
                           date_matches=dates.matches if dates else (lambda d: True))

    def retrieve(self, node: dict[str, Any], *, method: str = "move", port: int | None = None,
                 **options: Any) -> Any:
        """C-FIND ``node`` with the keys of :meth:`find`, then C-MOVE (to our calling AE,
        listening on ``port``) or C-GET the series into this archive, audited and resumable
        (see ``actions.retrieve.retrieve_series``)."""
        from .actions.retrieve import retrieve_series
        return retrieve_series(self, node, method=method, port=port, **options)

    # -- extra columns (extracolumns.py) -----------------------------------------------------------
    def add_column(self, level: str, tag: Any, name: str, *,
                   dicom_sql: str | Path | None = None) -> dict[str, Any]:
        """Add a column for ``tag`` (keyword, "(gggg,eeee)" or int) to ``level`` (Patient,
        Study, Series, Image): written into the archive's dicom.sql (or ``dicom_sql``, created
        from the current layout if missing), added to an existing database with ALTER TABLE and
        filled by reading that tag only.  The column is the first 10 characters of ``name``."""
        from .extracolumns import add_entry, extend_database
        from .schema import default_dicom_sql_path
        target = Path(dicom_sql) if dicom_sql is not None else self.dicom_sql
        if target is None:
            raise ArchiveError("this archive uses the built-in layout; pass dicom_sql='dicom.sql' "
                               "to write a copy of it with the new column")
        source = target if target.is_file() else (self.dicom_sql or default_dicom_sql_path())
        add_entry(target, source.read_text(encoding="latin-1"), self.schema, level, tag, name)
        self.dicom_sql, self.schema = target, load_schema(target)
        if not db.index_exists(self.database):
            return {"columns": [name[:10]], "rows_updated": 0}
        return extend_database(self, [name[:10]])

    # -- own data beside the archive (usertables.py) ---------------------------------------------
    def insert_rows(self, table: str, rows: Iterable[dict[str, Any]]) -> int:
        """Append dicts to the user table ``table`` (created on the first insert, later keys
        added as columns; Conquest's and conquest-run's tables refused); rows appended."""
        from .usertables import check_target, insert_rows
        check_target(table, self.schema)
        rows = list(rows)             # a bad row (or CSV line) stops it before the database
        if not rows:
            return 0
        with closing(self.connect()) as conn:
            return insert_rows(conn, table, rows, self.schema)

    def image_statistics(self, select: dict[str, Any] | None = None, table: str | None = None,
                         with_problems: bool = False) -> Any:
        """Pixel statistics per selected series (``imagestats.py``; select as in a job, all
        series by default); appended to the user table ``table`` when given.  The rows, or
        (rows, undecodable instances) with ``with_problems``."""
        from .imagestats import series_statistics
        from .usertables import check_target
        if table is not None:
            check_target(table, self.schema)
        rows, problems = series_statistics(self, select)
        if table is not None:
            self.insert_rows(table, rows)
        return (rows, problems) if with_problems else rows

    def query_schema(self) -> Any:
        """The schema job SQL is checked against: the layout plus the user tables."""
        from .sqlcheck import schema_of
        return schema_of(self)

    def listen(self, port: int, **options: Any) -> Any:
        """Start a C-STORE/C-ECHO receiver into this archive (see ``receiver.listen``)."""
        from .net.receiver import listen
        self._finish_removals()
        return listen(self.data_dir, port, database=self.database, dicom_sql=self.dicom_sql,
                      **options)


def _to_stderr(line: str) -> None:
    print(f"conquest-run: {line}", file=sys.stderr, flush=True)


def _with_progress_bar(run: Callable[[Callable[[int, int], None]], IndexResult]) -> IndexResult:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn)
    from rich.console import Console

    with Progress(TextColumn("indexing"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=Console(file=sys.stderr),
                  transient=True) as bar:
        task = bar.add_task("index", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
        return run(update)
