"""The C-MOVE SCP of ``conquest-run serve``: the sub-operations go through ``send``'s sender.

A C-MOVE names its destination by AE title; only a destination ``--node`` / ``--nodes`` knows is
sent to (else 0xA801, Move Destination Unknown).  The instances the identifier names are read
(file meta only) into send items and sent by :class:`~.sender.DicomTransport`, streamed as
stored, over a new association to the destination, each C-STORE carrying the Move Originator
(our caller's AE title and message ID).  Pending C-MOVE-RSPs (optional in DICOM) carry the
counts so far, at most every ``PENDING_EVERY`` seconds; the final response has the counts and,
with any failure, the Failed SOP Instance UID List:

* 0x0000 all completed; 0xB000 some failed or warned; 0xA702 every one failed (a destination
  that is down: with an Error Comment saying so); 0xFE00 cancelled (C-CANCEL) after the instance
  in flight; 0xA900 an identifier that names nothing retrievable.

pynetdicom's own move SCP is bypassed for this (``glue.route_moves``): it would decode every
file into a dataset and send it with its own sender.
"""

from __future__ import annotations

__all__ = ["serve_move"]

import threading
import time
from io import BytesIO
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ConquestRunError, NetworkError
from ..report import DONE, FAILED, Outcome
from .qrmatch import QueryError
from .qrscp import (
    IDENTIFIER_MISMATCH,
    MOVE_MODELS,
    PENDING,
    STUDY_ROOT,
    UNABLE_TO_PROCESS,
    keys_of,
)

if TYPE_CHECKING:
    from .qrscp import QueryRetrieve

MOVE_DESTINATION_UNKNOWN = 0xA801
SUB_OPERATIONS_FAILED = 0xA702        # "Out of resources: unable to perform sub-operations"
SUB_OPERATIONS_WARNING = 0xB000
CANCELLED = 0xFE00
SUCCESS = 0x0000
PENDING_EVERY = 0.1                   # seconds between two pending responses (at most)


class _Move:
    """One C-MOVE request: its responses and counts."""

    def __init__(self, msg: Any, context: Any, respond: Callable[[Any], None]) -> None:
        self.msg = msg
        self.context = context
        self.respond = respond
        self.remaining = 0
        self.completed = self.failed = self.warning = 0
        self.failed_uids: list[str] = []
        self.lock = threading.Lock()

    def response(self, status: int, comment: str = "", final: bool = False) -> Any:
        from pynetdicom.dimse_primitives import C_MOVE

        rsp = C_MOVE()
        rsp.MessageIDBeingRespondedTo = self.msg.MessageID
        rsp.AffectedSOPClassUID = self.msg.AffectedSOPClassUID
        rsp.Status = status
        if comment:
            rsp.ErrorComment = comment[:64]
        if status == PENDING or status == CANCELLED:
            rsp.NumberOfRemainingSuboperations = self.remaining
        rsp.NumberOfCompletedSuboperations = self.completed
        rsp.NumberOfFailedSuboperations = self.failed
        rsp.NumberOfWarningSuboperations = self.warning
        if final and (self.failed_uids or status in (SUB_OPERATIONS_FAILED, CANCELLED,
                                                     SUB_OPERATIONS_WARNING)):
            rsp.Identifier = BytesIO(self._failed_list())
        return rsp

    def _failed_list(self) -> bytes:
        from pydicom import Dataset
        from pynetdicom.dsutils import encode

        ds = Dataset()
        ds.FailedSOPInstanceUIDList = self.failed_uids
        ts = self.context.transfer_syntax[0]
        return encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated) or b""

    def count(self, outcome: Outcome) -> None:
        with self.lock:
            self.remaining = max(0, self.remaining - 1)
            if outcome.status == DONE:
                if "warning" in outcome.reason:
                    self.warning += 1
                else:
                    self.completed += 1
            else:
                self.failed += 1
                if outcome.sop_uid:
                    self.failed_uids.append(outcome.sop_uid)

    def counts(self) -> dict[str, int]:
        return {"completed": self.completed, "failed": self.failed, "warning": self.warning,
                "remaining": self.remaining}


def _identifier(msg: Any, context: Any) -> Any:
    from pynetdicom.dsutils import decode

    ts = context.transfer_syntax[0]
    return decode(msg.Identifier, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)


def serve_move(qr: "QueryRetrieve", assoc: Any, msg: Any, context: Any,
               respond: Callable[[Any], None], cancelled: Callable[[], bool]) -> None:
    """Answer one C-MOVE request (see the module notes)."""
    from .serveaudit import peer_of

    move = _Move(msg, context, respond)
    calling, _, address = peer_of(assoc)
    who = f"{calling}@{address}"
    destination_ae = str(msg.MoveDestination or "").strip()
    model = MOVE_MODELS.get(str(msg.AffectedSOPClassUID), STUDY_ROOT)
    keys: dict[str, str] = {}

    def finish(status: int, comment: str, outcome: str, target: str) -> None:
        respond(move.response(status, comment, final=True))
        if qr.audit is not None:
            qr.audit.retrieve(assoc, "move", target, {"MoveDestination": destination_ae, **keys},
                              move.counts(), outcome)
        if comment and status not in (SUCCESS, CANCELLED):
            qr.notice(f"{who}: C-MOVE to {destination_ae}: {comment}")

    try:
        identifier = _identifier(msg, context)
        keys = keys_of(identifier)
    except Exception as exc:
        finish(UNABLE_TO_PROCESS, f"cannot read the identifier: {exc}", "refused", who)
        return
    where = qr.settings.nodes.lookup(destination_ae, caller=address.rpartition(":")[0])
    if where is None:
        finish(MOVE_DESTINATION_UNKNOWN, f"unknown move destination {destination_ae!r}",
               f"refused: unknown destination {destination_ae!r}", destination_ae or "?")
        return
    host, port = where
    target = f"{destination_ae}@{host}:{port}"
    try:
        rows = qr.instances(identifier, model)
    except Exception as exc:           # QueryError, or the database
        status = IDENTIFIER_MISMATCH if isinstance(exc, QueryError) else UNABLE_TO_PROCESS
        finish(status, str(exc), f"refused: {exc}", target)
        return
    move.remaining = len(rows)
    if not rows:
        finish(SUCCESS, "", "ok: nothing matched", target)
        return

    def record(outcome: Outcome, patient: str | None) -> None:
        move.count(outcome)
        if qr.audit is not None:
            detail = dict(outcome.detail or {})
            detail["patient_id"] = patient
            qr.audit.sub_operation("move", target, Outcome(
                outcome.sop_uid, outcome.series_uid, outcome.status, outcome.reason, detail),
                who)

    items, patients = _send_items(qr, rows, record)
    stop = threading.Event()
    last_pending = [0.0]

    def on_outcome(outcome: Outcome) -> None:
        if stop.is_set() and outcome.status == FAILED and outcome.reason.endswith("interrupted"):
            return                     # cancelled before it went: one of the remaining
        record(outcome, patients.get(outcome.sop_uid or ""))
        if cancelled():
            stop.set()
        elif move.remaining and time.monotonic() - last_pending[0] >= PENDING_EVERY:
            last_pending[0] = time.monotonic()      # optional: a few a second, not one each
            respond(move.response(PENDING))

    error = _send(qr, items, destination_ae, host, port, calling, msg, on_outcome, stop)
    if error:                          # nothing went: each one failed, no pending responses
        for item in items:
            record(Outcome(item.sop_uid, item.series_uid, FAILED, f"not sent: {error}", {}),
                   patients.get(item.sop_uid))
        status, comment = SUB_OPERATIONS_FAILED, f"destination unreachable: {error}"
        outcome = f"failed: {comment}"
    else:
        comment = ""
        if stop.is_set():
            status, outcome = CANCELLED, "cancelled"
        elif move.failed and not move.completed and not move.warning:
            status, outcome = SUB_OPERATIONS_FAILED, "failed"
        elif move.failed or move.warning:
            status, outcome = SUB_OPERATIONS_WARNING, "warning"
        else:
            status, outcome = SUCCESS, "ok"
    finish(status, comment, outcome, target)


def _send_items(qr: "QueryRetrieve", rows: list[tuple],
                record: Callable[[Outcome, str | None], None]) -> tuple[list, dict]:
    from .items import read_send_item

    items = []
    patients: dict[str, str] = {}
    for sop, series, klass, object_file, patient in rows:
        path = qr.path_of(object_file)
        if path is None:
            record(Outcome(sop, series, FAILED, "no file in the data directory",
                           {"path": object_file}), patient)
            continue
        item = read_send_item(path, sop, series, klass)
        if isinstance(item, Outcome):
            record(item, patient)
            continue
        patients[sop] = patient
        items.append(item)
    return items, patients


def _send(qr: "QueryRetrieve", items: list, destination_ae: str, host: str, port: int,
          calling: str, msg: Any, on_outcome: Callable[[Outcome], None],
          stop: threading.Event) -> str:
    """Send through ``send``'s transport; "" when it ran, else why the destination could not
    be reached at all (nothing was sent)."""
    from .items import group_associations
    from .sender import DicomTransport
    from .settings import PeerSettings

    if not items:
        return ""
    s = qr.settings
    try:
        peer = PeerSettings(host, port, called_ae=destination_ae, calling_ae=s.aet,
                            retries=s.retries, retry_delay=s.retry_delay, timeout=s.timeout,
                            move_originator=(calling or s.aet, int(msg.MessageID)))
        transport = DicomTransport(peer, stop=stop)
        transport.send(group_associations(items), on_outcome)
    except (NetworkError, ConquestRunError) as exc:
        return str(exc)
    return ""
