"""The query/retrieve SCU of a job: C-FIND a remote node (study root, study then series level),
then C-MOVE or C-GET its series into the archive.

* :func:`find_series` asks at STUDY level (patient, study UIDs, study date), then at SERIES level
  in each study, and returns one :class:`RemoteSeries` per series with the remote instance count
  (NumberOfSeriesRelatedInstances, or an IMAGE-level count when the node does not give it).
  Every key is also checked on the answers, so a node that ignores a key selects no more.
* :func:`move_series` C-MOVEs each series to the job's own AE, where a ``retrievestore.
  RetrieveStore`` (``serve``'s receiver, attributing each C-STORE) listens meanwhile;
  :func:`get_series` C-GETs them over one association offering the storage contexts in the SCP
  role (within the 128-context limit).  Either may ask for only some instances of a series
  (IMAGE level, a UID list; the whole series from a node that refuses the list).  Each series
  ends in a :class:`SeriesResult`: the completed, failed and warning sub-operations, the failed
  SOP instances and what arrived.
"""

from __future__ import annotations

__all__ = ["RemoteNode", "RemoteSeries", "SeriesResult", "Arrival", "RetrieveStore",
           "find_series", "find_instances", "move_series", "get_series", "STUDY_ROOT_FIND",
           "STUDY_ROOT_MOVE", "STUDY_ROOT_GET"]

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..errors import NetworkError
from .glue import pynetdicom_config, settle_after_request, tune_connection
from .receiver import TRANSFER_SYNTAXES
from .retrievestore import Arrival, RetrieveStore
from .settings import MAX_CONTEXTS, QUIET, check_ae_title, resolve_host

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
PENDING = (0xFF00, 0xFF01)
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
    settle_after_request(assoc, 1.0)    # else the reactor may take this request's answers
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


# -- retrieving ------------------------------------------------------------------------
UID_CHUNK = 400       # SOP Instance UIDs per IMAGE-level request (a UI value stays < 64 KiB)


def _series_identifier(s: RemoteSeries) -> Any:
    return _identifier("SERIES", {"StudyInstanceUID": s.study_uid,
                                  "SeriesInstanceUID": s.series_uid}, ())


def _image_identifier(s: RemoteSeries, sops: Sequence[str]) -> Any:
    return _identifier("IMAGE", {"StudyInstanceUID": s.study_uid,
                                 "SeriesInstanceUID": s.series_uid,
                                 "SOPInstanceUID": "\\".join(sops)}, ())


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


def _merge(total: SeriesResult, part: SeriesResult) -> None:
    total.completed += part.completed
    total.failed += part.failed
    total.warning += part.warning
    total.failed_uids += part.failed_uids
    total.error = total.error or part.error
    if total.status in (None, 0x0000) or part.status not in (None, 0x0000):
        total.status = part.status


def _one_series(s: RemoteSeries, wanted: set[str] | None, request: Callable[[Any], SeriesResult]
                ) -> SeriesResult:
    """The series whole, or only the ``wanted`` instances (IMAGE level, in chunks); a node that
    refuses the list before anything came is asked for the whole series instead."""
    total = SeriesResult(s.series_uid)
    if wanted:
        uids = sorted(wanted)
        for n in range(0, len(uids), UID_CHUNK):
            part = request(_image_identifier(s, uids[n:n + UID_CHUNK]))
            if n == 0 and part.error is None and part.completed == 0 and \
                    part.status not in (0x0000, 0xB000):
                break               # no list retrieval there: the whole series below
            _merge(total, part)
            if part.error is not None:
                return total
        else:
            return total
    _merge(total, request(_series_identifier(s)))
    return total


def _series_list_identifier(group: Sequence[RemoteSeries]) -> Any:
    return _identifier("SERIES", {"StudyInstanceUID": group[0].study_uid,
                                  "SeriesInstanceUID": "\\".join(s.series_uid for s in group)},
                       ())


def _study_groups(series: Sequence[RemoteSeries], only: dict[str, set[str]]
                  ) -> Iterator[list[RemoteSeries]]:
    """Consecutive series in one request: the whole series (none in ``only``) of one study, a
    SERIES-level UID list of at most ``UID_CHUNK``; every other series alone."""
    group: list[RemoteSeries] = []
    for s in series:
        whole = s.series_uid not in only
        if group and (not whole or s.study_uid != group[0].study_uid or
                      len(group) >= UID_CHUNK):
            yield group
            group = []
        if whole:
            group.append(s)
        else:
            yield [s]
    if group:
        yield group


def _split(group: Sequence[RemoteSeries], part: SeriesResult, arrivals: list[Arrival]
           ) -> tuple[list[SeriesResult], list[RemoteSeries]]:
    """The results of a series-list request, per series, and the series to ask again alone:
    those of a request that did not end in success, or that have fewer instances here than
    the node counted (a node may take only the first UID of a list, or fail some)."""
    done, again = [], []
    clean = part.error is None and part.status == 0x0000 and part.failed == 0
    for s in group:
        mine = [a for a in arrivals if a.series_uid == s.series_uid]
        stored = sum(1 for a in mine if a.status == 0)
        if clean and len(mine) == stored and (s.instances is None or stored >= s.instances):
            done.append(SeriesResult(s.series_uid, status=0x0000, completed=stored,
                                     arrivals=mine))
        else:
            again.append(s)
            done.append(SeriesResult(s.series_uid, arrivals=mine))   # merged with the retry
    return done, again


def _retrieve(assoc: Any, node: RemoteNode, series: Sequence[RemoteSeries],
              store: RetrieveStore, on_result: Callable[[SeriesResult], None],
              send: Callable[[Any, int], Iterator[tuple[Any, Any]]], what: str,
              only: dict[str, set[str]]) -> None:
    """The whole series of a study in one SERIES-level request naming them all (for C-MOVE,
    one association from the node instead of one per series), the C-STOREs attributed by
    their own SeriesInstanceUID; partial series, and series such a request did not bring in
    full, one at a time."""
    ids = iter(range(1, 1 << 30))
    current: tuple[str, ...] = ()

    def request(identifier: Any) -> SeriesResult:
        message_id = next(ids) % 65535 + 1
        part = SeriesResult("")
        store.expect(current, message_id)
        settle_after_request(assoc, 1.0)    # else the reactor may take this request's answers
        _collect(send(identifier, message_id), part, node, what)
        store.expect(None)
        return part

    def alone(s: RemoteSeries, before: SeriesResult | None = None) -> SeriesResult:
        nonlocal current
        current = (s.series_uid,)
        result = _one_series(s, only.get(s.series_uid), request)
        store.sink.flush()
        result.arrivals = (before.arrivals if before else []) + store.take()
        return result

    def lost(rest: Sequence[RemoteSeries]) -> None:
        for s in rest:
            on_result(SeriesResult(s.series_uid, error="not retrieved: the association to "
                                   "the node was lost"))

    groups = list(_study_groups(series, only))
    for number, group in enumerate(groups, 1):
        if len(group) == 1:
            results = [alone(group[0])]
        else:
            current = tuple(s.series_uid for s in group)
            part = request(_series_list_identifier(group))
            store.sink.flush()
            results, again = _split(group, part, store.take())
            if part.error is not None or not assoc.is_established:
                again = []
                for r in results:
                    if r.status is None:
                        r.error = part.error or "not retrieved: the association was lost"
            by_uid = {r.series_uid: r for r in results}
            stopped = False
            for s in again:
                if stopped:
                    by_uid[s.series_uid].error = "not retrieved: the association to the " \
                                                 "node was lost"
                    continue
                by_uid[s.series_uid] = alone(s, by_uid[s.series_uid])
                stopped = by_uid[s.series_uid].error is not None or not assoc.is_established
            results = [by_uid[s.series_uid] for s in group]
        for r in results:
            on_result(r)
        if any(r.error is not None for r in results) or not assoc.is_established:
            lost([s for g in groups[number:] for s in g])
            return


def move_series(node: RemoteNode, series: Sequence[RemoteSeries], store: RetrieveStore,
                on_result: Callable[[SeriesResult], None],
                only: dict[str, set[str]] | None = None) -> None:
    """C-MOVE each series (or, in ``only``, just those of its instances) to ``store.aet``
    (the store listening meanwhile), over one association: the whole series of a study in
    one request."""
    with _associated(node, [(STUDY_ROOT_MOVE, None)], "C-MOVE") as assoc:
        _retrieve(assoc, node, series, store, on_result,
                  lambda ident, mid: assoc.send_c_move(ident, store.aet, STUDY_ROOT_MOVE,
                                                       msg_id=mid), "C-MOVE", only or {})


def get_series(node: RemoteNode, series: Sequence[RemoteSeries], store: RetrieveStore,
               on_result: Callable[[SeriesResult], None],
               only: dict[str, set[str]] | None = None) -> None:
    """C-GET each series (or only some instances) over one association; the C-STOREs come
    back on it, to the storage contexts we offer in the SCP role (within 128 contexts)."""
    from pynetdicom import StoragePresentationContexts, evt
    from pynetdicom.presentation import build_role

    classes = [cx.abstract_syntax for cx in StoragePresentationContexts][:MAX_CONTEXTS - 1]
    contexts = [(STUDY_ROOT_GET, None)] + [(uid, TRANSFER_SYNTAXES) for uid in classes]
    roles = [build_role(uid, scp_role=True) for uid in classes]
    with _associated(node, contexts, "C-GET", roles=roles,
                     handlers=[(evt.EVT_C_STORE, store._on_c_store)]) as assoc:
        _retrieve(assoc, node, series, store, on_result,
                  lambda ident, mid: assoc.send_c_get(ident, STUDY_ROOT_GET, msg_id=mid),
                  "C-GET", only or {})


def find_instances(node: RemoteNode, s: RemoteSeries) -> set[str]:
    """The SOP Instance UIDs the node holds in a series (an IMAGE-level C-FIND)."""
    with _associated(node, [(STUDY_ROOT_FIND, None)], "C-FIND") as assoc:
        found = _find(assoc, node, "IMAGE", {"StudyInstanceUID": s.study_uid,
                                             "SeriesInstanceUID": s.series_uid},
                      ("SOPInstanceUID",))
    return {uid for ds in found if (uid := _text(ds, "SOPInstanceUID"))}
