"""PostgreSQL connections to an archive index, behind the small part of ``sqlite3``'s
connection API the indexer, the writer and ``store`` use (``execute`` with ``?`` parameters,
``executemany``, ``in_transaction``, explicit ``BEGIN`` / ``SAVEPOINT``).

Every way a connection can fail is said as one sentence naming the URL with any password
masked (``ArchiveError``, exit 2): an unparsable URL, a server that cannot be reached, a refused
login, a database that does not exist.  Passwords come from ``PGPASSWORD`` or ``~/.pgpass``
(libpq reads both), never from the URL.
"""

from __future__ import annotations

__all__ = ["PgConnection", "connect", "mask_url", "parse_url", "PgUrlError",
           "fold_quoted_names"]

import re
from typing import Any

from ..errors import ArchiveError

CONNECT_TIMEOUT_S = 5


class PgUrlError(ArchiveError):
    """A ``--database`` URL that cannot be used (exit 2)."""


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (``user:secret@`` and ``password=``)."""
    masked = re.sub(r"^([a-zA-Z]+://[^:/@?#]*):[^@/?#]*@", r"\1:***@", url)
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", masked)


def parse_url(url: str) -> dict[str, str]:
    """libpq's keywords of ``url``; refused (``PgUrlError``) when it cannot be parsed, names
    no database, has a port that is not a number, or carries a password."""
    try:
        import psycopg.conninfo
    except ImportError:
        raise PgUrlError(f"{mask_url(url)}: PostgreSQL needs psycopg: "
                         "pip install 'conquest-run[postgres]'") from None
    shown = mask_url(url)
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        why = " ".join(str(exc).replace(url, shown).split())
        raise PgUrlError(f"the database URL {shown} cannot be parsed ({why}); expected "
                         "postgresql://USER@HOST:PORT/DBNAME") from None
    if params.get("password"):
        raise PgUrlError(f"the database URL {shown} carries a password; give it in PGPASSWORD "
                         "or ~/.pgpass instead")
    port = str(params.get("port", ""))
    if port and not all(p.isdigit() for p in port.split(",")):
        raise PgUrlError(f"the database URL {shown} cannot be parsed (port {port!r} is not a "
                         "number); expected postgresql://USER@HOST:PORT/DBNAME")
    if not params.get("dbname"):
        raise PgUrlError(f"the database URL {shown} names no database; expected "
                         "postgresql://USER@HOST:PORT/DBNAME")
    return params


def _connect_refused(url: str, params: dict[str, str], exc: Exception) -> PgUrlError:
    """The sentence for a failed connection, from the server's SQLSTATE or libpq's words."""
    shown = mask_url(url)
    text = " ".join(str(exc).split()).removeprefix("connection failed: ") or type(exc).__name__
    state = getattr(exc, "sqlstate", None) or ""
    lowered = str(exc).lower()
    if state == "3D000" or ("database" in lowered and "does not exist" in lowered):
        return PgUrlError(f"the database {params.get('dbname')!r} does not exist on the server "
                          f"of {shown} (create it first, e.g. createdb)")
    if state.startswith("28") or any(w in lowered for w in (
            "password authentication failed", "authentication failed", "no password supplied",
            "pg_hba.conf", "role \"")):
        return PgUrlError(f"the server of {shown} refused the login: {text} (the password "
                          "comes from PGPASSWORD or ~/.pgpass)")
    return PgUrlError(f"the PostgreSQL server of {shown} cannot be reached: {text}")


_TOKENS = re.compile(r"'(?:[^']|'')*'|(?i:collate)\s+\"[^\"]*\"|\"(?:[^\"]|\"\")*\"")


def fold_quoted_names(sql: str) -> str:
    """``"RTExtras"`` -> ``"rtextras"``: the shared code quotes its identifiers as written in
    dicom.sql, while dgate's tables on PostgreSQL are unquoted, so lower case.  String literals
    and collation names (``COLLATE "C"``) are left as they are."""
    if '"' not in sql:
        return sql
    return _TOKENS.sub(lambda m: m.group(0).lower() if m.group(0)[0] == '"' else m.group(0),
                       sql)


class _NoRows:
    """The result of a statement that has no meaning on PostgreSQL (``PRAGMA``)."""

    rowcount = 0

    def fetchall(self) -> list:
        return []

    def fetchone(self) -> None:
        return None

    def __iter__(self):
        return iter(())


class PgConnection:
    """A psycopg connection in autocommit mode that takes the SQLite-style statements of the
    shared indexing code: ``?`` parameters, ``BEGIN IMMEDIATE``, ``PRAGMA`` (ignored)."""

    backend = "postgresql"

    def __init__(self, raw: Any, url: str) -> None:
        self.raw = raw
        self.url = url
        self.shown = mask_url(url)
        self.notices: list[str] = []      # truncations and the like, said by the command
        from .pgwriter import PgWriter
        self.writer_class = PgWriter       # Indexer writes through it (see indexer._writer)

    @staticmethod
    def _sql(sql: str, params: Any) -> str:
        sql = fold_quoted_names(sql)
        if params is None:
            return sql
        return sql.replace("%", "%%").replace("?", "%s")

    def execute(self, sql: str, params: Any = None) -> Any:
        head = sql.lstrip()[:16].upper()
        if head.startswith("PRAGMA"):
            return _NoRows()                  # SQLite tuning and file lookups: none here
        if head.startswith("BEGIN IMMEDIATE"):
            sql = "BEGIN"
        params = None if params is None else list(params)
        return self.raw.execute(self._sql(sql, params), params)

    def executemany(self, sql: str, rows: list) -> Any:
        cur = self.raw.cursor()
        if rows:
            cur.executemany(self._sql(sql, ()), [list(r) for r in rows])
        return cur

    @property
    def in_transaction(self) -> bool:
        import psycopg.pq
        return self.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> "PgConnection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(url: str, *, read_only: bool = False, statement_timeout_ms: int | None = None
            ) -> PgConnection:
    """A connection to the server ``url`` names (autocommit; ``read_only``: every transaction
    READ ONLY), or a ``PgUrlError`` sentence."""
    params = parse_url(url)
    import psycopg
    options = []
    if read_only:
        options.append("-c default_transaction_read_only=on")
    if statement_timeout_ms:
        options.append(f"-c statement_timeout={int(statement_timeout_ms)}")
    extra: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S, "autocommit": True,
                             "application_name": "conquest-run"}
    if options:
        extra["options"] = " ".join(options)
    try:
        raw = psycopg.connect(url, **extra)
    except psycopg.Error as exc:
        raise _connect_refused(url, params, exc) from None
    return PgConnection(raw, url)
