"""The receiver's guards against hostile or broken peers (``conquest-run serve``).

* A connection that closes before its A-ASSOCIATE-RQ frees its slot at once, and one that does
  not complete its request within the ACSE timeout (ARTIM, ``--acse-timeout``) is closed, even
  while it drips bytes.
* No PDU longer than our maximum PDU plus headers is read, and no association request longer
  than ``MAX_ASSOCIATE_RQ`` bytes or with more than 128 presentation contexts is accepted: the
  connection is closed at once, before any of it is buffered.
* At most ``max_associations`` associations at a time (``--max-associations``).

* A C-STORE whose dataset is another instance than its request names is refused (0xA900).

Each refusal is reported through ``log`` (one sentence naming the peer).
"""

from __future__ import annotations

__all__ = ["ConnectionGuard", "MAX_ASSOCIATE_RQ", "PDU_HEADROOM", "dataset_mismatch", "peer_name"]

import time
from collections.abc import Callable
from typing import Any

from .glue import guard_reads, tune_connection, wait_sent, wake_acceptor
from .settings import MAX_CONTEXTS

MAX_ASSOCIATE_RQ = 128 * 1024   # bytes: 128 contexts of long UIDs and many syntaxes fit easily
PDU_HEADROOM = 1024             # PDV item headers on top of our maximum PDU length


class ConnectionGuard:
    """The ``EVT_CONN_OPEN`` / ``EVT_CONN_CLOSE`` / ``EVT_REQUESTED`` handlers of one receiver."""

    def __init__(self, acse_timeout: float, max_pdu: int, log: Callable[[str], None]) -> None:
        self.acse_timeout = acse_timeout
        self.max_read = max_pdu + PDU_HEADROOM
        self.log = log

    def handlers(self) -> list[tuple[Any, Callable[[Any], Any]]]:
        from pynetdicom import evt

        return [(evt.EVT_CONN_OPEN, self.on_open), (evt.EVT_CONN_CLOSE, self.on_close),
                (evt.EVT_REQUESTED, self.on_requested)]

    def on_open(self, event: Any) -> None:
        tune_connection(event)
        peer = peer_name(event)
        deadline = time.monotonic() + self.acse_timeout

        def check(nr_bytes: int, associating: bool) -> str | None:
            limit = MAX_ASSOCIATE_RQ if associating else self.max_read
            if nr_bytes > limit:
                what = "an association request" if associating else "a PDU"
                return f"{what} of {nr_bytes:,} bytes refused (at most {limit:,})"
            return None

        said: list[str] = []

        def refused(problem: str) -> None:
            if not said:                   # pynetdicom may read once more after the hang-up
                said.append(problem)
                self.log(f"{peer}: {problem}; connection closed")

        guard_reads(event.assoc, check, lambda: deadline, refused)

    def on_close(self, event: Any) -> None:
        wake_acceptor(event.assoc)

    def on_requested(self, event: Any) -> None:
        contexts = len(event.assoc.requestor.requested_contexts)
        if contexts > MAX_CONTEXTS:
            self.log(f"{peer_name(event)}: an association request with {contexts:,} presentation "
                     f"contexts refused (at most {MAX_CONTEXTS})")
            event.assoc.acse.send_reject(0x01, 0x01, 0x01)     # permanent, no reason given
            wait_sent(event.assoc)


def peer_name(event: Any) -> str:
    """``HOST:PORT`` of the peer of an association event."""
    try:
        address = event.assoc.requestor.address_info
        return f"{address.address}:{address.port}"
    except (AttributeError, ValueError):
        return "a peer"


def dataset_mismatch(encoded: bytes, sop_class: str, sop_uid: str) -> str | None:
    """What makes a received dataset (Part-10 bytes) another instance than its C-STORE request
    names (Affected SOP Instance / Class UID), or None.  Reads the header up to (0008,0018)."""
    import io

    from pydicom.filereader import read_partial

    ds = read_partial(io.BytesIO(encoded), stop_when=_after_sop_instance)
    own_uid = str(ds.get("SOPInstanceUID", "") or "")
    own_class = str(ds.get("SOPClassUID", "") or "")
    if own_uid != sop_uid:
        return (f"the Affected SOP Instance UID {sop_uid} is not the dataset's SOP Instance UID "
                f"{own_uid or '(none)'}")
    if own_class and own_class != sop_class:
        return (f"the Affected SOP Class UID {sop_class} is not the dataset's SOP Class UID "
                f"{own_class}")
    return None


def _after_sop_instance(tag: Any, vr: Any, length: Any) -> bool:
    return tag > 0x00080018
