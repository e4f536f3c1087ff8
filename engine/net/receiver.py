"""The C-STORE / C-ECHO SCP behind ``conquest-run serve`` (and ``Archive.listen``).

Each received dataset is written as received (file meta + the peer's encoded bytes, never
decoded and re-encoded) into ``data/<safe PatientID>/<SOPInstanceUID>.dcm`` through a temporary
file and a rename (``datasetstore.DatasetStore``), and its index rows are committed on a WAL connection,
so a job can read while the receiver writes.  A C-STORE is answered "success" only once the file
and its folder are fsync'ed and its rows committed (commits grouped across associations); one
whose commit fails is answered 0xA700 and its rows are retried by a flusher thread.

Binds 127.0.0.1 unless told otherwise; with ``allow`` only those calling AE titles may associate.
``limits.ConnectionGuard`` bounds what a peer can make it read, hold or wait for.
``Receiver.stop()`` stops accepting, lets the associations in flight finish (bounded), flushes
the index and closes.
"""

from __future__ import annotations

__all__ = ["ReceiverSettings", "Receiver", "ArchiveSink", "FileSink", "listen",
           "storage_contexts", "part10_bytes", "TRANSFER_SYNTAXES"]

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ArchiveError, DicomFileError, NetworkError
from .glue import pynetdicom_config
from .part10 import part10_bytes
from .sinks import ArchiveSink, FileSink, Sink
from .limits import ConnectionGuard, dataset_mismatch, peer_name
from .settings import QUIET, VERIFICATION_SOP_CLASS

TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",      # Explicit VR Little Endian
    "1.2.840.10008.1.2",        # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",      # Explicit VR Big Endian (retired, still sent)
    "1.2.840.10008.1.2.1.99",   # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",   # JPEG Baseline
    "1.2.840.10008.1.2.4.51",   # JPEG Extended
    "1.2.840.10008.1.2.4.57",   # JPEG Lossless
    "1.2.840.10008.1.2.4.70",   # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",   # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",   # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",   # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",   # JPEG 2000
    "1.2.840.10008.1.2.5",      # RLE Lossless
)
BATCH_SECONDS = 0.2                    # the flusher retries rows whose commit failed
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_DATASET_MISMATCH = 0xA900       # "Data Set does not match SOP Class", as storescp says


@dataclass(frozen=True)
class ReceiverSettings:
    port: int
    host: str = "127.0.0.1"
    aet: str = "CONQUEST"
    allow: tuple[str, ...] = ()            # calling AE titles allowed; empty: any
    timeout: float = 60.0                  # network / DIMSE timeout of an association
    stop_timeout: float = 30.0             # how long stop() waits for associations in flight
    acse_timeout: float = 5.0              # ARTIM: a complete A-ASSOCIATE-RQ within this
    max_associations: int = 10             # simultaneous associations
    max_pdu: int = 4 * 1024 * 1024         # our maximum PDU length (bytes)
    busy_timeout: float | None = None      # SQLite busy timeout (s); None: db.connect's

    def __post_init__(self) -> None:
        from ..errors import ConquestRunError
        from .settings import check_ae_title
        check_ae_title(self.aet, "our AE title (--aet)")
        for title in self.allow:
            check_ae_title(title, "the allowed calling AE title")
        for name, value, low, high in (("timeout", self.timeout, 0.1, 86400),
                                       ("ACSE timeout", self.acse_timeout, 0.1, 3600),
                                       ("maximum number of associations",
                                        self.max_associations, 1, 1000),
                                       ("maximum PDU length", self.max_pdu, 4096, 1 << 30)):
            if not low <= value <= high:
                raise ConquestRunError(f"the {name} must be between {low} and {high}, "
                                       f"not {value}")


def storage_contexts(scp_role: bool = False) -> list[Any]:
    """Every storage SOP class pynetdicom knows (RT included) plus Verification; with
    ``scp_role`` a requestor may also take the SCP role for them (a C-GET's sub-operations)."""
    from pynetdicom.presentation import AllStoragePresentationContexts, build_context

    classes = [cx.abstract_syntax for cx in AllStoragePresentationContexts]
    contexts = [build_context(uid, list(TRANSFER_SYNTAXES)) for uid in classes]
    for cx in contexts if scp_role else ():
        cx.scu_role = cx.scp_role = True
    return [build_context(VERIFICATION_SOP_CLASS)] + contexts


class Receiver:
    """A storage SCP; :func:`listen` makes and starts one."""

    def __init__(self, data_dir: str | Path, settings: ReceiverSettings,
                 sink: Sink | None = None, log: Callable[[str], None] | None = None,
                 qr: Any = None, audit: Any = None) -> None:
        self.data_dir = Path(data_dir)
        self.settings = settings
        self.sink: Sink = sink if sink is not None else FileSink(self.data_dir)
        self.received = 0
        self.failed = 0
        self.errors: list[str] = []        # the first few reasons of failed stores
        self.refusals: list[str] = []      # the first few peers refused by the guards
        self._log = log
        self.qr = qr                       # qrscp.QueryRetrieve: C-FIND / C-MOVE / C-GET
        self.audit = audit                 # serveaudit.ServeAudit
        self._server: Any = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._flusher: threading.Thread | None = None
        self._config = ExitStack()         # pynetdicom settings for the server's lifetime

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> "Receiver":
        from pynetdicom import AE, evt

        s = self.settings
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=s.aet)
        for cx in storage_contexts(scp_role=self.qr is not None) + (
                self.qr.contexts() if self.qr is not None else []):    # roles kept
            ae.add_supported_context(cx.abstract_syntax, cx.transfer_syntax, cx.scu_role,
                                     cx.scp_role)
        ae.network_timeout = ae.dimse_timeout = s.timeout
        ae.acse_timeout = s.acse_timeout
        ae.maximum_pdu_size = s.max_pdu
        ae.maximum_associations = s.max_associations
        if s.allow:
            ae.require_calling_aet = list(s.allow)
        guard = ConnectionGuard(s.acse_timeout, s.max_pdu, self.notice)
        handlers = [*guard.handlers(),
                    (evt.EVT_C_STORE, self._on_c_store),
                    (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS),
                    *(self.qr.handlers() if self.qr is not None else ()),
                    *(self.audit.handlers() if self.audit is not None else ())]
        # no per-message log handlers on the acceptor associations (most of their CPU time)
        self._config.enter_context(pynetdicom_config(LOG_HANDLER_LEVEL=QUIET,
                                                     STORE_SEND_CHUNKED_DATASET=True))
        try:
            self._server = ae.start_server((s.host, s.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            self._config.close()
            self.sink.close()
            why = f"cannot listen on {s.host}:{s.port}: {exc.strerror or exc}"
            if self.audit is not None:
                self.audit.close(0, 0, error=why)
            raise NetworkError(why) from None
        self._flusher = threading.Thread(target=self._flush_loop, name="receiver-flush",
                                         daemon=True)
        self._flusher.start()
        return self

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0)."""
        return int(self._server.server_address[1]) if self._server else self.settings.port

    def stop(self) -> None:
        """Stop accepting, let associations in flight finish (bounded), flush, close."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()                  # no new associations; running ones go on
        deadline = time.monotonic() + self.settings.stop_timeout
        while time.monotonic() < deadline and any(
                a.is_established for a in server.active_associations):
            time.sleep(0.05)           # a connection that never associated is not waited for
        for assoc in server.active_associations:
            assoc.abort()
        self._stopping.set()
        if self._flusher is not None:
            self._flusher.join(self.settings.stop_timeout)
        self._config.close()
        try:
            self.sink.close()
        except ArchiveError as exc:        # the last commit failed (a full disk): said once
            self.notice(str(exc))
        finally:
            if self.audit is not None:
                try:
                    self.audit.close(self.received, self.failed)
                except ArchiveError as exc:    # a full disk again: said, not raised
                    self.notice(str(exc))

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- storing ------------------------------------------------------------------------
    def _on_c_store(self, event: Any) -> int:
        status = self._store(event)
        if self.audit is not None:
            self.audit.stored(event.assoc, status == STATUS_SUCCESS)
        return status

    def _store(self, event: Any) -> int:
        try:
            request = event.request
            sop_uid = str(request.AffectedSOPInstanceUID)
            sop_class = str(request.AffectedSOPClassUID)
            encoded = part10_bytes(sop_class, sop_uid, str(event.context.transfer_syntax),
                                   request.DataSet.getvalue())
            mismatch = dataset_mismatch(encoded, sop_class, sop_uid)
            if mismatch:
                self.notice(f"{peer_name(event)}: C-STORE refused (0xA900): {mismatch}")
                return self._failure(STATUS_DATASET_MISMATCH, DicomFileError(mismatch))
            self.sink.put(encoded, sop_uid)
        except (OSError, ArchiveError) as exc:
            from ..db import disk_full_message, is_disk_full
            if is_disk_full(exc):
                self.notice(f"{peer_name(event)}: C-STORE failed (0xA700): "
                            f"{disk_full_message(exc)}")
            elif "the disk is full" in str(exc):
                self.notice(f"{peer_name(event)}: C-STORE failed (0xA700): {exc}")
            return self._failure(STATUS_OUT_OF_RESOURCES, exc)
        except Exception as exc:           # DicomFileError and whatever a damaged dataset raises
            return self._failure(STATUS_CANNOT_UNDERSTAND, exc)
        with self._lock:
            self.received += 1
        return STATUS_SUCCESS

    def notice(self, message: str) -> None:
        """A peer refused or a request failed: kept (the first few) and logged."""
        with self._lock:
            if len(self.refusals) < 20:
                self.refusals.append(message)
        if self._log is not None:
            self._log(message)

    def _failure(self, status: int, exc: BaseException) -> int:
        with self._lock:
            self.failed += 1
            if len(self.errors) < 20:
                self.errors.append(str(exc) if isinstance(exc, DicomFileError)
                                   else f"{type(exc).__name__}: {exc}")
        return status

    def _flush_loop(self) -> None:
        """Retry the rows whose commit failed (their C-STOREs were answered 0xA700)."""
        last = ""
        while not self._stopping.wait(BATCH_SECONDS):
            try:
                self.sink.flush()
                last = ""
            except Exception as exc:
                if str(exc) != last:       # once per distinct reason, not every 0.2 s
                    last = str(exc)
                    self.notice(f"{exc}; retrying")


def listen(data_dir: str | Path, port: int, *, database: str | Path | None = None,
           dicom_sql: str | Path | None = None, index: bool = True, host: str = "127.0.0.1",
           aet: str = "CONQUEST", allow: Sequence[str] = (), timeout: float = 60.0,
           stop_timeout: float = 30.0, acse_timeout: float = 5.0, max_associations: int = 10,
           max_pdu: int = 4 * 1024 * 1024, busy_timeout: float | None = None,
           log: Callable[[str], None] | None = None, nodes: Any = None,
           query_retrieve: bool = True, audit: bool = True) -> Receiver:
    """Start a storage SCP writing into ``data_dir`` (and indexing into ``database`` unless
    ``index`` is false or no database is given); returns the running :class:`Receiver`
    (``.stop()`` it, or use it as a context manager).  With the index, it also answers C-FIND,
    C-GET and C-MOVE (to the ``nodes``, a ``net.nodes.Nodes``) unless ``query_retrieve`` is
    false, and writes its audit record unless ``audit`` is false."""
    settings = ReceiverSettings(port=port, host=host, aet=aet, allow=tuple(allow),
                                timeout=timeout, stop_timeout=stop_timeout,
                                acse_timeout=acse_timeout, max_associations=max_associations,
                                max_pdu=max_pdu, busy_timeout=busy_timeout)
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    indexed = index and database is not None
    sink: Sink = ArchiveSink(data_dir, database, dicom_sql, busy_timeout, log) \
        if indexed else FileSink(data_dir)
    qr = service = None
    if indexed:
        from .qrscp import archive_services
        try:
            qr, service = archive_services(settings, data_dir, database, dicom_sql, nodes,
                                           query_retrieve, audit, log)
        except BaseException:
            sink.close()
            raise
    return Receiver(data_dir, settings, sink, log, qr=qr, audit=service).start()
