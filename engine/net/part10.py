"""A received dataset as a DICOM Part-10 file (the file meta group encoded directly), and the
PatientID of encoded bytes read up to (0010,0020) only."""

from __future__ import annotations

__all__ = ["part10_bytes", "patient_id_of"]

import io
import struct
from typing import Any

from ..errors import DicomFileError


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":                       # the long form: 2 reserved bytes, 4-byte length
        return struct.pack("<HH2s2xI", group, elem, vr, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _uid(text: str) -> bytes:
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise DicomFileError(f"the request names a UID that is not valid: {text!r}") from None
    return raw + b"\0" if len(raw) % 2 else raw


def part10_bytes(sop_class: str, sop_instance: str, transfer_syntax: str,
                 dataset: bytes) -> bytes:
    """A received dataset as a DICOM file: preamble, ``DICM``, the file meta group pynetdicom's
    ``event.encoded_dataset(include_meta=True)`` would write (same elements, same bytes), then
    the peer's encoded dataset unchanged.  Encoded directly (group 0002 is explicit VR little
    endian by definition) instead of through a pydicom ``FileMetaDataset`` for every C-STORE."""
    from pynetdicom import (
        PYNETDICOM_IMPLEMENTATION_UID,
        PYNETDICOM_IMPLEMENTATION_VERSION,
    )

    version = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    body = b"".join((
        _element(2, 0x0001, b"OB", b"\0\1"),
        _element(2, 0x0002, b"UI", _uid(sop_class)),
        _element(2, 0x0003, b"UI", _uid(sop_instance)),
        _element(2, 0x0010, b"UI", _uid(transfer_syntax)),
        _element(2, 0x0012, b"UI", _uid(str(PYNETDICOM_IMPLEMENTATION_UID))),
        _element(2, 0x0013, b"SH", version + b" " * (len(version) % 2)),
    ))
    return b"".join((b"\0" * 128, b"DICM", _element(2, 0x0000, b"UL", struct.pack("<I", len(body))),
                     body, dataset))


def patient_id_of(encoded: bytes) -> str:
    """PatientID of an encoded file, reading the header only up to (0010,0020)."""
    from pydicom.filereader import read_partial

    ds = read_partial(io.BytesIO(encoded), stop_when=_after_patient_id)
    return str(ds.get("PatientID", "") or "")


def _after_patient_id(tag: Any, vr: Any, length: Any) -> bool:
    return tag > 0x00100020
