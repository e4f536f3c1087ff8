"""Cheap checks of a file that lies about itself, for ``dicomread`` (``RTExtras.Flags``):
its data set against the meta's transfer syntax (``syntax-mismatch``), the meta's Media Storage
UIDs against the data set's (``meta-mismatch``) and the fragments of encapsulated pixel data
(``bad-fragments``, item headers only).  ``no-pixel-data`` and ``no-meta`` are found while
reading."""

from __future__ import annotations

__all__ = ["FLAG_TOKENS", "flags_cell", "flag_tokens", "fragments_damaged", "syntax_mismatch",
           "meta_mismatch"]

import struct
from collections.abc import Iterable
from typing import Any

FLAG_TOKENS = ("bad-fragments", "meta-mismatch", "no-meta", "no-pixel-data", "syntax-mismatch")
_UNDEFINED = 0xFFFFFFFF
_MEDIA_CLASS, _MEDIA_INSTANCE = 0x00020002, 0x00020003
_SOP_CLASS, _SOP_INSTANCE = 0x00080016, 0x00080018
_ITEM, _SEQ_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
_VR_NAMES = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV "
                      b"TM UC UI UL UN UR US UT UV".split())


def flags_cell(tokens: Iterable[str]) -> str | None:
    """The ``RTExtras.Flags`` cell of a set of tokens: sorted, joined with ``\\``; None if none."""
    return "\\".join(sorted(set(tokens))) or None


def flag_tokens(cell: str | None) -> tuple[str, ...]:
    """The sorted tokens of a ``RTExtras.Flags`` cell (NULL or empty: none)."""
    return tuple(sorted({t for t in (cell or "").split("\\") if t}))


def fragments_damaged(data: bytes, pos: int, little: bool) -> bool:
    """Whether the encapsulated pixel data from ``pos`` (its first item) has an odd-length
    fragment or something other than an item before the sequence delimiter.  Reads only the
    item headers."""
    order = "<" if little else ">"
    end = len(data)
    while pos + 8 <= end:
        group, element, length = struct.unpack_from(order + "HHI", data, pos)
        tag = group << 16 | element
        if tag == _SEQ_DELIMITER:
            return False
        if tag != _ITEM or length == _UNDEFINED or length % 2:
            return True
        pos += 8 + length
    return True


def syntax_mismatch(data: bytes, pos: int, implicit: bool) -> bool:
    """Whether the first data set element contradicts the declared VR encoding (pydicom's
    own test: a valid VR name where the 4-byte length should be, or none where the VR goes)."""
    vr = data[pos + 4:pos + 6]
    if len(vr) < 2:
        return False
    return (vr in _VR_NAMES) == implicit


def meta_mismatch(meta: Any, elements: dict) -> bool:
    """Whether the meta's Media Storage SOP instance or class UID differs from the data set's."""
    if meta is None:
        return False
    for meta_tag, tag in ((_MEDIA_INSTANCE, _SOP_INSTANCE), (_MEDIA_CLASS, _SOP_CLASS)):
        declared = meta.get_item(meta_tag)     # raw: no value conversion (hot path)
        own = elements.get(tag)
        if declared is None or own is None:
            continue
        a, b = declared.value, own.value
        a = a.rstrip(b" \0").decode("latin-1") if isinstance(a, bytes) else str(a or "")
        b = b.rstrip(b" \0").decode("latin-1") if isinstance(b, bytes) else str(b or "")
        if a and b and a != b:
            return True
    return False
