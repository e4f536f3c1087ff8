"""What goes on the wire when a file's bytes cannot go as stored: a pydicom dataset.

* **re-encoded**: a file that lies about itself (bytes not in the declared syntax, a meta that
  names another SOP instance, odd-length or damaged fragments) or a bare dataset is read with
  pydicom and sent under the dataset's own SOP class and instance UIDs with corrected meta;
  pynetdicom encodes it in the accepted syntax (any uncompressed one for uncompressed data, the
  same compressed syntax with the fragments re-itemized to even lengths otherwise);
* **decompressed**: when the peer accepts none of a compressed file's own syntaxes but an
  uncompressed one, the pixel data is decoded (pydicom's pixel data handlers; the codecs come
  with ``pip install 'conquest-run[codecs]'``) and sent uncompressed.  Nothing is ever
  compressed, so nothing is lost on the way.

:func:`prepared` answers a dataset, a phrase saying how its bytes are sent (for outcomes and
the cause of a lost association) and the details for the outcome, or :class:`CannotSend`.
"""

from __future__ import annotations

__all__ = ["CannotSend", "prepared", "syntax_name"]

from typing import TYPE_CHECKING, Any

from .settings import EXPLICIT_BE, EXPLICIT_LE, IMPLICIT_LE, UNCOMPRESSED

DEFLATED = "1.2.840.10008.1.2.1.99"

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from .items import SendItem


class CannotSend(Exception):
    """The item cannot be put into a syntax the peer accepts (the message says why)."""


def syntax_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


def prepared(item: "SendItem", accepted: set[str]) -> tuple["Dataset", str, dict[str, Any]]:
    """The dataset to send for ``item`` given the syntaxes the peer accepted for its class."""
    from pydicom import dcmread
    from pydicom.dataset import FileMetaDataset

    try:
        ds = dcmread(item.path, force=True)
        for _ in ds.iterall():  # every raw element converted now (VRs of implicit bytes
            pass                # looked up): a broken file fails here, not in the encoder
    except Exception as exc:
        raise CannotSend(f"cannot send: pydicom cannot read the file ({exc})") from None
    meta = ds.file_meta if isinstance(getattr(ds, "file_meta", None), FileMetaDataset) \
        else FileMetaDataset()
    ds.file_meta = meta
    declared = str(meta.get("TransferSyntaxUID", "") or item.transfer_syntax)
    syntax = _actual_syntax(ds, declared)
    if syntax == DEFLATED and syntax not in accepted:      # inflated in memory already
        syntax = EXPLICIT_LE
    if syntax == EXPLICIT_BE and syntax not in accepted:   # pynetdicom converts LE only
        _to_little_endian(ds)
        syntax = EXPLICIT_LE
    meta.TransferSyntaxUID = syntax
    for key in ("SOPClassUID", "SOPInstanceUID"):
        if key not in ds:
            raise CannotSend(f"cannot send: the dataset has no {key}")
    meta.MediaStorageSOPClassUID = ds.SOPClassUID       # the dataset's own UIDs, always
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    detail: dict[str, Any] = {"reencoded": True, "transfer_syntax": syntax}
    if item.fix:
        detail["fixed"] = list(item.fix)
    if syntax in accepted or (syntax in UNCOMPRESSED and accepted & set(UNCOMPRESSED)):
        if syntax not in UNCOMPRESSED and syntax != DEFLATED and "PixelData" in ds:
            _reitemize(ds)
        sent_in = syntax if syntax in accepted else _preferred(accepted)
        return ds, f"re-encoded by pydicom in {syntax_name(sent_in)}", detail
    if accepted & set(UNCOMPRESSED):
        _decompress(ds, syntax)
        detail.update(transfer_syntax=EXPLICIT_LE, decompressed=True, stored_syntax=syntax)
        return ds, f"decompressed from {syntax_name(syntax)} for this peer", detail
    raise CannotSend(f"not accepted by the peer: SOP class {item.sop_class} with transfer "
                     f"syntax {syntax}, and it accepts no uncompressed syntax to decode it to")


def _actual_syntax(ds: "Dataset", declared: str) -> str:
    """The declared syntax, unless pydicom found the bytes in another uncompressed one."""
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if declared not in UNCOMPRESSED:        # deflated or encapsulated: explicit VR LE, whatever
        if implicit or little is False:     # the bytes were (pynetdicom checks the two agree)
            ds.set_original_encoding(False, True, ds.original_character_set)
        return declared
    if implicit is None:
        return declared
    if implicit:
        return IMPLICIT_LE
    return EXPLICIT_LE if little else EXPLICIT_BE


_WORD = {"OW": "H", "OF": "f", "OL": "L", "OD": "d", "OV": "Q"}


def _to_little_endian(ds: "Dataset") -> None:
    """A dataset read from big endian bytes, made little endian: the values pydicom keeps as
    bytes (OW, OF, OL, OD, OV) byte-swapped word by word; everything else it holds decoded."""
    from array import array

    for elem in ds.iterall():
        code = _WORD.get(str(elem.VR))
        if code and isinstance(elem.value, bytes) and len(elem.value) % array(code).itemsize == 0:
            words = array(code, elem.value)
            words.byteswap()
            elem.value = words.tobytes()
    for item in [ds, *(i for e in ds.iterall() if e.VR == "SQ" for i in e.value)]:
        item.set_original_encoding(False, True, item.original_character_set)


def _preferred(accepted: set[str]) -> str:
    return next(t for t in UNCOMPRESSED if t in accepted)


def _reitemize(ds: "Dataset") -> None:
    """Encapsulated pixel data again, each fragment padded to an even length (the basic
    offset table rebuilt); the compressed bytes themselves are unchanged."""
    from pydicom.encaps import encapsulate, generate_frames

    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        parts = list(generate_frames(ds.PixelData, number_of_frames=frames))
    except Exception as exc:
        raise CannotSend(f"cannot send: its encapsulated pixel data cannot be read ({exc})") \
            from None
    ds.PixelData = encapsulate(parts, has_bot=len(parts) > 1)
    from pydicom.datadict import dictionary_has_tag

    for tag in [t for t in ds.keys() if t > 0x7FE00010]:    # what a misaligned end left:
        if not tag.is_private and not dictionary_has_tag(tag):     # no element at all
            del ds[tag]


def _decompress(ds: "Dataset", syntax: str) -> None:
    try:
        import numpy  # noqa: F401
    except ImportError:
        raise CannotSend(f"not sent: the peer does not accept {syntax_name(syntax)} and "
                         "decoding it needs the codecs: pip install 'conquest-run[codecs]'") \
            from None
    try:
        ds.decompress(generate_instance_uid=False)     # the same instance, decoded
    except Exception as exc:
        raise CannotSend(f"not sent: the peer does not accept {syntax_name(syntax)} and its "
                         f"pixel data cannot be decoded here ({exc}); pip install "
                         "'conquest-run[codecs]' adds the codecs") from None
