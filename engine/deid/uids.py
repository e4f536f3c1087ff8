"""Keyed pseudonyms: UIDs by value, patient IDs, per-patient date offsets.

Every new value is an HMAC-SHA256 of the original under the secret, with a label per kind, so
the same secret gives the same values on any machine and another secret gives unrelated ones.
UIDs become ``2.25.`` + the decimal of the first 128 bits (a UUID-derived UID, PS3.5 B.2).
Standard-defined UIDs (``1.2.840.10008.*``) are never changed.  The mapping (original ->
pseudonym) is remembered only so that it can be written when a job asks for it.
"""

from __future__ import annotations

__all__ = ["Pseudonyms", "STANDARD_ROOT", "is_standard_uid"]

import hashlib
import hmac
from datetime import date, timedelta

from .profile import pattern_value

STANDARD_ROOT = "1.2.840.10008."
_MAX_OFFSET_DAYS = 3650          # modified dates move back by 1..3650 days, one offset a patient


def is_standard_uid(uid: str) -> bool:
    return uid.startswith(STANDARD_ROOT) or uid == "1.2.840.10008"


class Pseudonyms:
    """The keyed mapping of one export (one step): holds the key, never prints it."""

    def __init__(self, secret: bytes, patient_pattern: str | None = None,
                 patient_ids: "list[str] | tuple[str, ...]" = ()) -> None:
        self._key = bytes(secret)
        self.uids: dict[str, str] = {}
        self.patients: dict[str, str] = {}
        self._numbers: dict[str, int] = {}
        self._pattern = patient_pattern
        if patient_pattern is not None:
            # n numbers the export's patients in the order of their keyed hash: stable for a
            # selection, and the order tells nothing about the original IDs
            ordered = sorted(set(patient_ids), key=lambda p: self._mac("patient-order", p))
            self._numbers = {p: i for i, p in enumerate(ordered, 1)}

    def __repr__(self) -> str:        # never the key
        return f"Pseudonyms({len(self.uids)} UIDs, {len(self.patients)} patients)"

    def _mac(self, label: str, value: str) -> bytes:
        return hmac.new(self._key, f"{label}\0{value}".encode("utf-8"), hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        """The pseudonym of one UID (standard UIDs and empty values unchanged)."""
        original = value.strip("\0 ")
        if not original or is_standard_uid(original):
            return original
        hit = self.uids.get(original)
        if hit is None:
            hit = "2.25." + str(int.from_bytes(self._mac("uid", original)[:16], "big"))
            self.uids[original] = hit
        return hit

    def patient_id(self, original: str) -> str:
        original = original.strip()
        hit = self.patients.get(original)
        if hit is None:
            n = self._numbers.get(original)
            if self._pattern is not None and n is None:      # a patient outside the plan
                n = len(self._numbers) + 1
                self._numbers[original] = n
            if self._pattern is not None:
                hit = pattern_value(self._pattern, n)
            else:
                hit = "ANON-" + self._mac("patient", original)[:6].hex().upper()
            self.patients[original] = hit
        return hit

    def date_offset(self, patient_id: str) -> timedelta:
        """The days every date of this patient moves back (Modified Dates option)."""
        n = int.from_bytes(self._mac("date-offset", patient_id.strip())[:4], "big")
        return timedelta(days=1 + n % _MAX_OFFSET_DAYS)

    def shift_date(self, text: str, patient_id: str) -> str:
        """A DA value (or the date part of a DT) moved back by the patient's offset."""
        head = text[:8]
        try:
            day = date(int(head[:4]), int(head[4:6]), int(head[6:8]))
        except ValueError:
            return ""                 # not a date: nothing of it is kept
        moved = day - self.date_offset(patient_id)
        return moved.strftime("%Y%m%d") + text[8:]

    def mapping(self) -> dict[str, dict[str, str]]:
        return {"patients": dict(sorted(self.patients.items())),
                "uids": dict(sorted(self.uids.items()))}
