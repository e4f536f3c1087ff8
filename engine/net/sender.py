"""pynetdicom glue for sending: contexts from file meta, TCP_NODELAY, associations, C-ECHO.

The sender walks one path for real and dry runs: files are read (file meta only), grouped into
associations (a series never split unless it alone needs more than 128 presentation contexts),
and handed to a *transport*: :class:`DicomTransport` talks to the peer, :class:`DryTransport`
answers "would send" without any traffic.  Each instance gets an :class:`~.report.Outcome` as
the peer confirms it, passed to a callback so the caller can journal it at once.

Files go on the wire as stored (no decode, no re-encode) whenever the peer accepts their own
transfer syntax and nothing says they lie about themselves; otherwise ``reencode`` makes a
dataset of them (re-encoded, or decompressed for a peer that takes no compressed syntax).
An association lost while an instance is in flight costs only that instance (``_send_batch``).
pynetdicom is imported lazily: ``import conquest_run.net`` is cheap.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..errors import NetworkError
from ..report import DONE, FAILED, Outcome
from .glue import pynetdicom_config, reactor_held, settle_after_request, tune_connection
from .items import ANY_UNCOMPRESSED, SendItem, _contexts_of
from .reencode import CannotSend, prepared, syntax_name
from .settings import (
    MAX_ASSOCIATIONS,
    QUIET,
    UNCOMPRESSED,
    VERIFICATION_SOP_CLASS,
    OnOutcome,
    PeerSettings,
    resolve_host,
)

if TYPE_CHECKING:
    from pynetdicom.association import Association


class DryTransport:
    """Walks the batches and answers what would be sent; no traffic."""

    def send(self, batches: Sequence[Sequence[SendItem]], on_outcome: OnOutcome) -> None:
        for number, batch in enumerate(batches, 1):
            for item in batch:
                detail = {"association": number, "transfer_syntax": item.transfer_syntax}
                if item.fix:                # re-encoded with corrected meta when sent
                    detail["fixed"] = list(item.fix)
                on_outcome(Outcome(item.sop_uid, item.series_uid, DONE, "would send", detail))


class _AssociationLost(Exception):
    pass


@dataclass
class DicomTransport:
    """Sends over real associations: one in the calling thread's process, several in worker
    processes (``net.workers``; threads when forking is not safe here)."""

    settings: PeerSettings
    stop: threading.Event = field(default_factory=threading.Event)
    on_connected: Callable[[], None] | None = None      # called when an association is up
    _connected: threading.Event = field(default_factory=threading.Event, init=False)
    _emit_lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def send(self, batches: Sequence[Sequence[SendItem]], on_outcome: OnOutcome) -> None:
        """Raise :class:`NetworkError` when the peer cannot be reached at all (nothing sent)."""
        resolve_host(self.settings.host, self.settings.port,
                     f"cannot send to {self.settings.target}")
        work: queue.SimpleQueue[Sequence[SendItem]] = queue.SimpleQueue()
        for batch in batches:
            work.put(batch)
        errors: list[BaseException] = []

        def emit(outcome: Outcome) -> None:
            with self._emit_lock:
                on_outcome(outcome)

        finished = threading.Semaphore(0)      # one release per worker thread that ended

        def worker() -> None:
            try:
                while not self.stop.is_set():
                    try:
                        batch = work.get_nowait()
                    except queue.Empty:
                        return
                    self._send_batch(batch, emit)
            except BaseException as exc:   # handed to the calling thread
                errors.append(exc)
                self.stop.set()
            finally:
                finished.release()

        count = max(1, min(self.settings.associations, MAX_ASSOCIATIONS, len(batches)))
        with pynetdicom_config(STORE_SEND_CHUNKED_DATASET=True, LOG_HANDLER_LEVEL=QUIET):
            if count > 1:
                from .workers import can_fork, send_in_processes

                if can_fork():
                    import pynetdicom  # noqa: F401  (imported once, inherited by the workers)

                    send_in_processes(self, batches, on_outcome, count)
                    return
            threads = [threading.Thread(target=worker, name=f"send-{n}", daemon=True)
                       for n in range(count)]
            for t in threads:
                t.start()
            ended = 0               # counted, not Thread.join: an interrupted join (Ctrl-C)
            try:                    # can leave a running thread marked as stopped (3.11)
                while ended < len(threads):
                    if finished.acquire(timeout=0.2):
                        ended += 1
            except BaseException:           # Ctrl-C: stop after the instance in flight
                self.stop.set()
                deadline = time.monotonic() + self.settings.timeout + 5
                while ended < len(threads) and \
                        finished.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    ended += 1
                raise
        if errors:
            raise errors[0]

    # -- one association's worth of items, with retries per instance ---------------------
    def _send_batch(self, batch: Sequence[SendItem], emit: OnOutcome) -> None:
        """Send ``batch``; an instance in flight when an association is lost is *suspect*: the
        ones after it go on at once over a new association, and it is retried alone, once
        (re-encoded by pydicom), after the others; lost again, it fails with the likely cause.
        ``retries`` counts associations that could not be opened (and, when 0, no retry)."""
        suspects: list[SendItem] = []
        self._send_items(list(batch), emit, lambda item, how: suspects.append(item))
        if suspects and not self.stop.is_set() and self.settings.retries > 0:
            self.stop.wait(self.settings.retry_delay)
        for item in suspects:
            if self.stop.is_set():
                emit(Outcome(item.sop_uid, item.series_uid, FAILED, "not sent: interrupted", {}))
            elif self.settings.retries < 1:
                emit(_lost_outcome(item, "the association was lost while it was sent (no "
                                         "retries)"))
            else:
                alone = replace(item, fix=item.fix or ("retried",))
                self._send_items([alone], emit, lambda it, how: emit(_lost_outcome(
                    it, f"the peer aborted the association (or closed the connection) each "
                        f"time this instance was sent, the last time alone, {how}: it "
                        f"probably cannot parse it")))

    def _send_items(self, items: list[SendItem], emit: OnOutcome,
                    on_lost: Callable[[SendItem, str], None]) -> None:
        s = self.settings
        remaining = items
        failures = 0
        last_error = ""
        while remaining and not self.stop.is_set():
            assoc, error = self._associate(_contexts_of(remaining))
            if assoc is not None:
                self._connected.set()
                if self.on_connected is not None:
                    self.on_connected()
                lost = False
                try:
                    remaining = self._store_all(assoc, remaining, emit)
                    if not remaining:
                        return
                    last_error = ""                 # stopped (Ctrl-C): the rest stays unsent
                except _AssociationLost as exc:
                    lost = True
                    n, how = exc.args
                    on_lost(remaining[n], how)      # costs only itself: the rest go on now
                    remaining = remaining[n + 1:]
                    continue
                finally:
                    if assoc.is_established and not lost:
                        assoc.release()
                    elif not (assoc.is_aborted or assoc.is_released):
                        assoc.abort()
            else:
                last_error = error
                if not self._connected.is_set() and failures >= s.retries:
                    raise NetworkError(f"cannot send to {s.target}: {error}")
            if self.stop.is_set():
                break
            failures += 1
            if failures > s.retries:
                break
            self.stop.wait(s.retry_delay * 2 ** (failures - 1))
        for item in remaining:
            emit(Outcome(item.sop_uid, item.series_uid, FAILED,
                         f"not sent: {last_error}" if last_error else "not sent: interrupted",
                         {}))

    def _ae(self) -> Any:
        from pynetdicom import AE

        s = self.settings
        ae = AE(ae_title=s.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = s.timeout
        ae.connection_timeout = s.timeout
        return ae

    def _associate(self, contexts: dict[tuple[str, str], None]) -> tuple[Any, str]:
        from pynetdicom import evt
        from pynetdicom.presentation import build_context

        s = self.settings
        proposed = []
        for sop_class, ts in contexts:
            if ts == ANY_UNCOMPRESSED:      # a compressed file's fallback: decoded to send
                syntaxes = list(UNCOMPRESSED)
            else:
                syntaxes = [ts] + ([t for t in UNCOMPRESSED if t != ts]
                                   if ts in UNCOMPRESSED else [])
            proposed.append(build_context(sop_class, syntaxes))
        opened = threading.Event()
        started = time.monotonic()
        assoc = self._ae().associate(
            s.host, s.port, contexts=proposed, ae_title=s.called_ae,
            evt_handlers=[(evt.EVT_CONN_OPEN, tune_connection),
                          (evt.EVT_CONN_OPEN, lambda event: opened.set())])
        if assoc.is_established:
            return assoc, ""
        if assoc.is_rejected:
            return None, f"association rejected by the peer (called AE {s.called_ae!r}, " \
                         f"calling AE {s.calling_ae!r})"
        if not opened.is_set():
            return None, f"no DICOM peer listening at {s.host}:{s.port} (connection failed)"
        if assoc.rejected_contexts and not assoc.accepted_contexts:
            return None, _no_context_accepted(assoc)
        if time.monotonic() - started >= s.timeout * 0.9:
            return None, _no_answer(s.timeout)
        return None, "association aborted by the peer"

    def _store_all(self, assoc: "Association", items: list[SendItem],
                   emit: OnOutcome) -> list[SendItem]:
        accepted: dict[str, set[str]] = {}
        for cx in assoc.accepted_contexts:
            accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
        with reactor_held(assoc) as held:
            return self._store_held(assoc, items, accepted, emit, held)

    def _store_held(self, assoc: "Association", items: list[SendItem],
                    accepted: dict[str, set[str]], emit: OnOutcome,
                    held: bool) -> list[SendItem]:
        for n, item in enumerate(items):
            if self.stop.is_set():
                return items[n:]
            syntaxes = accepted.get(item.sop_class, set())
            extra: dict[str, Any] = {}
            if item.has_meta and not item.fix and item.transfer_syntax in syntaxes:
                payload: Any = item.path                     # streamed as stored
                how = f"as stored in {syntax_name(item.transfer_syntax)}"
            else:
                try:
                    payload, how, extra = prepared(item, syntaxes)
                except CannotSend as exc:
                    why = str(exc) if "retried" not in item.fix else \
                        f"not sent: the association was lost while it was sent as stored, " \
                        f"and it cannot be re-encoded to retry it alone ({exc})"
                    emit(Outcome(item.sop_uid, item.series_uid, FAILED, why,
                                 {"sop_class": item.sop_class,
                                  "transfer_syntax": item.transfer_syntax}))
                    continue
            try:
                status = assoc.send_c_store(payload, msg_id=(n % 65535) + 1,
                                            **_originator(self.settings))
            except (RuntimeError, OSError):
                raise _AssociationLost(n, how) from None
            except (ValueError, AttributeError) as exc:
                emit(Outcome(item.sop_uid, item.series_uid, FAILED, f"cannot send: {exc}", {}))
                continue
            if "Status" not in status:
                raise _AssociationLost(n, how)
            outcome = _status_outcome(item, int(status.Status))
            if extra:
                outcome.detail.update(extra)
                if outcome.status == DONE:
                    outcome.reason += f" ({how})"
            emit(outcome)
            if not held:
                settle_after_request(assoc)
        return []


def _lost_outcome(item: SendItem, why: str) -> Outcome:
    return Outcome(item.sop_uid, item.series_uid, FAILED, f"not sent: {why}",
                   {"transfer_syntax": item.transfer_syntax, "association_lost": True})


def _status_outcome(item: SendItem, code: int) -> Outcome:
    from pynetdicom.status import code_to_category

    category = code_to_category(code)
    detail = {"status": f"0x{code:04X}"}
    if category == "Success":
        return Outcome(item.sop_uid, item.series_uid, DONE, "sent", detail)
    if category == "Warning":
        return Outcome(item.sop_uid, item.series_uid, DONE, f"sent with warning 0x{code:04X}",
                       detail)
    return Outcome(item.sop_uid, item.series_uid, FAILED,
                   f"refused by the peer: status 0x{code:04X} ({category.lower()})", detail)


def _no_answer(timeout: float) -> str:
    return (f"the peer took the connection but did not answer the association request within "
            f"{timeout:g} s (is it a DICOM peer?)")


def _no_context_accepted(assoc: Any) -> str:
    """Why an association ended at once: the peer accepted none of the proposed contexts."""
    names = sorted({getattr(cx.abstract_syntax, "name", str(cx.abstract_syntax))
                    for cx in assoc.rejected_contexts})
    return (f"the peer accepted the association but none of the proposed presentation "
            f"contexts ({', '.join(names)}): it does not take these SOP classes or transfer "
            f"syntaxes")


def _originator(settings: PeerSettings) -> dict[str, Any]:
    """The Move Originator fields of a C-MOVE's sub-operations (none for a plain send)."""
    if settings.move_originator is None:
        return {}
    ae, message_id = settings.move_originator
    return {"originator_aet": ae, "originator_id": message_id}


def echo(settings: PeerSettings) -> float:
    """C-ECHO the peer; the round trip in seconds, or :class:`NetworkError`."""
    from pynetdicom import AE, evt

    resolve_host(settings.host, settings.port, f"C-ECHO to {settings.target}")
    ae = AE(ae_title=settings.calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = settings.timeout
    ae.connection_timeout = settings.timeout
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    opened = threading.Event()
    started = time.perf_counter()
    with pynetdicom_config(LOG_HANDLER_LEVEL=QUIET):
        assoc = ae.associate(settings.host, settings.port, ae_title=settings.called_ae,
                             evt_handlers=[(evt.EVT_CONN_OPEN, tune_connection),
                                           (evt.EVT_CONN_OPEN, lambda event: opened.set())])
    if not assoc.is_established:
        if assoc.is_rejected:
            raise NetworkError(f"C-ECHO to {settings.target}: association rejected by the peer")
        if not opened.is_set():
            raise NetworkError(f"C-ECHO to {settings.target}: no DICOM peer listening at "
                               f"{settings.host}:{settings.port}")

        if assoc.rejected_contexts and not assoc.accepted_contexts:
            raise NetworkError(f"C-ECHO to {settings.target}: {_no_context_accepted(assoc)}")
        if time.perf_counter() - started >= settings.timeout * 0.9:
            raise NetworkError(f"C-ECHO to {settings.target}: {_no_answer(settings.timeout)}")
        raise NetworkError(f"C-ECHO to {settings.target}: association aborted")
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    if "Status" not in status:
        raise NetworkError(f"C-ECHO to {settings.target}: no response")
    if int(status.Status) != 0:
        raise NetworkError(f"C-ECHO to {settings.target}: status 0x{int(status.Status):04X}")
    return time.perf_counter() - started
