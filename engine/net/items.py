"""Files -> send items -> associations: contexts from the file meta (read without pydicom)."""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..fileflags import syntax_mismatch
from ..report import FAILED, Outcome

if TYPE_CHECKING:
    pass
from .settings import IMPLICIT_LE, MAX_CONTEXTS, UNCOMPRESSED, OnOutcome


@dataclass(frozen=True)
class SendItem:
    """One instance ready to send: where its file is and what its file meta says."""

    sop_uid: str
    series_uid: str | None
    path: Path
    sop_class: str
    transfer_syntax: str
    has_meta: bool = True       # False: a bare dataset (Conquest .v2): decoded before sending
    size: int = 0
    fix: tuple[str, ...] = ()   # why its bytes cannot go as stored (flags, or found here)


class Transport(Protocol):
    def send(self, batches: Sequence[Sequence[SendItem]], on_outcome: OnOutcome) -> None:
        """Send each batch on its own association; call ``on_outcome`` once per item."""



_META_UIDS = {0x0002: "MediaStorageSOPClassUID", 0x0003: "MediaStorageSOPInstanceUID",
              0x0010: "TransferSyntaxUID"}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}


def read_file_meta(path: Path) -> dict[str, str] | None:
    """The SOP class, SOP instance and transfer syntax UIDs of a Part-10 file's meta group.

    ``None`` when the file has no ``DICM`` preamble (a bare dataset).  A small direct parse of
    group 0002 (explicit VR little endian by definition), some 20x faster than building a
    pydicom ``FileMetaDataset``; anything unexpected falls back to pydicom's reader.
    """
    with open(path, "rb") as fh:
        head = fh.read(4096)
        if len(head) < 132 or head[128:132] != b"DICM":
            return None
        out: dict[str, str] = {}
        pos, end = 132, None
        while True:
            if pos + 8 > len(head):
                more = fh.read(4096)
                if not more:
                    break
                head += more
                continue
            group, elem = struct.unpack_from("<HH", head, pos)
            if group != 2 or (end is not None and pos >= end):
                break
            vr = head[pos + 4:pos + 6]
            if vr in _LONG_VRS:
                length, start = struct.unpack_from("<I", head, pos + 8)[0], pos + 12
            else:
                length, start = struct.unpack_from("<H", head, pos + 6)[0], pos + 8
            if length == 0xFFFFFFFF or not vr.isalpha():
                return _pydicom_file_meta(path)
            while start + length > len(head):
                more = fh.read(max(4096, start + length - len(head)))
                if not more:
                    return _pydicom_file_meta(path)
                head += more
            value = head[start:start + length]
            if elem == 0 and vr == b"UL" and length == 4:
                end = start + 4 + struct.unpack("<I", value)[0]
            elif elem in _META_UIDS:
                out[_META_UIDS[elem]] = value.rstrip(b"\0 ").decode("ascii", "replace")
            pos = start + length
        return out


def _pydicom_file_meta(path: Path) -> dict[str, str]:
    from pydicom.filereader import read_file_meta_info

    meta = read_file_meta_info(path)
    return {k: str(meta.get(k, "") or "") for k in _META_UIDS.values() if k in meta}


def read_send_item(path: Path, sop_uid: str, series_uid: str | None,
                   sop_class: str | None = None,
                   flags: tuple[str, ...] = ()) -> SendItem | Outcome:
    """Read only the file meta group of ``path``; a failed Outcome when it cannot be sent.

    ``flags`` are the index's findings (``RTExtras.Flags``); those in :data:`REENCODE_FLAGS`,
    a meta whose SOP instance is not the dataset's, and bytes that do not follow the declared
    syntax make the item one to re-encode (``fix``) rather than stream as stored."""

    def failed(reason: str) -> Outcome:
        return Outcome(sop_uid, series_uid, FAILED, reason, {"path": str(path)})

    try:
        size = path.stat().st_size
        meta = read_file_meta(path)
    except FileNotFoundError:
        return failed("file missing")
    except Exception as exc:            # unreadable, or pydicom's fallback refusing it
        return failed(f"unreadable file: {exc}")
    if meta is None or not meta.get("TransferSyntaxUID"):
        if not sop_class:
            return failed("no file meta and no SOP class known")
        if not _is_uid(sop_class):
            return failed(f"the SOP class {sop_class!r} is not a valid UID")
        return SendItem(sop_uid, series_uid, path, sop_class, IMPLICIT_LE, False, size)
    fix = [f for f in flags if f in REENCODE_FLAGS]
    klass = meta.get("MediaStorageSOPClassUID", "") or sop_class or ""
    file_sop = meta.get("MediaStorageSOPInstanceUID", "")
    if file_sop != sop_uid:        # the plan holds what the index read: the dataset's UIDs
        try:
            held, held_class = _dataset_uids(path)
        except Exception as exc:
            return failed(f"unreadable file: {exc}")
        if held != sop_uid:
            return failed(f"the file holds SOP instance {held or file_sop}, not the planned "
                          "one (the archive changed since planning)")
        fix.append("meta-mismatch")
        klass = held_class or klass
    if _syntax_lies(path, meta["TransferSyntaxUID"]):
        fix.append("syntax-mismatch")
    if not klass:
        return failed("no SOP class in the file meta")
    for what, uid in (("SOP class", klass), ("transfer syntax", meta["TransferSyntaxUID"])):
        if not _is_uid(uid):     # it could not even be proposed in an association request
            return failed(f"the file meta's {what} {uid!r} is not a valid UID")
    return SendItem(sop_uid, series_uid, path, klass, meta["TransferSyntaxUID"], True, size,
                    tuple(sorted(set(fix))))


REENCODE_FLAGS = frozenset({"syntax-mismatch", "meta-mismatch", "bad-fragments"})
_DEFLATED = "1.2.840.10008.1.2.1.99"         # its data set is compressed: not checked


def _dataset_uids(path: Path) -> tuple[str, str]:
    """The dataset's own SOP instance and class UIDs (pydicom, header only)."""
    from pydicom import dcmread

    ds = dcmread(path, force=True, stop_before_pixels=True,
                 specific_tags=["SOPClassUID", "SOPInstanceUID"])
    return str(ds.get("SOPInstanceUID", "") or ""), str(ds.get("SOPClassUID", "") or "")


def _syntax_lies(path: Path, declared: str) -> bool:
    """The first dataset element is not in the declared VR encoding (explicit or implicit):
    pydicom reads such a file (warning ``Expected explicit VR, but found implicit VR``); its
    raw bytes make a peer abort.  Needs the meta's group length; False when unsure."""
    with open(path, "rb") as fh:
        head = fh.read(144)
        if len(head) < 144 or head[132:134] != b"\2\0" or head[136:138] != b"UL":
            return False
        fh.seek(144 + struct.unpack_from("<I", head, 140)[0])
        first = fh.read(8)
    if len(first) < 8:
        return False
    if declared == _DEFLATED:
        return False
    return syntax_mismatch(first, 0, declared == IMPLICIT_LE)


_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def _is_uid(value: str) -> bool:
    """A DICOM UID: digits and dots, no leading zeros, at most 64 characters."""
    return len(value) <= 64 and _UID.fullmatch(value) is not None


ANY_UNCOMPRESSED = ""       # a context key's syntax: the uncompressed ones (decode fallback)


def _contexts_of(items: Sequence[SendItem]) -> dict[tuple[str, str], None]:
    """The presentation contexts to propose: each item's own (SOP class, syntax), plus for a
    compressed one an uncompressed context of its class to fall back on (decompressed)."""
    out: dict[tuple[str, str], None] = {}
    for i in items:
        out[(i.sop_class, i.transfer_syntax)] = None
        if i.transfer_syntax not in UNCOMPRESSED:
            out[(i.sop_class, ANY_UNCOMPRESSED)] = None
    return out


def group_associations(items: Sequence[SendItem], *, parts: int = 1,
                       max_contexts: int = MAX_CONTEXTS) -> list[list[SendItem]]:
    """Split items (in plan order) into association batches.

    A series stays on one association; a batch holds at most ``max_contexts`` distinct
    (SOP class, transfer syntax) pairs; with ``parts`` > 1 batches are cut at about a
    ``1/(2*parts)`` share of the bytes so parallel associations get balanced work.  Only a series
    that alone needs more than ``max_contexts`` contexts is split.
    """
    series: dict[str | None, list[SendItem]] = {}
    for item in items:
        series.setdefault(item.series_uid, []).append(item)
    total = sum(max(i.size, 1) for i in items)
    share = total / (2 * parts) if parts > 1 else float("inf")

    batches: list[list[SendItem]] = []
    current: list[SendItem] = []
    ctx: dict[tuple[str, str], None] = {}
    size = 0
    for members in series.values():
        for chunk in _split_by_contexts(members, max_contexts):
            need = _contexts_of(chunk)
            if current and (len(ctx.keys() | need.keys()) > max_contexts or size >= share):
                batches.append(current)
                current, ctx, size = [], {}, 0
            current.extend(chunk)
            ctx.update(need)
            size += sum(max(i.size, 1) for i in chunk)
    if current:
        batches.append(current)
    return batches


def _split_by_contexts(members: list[SendItem], max_contexts: int) -> list[list[SendItem]]:
    if len(_contexts_of(members)) <= max_contexts:
        return [members]
    chunks: list[list[SendItem]] = [[]]
    seen: set[tuple[str, str]] = set()
    for item in members:
        keys = set(_contexts_of([item]))
        if not keys <= seen and len(seen | keys) > max_contexts:
            chunks.append([])
            seen = set()
        seen |= keys
        chunks[-1].append(item)
    return chunks
