"""``conquest-run serve`` (a storage SCP into the archive) and ``conquest-run echo`` (C-ECHO).

    conquest-run serve --port P [--host 127.0.0.1] [--aet CONQUEST] [--allow AE ...]
                       [--no-index] [--acse-timeout 5] [--max-associations 10]
                       [--node AE=HOST:PORT ...] [--nodes FILE]
                       [--data data] [--database conquest.db] [--dicom-sql F]
    conquest-run echo HOST PORT [--aet CONQUEST_RUN] [--called-ae ANY-SCP] [--timeout S]
"""

from __future__ import annotations

__all__ = ["register", "run"]

import argparse
import signal
import sys
import threading
from pathlib import Path

from . import add_archive_flags
from ..errors import ArchiveError


def _bounded(convert, low, high, what: str, unit: str = "", prefix: str = ""):
    """An argparse type: ``convert(text)`` within ``low..high``, or a sentence naming the range."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{prefix}out of range {low}..{high}{unit}: {value}")
        return value
    return parse


_port = _bounded(int, 0, 65535, "a port number", prefix="port ")
_seconds = _bounded(float, 0.1, 3600, "a number of seconds", " seconds")
_count = _bounded(int, 1, 1000, "a whole number")


def register(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "serve":
        parser.description = ("Receive DICOM (C-STORE, C-ECHO) into the archive's "
                              "data/<PatientID>/ folders and index it, and answer C-FIND, "
                              "C-MOVE (to known --node/--nodes destinations) and C-GET from "
                              "the index; runs until SIGINT/SIGTERM.")
        parser.add_argument("--port", type=_port, required=True, help="TCP port to listen on")
        parser.add_argument("--host", default="127.0.0.1",
                            help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
        parser.add_argument("--aet", default="CONQUEST", help="our AE title (default CONQUEST)")
        parser.add_argument("--allow", nargs="+", action="extend", default=[], metavar="AE",
                            help="accept only these calling AE titles")
        parser.add_argument("--no-index", action="store_true",
                            help="store files without indexing them into the database")
        parser.add_argument("--acse-timeout", type=_seconds, default=5.0, metavar="S",
                            help="a peer must complete its association request within S "
                                 "seconds of connecting (default 5)")
        parser.add_argument("--max-associations", type=_count, default=10, metavar="N",
                            help="simultaneous associations (default 10)")
        parser.add_argument("--node", action="append", default=[], metavar="AE=HOST:PORT",
                            help="a C-MOVE destination (repeatable)")
        parser.add_argument("--nodes", metavar="FILE",
                            help="C-MOVE destinations: a YAML nodes: map as in a job, or "
                                 "Conquest's ACRNEMA.MAP (wildcard rows included)")
        add_archive_flags(parser)
    else:
        parser.description = "Send a C-ECHO to a DICOM peer."
        parser.add_argument("host")
        parser.add_argument("port", type=_port)
        parser.add_argument("--aet", default="CONQUEST_RUN", help="calling AE title")
        parser.add_argument("--called-ae", default="ANY-SCP", help="the peer's AE title")
        parser.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")


def run(name: str, args: argparse.Namespace) -> int:
    return _serve(args) if name == "serve" else _echo(args)


def _echo(args: argparse.Namespace) -> int:
    from ..net import PeerSettings, echo

    settings = PeerSettings(args.host, args.port, called_ae=args.called_ae, calling_ae=args.aet,
                            timeout=args.timeout)
    seconds = echo(settings)
    print(f"C-ECHO {settings.target}: ok ({seconds * 1000:.1f} ms)")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from ..net.receiver import listen

    data = Path(args.data)
    if data.exists() and not data.is_dir():
        raise ArchiveError("the data directory is not a folder", file=str(data))
    from ..net.nodes import Nodes, parse_node, read_nodes_file

    nodes = Nodes(tuple(parse_node(text) for text in args.node))
    if args.nodes:
        nodes = nodes + read_nodes_file(args.nodes)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    if Path(args.database).is_file():     # what an interrupted delete left, settled first
        from ..archive import Archive
        from ..removals import finish_at_start
        finish_at_start(Archive(data, args.database, args.dicom_sql))
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        receiver = listen(data, args.port, database=args.database, dicom_sql=args.dicom_sql,
                          index=not args.no_index, host=args.host, aet=args.aet,
                          allow=args.allow, acse_timeout=args.acse_timeout,
                          max_associations=args.max_associations, nodes=nodes,
                          log=lambda message: print(f"conquest-run serve: {message}",
                                                    file=sys.stderr, flush=True))
        print(f"conquest-run serve: {args.aet} listening on {args.host}:{receiver.port}, "
              f"storing into {data}" + ("" if args.no_index else f", indexing into "
                                                                  f"{args.database}"),
              file=sys.stderr, flush=True)
        try:
            while not stop.wait(0.5):
                pass
        finally:
            receiver.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"conquest-run serve: stopped; received {receiver.received}, failed {receiver.failed}",
          file=sys.stderr)
    for error in receiver.errors[:5]:
        print(f"conquest-run serve: {error}", file=sys.stderr)
    return 0
