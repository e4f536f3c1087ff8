"""PostgreSQL connections to an archive index, behind the small part of ``sqlite3``'s
connection API the indexer, the writer and ``store`` use (``execute`` with ``?`` parameters,
``executemany``, ``in_transaction``, explicit ``BEGIN`` / ``SAVEPOINT``).

Every way a connection can fail is said as one sentence naming the URL with any password
masked (``ArchiveError``, exit 2): an unparsable URL, a server that cannot be reached, a refused
login, a database that does not exist.

A connection lost midway (the server restarted, the network dropped, the backend was
terminated) is made again, in one place (``PgConnection.retrying``): after a notice naming the
masked URL and a pause (``RETRY_DELAYS_S``, growing), the lost unit of work is done again from
its start: one statement outside a transaction, or the whole transaction the caller passed in
(the server rolled back what it had of it, so nothing is lost and nothing is written twice).
When the server stays away through every pause: one sentence, exit 2.  Passwords come from ``PGPASSWORD`` or ``~/.pgpass``
(libpq reads both), never from the URL.
"""

from __future__ import annotations

__all__ = ["PgConnection", "connect", "mask_url", "parse_url", "PgUrlError", "PgConnectionLost",
           "RETRY_DELAYS_S", "fold_quoted_names"]

import re
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import ArchiveError

CONNECT_TIMEOUT_S = 5
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0)    # pauses before each new connection attempt
_T = TypeVar("_T")
_NOT_RETRIED = ("BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE")


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


class PgConnectionLost(ArchiveError):
    """The server stayed unreachable through every retry (exit 2)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(exc).__name__


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

    def __init__(self, raw: Any, url: str, connect_args: dict[str, Any] | None = None,
                 retry_delays: tuple[float, ...] = RETRY_DELAYS_S) -> None:
        self.raw = raw
        self.url = url
        self.shown = mask_url(url)
        self.connect_args = dict(connect_args or {})
        self.retry_delays = tuple(retry_delays)
        self.notices: list[str] = []      # truncations and the like, said by the command
        self.report: Callable[[str], None] = self._say      # a reconnect, said at once
        self.reconnects = 0
        from .pgwriter import PgWriter
        self.writer_class = PgWriter       # Indexer writes through it (see indexer._writer)

    @staticmethod
    def _say(line: str) -> None:
        print(f"note: {line}", file=sys.stderr, flush=True)

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
        text = self._sql(sql, params)
        if self.in_transaction or self.lost or head.startswith(_NOT_RETRIED):
            return self.raw.execute(text, params)  # the owner of the transaction retries
        return self.retrying(lambda: self.raw.execute(text, params))

    def executemany(self, sql: str, rows: list) -> Any:
        cur = self.raw.cursor()
        if rows:
            cur.executemany(self._sql(sql, ()), [list(r) for r in rows])
        return cur

    @property
    def in_transaction(self) -> bool:
        """A transaction is open (not when the connection is lost: its transaction is gone)."""
        import psycopg.pq
        status = psycopg.pq.TransactionStatus
        return self.raw.info.transaction_status in (status.ACTIVE, status.INTRANS,
                                                     status.INERROR)

    @property
    def lost(self) -> bool:
        """The connection is closed or broken (the server or the network went away)."""
        return bool(self.raw.closed or getattr(self.raw, "broken", False))

    def reconnect(self) -> None:
        """A new connection to the same server with the same settings, in place of the old."""
        import psycopg
        try:
            self.raw.close()
        except psycopg.Error:
            pass
        self.raw = psycopg.connect(self.url, **self.connect_args)
        self.reconnects += 1

    def retrying(self, work: Callable[[], _T]) -> _T:
        """``work()``; when it fails because the connection was lost, a new connection after a
        pause and ``work()`` again from its start, as long as ``retry_delays`` lasts.  ``work``
        is a whole transaction (it begins and commits it) or one statement outside one.  Called
        inside an open transaction, ``work()`` runs as it is: its owner retries."""
        import psycopg
        if self.in_transaction:
            return work()
        delays = list(self.retry_delays)
        attempt = 0
        while True:
            try:
                return work()
            except psycopg.OperationalError as exc:
                if not self.lost:
                    raise
                why = _first_line(exc)
            while True:         # a new connection, or the sentence when none can be had
                if attempt >= len(delays):
                    raise PgConnectionLost(
                        f"the connection to the PostgreSQL server of {self.shown} was lost "
                        f"and could not be made again in {len(delays)} attempts over "
                        f"{sum(delays):g} s ({why}); the transaction in progress was not "
                        "written: run the command again when the server is back") from None
                delay = delays[attempt]
                attempt += 1
                self.report(f"the connection to {self.shown} was lost ({why}); reconnecting "
                            f"in {delay:g} s (attempt {attempt} of {len(delays)})")
                time.sleep(delay)
                try:
                    self.reconnect()
                    break
                except psycopg.Error as exc:
                    why = _first_line(exc)

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> "PgConnection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(url: str, *, read_only: bool = False, statement_timeout_ms: int | None = None,
            retry_delays: tuple[float, ...] | None = None) -> PgConnection:
    """A connection to the server ``url`` names (autocommit; ``read_only``: every transaction
    READ ONLY; ``retry_delays``: the pauses before each new attempt when it is lost,
    ``RETRY_DELAYS_S`` unless given), or a ``PgUrlError`` sentence."""
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
    return PgConnection(raw, url, extra,
                        RETRY_DELAYS_S if retry_delays is None else retry_delays)
