"""``select.study_date``: a Conquest-style date or date range over DICOMStudies.StudyDate.

Conquest keeps DICOM dates as their ``YYYYMMDD`` text, so a range is a comparison of texts.
Accepted: ``20240131`` (that day), ``20240101-20241231``, ``20240101-`` (from), ``-20241231``
(up to), as DICOM range matching writes them; each date a real calendar day.
"""

from __future__ import annotations

__all__ = ["DateRange", "parse_study_date", "study_date_problem"]

import datetime as _dt
import re
from dataclasses import dataclass

_DATE = re.compile(r"\d{8}")


@dataclass(frozen=True)
class DateRange:
    low: str | None          # YYYYMMDD, inclusive; None: open
    high: str | None

    def matches(self, value: str | None) -> bool:
        """Whether a stored StudyDate (Conquest's text) lies in the range; a study without a
        date matches only when the range is open on both ends (never, as parsed)."""
        if not value:
            return False
        day = value.strip().replace(".", "")[:8]    # ACR-NEMA's YYYY.MM.DD too
        return (self.low is None or day >= self.low) and (self.high is None or day <= self.high)


def _day(text: str, what: str) -> str:
    if not _DATE.fullmatch(text):
        raise ValueError(f"{what} {text!r} is not a date written YYYYMMDD (e.g. 20240131)")
    try:
        _dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a day of the calendar") from None
    return text


def parse_study_date(text: str) -> DateRange:
    """The range a ``study_date`` value names; ``ValueError`` with a sentence otherwise."""
    value = text.strip()
    if not value:
        raise ValueError("is empty; write a date YYYYMMDD or a range such as "
                         "20240101-20241231")
    if value.count("-") > 1:
        raise ValueError(f"{value!r} has more than one '-'; a range is FROM-TO, FROM- or -TO")
    if "-" not in value:
        day = _day(value, "the date")
        return DateRange(day, day)
    low, high = (part.strip() for part in value.split("-"))
    if not low and not high:
        raise ValueError("'-' alone names no dates; write FROM-TO, FROM- or -TO")
    out = DateRange(_day(low, "the start") if low else None,
                    _day(high, "the end") if high else None)
    if out.low and out.high and out.low > out.high:
        raise ValueError(f"the range {value!r} ends before it starts")
    return out


def study_date_problem(text: object) -> str | None:
    if not isinstance(text, str):
        return None          # the schema reports the type
    try:
        parse_study_date(text)
    except ValueError as exc:
        return str(exc)
    return None
