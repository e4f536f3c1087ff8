"""pynetdicom internals and global settings: the only places that touch them.

A test fails if these internals change (``tests/test_net_workers.py``).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass
from .settings import DUL_IDLE_POLL


def tune_connection(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler: TCP_NODELAY on the association's socket, and a short idle
    poll of its DUL reactor thread.

    pynetdicom offers no option for either; the event is the supported hook, but the socket
    and the poll delay are only reachable through its internals (``assoc.dul.socket.socket``,
    ``assoc.dul._run_loop_delay``).  Without TCP_NODELAY a loopback C-STORE waits for a delayed
    ACK (~40 ms); the reactor's default 1 ms idle sleep costs up to a millisecond per message
    (0.2 ms measured 10-30 % faster on small files here).  Does nothing for what is missing.
    """
    dul = getattr(event.assoc, "dul", None)
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if isinstance(getattr(dul, "_run_loop_delay", None), float):
        dul._run_loop_delay = DUL_IDLE_POLL


def settle_after_request(assoc: Any, limit: float = 0.05) -> None:
    """Wait (at most ``limit`` s) until the association's reactor thread has resumed after a
    ``send_c_store``, before the next request may pause it again.

    Works around a race in pynetdicom 3: ``send_c_store`` re-enables the reactor when it
    returns, but the reactor thread only runs once it gets the GIL; a next ``send_c_store``
    issued before that finds the reactor still marked paused, sends, and the resumed reactor
    then takes the peer's C-STORE-RSP off the queue: the sender waits the whole DIMSE timeout
    and the association is aborted (seen here as 30 s stalls every few hundred files on
    loopback).  Reads ``assoc._is_paused`` (internal); does nothing if it ever goes away.
    """
    deadline = time.monotonic() + limit
    while getattr(assoc, "_is_paused", False) and assoc.is_established \
            and time.monotonic() < deadline:
        time.sleep(0.0001)


class _HeldCheckpoint(threading.Event):
    """Stands in for an association's ``_reactor_checkpoint`` while :func:`reactor_held` keeps
    the reactor paused: pynetdicom's own ``set()`` after each request does nothing."""

    def set(self) -> None:
        pass

    def really_set(self) -> None:
        super().set()


@contextmanager
def reactor_held(assoc: Any, limit: float = 1.0) -> Iterator[bool]:
    """Keep the association's reactor thread paused while this thread sends requests.

    A requestor that only sends C-STOREs needs nothing from its reactor while it sends: each
    ``send_c_store`` pauses it, sends, takes the response and lets it run again, and the next
    request then waits for the reactor's hard-coded 1 ms sleep to end before it may pause it
    again (plus the race :func:`settle_after_request` works around).  Held, the reactor stays
    blocked in its checkpoint, so requests neither wait for it nor race it; a peer's abort still
    ends a waiting request at once (the DUL puts an empty response on the DIMSE queue).  On
    exit the reactor runs again (and sees any release or abort).  Yields ``False`` (and holds
    nothing) when pynetdicom's internals (``_reactor_checkpoint``, ``_is_paused``) are not as
    expected or the reactor does not pause within ``limit`` seconds.
    """
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    if not isinstance(checkpoint, threading.Event) or \
            not isinstance(getattr(assoc, "_is_paused", None), bool):
        yield False
        return
    held = _HeldCheckpoint()

    def let_go() -> None:
        assoc._reactor_checkpoint = checkpoint
        checkpoint.set()
        held.really_set()

    assoc._reactor_checkpoint = held        # the reactor's next wait blocks on this one
    checkpoint.clear()                      # ... or on the real one, if it already read it
    deadline = time.monotonic() + limit
    paused = 0
    while paused < 2 and assoc.is_established and time.monotonic() < deadline:
        paused = paused + 1 if assoc._is_paused else 0     # seen twice: really waiting
        time.sleep(0.0005)
    if paused < 2:
        let_go()
        yield False
        return
    try:
        yield True
    finally:
        let_go()


@contextmanager
def pynetdicom_config(**flags: Any) -> Iterator[None]:
    """Set pynetdicom ``_config`` flags for the duration of a block, then restore them.

    ``STORE_SEND_CHUNKED_DATASET=True`` makes ``send_c_store(path)`` stream the file's bytes
    after its file meta instead of decoding the dataset; ``LOG_HANDLER_LEVEL="none"`` keeps
    pynetdicom from formatting a log text of every PDU and DIMSE message (most of its CPU time
    per C-STORE), read when an association is created.
    """
    from pynetdicom import _config

    saved = {name: getattr(_config, name) for name in flags}
    try:
        for name, value in flags.items():
            setattr(_config, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(_config, name, value)


def guard_reads(assoc: Any, check: Callable[[int, bool], str | None],
                deadline: Callable[[], float], refused: Callable[[str], None]) -> bool:
    """Put a guard in front of every read of an acceptor association's DUL reactor.

    pynetdicom reads each PDU as a 6-byte header and then ``recv(length)`` of whatever length
    the peer claims, growing a buffer as the bytes arrive, with no bound on the length and no
    deadline before the association exists (``AssociationSocket.recv``, ``DULServiceProvider.
    _read_pdu_data``).  The guard asks ``check(nr_bytes, associating)`` first (``associating``:
    the DUL is still waiting for, or answering, the A-ASSOCIATE-RQ: ``Sta1``-``Sta3``); a reason
    closes the connection at once and hands pynetdicom a short read (its "connection closed").
    While associating, reads must complete by ``deadline()`` (a ``time.monotonic`` value), so
    a peer dripping bytes cannot hold the reactor in ``recv``.  Returns ``False`` (no guard)
    when the internals are not as expected.
    """
    dul = getattr(assoc, "dul", None)
    transport = getattr(dul, "socket", None)
    original = getattr(transport, "recv", None)
    machine = getattr(dul, "state_machine", None)
    if not callable(original) or not isinstance(getattr(transport, "socket", None),
                                                socket.socket) or machine is None:
        return False

    def recv(nr_bytes: int) -> bytearray:
        associating = getattr(machine, "current_state", "") in ("Sta1", "Sta2", "Sta3")
        problem = check(nr_bytes, associating)
        if problem is None and not associating:
            return original(nr_bytes)
        sock = transport.socket
        data = bytearray()
        if problem is None and sock is not None:
            data, problem = _read_by(sock, nr_bytes, deadline())
        if problem is not None:
            refused(problem)
            hang_up(sock)
        return data

    transport.recv = recv
    return True


def _read_by(sock: socket.socket, nr_bytes: int, deadline: float) -> tuple[bytearray, str | None]:
    data = bytearray()
    while len(data) < nr_bytes:
        remaining = deadline - time.monotonic()
        try:
            ready = remaining > 0 and select.select([sock], [], [], remaining)[0]
            chunk = sock.recv(min(nr_bytes - len(data), 65536)) if ready else None
        except (OSError, ValueError):
            return data, None                  # closed under us: pynetdicom sees a short read
        if chunk is None:
            return data, "no complete A-ASSOCIATE-RQ within the ACSE timeout"
        if not chunk:
            return data, None
        data += chunk
    return data, None


def hang_up(sock: socket.socket | None) -> None:
    """Shut a connection both ways at once (the peer sees it closed)."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def wake_acceptor(assoc: Any) -> None:
    """``EVT_CONN_CLOSE`` handler: an acceptor whose connection closed before its A-ASSOCIATE-RQ
    arrived stops waiting at once.

    pynetdicom's acceptor thread waits ``acse_timeout`` for the request on the DUL's
    ``to_user_queue`` even after the DUL saw the connection close (``Sta2`` + ``Evt17``), and it
    counts against ``maximum_associations`` all that time: ten connect-and-close calls locked
    every peer out for a minute.  A ``None`` on that queue is what its own timeout returns, so
    the thread ends as if the ACSE timer had run out.
    """
    dul = getattr(assoc, "dul", None)
    waiting = getattr(dul, "to_user_queue", None)
    requestor = getattr(assoc, "requestor", None)
    if waiting is None or getattr(assoc, "is_established", True) or \
            getattr(requestor, "primitive", True) is not None:
        return
    waiting.put(None)


def wait_sent(assoc: Any, limit: float = 1.0) -> None:
    """Wait (at most ``limit`` s) until the DUL has sent what the association queued for the peer.

    An A-ASSOCIATE-RJ sent from an ``EVT_REQUESTED`` handler is only queued
    (``dul.to_provider_queue``); the acceptor then closes the socket at once, usually before the
    reactor sent it.  Does nothing if the queue is not there.
    """
    queued = getattr(getattr(assoc, "dul", None), "to_provider_queue", None)
    deadline = time.monotonic() + limit
    while queued is not None and not queued.empty() and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.01)                           # the reactor writes the PDU after dequeuing it


def let_peer_speak(assoc: Any, limit: float = 0.5) -> None:
    """Let the association's reactor read what the peer sent (a C-CANCEL) while this thread
    streams responses: wait (at most ``limit`` s) until the responses queued so far are sent,
    then for one idle poll of the reactor.

    pynetdicom's DUL reactor sends a queued primitive *or* reads the socket, one per loop, and
    sends first; a handler that yields C-FIND responses faster than they go out keeps the queue
    full, and a peer's C-CANCEL is never read until the last response (seen: 20,000 sent after
    the cancel).  Reads ``assoc.dul.to_provider_queue`` (internal); does nothing without it.
    """
    queued = getattr(getattr(assoc, "dul", None), "to_provider_queue", None)
    if queued is None:
        return
    deadline = time.monotonic() + limit
    while not queued.empty() and time.monotonic() < deadline:
        time.sleep(0.0005)
    time.sleep(2 * DUL_IDLE_POLL)


def route_moves(assoc: Any, serve_move: Callable[..., None]) -> bool:
    """``EVT_REQUESTED`` handler helper: this association's C-MOVE requests go to
    ``serve_move(request, context, respond, cancelled)`` instead of pynetdicom's own move SCP,
    which would send the sub-operations with a second, dataset-decoding sender of its own (and
    offers no way to report counts it did not make).  ``respond(primitive)`` sends a C-MOVE-RSP
    on the request's context; ``cancelled()`` says whether a C-CANCEL for it has arrived.

    Reaches ``Association._serve_request``, ``_accepted_cx`` and ``dimse.cancel_req``
    (pynetdicom internals), for this association only; returns ``False`` (pynetdicom's own
    handling stays) when they are not as expected."""
    original = getattr(assoc, "_serve_request", None)
    dimse = getattr(assoc, "dimse", None)
    if not callable(original) or not isinstance(getattr(dimse, "cancel_req", None), dict) or \
            not isinstance(getattr(assoc, "_accepted_cx", None), dict):
        return False
    from pynetdicom.dimse_primitives import C_MOVE

    def serve(msg: Any, context_id: int) -> None:
        context = assoc._accepted_cx.get(context_id)
        if not isinstance(msg, C_MOVE) or not msg.is_valid_request or context is None:
            original(msg, context_id)
            return
        message_id = msg.MessageID
        dimse.cancel_req = {}
        try:
            serve_move(msg, context, lambda rsp: dimse.send_msg(rsp, context_id),
                       lambda: message_id in dimse.cancel_req)
        except Exception:              # as pynetdicom does with a failing service class
            assoc.abort()
        finally:
            dimse.cancel_req = {}

    assoc._serve_request = serve
    return True
