"""The query/retrieve SCU of a job: C-FIND a remote node (study root, study then series level),
then C-MOVE or C-GET its series into the archive.

* :func:`find_series` asks at STUDY level (patient, study UIDs, study date), then at SERIES level
  in each study, and returns one :class:`RemoteSeries` per series with the remote instance count
  (NumberOfSeriesRelatedInstances, or an IMAGE-level count when the node does not give it).
  Every key is also checked on the answers, so a node that ignores a key selects no more.
* :class:`RetrieveStore` is ``serve``'s own storage SCP (the same :class:`~.receiver.Receiver`
  and :class:`~.receiver.ArchiveSink`: files as received, fsync'ed, indexed) with each C-STORE
  attributed to the retrieve it belongs to: for a C-MOVE through its Move Originator AE title and
  Message ID; a C-STORE naming another originator is refused (0x0124, not authorized).
* :func:`move_series` C-MOVEs each series to the job's own AE (the store listens meanwhile);
  :func:`get_series` C-GETs them over one association offering the storage contexts in the SCP
  role (within the 128-context limit).  Each series ends in a :class:`SeriesResult`: the
  completed, failed and warning sub-operations, the failed SOP instances and what arrived.
"""

from __future__ import annotations

__all__ = ["RemoteNode", "RemoteSeries", "SeriesResult", "Arrival", "RetrieveStore",
           "find_series", "move_series", "get_series", "STUDY_ROOT_FIND", "STUDY_ROOT_MOVE",
           "STUDY_ROOT_GET"]

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..errors import NetworkError
from .glue import pynetdicom_config, tune_connection
from .receiver import TRANSFER_SYNTAXES, ArchiveSink, Receiver, ReceiverSettings
from .settings import MAX_CONTEXTS, QUIET, check_ae_title, resolve_host

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
PENDING = (0xFF00, 0xFF01)
STATUS_NOT_AUTHORIZED = 0x0124
MAX_MATCHES = 100_000          # responses to one C-FIND before the node is told to narrow it


@dataclass(frozen=True)
class RemoteNode:
    """A query/retrieve peer as a job's ``nodes:`` names it."""

    host: str
    port: int
    called_ae: str
    calling_ae: str = "CONQUEST_RUN"
    timeout: float = 30.0

    def __post_init__(self) -> None:
        check_ae_title(self.called_ae, "the called AE title")
        check_ae_title(self.calling_ae, "the calling AE title")

    @property
    def target(self) -> str:
        return f"{self.called_ae}@{self.host}:{self.port}"


@dataclass(frozen=True)
class RemoteSeries:
    patient_id: str | None
    study_uid: str
    study_date: str | None
    series_uid: str
    modality: str | None
    description: str | None
    instances: int | None       # the node's count (None: it gave none)


@dataclass(frozen=True)
class Arrival:
    """One C-STORE the store answered: the series it was attributed to, its status."""

    series_uid: str
    sop_uid: str
    status: int
    object_file: str | None
    originator: str = ""        # "AE#message-id" of a C-MOVE; "" for a C-GET


@dataclass
class SeriesResult:
    series_uid: str
    status: int | None = None   # the final C-MOVE / C-GET status (None: no final answer)
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: tuple[str, ...] = ()
    error: str | None = None    # why the retrieve of this series did not finish
    arrivals: list[Arrival] = field(default_factory=list)


# -- associations ------------------------------------------------------------------------
@contextmanager
def _associated(node: RemoteNode, contexts: Sequence[tuple[str, Sequence[str] | None]],
                what: str, *, roles: Sequence[Any] = (),
                handlers: Sequence[Any] = ()) -> Iterator[Any]:
    from pynetdicom import AE, evt

    resolve_host(node.host, node.port, f"{what} at {node.target}")
    ae = AE(ae_title=node.calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = node.timeout
    ae.connection_timeout = node.timeout
    ae.maximum_pdu_size = 4 * 1024 * 1024
    for uid, syntaxes in contexts[:MAX_CONTEXTS]:
        if syntaxes is None:
            ae.add_requested_context(uid)
        else:
            ae.add_requested_context(uid, list(syntaxes))
    opened = threading.Event()
    with pynetdicom_config(LOG_HANDLER_LEVEL=QUIET):
        assoc = ae.associate(node.host, node.port, ae_title=node.called_ae,
                             ext_neg=list(roles) or None,
                             evt_handlers=[(evt.EVT_CONN_OPEN, tune_connection),
                                           (evt.EVT_CONN_OPEN, lambda event: opened.set()),
                                           *handlers])
        if not assoc.is_established:
            if assoc.is_rejected:
                raise NetworkError(f"{what} at {node.target}: association rejected by the "
                                   f"node (is our AE title {node.calling_ae} known to it?)")
            if not opened.is_set():
                raise NetworkError(f"{what} at {node.target}: no DICOM node listening at "
                                   f"{node.host}:{node.port}")
            raise NetworkError(f"{what} at {node.target}: association aborted")
        if not any(cx.abstract_syntax == contexts[0][0] for cx in assoc.accepted_contexts):
            assoc.release()
            raise NetworkError(f"{what} at {node.target}: the node does not offer the "
                               "study root query/retrieve model for this")
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()


def _identifier(level: str, keys: dict[str, str], wanted: Sequence[str]) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for name in wanted:
        setattr(ds, name, "")
    for name, value in keys.items():
        setattr(ds, name, value)
    return ds


def _find(assoc: Any, node: RemoteNode, level: str, keys: dict[str, str],
          wanted: Sequence[str]) -> list[Any]:
    out = []
    for status, ident in assoc.send_c_find(_identifier(level, keys, wanted), STUDY_ROOT_FIND):
        if not status or "Status" not in status:
            raise NetworkError(f"C-FIND at {node.target}: no answer within {node.timeout:g} s "
                               "(or the association was lost)")
        code = int(status.Status)
        if code in PENDING:
            if ident is not None:
                out.append(ident)
            if len(out) > MAX_MATCHES:
                assoc.abort()
                raise NetworkError(f"C-FIND at {node.target}: more than {MAX_MATCHES} "
                                   f"{level.lower()} matches; narrow the select")
        elif code == 0x0000:
            break
        else:
            raise NetworkError(f"C-FIND at {node.target} ({level} level): the node answered "
                               f"status 0x{code:04X}")
    return out


def _text(ds: Any, name: str) -> str | None:
    value = ds.get(name)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _count(ds: Any) -> int | None:
    try:
        value = ds.get("NumberOfSeriesRelatedInstances")
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def find_series(node: RemoteNode, *, patient: Sequence[str] = (), study: Sequence[str] = (),
                series: Sequence[str] = (), modality: Sequence[str] = (),
                study_date: str | None = None,
                date_matches: Callable[[str | None], bool] = lambda d: True
                ) -> list[RemoteSeries]:
    """The node's series matching the keys (values of one key ORed, keys ANDed), sorted by
    patient, study and series UID.  ``date_matches`` re-checks each study's date."""
    study_keys: dict[str, str] = {}
    if study:
        study_keys["StudyInstanceUID"] = "\\".join(study)
    if study_date:
        study_keys["StudyDate"] = study_date
    wanted_study = ("PatientID", "StudyInstanceUID", "StudyDate")
    wanted_series = ("SeriesInstanceUID", "Modality", "SeriesDescription",
                     "NumberOfSeriesRelatedInstances")
    out: list[RemoteSeries] = []
    with _associated(node, [(STUDY_ROOT_FIND, None)], "C-FIND") as assoc:
        studies: dict[str, tuple[str | None, str | None]] = {}
        for pid in (patient or [None]):
            keys = dict(study_keys, **({"PatientID": pid} if pid is not None else {}))
            for ds in _find(assoc, node, "STUDY", keys, wanted_study):
                uid = _text(ds, "StudyInstanceUID")
                if uid is None or (study and uid not in study):
                    continue
                pid_found, date = _text(ds, "PatientID"), _text(ds, "StudyDate")
                if (patient and pid_found not in patient) or not date_matches(date):
                    continue
                studies.setdefault(uid, (pid_found, date))
        for study_uid, (pid, date) in sorted(studies.items()):
            keys = {"StudyInstanceUID": study_uid}
            if series:
                keys["SeriesInstanceUID"] = "\\".join(series)
            if len(modality) == 1:
                keys["Modality"] = modality[0]
            for ds in _find(assoc, node, "SERIES", keys, wanted_series):
                uid, mod = _text(ds, "SeriesInstanceUID"), _text(ds, "Modality")
                if uid is None or (series and uid not in series) or \
                        (modality and mod not in modality):
                    continue
                count = _count(ds)
                if count is None:
                    count = len(_find(assoc, node, "IMAGE", {"StudyInstanceUID": study_uid,
                                                             "SeriesInstanceUID": uid},
                                      ("SOPInstanceUID",)))
                out.append(RemoteSeries(pid, study_uid, date, uid, mod,
                                        _text(ds, "SeriesDescription"), count))
    unique = {s.series_uid: s for s in out}
    return sorted(unique.values(), key=lambda s: (s.patient_id or "", s.study_uid, s.series_uid))


# -- the store ---------------------------------------------------------------------------
class _RecordingSink:
    """The archive's sink, remembering where each stored instance went."""

    def __init__(self, inner: ArchiveSink) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.placed: dict[str, str] = {}

    def put(self, encoded: bytes, sop_uid: str) -> str:
        object_file = self.inner.put(encoded, sop_uid)
        with self.lock:
            self.placed[sop_uid] = object_file
        return object_file

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()


class RetrieveStore(Receiver):
    """``serve``'s receiver into the archive, attributing each C-STORE to a retrieve.

    For C-MOVE it listens (``start()``) on ``port`` under our AE title; for C-GET it is not
    started, and its handler answers the C-STOREs of the C-GET association.  The requests
    are made one series at a time: ``expect(series_uid, message_id)`` names the current one.
    """

    def __init__(self, archive: Any, aet: str, port: int = 0, host: str = "127.0.0.1",
                 timeout: float = 60.0, log: Callable[[str], None] | None = None) -> None:
        sink = _RecordingSink(ArchiveSink(archive.data_dir, archive.database,
                                          archive.dicom_sql))
        super().__init__(archive.data_dir, ReceiverSettings(port=port, host=host, aet=aet,
                                                            timeout=timeout), sink, log)
        self.aet = aet
        self.placed = sink.placed
        self._mutex = threading.Lock()
        self._moves: dict[int, str] = {}       # C-MOVE message ID -> series UID
        self._current: str | None = None       # the series being retrieved now
        self._arrived: list[Arrival] = []

    def expect(self, series_uid: str | None, message_id: int | None = None) -> None:
        with self._mutex:
            self._current = series_uid
            if message_id is not None and series_uid is not None:
                self._moves[message_id] = series_uid

    def take(self) -> list[Arrival]:
        """What arrived since the last call (called by the requesting thread)."""
        with self._mutex:
            out, self._arrived = self._arrived, []
        return out

    def _attribute(self, request: Any) -> tuple[str | None, str]:
        message_id = request.MoveOriginatorMessageID
        origin = (request.MoveOriginatorApplicationEntityTitle or "").strip()
        with self._mutex:
            if message_id is None and not origin:
                return self._current, ""       # a C-GET, or a node that sets neither field
            if origin == self.aet.strip() and message_id in self._moves:
                return self._moves[message_id], f"{origin}#{message_id}"
        return None, f"{origin}#{message_id}"

    def _on_c_store(self, event: Any) -> int:
        request = event.request
        series_uid, origin = self._attribute(request)
        sop_uid = str(request.AffectedSOPInstanceUID)
        if series_uid is None:
            self.notice(f"C-STORE of {sop_uid} refused (0x0124): its Move Originator "
                        f"({origin}) is not a retrieve of this job")
            return STATUS_NOT_AUTHORIZED
        status = super()._on_c_store(event)
        with self._mutex:
            self._arrived.append(Arrival(series_uid, sop_uid, status,
                                         self.placed.get(sop_uid), origin))
        return status

    def close(self) -> None:
        """Flush and close the sink when the store was never started (C-GET)."""
        if self._server is None:
            self.sink.close()
        else:
            self.stop()


# -- retrieving --------------------------------------------------------------------------
def _retrieve_identifier(s: RemoteSeries) -> Any:
    return _identifier("SERIES", {"StudyInstanceUID": s.study_uid,
                                  "SeriesInstanceUID": s.series_uid}, ())


def _collect(responses: Iterator[tuple[Any, Any]], result: SeriesResult, node: RemoteNode,
             what: str) -> None:
    for status, ident in responses:
        if not status or "Status" not in status:
            result.error = (f"{what} at {node.target}: no answer within {node.timeout:g} s "
                            "(or the association was lost)")
            return
        code = int(status.Status)
        for name, attr in (("NumberOfCompletedSuboperations", "completed"),
                           ("NumberOfFailedSuboperations", "failed"),
                           ("NumberOfWarningSuboperations", "warning")):
            if name in status and status.get(name) not in (None, ""):
                setattr(result, attr, int(status.get(name)))
        if code in PENDING:
            continue
        result.status = code
        failed = ident.get("FailedSOPInstanceUIDList") if ident is not None else None
        if failed:
            values = [failed] if isinstance(failed, str) else list(failed)
            result.failed_uids = tuple(str(u) for u in values)
        return


def move_series(node: RemoteNode, series: Sequence[RemoteSeries], store: RetrieveStore,
                on_result: Callable[[SeriesResult], None]) -> None:
    """C-MOVE each series to ``store.aet`` (the store listening); one association."""
    with _associated(node, [(STUDY_ROOT_MOVE, None)], "C-MOVE") as assoc:
        for number, s in enumerate(series, 1):
            result = SeriesResult(s.series_uid)
            store.expect(s.series_uid, number)
            _collect(assoc.send_c_move(_retrieve_identifier(s), store.aet, STUDY_ROOT_MOVE,
                                       msg_id=number), result, node, "C-MOVE")
            store.sink.flush()
            store.expect(None)
            result.arrivals = store.take()
            on_result(result)
            if result.error is not None or not assoc.is_established:
                for rest in series[number:]:
                    on_result(SeriesResult(rest.series_uid, error="not retrieved: the "
                                           "association to the node was lost"))
                return


def get_series(node: RemoteNode, series: Sequence[RemoteSeries], store: RetrieveStore,
               on_result: Callable[[SeriesResult], None]) -> None:
    """C-GET each series over one association; the C-STOREs come back on it (SCP role)."""
    from pynetdicom import StoragePresentationContexts, evt
    from pynetdicom.presentation import build_role

    classes = [cx.abstract_syntax for cx in StoragePresentationContexts][:MAX_CONTEXTS - 1]
    contexts = [(STUDY_ROOT_GET, None)] + [(uid, TRANSFER_SYNTAXES) for uid in classes]
    roles = [build_role(uid, scp_role=True) for uid in classes]
    with _associated(node, contexts, "C-GET", roles=roles,
                     handlers=[(evt.EVT_C_STORE, store._on_c_store)]) as assoc:
        for number, s in enumerate(series, 1):
            result = SeriesResult(s.series_uid)
            store.expect(s.series_uid)
            _collect(assoc.send_c_get(_retrieve_identifier(s), STUDY_ROOT_GET, msg_id=number),
                     result, node, "C-GET")
            store.sink.flush()
            store.expect(None)
            result.arrivals = store.take()
            on_result(result)
            if result.error is not None or not assoc.is_established:
                for rest in series[number:]:
                    on_result(SeriesResult(rest.series_uid, error="not retrieved: the "
                                           "association to the node was lost"))
                return
