"""The C-STORE / C-ECHO SCP behind ``conquest-run serve`` (and ``Archive.listen``).

Each received dataset is written as received (file meta + the peer's encoded bytes, never
decoded and re-encoded) into ``data/<safe PatientID>/`` through a temporary file and a rename,
then indexed by a writer thread that commits in batches (every ``BATCH_FILES`` files or
``BATCH_SECONDS``), on a WAL connection so jobs can read while it writes.

Binds 127.0.0.1 unless told otherwise; with ``allow`` only those calling AE titles may associate.
``Receiver.stop()`` stops accepting, lets the associations in flight finish (bounded), flushes
the index and closes.
"""

from __future__ import annotations

__all__ = ["ReceiverSettings", "Receiver", "ArchiveIndex", "listen", "storage_contexts",
           "TRANSFER_SYNTAXES"]

import io
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import NetworkError
from .net import VERIFICATION_SOP_CLASS, set_tcp_nodelay

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
BATCH_FILES = 200
BATCH_SECONDS = 0.2
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000

IndexBatch = Callable[[list[tuple[Path, str]]], None]   # [(absolute path, ObjectFile)]


@dataclass(frozen=True)
class ReceiverSettings:
    port: int
    host: str = "127.0.0.1"
    aet: str = "CONQUEST"
    allow: tuple[str, ...] = ()            # calling AE titles allowed; empty: any
    timeout: float = 60.0                  # network / DIMSE timeout of an association
    stop_timeout: float = 30.0             # how long stop() waits for associations in flight


def storage_contexts() -> list[Any]:
    """Every storage SOP class pynetdicom knows (RT included) plus Verification."""
    from pynetdicom.presentation import AllStoragePresentationContexts, build_context

    classes = [cx.abstract_syntax for cx in AllStoragePresentationContexts]
    return [build_context(VERIFICATION_SOP_CLASS)] + [
        build_context(uid, list(TRANSFER_SYNTAXES)) for uid in classes]


@dataclass
class _Stats:
    received: int = 0
    failed: int = 0
    indexed: int = 0
    index_errors: list[str] = field(default_factory=list)


class Receiver:
    """A running storage SCP (start with :func:`listen`)."""

    def __init__(self, data_dir: str | Path, settings: ReceiverSettings,
                 index_batch: IndexBatch | None = None,
                 on_stored: Callable[[Path], None] | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.settings = settings
        self.stats = _Stats()
        self._index_batch = index_batch
        self._on_stored = on_stored
        self._server: Any = None
        self._queue: queue.SimpleQueue[tuple[Path, str] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> "Receiver":
        from pynetdicom import AE, evt

        s = self.settings
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=s.aet)
        ae.supported_contexts = storage_contexts()
        ae.network_timeout = ae.dimse_timeout = ae.acse_timeout = s.timeout
        ae.maximum_pdu_size = 0            # no limit: fewer, larger PDUs from the sender
        if s.allow:
            ae.require_calling_aet = list(s.allow)
        handlers = [(evt.EVT_CONN_OPEN, set_tcp_nodelay),
                    (evt.EVT_C_STORE, self._on_c_store),
                    (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS)]
        if self._index_batch is not None:
            self._writer = threading.Thread(target=self._index_loop, name="receiver-index",
                                            daemon=True)
            self._writer.start()
        try:
            self._server = ae.start_server((s.host, s.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            self._stop_writer()
            raise NetworkError(f"cannot listen on {s.host}:{s.port}: {exc.strerror or exc}") \
                from None
        return self

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0)."""
        return int(self._server.server_address[1]) if self._server else self.settings.port

    def stop(self) -> None:
        """Stop accepting, let associations in flight finish (bounded), flush the index."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()              # no new associations; running ones go on
            deadline = time.monotonic() + self.settings.stop_timeout
            while server.active_associations and time.monotonic() < deadline:
                time.sleep(0.05)
            for assoc in server.active_associations:
                assoc.abort()
        self._stop_writer()

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- storing ------------------------------------------------------------------------
    def _on_c_store(self, event: Any) -> int:
        try:
            encoded = event.encoded_dataset(include_meta=True)
            path, object_file = self._write(encoded, _patient_id(encoded),
                                            str(event.request.AffectedSOPInstanceUID))
        except OSError:
            with self._lock:
                self.stats.failed += 1
            return STATUS_OUT_OF_RESOURCES
        except Exception:                  # unreadable dataset
            with self._lock:
                self.stats.failed += 1
            return STATUS_CANNOT_UNDERSTAND
        with self._lock:
            self.stats.received += 1
        if self._writer is not None:
            self._queue.put((path, object_file))
        if self._on_stored is not None:
            self._on_stored(path)
        return STATUS_SUCCESS

    def _write(self, encoded: bytes, patient_id: str, sop_uid: str) -> tuple[Path, str]:
        folder = _safe_patient_dir(self.data_dir, patient_id)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{_safe_component(sop_uid)}.dcm"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".rx-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(encoded)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target, target.relative_to(self.data_dir).as_posix()

    # -- indexing -----------------------------------------------------------------------
    def _index_loop(self) -> None:
        assert self._index_batch is not None
        pending: list[tuple[Path, str]] = []
        last = time.monotonic()
        done = False
        while not done:
            try:
                item = self._queue.get(timeout=BATCH_SECONDS)
                if item is None:
                    done = True
                else:
                    pending.append(item)
            except queue.Empty:
                pass
            if pending and (done or len(pending) >= BATCH_FILES
                            or time.monotonic() - last >= BATCH_SECONDS):
                self._flush(pending)
                pending = []
                last = time.monotonic()

    def _flush(self, batch: list[tuple[Path, str]]) -> None:
        assert self._index_batch is not None
        try:
            result = self._index_batch(batch)
            self.stats.indexed += len(batch) - len(getattr(result, "bad", ()))
        except Exception as exc:           # the files are stored; a rebuild can index them
            self.stats.index_errors.append(str(exc))

    def _stop_writer(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join(self.settings.stop_timeout)
            self._writer = None
        close = getattr(self._index_batch, "close", None)
        if close is not None:
            close()
            self._index_batch = None


def _safe_component(text: str) -> str:
    """Shim until store.py lands: one safe path component."""
    import re

    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text.strip()).lstrip(".")
    return cleaned[:64] or "_"


def _safe_patient_dir(data_dir: Path, patient_id: str) -> Path:
    return data_dir / _safe_component(patient_id or "unknown")


def _patient_id(encoded: bytes) -> str:
    """PatientID of an encoded file, reading the header only up to (0010,0020)."""
    from pydicom.filereader import read_partial

    ds = read_partial(io.BytesIO(encoded), stop_when=_after_patient_id)
    return str(ds.get("PatientID", "") or "")


def _after_patient_id(tag: Any, vr: Any, length: Any) -> bool:
    return tag > 0x00100020


class ArchiveIndex:
    """Indexes received files into an archive database (one WAL connection, batched)."""

    def __init__(self, data_dir: str | Path, database: str | Path,
                 dicom_sql: str | Path | None = None) -> None:
        from .db import connect, ensure_schema
        from .indexer import Indexer
        from .schema import load_schema

        schema = load_schema(dicom_sql)
        self.conn = connect(database)
        try:
            ensure_schema(self.conn, schema)
        except BaseException:
            self.conn.close()
            raise
        self.indexer = Indexer(self.conn, schema, data_dir, exclude=[database])

    def __call__(self, batch: list[tuple[Path, str]]) -> Any:
        return self.indexer.index_files([rel for _, rel in batch])

    def close(self) -> None:
        self.conn.close()


def listen(data_dir: str | Path, port: int, *, database: str | Path | None = None,
           dicom_sql: str | Path | None = None, index: bool = True, host: str = "127.0.0.1",
           aet: str = "CONQUEST", allow: Sequence[str] = (), timeout: float = 60.0,
           stop_timeout: float = 30.0) -> Receiver:
    """Start a storage SCP writing into ``data_dir`` (and indexing into ``database`` unless
    ``index`` is false); returns the running :class:`Receiver` (``.stop()`` it)."""
    settings = ReceiverSettings(port=port, host=host, aet=aet, allow=tuple(allow),
                                timeout=timeout, stop_timeout=stop_timeout)
    index_batch = ArchiveIndex(data_dir, database, dicom_sql) \
        if index and database is not None else None
    try:
        return Receiver(data_dir, settings, index_batch).start()
    except BaseException:
        if index_batch is not None:
            index_batch.close()
        raise
