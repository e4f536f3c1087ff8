"""SQLite connections to an archive index.

Writers get WAL mode and a busy timeout, so a job can read while the receiver writes; readers get
a ``mode=ro`` URI connection that cannot change the file (and creates no -wal/-shm of its own
when the database is not in WAL mode yet).
"""

from __future__ import annotations

__all__ = ["connect", "connect_readonly", "connect_reader", "ensure_schema", "has_schema",
           "is_postgres", "table_names", "column_names", "READER_STATEMENT_TIMEOUT_MS",
           "index_exists", "index_label", "index_absolute", "committing", "stream_rows",
           "stream_query", "store_batch_guard",
           "write_refused", "read_only_medium", "READ_ONLY_REFUSAL", "is_disk_full", "disk_full_message", "BUSY_TIMEOUT_MS",
           "MAX_VALUE_BYTES"]

import errno
import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from .errors import ArchiveError
from .schema import EXTRAS_COLUMNS, EXTRAS_TABLE, Schema

BUSY_TIMEOUT_MS = 30_000
# the largest string or blob a reader connection may produce: every indexed value is far
# smaller, and a query that pads or repeats text (printf, replace) fails at once past it
MAX_VALUE_BYTES = 4_000_000


def _cap_values(conn: sqlite3.Connection) -> None:
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)


# the longest a statement of a PostgreSQL reader connection may run (plans, dumps, dry runs)
READER_STATEMENT_TIMEOUT_MS = 600_000


def _not_a_file(path: Path) -> None:
    if str(path).lower().startswith(("postgresql:/", "postgres:/")):
        # a URL that lost its '//' to Path(): a caller must keep the database as a string
        raise ArchiveError("a PostgreSQL URL reached a place that needs a SQLite index file")
    if path.is_dir():
        raise ArchiveError("the database is a folder, not a file", file=str(path))


def _postgres(database: object, **options):
    """A ``backends.postgres.PgConnection`` when ``database`` is a ``postgresql://`` URL."""
    from .backends import is_postgres_url
    if not is_postgres_url(database):
        return None
    from .backends.postgres import connect as pg_connect
    return pg_connect(str(database), **options)


def is_postgres(conn: object) -> bool:
    """Whether ``conn`` is a connection to a PostgreSQL index (else SQLite)."""
    return getattr(conn, "backend", "sqlite") == "postgresql"


def table_names(conn, *, views: bool = False) -> dict[str, str]:
    """Lower-case name -> name as stored, of the tables (and ``views``) of the index."""
    if is_postgres(conn):
        kinds = "('BASE TABLE', 'VIEW')" if views else "('BASE TABLE')"
        rows = conn.execute("SELECT table_name FROM information_schema.tables WHERE "
                            f"table_schema = current_schema() AND table_type IN {kinds}")
    else:
        kinds = "('table', 'view')" if views else "('table')"
        rows = conn.execute(f"SELECT name FROM sqlite_master WHERE type IN {kinds}")
    return {r[0].lower(): r[0] for r in rows.fetchall()}


def column_names(conn, table: str) -> list[str]:
    """The columns of ``table`` in order, as stored (lower case on PostgreSQL); [] when there
    is no such table."""
    if is_postgres(conn):
        return [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = ? ORDER BY ordinal_position",
            (table.lower(),)).fetchall()]
    return [r[1] for r in conn.execute(
        'PRAGMA table_info("' + table.replace('"', '""') + '")').fetchall()]


def index_label(database: str | Path) -> str:
    """The index as the user reads it: the path, or the URL with any password masked."""
    from .backends import is_postgres_url
    if is_postgres_url(database):
        from .backends.postgres import mask_url
        return mask_url(str(database))
    return str(database)


def index_absolute(database: str | Path) -> str:
    """The index as a plan records it: an absolute path, or the URL as given."""
    from .backends import is_postgres_url
    return str(database) if is_postgres_url(database) else os.path.abspath(database)


def index_exists(database: str | Path, schema: Schema | None = None) -> bool:
    """Whether the index is there: a SQLite file, or a PostgreSQL database that holds
    Conquest's tables (``schema``'s, else DICOMImages); a server that cannot be reached is
    the ``ArchiveError`` of its connection."""
    from .backends import is_postgres_url
    if not is_postgres_url(database):
        return Path(database).is_file()
    wanted = [t.lower() for t in schema.tables] if schema is not None else ["dicomimages"]
    conn = connect_reader(database)
    try:
        names = table_names(conn, views=False)
    finally:
        conn.close()
    return any(t in names for t in wanted)


def stream_rows(conn, sql: str, params=(), *, itersize: int = 2000):
    """The rows of ``sql`` as they come, without holding them all (see ``stream_query``)."""
    return stream_query(conn, sql, params, itersize=itersize)[1]


def stream_query(conn, sql: str, params=(), *, itersize: int = 2000):
    """(column names, the rows as they come): SQLite's cursor already streams; on PostgreSQL
    a server-side (named) cursor inside a transaction (READ ONLY on a reader's session; a
    savepoint within one already open), so a big index is never fetched whole."""
    if not is_postgres(conn):
        cur = conn.execute(sql, params)
        return [d[0] for d in cur.description or ()], iter(cur)
    rows = _pg_stream(conn, sql, params, itersize)
    return next(rows), rows


def _pg_stream(conn, sql: str, params, itersize: int):
    """First the column names, then the rows, of a named cursor; closed with the iterator."""
    import uuid
    raw = conn.raw
    with raw.transaction():
        with raw.cursor(name=f"crun_{uuid.uuid4().hex[:16]}") as cur:
            cur.itersize = itersize
            cur.execute(conn._sql(sql, params), list(params) if params else None)
            yield [d[0] for d in cur.description or ()]
            yield from cur


def store_batch_guard(conn):
    """Around one store batch's renames into data/ and its commit: nothing on SQLite (the
    intent journal and ``BEGIN IMMEDIATE`` do it), a shared advisory lock on PostgreSQL that a
    delete's row transaction waits for (``backends.pglocks.store_batch``)."""
    if is_postgres(conn):
        from .backends.pglocks import store_batch
        return store_batch(conn)
    from contextlib import nullcontext
    return nullcontext()


class committing:
    """``with committing(conn):`` the statements inside in one transaction, committed at the
    end (rolled back on an error): ``with conn:`` of sqlite3 on either backend (a
    ``PgConnection``'s own ``with`` closes it).  Inside an open transaction, it adds none."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.own = False

    def __enter__(self):
        if not is_postgres(self.conn):
            return self.conn.__enter__()
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN")
            self.own = True
        return self.conn

    def __exit__(self, kind, exc, tb) -> None:
        if not is_postgres(self.conn):
            self.conn.__exit__(kind, exc, tb)
            return
        if not self.own:
            return
        if kind is None:
            self.conn.execute("COMMIT")
        else:
            rollback_quietly(self.conn)


def connect(path: str | Path) -> sqlite3.Connection:
    """A read-write connection in WAL mode (the file is created if missing); a
    ``postgresql://`` URL gives a ``PgConnection`` to that server."""
    pg = _postgres(path)
    if pg is not None:
        return pg
    path = Path(path)
    _not_a_file(path)
    if path.parent and not path.parent.exists():
        raise ArchiveError(f"the folder for the database does not exist: {path.parent}",
                           file=str(path))
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000,
                               isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")     # a commit is on disk when it returns
    except sqlite3.OperationalError as exc:
        if path.is_file() and read_only_medium(path):
            raise ArchiveError(READ_ONLY_REFUSAL, file=str(path)) from None
        raise ArchiveError(write_refused(exc), file=str(path)) from None
    except sqlite3.DatabaseError as exc:
        raise ArchiveError(f"not a usable SQLite database: {exc}", file=str(path)) from None
    return conn


def read_only_medium(path: Path) -> bool:
    """True when we cannot write the database there: a read-only file system, or no write
    permission on the file or its folder (SQLite then cannot make the ``-shm`` of WAL mode)."""
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return True
    except (OSError, AttributeError):
        pass
    return not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK)


def _open_ro(path: Path, immutable: bool) -> sqlite3.Connection:
    uri = "file:" + quote(str(path.resolve())) + "?mode=ro" + ("&immutable=1" if immutable else "")
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                           isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA query_only = 1")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        _cap_values(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def connect_readonly(path: str | Path) -> sqlite3.Connection:
    """A connection that cannot write (SQLite ``mode=ro``).

    On read-only media (a read-only mount, or a file and folder we may not write) a WAL-mode
    database cannot be opened that way, as SQLite cannot make its ``-shm``; it is then opened
    ``immutable=1``, as ``sqlite3 -readonly`` manages, since nobody can be writing it there.  A
    ``-wal`` left beside it with content (an unclean close) is refused: immutable would not see
    the transactions in it.  A ``postgresql://`` URL gives a session whose transactions are
    all READ ONLY."""
    pg = _postgres(path, read_only=True, statement_timeout_ms=READER_STATEMENT_TIMEOUT_MS)
    if pg is not None:
        return pg
    path = Path(path)
    _not_a_file(path)
    if not path.is_file():
        raise ArchiveError("database not found", file=str(path))
    try:
        return _open_ro(path, immutable=False)
    except sqlite3.OperationalError as exc:
        if not read_only_medium(path):
            raise ArchiveError(f"not a usable SQLite database: {exc}", file=str(path)) from None
    except sqlite3.DatabaseError as exc:
        raise ArchiveError(f"not a usable SQLite database: {exc}", file=str(path)) from None
    wal = Path(f"{path}-wal")
    if wal.is_file() and wal.stat().st_size > 0:
        raise ArchiveError("the database is on read-only media with a write-ahead log beside it "
                           f"({wal.name}) that SQLite cannot read there; copy both files to "
                           "writable storage and open the copy", file=str(path))
    try:
        return _open_ro(path, immutable=True)
    except sqlite3.DatabaseError as exc:
        raise ArchiveError(f"not a usable SQLite database: {exc}", file=str(path)) from None


def connect_reader(path: str | Path) -> sqlite3.Connection:
    """A connection that cannot write (``PRAGMA query_only``) and that leaves no trace.

    ``connect_readonly`` (``mode=ro``) cannot remove the ``-wal``/``-shm`` files it makes beside
    a WAL database when it closes, so a dry run would leave two new files.  This opens the
    existing file without ``mode=ro`` but with ``query_only``; as the last connection closes,
    SQLite removes those files as usual.  Dry runs, planning and the actions read through it; a
    read-only file falls back to ``mode=ro``.  Arbitrary user SQL (``conquest-run query``) goes
    through ``connect_readonly``, which no statement can turn writable.  A ``postgresql://``
    URL gives a READ ONLY session, as ``connect_readonly``.
    """
    pg = _postgres(path, read_only=True, statement_timeout_ms=READER_STATEMENT_TIMEOUT_MS)
    if pg is not None:
        return pg
    path = Path(path)
    _not_a_file(path)
    if not path.is_file():
        raise ArchiveError("database not found", file=str(path))
    if read_only_medium(path):
        return connect_readonly(path)
    uri = "file:" + quote(str(path.resolve())) + "?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                               isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA query_only = 1")
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        _cap_values(conn)
    except sqlite3.DatabaseError as exc:
        raise ArchiveError(f"not a usable SQLite database: {exc}", file=str(path)) from None
    return conn


READ_ONLY_REFUSAL = ("the archive is on read-only media (a read-only file system, or no write "
                     "permission on the database or its folder): this command writes to it and "
                     "is refused; summary, query and --dry-run work")


def is_disk_full(exc: BaseException) -> bool:
    """SQLite's SQLITE_FULL ("database or disk is full") or the system's ENOSPC / EDQUOT."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return (code is not None and code & 0xFF == sqlite3.SQLITE_FULL) or \
            "disk is full" in str(exc)
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return False


def disk_full_message(exc: BaseException) -> str:
    """A full disk as the user should read it (SQLite's or the system's own words kept)."""
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
    return f"the disk is full: {detail}{where}"


def write_refused(exc: sqlite3.OperationalError) -> str:
    """Why SQLite would not let us write, as a sentence."""
    if is_disk_full(exc):
        return disk_full_message(exc)
    if "locked" in str(exc) or "busy" in str(exc):
        return (f"the database is locked: another process holds a write transaction "
                f"(waited {BUSY_TIMEOUT_MS // 1000} s); try again when it has finished")
    return f"cannot write to the database: {exc}"


def has_schema(conn: sqlite3.Connection, schema: Schema) -> bool:
    names = table_names(conn, views=True)
    return all(t.lower() in names for t in schema.tables)


def _add_missing_extras_columns(conn: sqlite3.Connection) -> bool:
    """Add the RTExtras columns an older conquest-run did not have (e.g. Flags); True if any."""
    have = {r[1].lower() for r in conn.execute(f'PRAGMA table_info("{EXTRAS_TABLE}")')}
    added = False
    for name, sql_type in EXTRAS_COLUMNS:
        if name.lower() not in have:
            conn.execute(f"ALTER TABLE {EXTRAS_TABLE} ADD COLUMN {name} {sql_type}")
            added = True
    return added


def ensure_schema(conn: sqlite3.Connection, schema: Schema) -> None:
    """Create Conquest's tables, the extras table and the views where they are missing.

    Existing Conquest tables are checked against the layout: a database made from another
    dicom.sql is refused with a clear message instead of being written into.
    """
    if is_postgres(conn):
        from .backends.pgschema import ensure_schema as pg_ensure_schema
        pg_ensure_schema(conn, schema)
        return
    existing = {r[0].lower(): r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise ArchiveError(write_refused(exc)) from None
    try:
        if not any(t.lower() in existing for t in schema.tables):
            for stmt in schema.conquest_ddl():
                conn.execute(stmt)
        else:
            for table in schema.tables.values():
                if table.name.lower() not in existing:
                    raise ArchiveError(f"the database has no table {table.name} although it has "
                                       f"other Conquest tables; it was made from another dicom.sql")
                have = [r[1] for r in conn.execute(f'PRAGMA table_info("{table.name}")')]
                want = table.column_names()
                missing = [c for c in want if c.lower() not in {h.lower() for h in have}]
                if missing:
                    raise ArchiveError(
                        f"table {table.name} lacks the columns {', '.join(missing)} of "
                        f"{schema.source}; if you added them there, run conquest-run rebuild "
                        f"--refresh --columns {','.join(missing)}; otherwise the database was "
                        f"made from another dicom.sql (rebuild it into a new database file)")
        for stmt in schema.extras_ddl():
            conn.execute(stmt)
        if _add_missing_extras_columns(conn):
            # the views list the extras columns: made again to show the new ones
            conn.execute("DROP VIEW IF EXISTS v_seriesRT")
        for stmt in schema.views_ddl():
            conn.execute(stmt)
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)          # never hides the error (a full disk) behind its own
        raise

def rollback_quietly(conn: sqlite3.Connection, savepoint: str | None = None) -> None:
    """Undo the open transaction (or savepoint) after an error, if SQLite has not already done
    so itself (it does on a full disk): a failing ROLLBACK must never hide the error that
    caused it ("cannot rollback - no transaction is active" instead of "database or disk is
    full")."""
    if not conn.in_transaction:
        return
    try:
        if savepoint:
            conn.execute(f"ROLLBACK TO {savepoint}")
            conn.execute(f"RELEASE {savepoint}")
        else:
            conn.execute("ROLLBACK")
    except Exception:         # sqlite3.Error or psycopg.Error: the first error is the one told
        pass
