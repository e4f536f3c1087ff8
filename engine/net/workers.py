"""Parallel associations in forked worker processes (``DicomTransport`` with ``associations`` > 1).

pynetdicom spends most of a C-STORE's time in Python (command sets built and parsed as pydicom
Datasets, two reactor threads), so associations run as threads share one GIL and barely add up.
Here each association runs in its own forked process (the parent's imports and the planned batches
are inherited, nothing is pickled but batch numbers and outcomes):

* the parent hands out batch numbers one at a time (a series stays on its batch's association);
* each worker sends its batch with the same code as the single-association path and streams every
  :class:`~.report.Outcome` back as the peer answers; the parent passes it to ``on_outcome``
  (the journal) at once, in its own thread, so the audit semantics are those of a thread;
* Ctrl-C reaches the parent only (workers ignore SIGINT): it sets the shared stop event, the
  workers finish the instance in flight, their outcomes are still journaled (by the parent's
  outcome thread, never interrupted half-way), then the parent re-raises; an exception from
  ``on_outcome`` stops the send the same way and is re-raised; a worker that dies has the
  unreported instances of its batch failed ("not sent");
* a worker whose peer cannot be reached at all reports the error; it is the step's
  :class:`NetworkError` (nothing else is sent) unless some association was established, in which
  case that batch's instances fail "not sent" like in the thread path.

Only used when ``fork`` is available and no other thread runs in the process (forking a process
with threads is unsafe); otherwise the caller falls back to threads.
"""

from __future__ import annotations

__all__ = ["can_fork", "send_in_processes"]

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from ..errors import NetworkError
from ..report import FAILED, Outcome

if TYPE_CHECKING:
    from .items import SendItem
    from .sender import DicomTransport
    from .settings import OnOutcome

POLL = 0.2      # seconds between checks of the caller's stop event while waiting


def can_fork() -> bool:
    """Fork is available and safe here (this is the process's only thread)."""
    return hasattr(os, "fork") and "fork" in multiprocessing.get_all_start_methods() \
        and threading.active_count() == 1


@dataclass
class _Worker:
    process: Any
    conn: Connection
    batch: int | None = None
    unreported: dict[str, Outcome] = field(default_factory=dict)
    finished: bool = False          # told to exit (an EOF then is expected)


def send_in_processes(transport: "DicomTransport", batches: Sequence[Sequence["SendItem"]],
                      on_outcome: "OnOutcome", count: int) -> None:
    """Send ``batches`` over ``count`` associations in worker processes (see the module notes).

    The outcomes are passed to ``on_outcome`` by a thread of this process while the calling
    thread only waits, as in the thread path: a Ctrl-C (``KeyboardInterrupt``) therefore never
    lands inside ``on_outcome`` (e.g. between a journal's commit and its bookkeeping)."""
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    abandon = threading.Event()          # set when the caller gives up: no more outcomes
    errors: list[BaseException] = []
    for stream in (sys.stdout, sys.stderr):     # no buffered output duplicated by the children
        stream.flush()
    workers: list[_Worker] = []
    try:
        for n in range(count):
            mine, theirs = ctx.Pipe()
            process = ctx.Process(target=_worker_main, name=f"send-{n}", daemon=True,
                                  args=(transport.settings, batches, theirs, stop))
            process.start()
            theirs.close()
            workers.append(_Worker(process, mine))

        finished = threading.Event()   # not Thread.join: an interrupted join (Ctrl-C) can
                                       # leave a running thread marked as stopped (3.11)

        def serve() -> None:
            try:
                _serve(batches, on_outcome, workers, stop, abandon, errors)
            except BaseException as exc:     # handed to the calling thread
                errors.append(exc)
                stop.set()
            finally:
                finished.set()

        threading.Thread(target=serve, name="send-outcomes", daemon=True).start()
        try:
            while not finished.wait(POLL):
                if transport.stop.is_set():
                    stop.set()
        except BaseException:               # Ctrl-C: stop after the instances in flight
            stop.set()
            finished.wait(transport.settings.timeout + 5)
            raise
        if errors:
            raise errors[0]
    finally:
        stop.set()
        abandon.set()
        for w in workers:                   # a worker waiting for work: there is none
            try:
                w.conn.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + transport.settings.timeout + 5
        for w in workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(5)
            w.conn.close()


def _serve(batches: Sequence[Sequence["SendItem"]], on_outcome: "OnOutcome",
           workers: list[_Worker], stop: Any, abandon: threading.Event,
           errors: list[BaseException]) -> None:
    pending = deque(range(len(batches)))
    connected = False
    fatal: NetworkError | None = None

    def emit(outcome: Outcome) -> None:
        try:
            on_outcome(outcome)
        except BaseException as exc:     # like a thread's: stop, keep the others' outcomes
            errors.append(exc)
            stop.set()

    def assign(w: _Worker) -> None:
        if pending and not stop.is_set():
            w.batch = pending.popleft()
            w.unreported = {i.sop_uid: Outcome(i.sop_uid, i.series_uid, FAILED, "", {})
                            for i in batches[w.batch]}
            w.conn.send(w.batch)
        else:
            w.batch, w.unreported, w.finished = None, {}, True
            w.conn.send(None)

    def fail_unreported(w: _Worker, reason: str) -> None:
        for o in w.unreported.values():
            emit(Outcome(o.sop_uid, o.series_uid, FAILED, reason, {}))
        w.unreported = {}

    for w in workers:
        assign(w)
    live = {w.conn: w for w in workers}
    while live and not abandon.is_set():
        for conn in wait(list(live), timeout=POLL):
            if abandon.is_set():
                return
            w = live[conn]
            try:
                message = conn.recv()
            except (EOFError, OSError):
                del live[conn]
                if not w.finished:
                    fail_unreported(w, "not sent: the worker process ended unexpectedly")
                continue
            kind = message[0]
            if kind == "outcome":
                w.unreported.pop(message[1].sop_uid, None)
                emit(message[1])
            elif kind == "connected":
                connected = True
            elif kind == "done":
                assign(w)
            elif kind == "error":
                if connected:
                    fail_unreported(w, f"not sent: {message[1]}")
                else:
                    fatal = fatal or NetworkError(message[1])
                    stop.set()
                    w.unreported = {}
                assign(w)
    if not live and pending and not stop.is_set():
        for n in pending:                   # every worker died before taking these
            for i in batches[n]:
                emit(Outcome(i.sop_uid, i.series_uid, FAILED,
                             "not sent: the worker processes ended unexpectedly", {}))
    if fatal is not None:
        raise fatal


def _worker_main(settings: Any, batches: Sequence[Sequence["SendItem"]], conn: Connection,
                 stop: Any) -> None:
    """One association's worth of work at a time, as the parent hands out batch numbers."""
    from .sender import DicomTransport

    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the parent's to handle
    told = False

    def on_connected() -> None:
        nonlocal told
        if not told:
            told = True
            conn.send(("connected",))

    transport = DicomTransport(settings, stop=stop, on_connected=on_connected)
    try:
        while True:
            number = conn.recv()
            if number is None:
                return
            try:
                transport._send_batch(batches[number], lambda o: conn.send(("outcome", o)))
            except NetworkError as exc:
                conn.send(("error", str(exc)))
            else:
                conn.send(("done",))
    except (EOFError, BrokenPipeError):      # the parent is gone: stop
        return
    finally:
        conn.close()
