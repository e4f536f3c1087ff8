"""The storage SCP of a retrieve: ``serve``'s own receiver into the archive (the same
:class:`~.receiver.Receiver` and :class:`~.receiver.ArchiveSink`: files as received, fsync'ed,
indexed), with each C-STORE attributed to the retrieve it belongs to.

For a C-MOVE the store listens under our AE title and a C-STORE is attributed through its Move
Originator AE title and Message ID; one naming another originator is refused (0x0124, not
authorized).  A node that sets neither field has its C-STOREs attributed to the retrieve in
flight (one at a time); outside one they are refused.  For a C-GET the store is not started: its
handler answers the C-STOREs of the C-GET association.
"""

from __future__ import annotations

__all__ = ["Arrival", "RetrieveStore", "STATUS_NOT_AUTHORIZED"]

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .receiver import Receiver, ReceiverSettings
from .sinks import ArchiveSink

STATUS_NOT_AUTHORIZED = 0x0124


@dataclass(frozen=True)
class Arrival:
    """One C-STORE the store answered: the series it was attributed to, its status."""

    series_uid: str
    sop_uid: str
    status: int
    object_file: str | None
    originator: str = ""        # "AE#message-id" of a C-MOVE; "" for a C-GET



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
    are made one at a time: ``expect(series_uids, message_id)`` names the series of the
    current one.
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
        self._moves: dict[int, tuple[str, ...]] = {}   # C-MOVE message ID -> its series
        self._current: tuple[str, ...] | None = None   # the series being retrieved now
        self._arrived: list[Arrival] = []

    def expect(self, series: tuple[str, ...] | None, message_id: int | None = None) -> None:
        """The series of the request in flight (one, or the series list of a SERIES-level
        request, whose C-STOREs are attributed by their own SeriesInstanceUID)."""
        with self._mutex:
            self._current = series or None
            if message_id is not None and series:
                self._moves[message_id] = series

    def take(self) -> list[Arrival]:
        """What arrived since the last call (called by the requesting thread)."""
        with self._mutex:
            out, self._arrived = self._arrived, []
        return out

    def _attribute(self, request: Any) -> tuple[tuple[str, ...] | None, str]:
        message_id = request.MoveOriginatorMessageID
        origin = (request.MoveOriginatorApplicationEntityTitle or "").strip()
        with self._mutex:
            if message_id is None and not origin:
                return self._current, ""       # a C-GET, or a node that sets neither field
            if origin == self.aet.strip() and message_id in self._moves:
                return self._moves[message_id], f"{origin}#{message_id}"
        return None, f"{origin}#{message_id}"

    @staticmethod
    def _series_of(event: Any, asked: tuple[str, ...]) -> str:
        """The series of a C-STORE among those asked for (its own SeriesInstanceUID when it is
        one of them, else the first: a request for one series takes what it brings)."""
        if len(asked) == 1:
            return asked[0]
        try:
            own = str(event.dataset.get("SeriesInstanceUID", "") or "").strip()
        except Exception:              # an undecodable dataset: the store refuses it anyway
            own = ""
        return own if own in asked else asked[0]

    def _on_c_store(self, event: Any) -> int:
        request = event.request
        asked, origin = self._attribute(request)
        sop_uid = str(request.AffectedSOPInstanceUID)
        series_uid = None if asked is None else self._series_of(event, asked)
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
