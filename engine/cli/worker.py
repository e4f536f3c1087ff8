"""``conquest-run worker --database postgresql://... --data DIR``: drain the send queue of a
PostgreSQL index (``net/sendqueue``), on any host that sees the same data directory.

    conquest-run worker --database URL [--data data] [--run RUNID] [--batch 10] [--lease 30]
                        [--attempts 3] [--idle-exit S]

Ends when no row is queued or leased any more (with ``--idle-exit S``: keeps polling, ends
after S seconds with nothing to lease).  SIGTERM / SIGINT: the instance in flight is finished
and confirmed, the other leases are given back, exit 143 / 130.  Exit 0 when everything this
worker settled was sent, 1 when some instance failed, 2 for a bad argument or database.
"""

from __future__ import annotations

__all__ = ["register", "run"]

import argparse
import signal
import sys
import threading
from pathlib import Path

from ..errors import ArchiveError
from .network import _bounded

_EXIT_BY_SIGNAL = {signal.SIGTERM: 143, signal.SIGINT: 130}


def register(name: str, parser: argparse.ArgumentParser) -> None:
    parser.description = ("Send the queued instances of a PostgreSQL index's send queue "
                          "(conquestrunsendqueue) to their destinations; any number of workers "
                          "on any hosts share the work through leases.")
    parser.add_argument("--database", required=True, metavar="POSTGRESQL_URL",
                        help="the PostgreSQL index holding the queue")
    parser.add_argument("--data", default="data",
                        help="the archive's data directory, as this host sees it (default: "
                             "data)")
    parser.add_argument("--run", default=None, metavar="RUNID",
                        help="only this run's instances (default: every run's)")
    parser.add_argument("--batch", type=_bounded(int, 1, 10000, "a whole number"), default=10,
                        metavar="N", help="instances leased and sent per association "
                                          "(default 10)")
    parser.add_argument("--lease", type=_bounded(float, 1, 86400, "a number of seconds"),
                        default=30.0, metavar="S",
                        help="seconds a lease lasts unless renewed; another worker takes the "
                             "instances of a worker that died after that (default 30)")
    parser.add_argument("--attempts", type=_bounded(int, 1, 100, "a whole number"), default=3,
                        metavar="N", help="tries per instance when the peer cannot be reached "
                                          "or a worker died sending it (default 3)")
    parser.add_argument("--idle-exit", type=_bounded(float, 0, 86400, "a number of seconds"),
                        default=None, metavar="S",
                        help="keep polling for new work; end after S seconds with none")


def _check_database(database: str) -> str:
    from ..backends import is_postgres_url
    from ..backends.postgres import mask_url, parse_url
    if not is_postgres_url(database):
        raise ArchiveError(f"conquest-run worker needs a PostgreSQL index (--database "
                           f"postgresql://USER@HOST:PORT/DBNAME), not {mask_url(database)!r}: "
                           "a SQLite index has no send queue; its job sends by itself")
    parse_url(database)
    return database


def run(name: str, args: argparse.Namespace) -> int:
    url = _check_database(args.database)
    data = Path(args.data)
    if not data.is_dir():
        raise ArchiveError(f"the data directory {data} does not exist (give the archive's data "
                           "folder as this host sees it with --data)")
    import psycopg

    from ..backends.postgres import connect, mask_url
    from ..net.sendqueue import drain

    stop = threading.Event()
    caught: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        caught.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in _EXIT_BY_SIGNAL}
    try:
        result = drain(lambda: connect(url), data, args.run, batch=args.batch,
                       lease_seconds=args.lease, idle_exit=args.idle_exit,
                       max_attempts=args.attempts, stop=stop,
                       log=lambda line: print(f"note: {line}", file=sys.stderr, flush=True))
    except psycopg.Error as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ArchiveError(f"the send queue in {mask_url(url)} cannot be used: {detail} (the "
                           "leases this worker held expire on their own)") from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(result.line(), flush=True)
    if caught:
        return _EXIT_BY_SIGNAL.get(caught[0], 1)
    return 1 if result.failed else 0
