"""The radiotherapy extras of one header: what RTSTRUCT / RTPLAN / RTDOSE objects refer to.

``rt_extras(ds, modality)`` returns a dict keyed by ``schema.EXTRAS_COLUMNS`` names (only the
columns that apply); the indexer adds the file facts (hash, size, mtime).  A malformed sequence
never fails the file: the value it would have given stays ``None``.
"""

from __future__ import annotations

__all__ = ["rt_extras", "RT_MODALITIES"]

from typing import Any

RT_MODALITIES = ("RTSTRUCT", "RTPLAN", "RTDOSE", "RTIMAGE", "RTRECORD", "RTTREATMENT")


def _seq(ds: Any, keyword: str) -> list:
    try:
        value = ds.get(keyword)
    except Exception:  # a sequence pydicom cannot parse counts as absent
        return []
    return list(value) if value else []


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).rstrip(" \0")
    return text if text else None


def _first(items: list, keyword: str) -> str | None:
    for item in items:
        value = _text(item.get(keyword))
        if value:
            return value
    return None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _structure_set(ds: Any) -> dict[str, Any]:
    rois = _seq(ds, "StructureSetROISequence")
    names = [_text(r.get("ROIName")) or "" for r in rois]
    frames = _seq(ds, "ReferencedFrameOfReferenceSequence")
    series_uid = None
    for frame in frames:
        for study in _seq(frame, "RTReferencedStudySequence"):
            series_uid = _first(_seq(study, "RTReferencedSeriesSequence"), "SeriesInstanceUID")
            if series_uid:
                break
        if series_uid:
            break
    return {
        "ElementCount": len(rois),
        "ElementList": "\\".join(names) if names else None,
        "UniqueFOR_UID": _first(frames, "FrameOfReferenceUID")
        or _first(rois, "ReferencedFrameOfReferenceUID"),
        "ReferencedSeriesUID": series_uid,
    }


def _beams(ds: Any) -> tuple[int | None, list[str]]:
    """(number of beams, beam names): photon or ion beams counted by beam number; brachy
    plans count their channels (or their application setups when no channel is listed)."""
    beams = _seq(ds, "BeamSequence") or _seq(ds, "IonBeamSequence")
    if beams:
        numbers = {_int(b.get("BeamNumber")) for b in beams}
        numbers.discard(None)
        count = len(numbers) if len(numbers) == len(beams) else len(beams)
        names = [_text(b.get("BeamName")) or "" for b in beams]
        return count, names
    setups = _seq(ds, "ApplicationSetupSequence")
    if setups:
        channels = sum(len(_seq(s, "ChannelSequence")) for s in setups)
        return (channels or len(setups)), []
    return None, []


def _plan(ds: Any) -> dict[str, Any]:
    groups = _seq(ds, "FractionGroupSequence")
    fractions = [_int(g.get("NumberOfFractionsPlanned")) for g in groups]
    fractions = [f for f in fractions if f is not None]
    count, names = _beams(ds)
    struct = _first(_seq(ds, "ReferencedStructureSetSequence"), "ReferencedSOPInstanceUID")
    return {
        "Nfractions": sum(fractions) if fractions else None,
        "NumBeams": count,
        "ElementCount": count,
        "ElementList": "\\".join(names) if names else None,
        "RefStructSet": struct,
        "ReferencedSOPUID": struct,
    }


def _dose(ds: Any) -> dict[str, Any]:
    plan = _first(_seq(ds, "ReferencedRTPlanSequence"), "ReferencedSOPInstanceUID")
    return {"RefPlan": plan, "ReferencedSOPUID": plan}


def rt_extras(ds: Any, modality: str | None) -> dict[str, Any]:
    """The RT columns for one dataset (empty for non-RT modalities)."""
    if modality == "RTSTRUCT":
        return _structure_set(ds)
    if modality == "RTPLAN" or modality == "RTIONPLAN":
        return _plan(ds)
    if modality == "RTDOSE":
        return _dose(ds)
    return {}
