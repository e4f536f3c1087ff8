"""Peers and protocol limits: AE titles, host checks, :class:`PeerSettings`, constants."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConquestRunError, NetworkError
from ..report import Outcome

if TYPE_CHECKING:
    pass


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
    # a C-MOVE's sub-operations: the Move Originator (AE title, Message ID) of each C-STORE
    move_originator: tuple[str, int] | None = None

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
