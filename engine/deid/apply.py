"""Apply a :class:`Profile` to one pydicom Dataset, nested sequences and file meta included.

:func:`deidentify_dataset` changes the dataset in place and returns the per-tag action counts
(tag keyword -> action -> count; never a value).  :func:`deidentify_bytes` reads a file's bytes
and returns the de-identified file's bytes.  A file with burned-in text is refused
(:class:`BurnedIn`) before anything is changed.

Actions: X remove; Z empty (an empty sequence for SQ); D a dummy value of the VR (the patient's
pseudonym for PatientID and PatientName); K keep; C clean (dates moved by the patient's offset
under the Modified Dates option, text with every identifying value of the file taken out,
sequences kept with their items de-identified, binary values removed); U the keyed UID.
Attributes the table does not name are kept, except UIDs (remapped by value unless they name a
class or a transfer syntax, or the Retain UIDs option is given) and private attributes (removed;
under the Retain Safe Private Option only those of Table E.3.10-1 and their creators are kept,
see ``private.py``, with their UIDs remapped and their sequences' items walked).
"""

from __future__ import annotations

__all__ = ["BurnedIn", "deidentify_dataset", "deidentify_bytes", "burned_in_reason",
           "IDENTIFYING_KEYWORDS"]

import io
import re
from collections import defaultdict
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from .private import KEEP, plan_private
from .profile import Profile
from .uids import Pseudonyms, is_standard_uid

IMPLEMENTATION_UID = "1.2.826.0.1.3680043.10.1389.1"     # conquest-run's (as in synthetic.py)
IMPLEMENTATION_NAME = "CONQUEST_RUN"
_US = ("1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.6.2",
       "1.2.840.10008.5.1.4.1.1.3.1", "1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3")
_SC = ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1",
       "1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.3",
       "1.2.840.10008.5.1.4.1.1.7.4")
_RT_IMAGE = ("1.2.840.10008.5.1.4.1.1.481.1",)
BURNED_IN_CLASSES = {**{u: "ultrasound" for u in _US}, **{u: "secondary capture" for u in _SC},
                     **{u: "RT image" for u in _RT_IMAGE}}
# values whose every occurrence is taken out of text that the profile cleans (C)
IDENTIFYING_KEYWORDS = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "PatientBirthDate", "PatientAddress", "AccessionNumber",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
    "NameOfPhysiciansReadingStudy", "RequestingPhysician", "InstitutionName",
    "InstitutionAddress", "InstitutionalDepartmentName", "StationName", "StudyID",
    "MedicalRecordLocator", "PatientTelephoneNumbers", "ResponsiblePerson")
_KEEP_UID_SUFFIXES = ("ClassUID", "SyntaxUID")
_KEEP_UID_KEYWORDS = {"CodingSchemeUID", "ContextUID", "MappingResourceUID",
                      "PrivateInformationCreatorUID", "ImplementationClassUID"}
_NUMERIC_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "IS", "DS", "SV", "UV", "AT"}
_TEXT_VRS = {"AE", "AS", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_DUMMY = {"PN": "ANONYMIZED", "DA": "19000101", "DT": "19000101000000", "TM": "000000",
          "AS": "000D", "IS": "0", "DS": "0", "CS": "ANONYMIZED", "UR": "ANONYMIZED"}
_PATIENT_TAGS = {0x00100010: "PatientName", 0x00100020: "PatientID"}
_META_REBUILT = {0x00020000, 0x00020001}       # group length and version: written anew


class BurnedIn(Exception):
    """The file has, or may have, text burned into its pixels; it is not exported."""


def burned_in_reason(ds: Dataset) -> str | None:
    """Why a file may carry burned-in text (None: it does not say so and is not of a class
    that typically does)."""
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES":
        return "BurnedInAnnotation is YES"
    if flag != "NO":
        kind = BURNED_IN_CLASSES.get(str(ds.get("SOPClassUID", "")))
        if kind is not None:
            return f"BurnedInAnnotation is absent on a {kind}, which typically has burned-in text"
    return None


class _Walker:
    def __init__(self, profile: Profile, names: Pseudonyms, patient_id: str,
                 identifying: list[str]) -> None:
        self.profile = profile
        self.names = names
        self.patient_id = patient_id
        self.retain_uids = "retain-uids" in profile.options
        self.safe_private = profile.private_action in ("C", "K")     # E.3.10: the safe ones
        self.modified_dates = "retain-longitudinal-modified-dates" in profile.options
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        pattern = "|".join(re.escape(v) for v in sorted(set(identifying), key=len, reverse=True))
        self._scrub = re.compile(pattern, re.IGNORECASE) if pattern else None

    def count(self, elem: DataElement, action: str) -> None:
        self.counts[keyword(int(elem.tag))][action] += 1

    def dataset(self, ds: Dataset) -> None:
        held = ds._dict     # raw elements stay unconverted unless their value is looked at
        private = {}
        if self.safe_private and any(tag.is_private for tag in held):
            private = plan_private(ds, lambda t: ds[t].VR)
        for tag in list(held.keys()):
            if tag.is_private:
                self._private(ds, tag, private.get(tag))
                continue
            action = self.profile.action(int(tag))
            if action is None and _raw_vr(held[tag], tag) not in ("SQ", "UI"):
                continue                     # not in the table: kept as read
            if action == "X" and int(tag) not in _PATIENT_TAGS:
                del ds[tag]
                self.counts[keyword(int(tag))]["X"] += 1
                continue
            elem = ds[tag]
            if int(tag) in _PATIENT_TAGS and action in ("Z", "D", "X"):
                elem.value = self.names.patient_id(self.patient_id)
                self.count(elem, "D")
                continue
            if action is None:
                self._unlisted(elem)
            elif action == "X":
                del ds[tag]
                self.count(elem, "X")
            elif action == "K":
                if elem.VR == "SQ":
                    self._items(elem)
                self.count(elem, "K")
            elif action == "Z":
                elem.value = Sequence() if elem.VR == "SQ" else self._empty(elem)
                self.count(elem, "Z")
            elif action == "D":
                self._dummy(ds, elem)
            elif action == "U":
                self._uid(elem, force=True)
            elif action == "C":
                self._clean(ds, elem)
            else:       # an action letter the table does not define: remove, to be safe
                del ds[tag]
                self.count(elem, "X")

    def _items(self, elem: DataElement) -> None:
        for item in elem.value or ():
            self.dataset(item)

    @staticmethod
    def _empty(elem: DataElement) -> Any:
        return b"" if elem.VR in _BINARY_VRS else None

    def _private(self, ds: Dataset, tag: Any, plan: "tuple[str, tuple[str, ...]] | None"
                 ) -> None:
        """Removed unless Table E.3.10-1 lists it (or it is the creator of one that is)."""
        if plan is None:
            del ds[tag]
            self.counts[keyword(int(tag))]["X"] += 1
            return
        kind, allowed = plan
        elem = ds[tag]
        if kind == KEEP and elem.VR == "UN" and allowed == ("UI",):     # an implicit-VR UID
            text = bytes(elem.value or b"").decode("ascii", "replace").strip(" \0")
            elem = ds[tag] = DataElement(tag, "UI", text.split("\\") if "\\" in text else text)
        if elem.VR == "SQ":
            self._items(elem)
        elif elem.VR == "UI":
            self._uid(elem, force=False)
        self.counts[keyword(int(tag))]["K"] += 1

    def _unlisted(self, elem: DataElement) -> None:
        if elem.VR == "SQ":
            self._items(elem)
        elif elem.VR == "UI":
            self._uid(elem, force=False)

    def _uid(self, elem: DataElement, *, force: bool) -> None:
        if elem.VR == "SQ":                # a U on a sequence: its UIDs are what changes
            self._items(elem)
            self.count(elem, "U")
            return
        keyword = elem.keyword or ""
        if not force and (self.retain_uids or keyword.endswith(_KEEP_UID_SUFFIXES)
                          or keyword in _KEEP_UID_KEYWORDS):
            return
        if elem.value in (None, ""):
            return
        values = elem.value if elem.VM > 1 else [elem.value]
        new = [self.names.uid(str(v)) for v in values]
        if any(n != str(v) for n, v in zip(new, values)):
            self.count(elem, "U")
        elem.value = new if elem.VM > 1 else new[0]

    def _scrub_items(self, elem: DataElement) -> None:
        for item in elem.value or ():
            for sub in item:
                if sub.VR == "SQ":
                    self._scrub_items(sub)
                elif sub.VR in _TEXT_VRS and sub.value not in (None, "") and self._scrub:
                    sub.value = ([self._scrub.sub("", str(v)) for v in sub.value]
                                 if sub.VM > 1 else self._scrub.sub("", str(sub.value)))

    def _dummy(self, ds: Dataset, elem: DataElement) -> None:
        vr = elem.VR
        if vr == "SQ":                     # a dummy sequence: one empty item, nothing kept
            elem.value = Sequence([Dataset()]) if elem.value else Sequence()
        elif vr == "UI":
            self._uid(elem, force=True)
            return
        elif vr in _NUMERIC_VRS:
            elem.value = 0
        elif vr in _BINARY_VRS:
            elem.value = b"\0\0"
        elif elem.value not in (None, "", b""):
            elem.value = _DUMMY.get(vr, "ANONYMIZED")
        self.count(elem, "D")

    def _clean(self, ds: Dataset, elem: DataElement) -> None:
        vr = elem.VR
        if vr == "SQ":                     # kept, its items de-identified and cleaned
            self._items(elem)
            self._scrub_items(elem)
        elif vr in ("DA", "DT") and self.modified_dates:
            values = elem.value if elem.VM > 1 else [elem.value]
            moved = [self.names.shift_date(str(v), self.patient_id) for v in values if v]
            elem.value = moved if elem.VM > 1 else (moved[0] if moved else None)
        elif vr == "UI":
            self._uid(elem, force=True)
            return
        elif vr in _BINARY_VRS:
            del ds[elem.tag]
            self.count(elem, "X")
            return
        elif vr in _TEXT_VRS and elem.value not in (None, "") and self._scrub is not None:
            if elem.VM > 1:
                elem.value = [self._scrub.sub("", str(v)) for v in elem.value]
            else:
                elem.value = self._scrub.sub("", str(elem.value))
        self.count(elem, "C")


def _raw_vr(elem: Any, tag: Any) -> str:
    """The VR of a held element without converting its value (the dictionary's when the file
    is implicit VR)."""
    vr = elem.VR
    if vr is None:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN"
    return vr


def _identifying_values(ds: Dataset) -> list[str]:
    out: list[str] = []
    for keyword in IDENTIFYING_KEYWORDS:
        value = ds.get(keyword)
        if value in (None, ""):
            continue
        values = value if isinstance(value, (list, tuple)) or getattr(value, "VM", 1) > 1 \
            and not isinstance(value, str) else [value]
        for v in values:
            text = str(v).strip()
            parts = [text, *re.split(r"[\^=\\ ,]+", text)]
            out += [p for p in parts if len(p) >= 3]
    return out


def _mark(ds: Dataset, profile: Profile) -> None:
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = [f"{name}"[:64] for _, name in profile.method_codes()]
    codes = Sequence()
    for value, meaning in profile.method_codes():
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning[:64]
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = codes
    if "retain-longitudinal-modified-dates" in profile.options:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    elif "retain-longitudinal-full-dates" in profile.options:
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED"


def deidentify_dataset(ds: Dataset, profile: Profile, names: Pseudonyms, *,
                       allow_burned_in: bool = False) -> dict[str, dict[str, int]]:
    """De-identify ``ds`` in place (file meta rebuilt); the per-tag action counts."""
    if not allow_burned_in and (why := burned_in_reason(ds)):
        raise BurnedIn(why)
    patient_id = str(ds.get("PatientID", "") or "")
    walker = _Walker(profile, names, patient_id, _identifying_values(ds))
    old_meta = getattr(ds, "file_meta", None)
    walker.dataset(ds)
    _mark(ds, profile)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "")
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "")
    syntax = old_meta.get("TransferSyntaxUID") if old_meta is not None else None
    meta.TransferSyntaxUID = syntax or "1.2.840.10008.1.2"
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_NAME
    ds.file_meta = meta
    if old_meta is not None:
        for tag in old_meta.keys():
            if tag not in meta and int(tag) not in _META_REBUILT:
                walker.count(old_meta[tag], "X")
    return {k: dict(v) for k, v in sorted(walker.counts.items())}


def deidentify_bytes(data: bytes, profile: Profile, names: Pseudonyms, *,
                     allow_burned_in: bool = False
                     ) -> tuple[bytes, Dataset, dict[str, dict[str, int]]]:
    """(de-identified file bytes, the de-identified dataset, counts) of one file's bytes."""
    ds = dcmread(io.BytesIO(data), force=True)
    counts = deidentify_dataset(ds, profile, names, allow_burned_in=allow_burned_in)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), ds, counts


def keyword(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


__all__ += ["is_standard_uid", "keyword"]
