"""The network family: the sender (``send``), its worker processes, the receiver (``serve``).

| module | owns |
|---|---|
| ``settings`` | AE titles, host checks, :class:`PeerSettings`, protocol limits |
| ``glue`` | the only reach into pynetdicom internals and global settings |
| ``items`` | files -> :class:`SendItem` -> associations (contexts from the file meta) |
| ``sender`` | the transports (:class:`DicomTransport`, :class:`DryTransport`) and C-ECHO |
| ``reencode`` | the pydicom dataset sent when a file's bytes cannot go as stored |
| ``workers`` | parallel associations in forked worker processes |
| ``receiver`` | the C-STORE / C-ECHO SCP behind ``conquest-run serve`` |
| ``qrmatch`` | a query/retrieve identifier -> parameterised SQL (Conquest's matching rules) |
| ``qrscp``, ``qrmove`` | serve's C-FIND, C-GET and C-MOVE |
| ``nodes`` | the C-MOVE destinations (``--node``, ``--nodes``: YAML or ACRNEMA.MAP) |
| ``serveaudit`` | serve's audit rows (associations, queries, retrieves) |
| ``sendqueue`` | the send queue of a PostgreSQL index and its workers' loop |

pynetdicom is imported lazily: ``import conquest_run.net`` is cheap.
"""

from .glue import pynetdicom_config, reactor_held, settle_after_request, tune_connection
from .items import (
                       SendItem,
                       Transport,
                       group_associations,
                       read_file_meta,
                       read_send_item,
)
from .sender import DicomTransport, DryTransport, echo
from .settings import (
                       AE_TITLE_MAX,
                       MAX_ASSOCIATIONS,
                       MAX_CONTEXTS,
                       QUIET,
                       PeerSettings,
                       ae_title_problem,
                       check_ae_title,
                       resolve_host,
)

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
