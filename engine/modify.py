"""Tag editing of exported copies (pyconquest's ``change_tag`` and ``modify_rtstruct``).

A ``copy`` or ``send`` step may carry a ``modify:`` block::

    modify:
      set: {InstitutionName: "Trial site 3", "(0008,1030)": "Plan review"}
      remove: [PatientBirthDate, "(0010,1040)"]
      rename_roi: {"PTV 1": PTV_70}

``set`` gives an attribute (keyword or ``(gggg,eeee)`` tag) a value, ``remove`` deletes
attributes, ``rename_roi`` renames ROIs in an RTSTRUCT's StructureSetROISequence (ROIName).
Edits are applied to the outgoing bytes only, never to the archive's files, and after
``deidentify:`` when both are given.  :func:`check_block` validates a block against pydicom's
data dictionary (known keyword or tag, a VR that can hold a plain value, the value valid for
that VR) and returns ``(where, message)`` pairs that ``jobs.py`` locates in the job file.
"""

from __future__ import annotations

__all__ = ["Modification", "ModifyError", "check_block", "parse_block", "open_modify",
           "ModifyExport", "chain", "journal_part"]

import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydicom import config, dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.valuerep import validate_value

from .errors import ConquestRunError

Where = tuple  # a path inside the block, e.g. ("set", "PatientName")

_TAG = re.compile(r"^\(?\s*([0-9A-Fa-f]{4})\s*,?\s*([0-9A-Fa-f]{4})\s*\)?$")
# VRs whose value is not a plain text or number a job can give
_NOT_SETTABLE = {"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "AT", "OB or OW", "US or OW",
                 "US or SS", "US or SS or OW"}
_NUMERIC = {"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"}
_ROI_NAME_MAX = 64
_REFUSED_TAGS = {0x7FE00010: "PixelData"}


class ModifyError(ConquestRunError):
    """A ``modify:`` block that cannot be applied (the message says where and why)."""


@dataclass(frozen=True)
class Modification:
    sets: tuple[tuple[int, str, str, Any], ...] = ()      # (tag, keyword, VR, value)
    removes: tuple[int, ...] = ()
    renames: tuple[tuple[str, str], ...] = ()             # (old ROI name, new)

    def apply(self, ds: Dataset) -> dict[str, int]:
        """Edit ``ds`` in place; the counts of what changed."""
        counts = {"set": 0, "removed": 0, "renamed_roi": 0}
        for tag in self.removes:
            if tag in ds:
                del ds[tag]
                counts["removed"] += 1
        for tag, _, vr, value in self.sets:
            ds.add_new(tag, vr, value)
            counts["set"] += 1
        if self.renames and "StructureSetROISequence" in ds:
            names = dict(self.renames)
            for item in ds.StructureSetROISequence:
                old = str(item.get("ROIName", ""))
                if old in names:
                    item.ROIName = names[old]
                    counts["renamed_roi"] += 1
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "SOPInstanceUID" in ds:   # the meta follows an edited UID
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        return counts

    def apply_bytes(self, data: bytes) -> tuple[bytes, Dataset, dict[str, int]]:
        """(edited file bytes, the edited dataset, counts) of one file's bytes."""
        ds = dcmread(io.BytesIO(data), force=True)
        counts = self.apply(ds)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue(), ds, counts


# -- checking ------------------------------------------------------------------------------------
def _tag_of(name: Any) -> tuple[int | None, str]:
    """(tag, problem): a keyword or ``(gggg,eeee)`` of the data dictionary."""
    if not isinstance(name, str) or not name.strip():
        return None, "is not a keyword or a (gggg,eeee) tag"
    if m := _TAG.match(name.strip()):
        tag = int(m.group(1) + m.group(2), 16)
        if (tag >> 16) % 2 == 1:
            return tag, ""        # private: known to no dictionary; only remove allows it
        if keyword_for_tag(tag) == "" and not _in_dictionary(tag):
            return None, f"{name} is not in the DICOM data dictionary"
        return tag, ""
    tag = tag_for_keyword(name.strip())
    if tag is None:
        return None, f"{name} is not a DICOM keyword (nor a (gggg,eeee) tag)"
    return tag, ""


def _in_dictionary(tag: int) -> bool:
    try:
        dictionary_VR(tag)
        return True
    except KeyError:
        return False


def _values(vr: str, value: Any) -> tuple[Any, str]:
    """(the value as pydicom takes it, problem) for one set: entry."""
    items = value if isinstance(value, list) else [value]
    if value is None or items == []:
        return None, ""                                      # an empty element
    out = []
    for item in items:
        if isinstance(item, bool) or isinstance(item, (dict, list)):
            return None, f"cannot be {type(item).__name__} (give a text or a number)"
        if vr in _NUMERIC:
            if not isinstance(item, (int, float)) or (vr not in ("FL", "FD")
                                                      and not isinstance(item, int)):
                return None, f"needs {'a number' if vr in ('FL', 'FD') else 'an integer'} " \
                             f"for VR {vr}, not {item!r}"
        elif isinstance(item, float) and vr == "DS":
            item = format(item, ".10g")
        elif not isinstance(item, str):
            item = str(item)
        if isinstance(item, str) and "\\" in item:
            return None, "holds a backslash; give several values as a list"
        try:
            validate_value(vr, item, config.RAISE)
        except (ValueError, TypeError, OverflowError) as exc:
            return None, f"is not a valid {vr} value: {str(exc).split('. Please')[0]}"
        out.append(item)
    return (out if isinstance(value, list) else out[0]), ""


def _check(block: Any) -> tuple[Modification, list[tuple[Where, str]]]:
    problems: list[tuple[Where, str]] = []
    if not isinstance(block, dict) or not block:
        return Modification(), [((), "modify needs at least one of set, remove, rename_roi")]
    for key in block:
        if key not in ("set", "remove", "rename_roi"):
            problems.append(((key,), f"modify has no key {key!r} (set, remove, rename_roi)"))
    sets, removes, renames = [], [], []
    for name, value in (block.get("set") or {}).items() if isinstance(block.get("set"), dict) \
            else ():
        tag, problem = _tag_of(name)
        where = ("set", name)
        if tag is None:
            problems.append((where, f"modify.set: {problem}"))
            continue
        if (tag >> 16) % 2 == 1:
            problems.append((where, f"modify.set: {name} is a private tag; its VR is unknown, "
                                    "so it can only be removed"))
            continue
        if tag >> 16 == 0x0002 or tag in _REFUSED_TAGS:
            problems.append((where, f"modify.set: {name} cannot be set (file meta and pixel "
                                    "data follow the dataset)"))
            continue
        vr = dictionary_VR(tag)
        if vr in _NOT_SETTABLE:
            problems.append((where, f"modify.set: {name} has VR {vr}, which takes no plain "
                                    "value"))
            continue
        converted, problem = _values(vr, value)
        if problem:
            problems.append((where, f"modify.set: {name} {problem}"))
            continue
        sets.append((tag, keyword_for_tag(tag) or name, vr, converted))
    if "set" in block and not isinstance(block["set"], dict):
        problems.append((("set",), "modify.set must be a map of keyword or tag to value"))
    raw_removes = block.get("remove", [])
    if not isinstance(raw_removes, list):
        problems.append((("remove",), "modify.remove must be a list of keywords or tags"))
        raw_removes = []
    for n, name in enumerate(raw_removes):
        tag, problem = _tag_of(name)
        if tag is None:
            problems.append((("remove", n), f"modify.remove: {problem}"))
        elif tag >> 16 == 0x0002 or tag in _REFUSED_TAGS:
            problems.append((("remove", n), f"modify.remove: {name} cannot be removed"))
        elif any(tag == s[0] for s in sets):
            problems.append((("remove", n), f"modify.remove: {name} is also given under set"))
        else:
            removes.append(tag)
    raw_renames = block.get("rename_roi", {})
    if not isinstance(raw_renames, dict):
        problems.append((("rename_roi",), "modify.rename_roi must be a map of old ROI name to "
                                          "new"))
        raw_renames = {}
    for old, new in raw_renames.items():
        where = ("rename_roi", old)
        if not isinstance(new, str) or not new.strip():
            problems.append((where, f"modify.rename_roi: the new name of {old!r} must be a "
                                    "non-empty text"))
        elif len(new) > _ROI_NAME_MAX or "\\" in new or any(ord(c) < 32 for c in new):
            problems.append((where, f"modify.rename_roi: {new!r} is not a valid ROI name (LO: "
                                    f"at most {_ROI_NAME_MAX} characters, no backslash or "
                                    "control characters)"))
        else:
            renames.append((str(old), new))
    return Modification(tuple(sets), tuple(removes), tuple(renames)), problems


def check_block(block: Any) -> list[tuple[Where, str]]:
    """The problems of a ``modify:`` block, each with where it is inside the block."""
    return _check(block)[1]


def parse_block(block: Any) -> Modification:
    """The checked modification of a block; ModifyError naming every problem."""
    mod, problems = _check(block)
    if problems:
        raise ModifyError("; ".join(message for _, message in problems))
    return mod


def open_modify(options: dict[str, Any]) -> Modification | None:
    """A step's modification (None without ``modify:``); ModifyError when it is invalid."""
    block = (options or {}).get("modify")
    return None if block is None else parse_block(block)


def journal_part(options: dict[str, Any]) -> str:
    """What a send's journal key adds for a modifying step ('' without modify:)."""
    block = (options or {}).get("modify")
    if not block:
        return ""
    return " modified:" + hashlib.sha256(json.dumps(block, sort_keys=True, default=str)
                                         .encode()).hexdigest()[:12]


# -- the hooks copy and send call ----------------------------------------------------------------
class _Counts:
    """Totals of the edits over a step (the ``report`` a file writer adds to)."""

    def __init__(self) -> None:
        self.files = 0
        self.totals = {"set": 0, "removed": 0, "renamed_roi": 0}

    def add(self, rel: str, sop_uid: str, counts: dict[str, Any]) -> None:
        self.files += 1
        for key, n in counts.items():
            if key in self.totals and isinstance(n, int):
                self.totals[key] += n

    def refuse(self, sop_uid: str, reason: str) -> None:   # edits refuse nothing
        pass

    def summary(self) -> dict[str, Any]:
        return {"modified": self.files, "modify": dict(self.totals)}


class ModifyExport:
    """A file writer for ``deid.export.write_file`` / ``deid_send_item`` that only edits."""

    def __init__(self, mod: Modification, counts: _Counts) -> None:
        self.mod = mod
        self.report = counts
        self.names = None        # used only for burned-in refusals, which edits never make

    def file_bytes(self, path: Path) -> tuple[bytes, Dataset, dict[str, int]]:
        return self.mod.apply_bytes(Path(path).read_bytes())


def chain(deid: Any, mod: Modification | None) -> tuple[Any, Callable[[], dict[str, Any]]]:
    """(the writer a step uses: the de-identifier, edits run after it, or edits alone, or
    None; a function giving the edits' summary for the step report)."""
    counts = _Counts()
    if mod is None:
        return deid, lambda: {}
    if deid is None:
        return ModifyExport(mod, counts), counts.summary

    def after(data: bytes, ds: Dataset, found: dict[str, Any]):
        out, ds2, edited = mod.apply_bytes(data)
        counts.add("", "", edited)
        return out, ds2, found
    deid.post = after
    return deid, counts.summary
