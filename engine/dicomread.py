"""Read one file's DICOM header (never the pixel data) into row values the Conquest way.

How a value is stored, as Conquest's dgate stores it:

* an absent element -> NULL; a zero-length element -> NULL;
* text: read up to a NUL byte (as a C string), trailing spaces stripped, leading spaces kept,
  so a value of only spaces becomes ``''``; multiple values stay joined with ``\\`` as in the file;
* binary DT_UINT16 / DT_UINT32 / DT_FL / DT_FD values become decimal text of their first value
  (``%u``, ``%.16g``);
* a value longer than its column is cut to the column length before the trailing spaces go
  (as Conquest does, logging "Truncated ...").

The values come from pydicom's *raw* data elements (bytes and length as in the file), which is
both exact and fast.  Files without the ``DICM`` preamble are read with ``force`` when they start
like a DICOM data set (Conquest's ``.v2`` files); anything else raises ``DicomFileError`` with a
short reason.  ``read_header`` also hashes the file bytes (SHA-256) and checks that the file is
not truncated (cut inside an element: the last header element or the pixel data incomplete).

Files that lie about themselves are indexed and flagged (``HeaderRecord.extras["Flags"]``, the
sorted tokens joined with ``\\``): ``no-pixel-data`` (an image SOP class without Pixel Data, a
warning), ``syntax-mismatch`` (the data set does not follow the meta's transfer syntax: explicit
declared, implicit found or the reverse), ``meta-mismatch`` (the meta's Media Storage SOP
instance / class UID is not the data set's), ``bad-fragments`` (encapsulated pixel data with an
odd-length fragment or an item that is not one) and ``no-meta`` (no file meta at all).
"""

from __future__ import annotations

__all__ = ["ReadSpec", "HeaderRecord", "read_header", "KEY_LEVELS", "FLAG_TOKENS"]

import hashlib
import io
import os
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.uid import UID

from .errors import DicomFileError
from .fileflags import (FLAG_TOKENS, flags_cell, fragments_damaged, meta_mismatch,
                        syntax_mismatch)
from .rtextras import rt_extras
from .schema import EXTRAS_COLUMNS, Schema

KEY_LEVELS = ("Patient", "Study", "Series", "Image")

EXTRAS_NAMES = tuple(name for name, _ in EXTRAS_COLUMNS)
_UNDEFINED = 0xFFFFFFFF
_BINARY = {
    "DT_UINT16": ("H", 2), "DT_UINT32": ("I", 4), "DT_FL": ("f", 4), "DT_FD": ("d", 8),
}
# VRs whose values are text: a binary DT_ type over one of these is read as text
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC",
             "UI", "UR", "UT"}
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_DEFLATED = {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1"}
_MODALITY = 0x00080060
_CHARSET = 0x00080005
_SOP_CLASS = 0x00080016
_ROWS, _BITS_ALLOCATED = 0x00280010, 0x00280100
_TRANSFER_SYNTAX = 0x00020010
_IMPLICIT_LE, _EXPLICIT_BE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"
_UID_TEXT = re.compile(r"[0-9]+(\.[0-9]+)*")


@dataclass(frozen=True)
class ReadSpec:
    """What to read, derived from a Schema; small and picklable for worker processes.

    ``levels[i]`` is ``(table, ((tag, dicom_type, length), ...))`` for Patient, Study, Series,
    Image in that order; the first column of each is the level's key.
    """

    levels: tuple[tuple[str, tuple[tuple[int, str, int], ...]], ...]
    fields: tuple[tuple[int, str, int], ...] = ()   # each distinct (tag, type, length) once
    layout: tuple[tuple[int, ...], ...] = ()        # per level: indexes into ``fields``

    @classmethod
    def from_schema(cls, schema: Schema) -> "ReadSpec":
        levels = []
        fields: dict[tuple[int, str, int], int] = {}
        layout = []
        for section in KEY_LEVELS:
            lv = schema.levels[section]
            cols = tuple((e.tag, e.dicom_type, e.length) for e in lv.columns)
            levels.append((lv.table, cols))
            layout.append(tuple(fields.setdefault(c, len(fields)) for c in cols))
        return cls(tuple(levels), tuple(fields), tuple(layout))


@dataclass
class HeaderRecord:
    """Everything the indexer stores for one file."""

    object_file: str                      # relative to the data directory, '/' separated
    rows: tuple[tuple[Any, ...], ...]     # DICOM column values for Patient, Study, Series, Image
    modality: str | None
    sop_class: str | None
    extras: dict[str, Any] = field(default_factory=dict)  # every RTExtras column (RT + file)

    @property
    def patient_id(self) -> str | None:
        return self.rows[0][0]

    @property
    def study_uid(self) -> str | None:
        return self.rows[1][0]

    @property
    def series_uid(self) -> str | None:
        return self.rows[2][0]

    @property
    def sop_uid(self) -> str:
        return self.rows[3][0]


def _latin1(b: bytes) -> str:
    return b.decode("latin-1")


def _decoder(elements: dict):
    """bytes -> str for text values, following (0008,0005) Specific Character Set."""
    raw = elements.get(_CHARSET)
    charsets = []
    if raw is not None and raw.value:
        value = raw.value if isinstance(raw.value, bytes) else str(raw.value).encode("ascii")
        charsets = [c.strip().decode("ascii", "replace")
                    for c in value.rstrip(b" \0").split(b"\\")]
    charsets = [c for c in charsets if c] or ["ISO_IR 6"]
    if charsets in (["ISO_IR 6"], ["ISO_IR 100"], ["ISO 2022 IR 6"], ["ISO 2022 IR 100"]):
        return _latin1
    if charsets == ["ISO_IR 192"]:
        return lambda b: b.decode("utf-8", "replace")
    try:
        encodings = convert_encodings(charsets)
    except Exception:
        return lambda b: b.decode("latin-1")

    def decode(b: bytes) -> str:
        try:
            return decode_bytes(b, encodings, set())
        except Exception:
            return b.decode("latin-1")
    return decode


def _value(elements: dict, tag: int, dicom_type: str, length: int, decode, little: bool) -> Any:
    raw = elements.get(tag)
    if raw is None:
        return None
    value = raw.value
    if type(value) is bytes and dicom_type not in _BINARY:   # the common case, kept short
        if not value:
            return None
        if b"\0" in value:                      # Conquest reads a value as a C string
            value = value[:value.index(b"\0")]
        # Conquest cuts the value to the column length first, then strips trailing spaces
        if decode is _latin1:
            return value[:length].decode("latin-1").rstrip(" \0")
        return decode(value)[:length].rstrip(" \0")
    if not isinstance(value, (bytes, bytearray)):
        # an element pydicom already converted (only happens for the character set): use text
        if value is None or value == "":
            return None
        text = "\\".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
        return text.rstrip(" \0")[:length]
    if len(value) == 0:
        return None
    vr = raw.VR
    binary = _BINARY.get(dicom_type)
    if binary is not None:
        if vr is None:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = "UN"
        if vr not in _TEXT_VRS:
            fmt, size = binary
            if len(value) >= size:
                # Conquest prints the first value only: %u for integers, %.16g for floats
                (number,) = struct.unpack_from(("<" if little else ">") + fmt, value)
                text = str(number) if isinstance(number, int) else format(number, ".16g")
                return text[:length]
    return decode(bytes(value))[:length].rstrip(" \0")


def _is_image_class(elements: dict) -> bool:
    raw = elements.get(_SOP_CLASS)
    if raw is None or not isinstance(raw.value, (bytes, bytearray)):
        return False
    try:
        return "Image Storage" in UID(raw.value.rstrip(b" \0").decode("ascii")).name
    except Exception:
        return False


def _check_complete(elements: dict, data: bytes, stopped_at: int, little: bool,
                    implicit: bool, flags: set[str]) -> None:
    """Raise if the header's last element or the pixel data is cut short; add ``no-pixel-data``
    or ``bad-fragments`` to ``flags``."""
    if not elements:
        return
    last = elements[max(elements)]
    if (last is not None and isinstance(last.value, (bytes, bytearray))
            and last.length != _UNDEFINED and len(last.value) < last.length):
        raise DicomFileError(f"truncated: element {last.tag} has {len(last.value)} of "
                             f"{last.length} bytes")
    if stopped_at >= len(data):
        tell = getattr(last, "value_tell", None)
        if (tell is not None and isinstance(last.value, (bytes, bytearray))
                and 0 < len(data) - (tell + len(last.value)) < 8):
            raise DicomFileError("truncated: the file ends inside an element header")
        if (_ROWS in elements and _BITS_ALLOCATED in elements) or _is_image_class(elements):
            flags.add("no-pixel-data")
        return
    order = "<" if little else ">"
    pos = stopped_at
    for _ in range(16):          # the pixel data and the few elements that may follow it
        if pos >= len(data):
            return
        head = data[pos:pos + 12]
        if len(head) < 8:
            raise DicomFileError("truncated: the file ends inside an element header")
        group, element = struct.unpack(order + "HH", head[:4])
        if implicit:
            length, start = struct.unpack(order + "I", head[4:8])[0], 8
        else:
            vr = head[4:6].decode("latin-1")
            if vr in _LONG_VRS:
                if len(head) < 12:
                    raise DicomFileError("truncated: the file ends inside an element header")
                length, start = struct.unpack(order + "I", head[8:12])[0], 12
            else:
                length, start = struct.unpack(order + "H", head[6:8])[0], 8
        if length == _UNDEFINED:
            if (group << 16 | element) in _PIXEL_TAGS:
                delimiter = b"\xfe\xff\xdd\xe0" if little else b"\xff\xfe\xe0\xdd"
                if data.rfind(delimiter, pos) < 0:
                    raise DicomFileError("truncated: the encapsulated pixel data has no end")
                if fragments_damaged(data, pos + start, little):
                    flags.add("bad-fragments")
            return
        if pos + start + length > len(data):
            what = "pixel data" if (group << 16 | element) in _PIXEL_TAGS else \
                f"element ({group:04X},{element:04X})"
            raise DicomFileError(f"truncated: {what} has {len(data) - pos - start} of "
                                 f"{length} bytes")
        pos += start + length


def _looks_like_dataset(data: bytes) -> bool:
    """A file without preamble that starts like a DICOM data set (meta group or group 0008)."""
    if len(data) < 8:
        return False
    group_le = data[0] | data[1] << 8
    group_be = data[1] | data[0] << 8
    return group_le in (0x0002, 0x0008) or group_be == 0x0008


def _not_meta(tag: int, vr: str | None, length: int) -> bool:
    return tag >> 16 != 2


def _at_pixels(tag: int, vr: str | None, length: int) -> bool:
    return tag in _PIXEL_TAGS


def _fast_parse(data: bytes) -> tuple[Any, int, bool, Any, tuple[bool, bool]] | None:
    """Part-10 file: the meta group and then the data set up to the pixel data, with
    pydicom's ``read_dataset`` (skips dcmread's file-object wrapping and meta validation).
    None when the file needs dcmread's general handling (deflate, odd meta)."""
    fp = io.BytesIO(data)
    fp.seek(132)
    meta = read_dataset(fp, False, True, stop_when=_not_meta)
    raw = meta.get_item(_TRANSFER_SYNTAX)
    if raw is None or not isinstance(raw.value, bytes):
        return None
    syntax = raw.value.rstrip(b" \0").decode("latin-1")
    if not _UID_TEXT.fullmatch(syntax) or syntax in _DEFLATED:
        return None
    implicit = syntax == _IMPLICIT_LE
    little = syntax != _EXPLICIT_BE
    mismatch = syntax_mismatch(data, fp.tell(), implicit)
    ds = read_dataset(fp, implicit, little, stop_when=_at_pixels)
    return ds, fp.tell(), mismatch, meta, (implicit != mismatch, little)


def _parse(data: bytes, flags: set[str]) -> tuple[Any, int, Any, Any]:
    """(data set up to the pixel data, where it stopped, the file meta or None, the
    (implicit, little endian) encoding found, or None to take pydicom's)."""
    fp = io.BytesIO(data)
    if data[128:132] == b"DICM":
        try:
            fast = _fast_parse(data)
        except Exception:
            fast = None
        if fast is not None:
            if fast[2]:
                flags.add("syntax-mismatch")
            return fast[0], fast[1], fast[3], fast[4]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
        if any("but found" in str(w.message) for w in caught):
            flags.add("syntax-mismatch")
    elif _looks_like_dataset(data):
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
    else:
        raise DicomFileError("not DICOM (no 'DICM' marker and no data set at the start)")
    meta = getattr(ds, "file_meta", None)
    if meta is None or _TRANSFER_SYNTAX not in meta:
        flags.add("no-meta")
    return ds, fp.tell(), meta, None


def read_header(path: str | Path, object_file: str, spec: ReadSpec, *,
                data: bytes | None = None, stat: os.stat_result | None = None) -> HeaderRecord:
    """Read ``path`` into a HeaderRecord; raise DicomFileError(reason) for a file to skip.

    ``data``/``stat`` may be given when the caller already holds the bytes (store_dataset).
    """
    try:
        if data is None:
            if stat is None:
                stat = os.stat(path)
            if stat.st_size == 0:
                raise DicomFileError("empty file (0 bytes)")
            with open(path, "rb") as fh:
                data = fh.read()
    except OSError as exc:
        raise DicomFileError(f"cannot read: {exc.strerror}") from None
    if not data:
        raise DicomFileError("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            flags: set[str] = set()
            ds, stopped_at, meta, encoding = _parse(data, flags)
        except DicomFileError:
            raise
        except InvalidDicomError as exc:
            raise DicomFileError(f"not DICOM ({exc})") from None
        except Exception as exc:  # pydicom raises many kinds on damaged input
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DicomFileError(f"unreadable DICOM (truncated or damaged): {reason}") from None
        # top-level elements by plain int tag, values as read (raw: bytes and length)
        elements = {int(tag): elem for tag, elem in ds.items()}
        implicit, little = encoding or ds.original_encoding
        if implicit is None:
            implicit, little = True, True
        tsyntax = meta.get_item(_TRANSFER_SYNTAX) if meta is not None else None
        tsyntax = tsyntax.value if tsyntax is not None else None
        if isinstance(tsyntax, bytes):
            tsyntax = tsyntax.rstrip(b" \0").decode("latin-1")
        if str(tsyntax or "") not in _DEFLATED:
            _check_complete(elements, data, stopped_at, little, implicit, flags)
        if meta_mismatch(meta, elements):
            flags.add("meta-mismatch")
        decode = _decoder(elements)
        values = [_value(elements, tag, dtype, length, decode, little)
                  for tag, dtype, length in spec.fields]
        rows = tuple(tuple([values[i] for i in index]) for index in spec.layout)
        if not rows[3][0]:
            raise DicomFileError("no SOP Instance UID: not an indexable DICOM object")
        if not rows[2][0] or not rows[1][0]:
            missing = "Series" if not rows[2][0] else "Study"
            raise DicomFileError(f"no {missing} Instance UID")
        modality = _value(elements, _MODALITY, "DT_STR", 64, decode, little)
        sop_class = _value(elements, _SOP_CLASS, "DT_UI", 64, decode, little)
        extras = dict.fromkeys(EXTRAS_NAMES)        # every RTExtras column, None when n/a
        extras.update(rt_extras(ds, modality))
    extras["SOPInstanc"] = rows[3][0]
    extras["Modality"] = modality
    extras["hash"] = hashlib.sha256(data).hexdigest()
    extras["FileSize"] = len(data)
    extras["FileMtime"] = None if stat is None else stat.st_mtime_ns
    extras["Flags"] = flags_cell(flags)
    return HeaderRecord(object_file, rows, modality, sop_class, extras)
