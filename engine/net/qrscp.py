"""The query/retrieve SCP of ``conquest-run serve``: C-FIND and C-GET here, C-MOVE in ``qrmove``.

* C-FIND, Patient Root and Study Root, PATIENT / STUDY / SERIES / IMAGE: the identifier becomes
  one parameterised query (``qrmatch``) on a reader connection; rows stream from the cursor, one
  response each, and a C-CANCEL is honoured between two of them (0xFE00).
* C-GET: the instances are sent over the requesting association (pynetdicom's C-GET service,
  the storage contexts accepted in the SCP role), each file read with pydicom.
* C-MOVE: see ``qrmove`` (the sub-operations go through ``send``'s sender).

``--allow`` gates these as it gates storage: a calling AE title not allowed never associates.
Every request is written to the audit log (``serveaudit``).
"""

from __future__ import annotations

__all__ = ["QRSettings", "QueryRetrieve", "archive_services", "FIND_MODELS", "MOVE_MODELS",
           "GET_MODELS"]

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..report import DONE, FAILED, Outcome
from .glue import let_peer_speak
from .nodes import Nodes
from .qrmatch import PATIENT_ROOT, STUDY_ROOT, QueryError, find_query, retrieve_query, text_of

HEAR_CANCEL_EVERY = 50     # C-FIND responses between two chances for a C-CANCEL to be read

FIND_MODELS = {"1.2.840.10008.5.1.4.1.2.1.1": PATIENT_ROOT, "1.2.840.10008.5.1.4.1.2.2.1": STUDY_ROOT}
MOVE_MODELS = {"1.2.840.10008.5.1.4.1.2.1.2": PATIENT_ROOT, "1.2.840.10008.5.1.4.1.2.2.2": STUDY_ROOT}
GET_MODELS = {"1.2.840.10008.5.1.4.1.2.1.3": PATIENT_ROOT, "1.2.840.10008.5.1.4.1.2.2.3": STUDY_ROOT}
PENDING, CANCEL = 0xFF00, 0xFE00
IDENTIFIER_MISMATCH = 0xA900          # "Identifier does not match SOP Class"
UNABLE_TO_PROCESS = 0xC000
MAX_SUB_OPERATIONS = 65535            # the counts are US
_BINARY = {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}
_NUMERIC = {"US": int, "SS": int, "UL": int, "SL": int, "UV": int, "SV": int,
            "FL": float, "FD": float}
_C_STORE_RSP = 0x8001


@dataclass(frozen=True)
class QRSettings:
    database: Path
    data_dir: Path
    aet: str = "CONQUEST"
    dicom_sql: Path | None = None
    nodes: Nodes = field(default_factory=Nodes)
    timeout: float = 30.0             # towards a C-MOVE destination
    retries: int = 1                  # new associations to a C-MOVE destination after a failure
    retry_delay: float = 0.5


def _status(code: int, comment: str = "") -> Any:
    from pydicom import Dataset

    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def keys_of(identifier: Any) -> dict[str, str]:
    """The identifier's non-empty keys, by keyword (for the audit log)."""
    out = {}
    for elem in identifier:
        if elem.VR != "SQ":
            value = text_of(elem.value).strip()
            if value:
                out[elem.keyword or str(elem.tag)] = value[:256]
    return out


def _value(vr: str, value: Any) -> Any:
    if vr == "SQ":
        return []
    if vr in _BINARY:
        return b""
    if value is None or value == "":
        return None if vr in _NUMERIC else ""
    if vr in _NUMERIC:
        try:
            return _NUMERIC[vr](value)
        except (TypeError, ValueError):
            return None
    return str(value)


class QueryRetrieve:
    """Handlers and presentation contexts to add to the receiver's AE (see the module notes)."""

    def __init__(self, settings: QRSettings, audit: Any = None,
                 log: Callable[[str], None] | None = None) -> None:
        from ..schema import load_schema

        self.settings = settings
        self.schema = load_schema(settings.dicom_sql)
        self.audit = audit
        self._log = log

    def contexts(self) -> list[Any]:
        from pynetdicom.presentation import build_context

        from .settings import UNCOMPRESSED
        return [build_context(uid, list(UNCOMPRESSED))
                for uid in (*FIND_MODELS, *MOVE_MODELS, *GET_MODELS)]

    def handlers(self) -> list[tuple[Any, Callable]]:
        from pynetdicom import evt

        return [(evt.EVT_C_FIND, self.on_find), (evt.EVT_C_GET, self.on_get),
                (evt.EVT_REQUESTED, self.on_requested)]

    def on_requested(self, event: Any) -> None:
        from .glue import route_moves
        from .qrmove import serve_move

        assoc = event.assoc
        route_moves(assoc, lambda msg, context, respond, cancelled: serve_move(
            self, assoc, msg, context, respond, cancelled))

    def notice(self, message: str) -> None:
        if self._log is not None:
            self._log(message)

    def reader(self) -> Any:
        from ..db import connect_reader
        return connect_reader(self.settings.database)

    # -- C-FIND ----------------------------------------------------------------------------
    def on_find(self, event: Any) -> Iterator[tuple[Any, Any]]:
        model = FIND_MODELS.get(str(event.request.AffectedSOPClassUID), STUDY_ROOT)
        try:
            identifier = event.identifier
            query = find_query(identifier, self.schema, model, retrieve_ae=self.settings.aet)
        except QueryError as exc:
            self._audit_find(event, model, {}, 0, f"refused: {exc}")
            yield _status(IDENTIFIER_MISMATCH, str(exc)), None
            return
        except Exception as exc:           # an identifier pydicom cannot decode
            self._audit_find(event, model, {}, 0, f"refused: {exc}")
            yield _status(UNABLE_TO_PROCESS, f"cannot read the identifier: {exc}"), None
            return
        keys = {"QueryRetrieveLevel": query.level, **keys_of(identifier)}
        matches, status = 0, "ok"
        conn = None
        try:
            conn = self.reader()
            cursor = conn.execute(query.sql, query.params)
            for row in cursor:                   # streamed: never fetchall
                if matches % HEAR_CANCEL_EVERY == HEAR_CANCEL_EVERY - 1:
                    let_peer_speak(event.assoc)  # else a C-CANCEL waits for the last response
                if event.is_cancelled:
                    status = "cancelled"
                    yield CANCEL, None
                    return
                matches += 1
                yield PENDING, self._response(query, row)
            if event.is_cancelled:
                status = "cancelled"
                yield CANCEL, None
        except Exception as exc:                 # the database: locked, missing, damaged
            status = f"failed: {exc}"
            self.notice(f"C-FIND failed: {exc}")
            yield _status(UNABLE_TO_PROCESS, str(exc)), None
        finally:
            if conn is not None:
                conn.close()
            self._audit_find(event, model, keys, matches, status)

    def _response(self, query: Any, row: tuple) -> Any:
        from pydicom import Dataset
        from pydicom.dataelem import DataElement

        ds = Dataset()
        wide = False
        for tag, vr, index in query.returns:
            value = _value(vr, row[index] if index is not None else None)
            if isinstance(value, str) and not value.isascii():
                wide = True
            ds.add(DataElement(tag, vr, value))
        ds.QueryRetrieveLevel = query.level
        if wide:
            ds.SpecificCharacterSet = "ISO_IR 192"
        return ds

    def _audit_find(self, event: Any, model: str, keys: dict, matches: int,
                    status: str) -> None:
        if self.audit is not None:
            self.audit.find(event.assoc, f"{model} root", keys, matches, status)

    # -- C-MOVE / C-GET: the instances -----------------------------------------------------
    def instances(self, identifier: Any, model: str) -> list[tuple]:
        """(SOP instance, series, SOP class, ObjectFile, patient) of each instance named."""
        sql, params = retrieve_query(identifier, self.schema, model)
        conn = self.reader()
        try:
            out = []
            for row in conn.execute(sql, params):
                out.append(row)
                if len(out) > MAX_SUB_OPERATIONS:
                    raise QueryError(f"more than {MAX_SUB_OPERATIONS} instances match; "
                                     "retrieve at a lower level")
            return out
        finally:
            conn.close()

    def path_of(self, object_file: str | None) -> Path | None:
        """The file of an ``ObjectFile``, only inside the data directory."""
        if not object_file:
            return None
        root = self.settings.data_dir.resolve()
        path = (root / object_file).resolve()
        return path if path.is_relative_to(root) else None

    # -- C-GET -----------------------------------------------------------------------------
    def on_get(self, event: Any) -> Iterator[Any]:
        from pynetdicom import evt

        model = GET_MODELS.get(str(event.request.AffectedSOPClassUID), STUDY_ROOT)
        assoc = event.assoc
        from .serveaudit import peer_of
        calling, _, address = peer_of(assoc)
        who = f"{calling}@{address}"
        try:
            identifier = event.identifier
            keys = keys_of(identifier)
            rows = self.instances(identifier, model)
        except Exception as exc:
            if self.audit is not None:
                self.audit.retrieve(assoc, "get", who, {}, {}, f"refused: {exc}")
            yield 1
            yield _status(IDENTIFIER_MISMATCH if isinstance(exc, QueryError)
                          else UNABLE_TO_PROCESS, str(exc)), None
            return
        known = {r[0]: r for r in rows}
        counts = {"completed": 0, "failed": 0, "warning": 0}

        def on_store_response(ev: Any) -> None:       # the peer's C-STORE-RSP of each one
            cs = getattr(ev.message, "command_set", None)
            if cs is None or cs.get("CommandField") != _C_STORE_RSP:
                return
            sop = str(cs.get("AffectedSOPInstanceUID", "") or "")
            code = int(cs.get("Status", 0xC000))
            row = known.get(sop)
            kind = "completed" if code == 0 else "warning" if code in (1, 0x0107, 0x0116) \
                or code >> 12 == 0xB else "failed"
            counts[kind] += 1
            if self.audit is not None and row is not None:
                self.audit.sub_operation("get", who, Outcome(
                    sop, row[1], FAILED if kind == "failed" else DONE,
                    f"C-STORE status 0x{code:04X}", {"patient_id": row[4]}), who)

        assoc.bind(evt.EVT_DIMSE_RECV, on_store_response)
        status = "ok"
        try:
            yield len(rows)
            for sop, series, _klass, object_file, patient in rows:
                if event.is_cancelled:
                    status = "cancelled"
                    yield _status(CANCEL), None
                    return
                dataset = self._read(object_file)
                if dataset is None:
                    counts["failed"] += 1
                    if self.audit is not None:
                        self.audit.sub_operation("get", who, Outcome(
                            sop, series, FAILED, "file missing or unreadable",
                            {"patient_id": patient, "path": object_file}), who)
                yield PENDING, dataset
        finally:
            assoc.unbind(evt.EVT_DIMSE_RECV, on_store_response)
            if status == "ok":          # those that failed before reaching the peer (no context)
                counts["failed"] = max(counts["failed"], len(rows) - counts["completed"]
                                       - counts["warning"])
                status = "failed" if counts["failed"] else "ok"
            if self.audit is not None:
                self.audit.retrieve(assoc, "get", who, keys,
                                    {"instances": len(rows), **counts}, status)

    def _read(self, object_file: str | None) -> Any:
        from pydicom import dcmread

        path = self.path_of(object_file)
        if path is None:
            return None
        try:
            return dcmread(path)
        except Exception:
            return None


def archive_services(receiver: Any, data_dir: str | Path, database: str | Path,
                     dicom_sql: str | Path | None, nodes: Nodes | None, query_retrieve: bool,
                     audit: bool, log: Callable[[str], None] | None) -> tuple[Any, Any]:
    """(QueryRetrieve or None, ServeAudit or None) for a receiver indexing into ``database``
    (``receiver``: its ``ReceiverSettings``)."""
    from .serveaudit import ServeAudit

    service = ServeAudit(database, f"{receiver.aet}@{receiver.host}:{receiver.port}") \
        if audit else None
    try:
        qr = QueryRetrieve(QRSettings(Path(database), Path(data_dir), receiver.aet,
                                      Path(dicom_sql) if dicom_sql else None, nodes or Nodes(),
                                      timeout=min(receiver.timeout, 30.0)),
                           service, log) if query_retrieve else None
    except BaseException:
        if service is not None:
            service.close(0, 0)
        raise
    return qr, service
