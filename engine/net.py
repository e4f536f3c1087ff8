"""pynetdicom glue for sending: contexts from file meta, TCP_NODELAY, associations, C-ECHO.

The sender walks one path for real and dry runs: files are read (file meta only), grouped into
associations (a series never split unless it alone needs more than 128 presentation contexts),
and handed to a *transport*: :class:`DicomTransport` talks to the peer, :class:`DryTransport`
answers "would send" without any traffic.  Each instance gets an :class:`~.report.Outcome` as
the peer confirms it, passed to a callback so the caller can journal it at once.

Files go on the wire as stored (no decode, no re-encode) whenever the peer accepts their own
transfer syntax; only when it accepts another uncompressed syntax is the dataset decoded and
re-encoded by pynetdicom.  pynetdicom is imported lazily: ``import conquest_run.net`` is cheap.
"""

from __future__ import annotations

__all__ = [
    "PeerSettings",
    "SendItem",
    "Transport",
    "DicomTransport",
    "DryTransport",
    "read_send_item",
    "read_file_meta",
    "group_associations",
    "echo",
    "tune_connection",
    "settle_after_request",
    "reactor_held",
    "pynetdicom_config",
    "QUIET",
    "MAX_CONTEXTS",
    "MAX_ASSOCIATIONS",
    "AE_TITLE_MAX",
    "ae_title_problem",
    "check_ae_title",
    "resolve_host",
]

import queue
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ConquestRunError, NetworkError
from .report import DONE, FAILED, Outcome

if TYPE_CHECKING:
    from pynetdicom.association import Association

MAX_CONTEXTS = 128          # DICOM: at most 128 presentation contexts per association
MAX_ASSOCIATIONS = 8
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
UNCOMPRESSED = (EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE)
DUL_IDLE_POLL = 0.0002      # seconds the DUL reactor sleeps when idle (pynetdicom: 0.001)
QUIET = "none"              # pynetdicom LOG_HANDLER_LEVEL: no per-message log handlers

OnOutcome = Callable[[Outcome], None]
AE_TITLE_MAX = 16


def ae_title_problem(value: str) -> str | None:
    """What makes ``value`` unusable as a DICOM AE title, or None."""
    if not value.strip():
        return "is blank"
    if "\\" in value:
        return "contains a backslash"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "contains a control character"
    if len(value) > AE_TITLE_MAX:
        return f"is longer than {AE_TITLE_MAX} characters"
    return None


def check_ae_title(value: str, what: str) -> None:
    """Refuse an unusable AE title with a sentence (a usage error, exit 2)."""
    problem = ae_title_problem(value)
    if problem:
        raise ConquestRunError(f"{what} {value!r} {problem} (an AE title has 1 to "
                               f"{AE_TITLE_MAX} characters, no backslash or control characters)")


def resolve_host(host: str, port: int, what: str) -> None:
    """Raise :class:`NetworkError` when ``host`` does not resolve (before any association)."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NetworkError(f"{what}: cannot resolve the host name {host!r} "
                           f"({exc.strerror or exc})") from None
    except UnicodeError:            # a label longer than 63 characters, an empty label
        raise NetworkError(f"{what}: {host!r} is not a valid host name") from None


@dataclass(frozen=True)
class PeerSettings:
    """Where and how to send: one peer, checked values (see ``actions/send.py``)."""

    host: str
    port: int
    called_ae: str = "ANY-SCP"
    calling_ae: str = "CONQUEST_RUN"
    associations: int = 1       # parallel associations, 1..8
    retries: int = 2            # new associations after a failed / refused / lost one
    retry_delay: float = 1.0    # seconds before the first retry; doubles each time
    timeout: float = 30.0       # connect, ACSE, DIMSE and network timeouts (seconds)

    def __post_init__(self) -> None:
        if not self.host.strip():
            raise ConquestRunError("the host is empty; give a host name or IP address")
        check_ae_title(self.called_ae, "the called AE title")
        check_ae_title(self.calling_ae, "the calling AE title")
        if not 0 < self.timeout <= 86400:      # a day; more overflows the socket timeout
            raise ConquestRunError(f"the timeout must be a positive number of seconds up to "
                                   f"86400, not {self.timeout}")

    @property
    def target(self) -> str:
        """The journal key of this peer: ``CALLED_AE@host:port``."""
        return f"{self.called_ae}@{self.host}:{self.port}"


@dataclass(frozen=True)
class SendItem:
    """One instance ready to send: where its file is and what its file meta says."""

    sop_uid: str
    series_uid: str | None
    path: Path
    sop_class: str
    transfer_syntax: str
    has_meta: bool = True       # False: a bare dataset (Conquest .v2): decoded before sending
    size: int = 0


class Transport(Protocol):
    def send(self, batches: Sequence[Sequence[SendItem]], on_outcome: OnOutcome) -> None:
        """Send each batch on its own association; call ``on_outcome`` once per item."""


# --------------------------------------------------------------------------------------------
# pynetdicom internals and global settings: the only places that touch them
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# files -> items -> associations
# --------------------------------------------------------------------------------------------

_META_UIDS = {0x0002: "MediaStorageSOPClassUID", 0x0003: "MediaStorageSOPInstanceUID",
              0x0010: "TransferSyntaxUID"}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}


def read_file_meta(path: Path) -> dict[str, str] | None:
    """The SOP class, SOP instance and transfer syntax UIDs of a Part-10 file's meta group.

    ``None`` when the file has no ``DICM`` preamble (a bare dataset).  A small direct parse of
    group 0002 (explicit VR little endian by definition), some 20x faster than building a
    pydicom ``FileMetaDataset``; anything unexpected falls back to pydicom's reader.
    """
    with open(path, "rb") as fh:
        head = fh.read(4096)
        if len(head) < 132 or head[128:132] != b"DICM":
            return None
        out: dict[str, str] = {}
        pos, end = 132, None
        while True:
            if pos + 8 > len(head):
                more = fh.read(4096)
                if not more:
                    break
                head += more
                continue
            group, elem = struct.unpack_from("<HH", head, pos)
            if group != 2 or (end is not None and pos >= end):
                break
            vr = head[pos + 4:pos + 6]
            if vr in _LONG_VRS:
                length, start = struct.unpack_from("<I", head, pos + 8)[0], pos + 12
            else:
                length, start = struct.unpack_from("<H", head, pos + 6)[0], pos + 8
            if length == 0xFFFFFFFF or not vr.isalpha():
                return _pydicom_file_meta(path)
            while start + length > len(head):
                more = fh.read(max(4096, start + length - len(head)))
                if not more:
                    return _pydicom_file_meta(path)
                head += more
            value = head[start:start + length]
            if elem == 0 and vr == b"UL" and length == 4:
                end = start + 4 + struct.unpack("<I", value)[0]
            elif elem in _META_UIDS:
                out[_META_UIDS[elem]] = value.rstrip(b"\0 ").decode("ascii", "replace")
            pos = start + length
        return out


def _pydicom_file_meta(path: Path) -> dict[str, str]:
    from pydicom.filereader import read_file_meta_info

    meta = read_file_meta_info(path)
    return {k: str(meta.get(k, "") or "") for k in _META_UIDS.values() if k in meta}


def read_send_item(path: Path, sop_uid: str, series_uid: str | None,
                   sop_class: str | None = None) -> SendItem | Outcome:
    """Read only the file meta group of ``path``; a failed Outcome when it cannot be sent."""

    def failed(reason: str) -> Outcome:
        return Outcome(sop_uid, series_uid, FAILED, reason, {"path": str(path)})

    try:
        size = path.stat().st_size
        meta = read_file_meta(path)
    except FileNotFoundError:
        return failed("file missing")
    except Exception as exc:            # unreadable, or pydicom's fallback refusing it
        return failed(f"unreadable file: {exc}")
    if meta is None or not meta.get("TransferSyntaxUID"):
        if not sop_class:
            return failed("no file meta and no SOP class known")
        if not _is_uid(sop_class):
            return failed(f"the SOP class {sop_class!r} is not a valid UID")
        return SendItem(sop_uid, series_uid, path, sop_class, IMPLICIT_LE, False, size)
    file_sop = meta.get("MediaStorageSOPInstanceUID", "")
    if file_sop and file_sop != sop_uid:
        return failed(f"the file holds SOP instance {file_sop}, not the planned one "
                      "(the archive changed since planning)")
    klass = meta.get("MediaStorageSOPClassUID", "") or sop_class or ""
    if not klass:
        return failed("no SOP class in the file meta")
    for what, uid in (("SOP class", klass), ("transfer syntax", meta["TransferSyntaxUID"])):
        if not _is_uid(uid):     # it could not even be proposed in an association request
            return failed(f"the file meta's {what} {uid!r} is not a valid UID")
    return SendItem(sop_uid, series_uid, path, klass, meta["TransferSyntaxUID"], True, size)


_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def _is_uid(value: str) -> bool:
    """A DICOM UID: digits and dots, no leading zeros, at most 64 characters."""
    return len(value) <= 64 and _UID.fullmatch(value) is not None


def _contexts_of(items: Sequence[SendItem]) -> dict[tuple[str, str], None]:
    return dict.fromkeys((i.sop_class, i.transfer_syntax) for i in items)


def group_associations(items: Sequence[SendItem], *, parts: int = 1,
                       max_contexts: int = MAX_CONTEXTS) -> list[list[SendItem]]:
    """Split items (in plan order) into association batches.

    A series stays on one association; a batch holds at most ``max_contexts`` distinct
    (SOP class, transfer syntax) pairs; with ``parts`` > 1 batches are cut at about a
    ``1/(2*parts)`` share of the bytes so parallel associations get balanced work.  Only a series
    that alone needs more than ``max_contexts`` contexts is split.
    """
    series: dict[str | None, list[SendItem]] = {}
    for item in items:
        series.setdefault(item.series_uid, []).append(item)
    total = sum(max(i.size, 1) for i in items)
    share = total / (2 * parts) if parts > 1 else float("inf")

    batches: list[list[SendItem]] = []
    current: list[SendItem] = []
    ctx: dict[tuple[str, str], None] = {}
    size = 0
    for members in series.values():
        for chunk in _split_by_contexts(members, max_contexts):
            need = _contexts_of(chunk)
            if current and (len(ctx.keys() | need.keys()) > max_contexts or size >= share):
                batches.append(current)
                current, ctx, size = [], {}, 0
            current.extend(chunk)
            ctx.update(need)
            size += sum(max(i.size, 1) for i in chunk)
    if current:
        batches.append(current)
    return batches


def _split_by_contexts(members: list[SendItem], max_contexts: int) -> list[list[SendItem]]:
    if len(_contexts_of(members)) <= max_contexts:
        return [members]
    chunks: list[list[SendItem]] = [[]]
    seen: set[tuple[str, str]] = set()
    for item in members:
        key = (item.sop_class, item.transfer_syntax)
        if key not in seen and len(seen) == max_contexts:
            chunks.append([])
            seen = set()
        seen.add(key)
        chunks[-1].append(item)
    return chunks


# --------------------------------------------------------------------------------------------
# transports
# --------------------------------------------------------------------------------------------

class DryTransport:
    """Walks the batches and answers what would be sent; no traffic."""

    def send(self, batches: Sequence[Sequence[SendItem]], on_outcome: OnOutcome) -> None:
        for number, batch in enumerate(batches, 1):
            for item in batch:
                on_outcome(Outcome(item.sop_uid, item.series_uid, DONE, "would send",
                                   {"association": number, "transfer_syntax":
                                    item.transfer_syntax}))


class _AssociationLost(Exception):
    pass


@dataclass
class DicomTransport:
    """Sends over real associations: one in the calling thread's process, several in worker
    processes (``net_workers``; threads when forking is not safe here)."""

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
                from .net_workers import can_fork, send_in_processes

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

    # -- one association's worth of items, with retries -----------------------------------
    def _send_batch(self, batch: Sequence[SendItem], emit: OnOutcome) -> None:
        s = self.settings
        remaining = list(batch)
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
                    remaining = remaining[int(str(exc)):]
                    last_error = "association lost during the send"
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
            syntaxes = [ts] + ([t for t in UNCOMPRESSED if t != ts] if ts in UNCOMPRESSED else [])
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
            if item.has_meta and item.transfer_syntax in syntaxes:
                payload: Any = item.path                     # streamed as stored
            elif item.transfer_syntax in UNCOMPRESSED and syntaxes & set(UNCOMPRESSED):
                payload = _decoded(item)                     # re-encoded by pynetdicom
            else:
                emit(Outcome(item.sop_uid, item.series_uid, FAILED,
                             "not accepted by the peer: SOP class "
                             f"{item.sop_class} with transfer syntax {item.transfer_syntax}",
                             {"sop_class": item.sop_class,
                              "transfer_syntax": item.transfer_syntax}))
                continue
            try:
                status = assoc.send_c_store(payload, msg_id=(n % 65535) + 1)
            except (RuntimeError, OSError):
                raise _AssociationLost(n) from None
            except (ValueError, AttributeError) as exc:
                emit(Outcome(item.sop_uid, item.series_uid, FAILED, f"cannot send: {exc}", {}))
                continue
            if "Status" not in status:
                raise _AssociationLost(n)
            emit(_status_outcome(item, int(status.Status)))
            if not held:
                settle_after_request(assoc)
        return []


def _decoded(item: SendItem) -> Any:
    from pydicom import dcmread
    from pydicom.dataset import FileMetaDataset

    ds = dcmread(item.path, force=True)
    if not item.has_meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = item.transfer_syntax
    return ds


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
