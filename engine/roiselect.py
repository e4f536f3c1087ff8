"""ROI filters of a selection (pyconquest's ``filter_roinames`` / ``set_roi_filter``).

``select: {roi: "PTV*"}`` keeps, of the series the other keys select, the RTSTRUCT series with
an ROI whose name matches one of the globs (``*``, ``?``, ``[...]``; case-insensitive).  With
``with_referenced: true`` the plans that reference those structure sets, the doses that
reference those plans and the image series the structure sets contour are added.  It reads the
indexed RT extras (``RTExtras.ElementList``, ``RefStructSet``, ``RefPlan``,
``ReferencedSeriesUID``), never the files.  What matched goes into the step's options as
``roi_matched`` (series UID -> ROI names) and ``roi_referenced`` (series UID -> the structure
set series it was added for), which the dry run prints and a saved plan keeps.
"""

from __future__ import annotations

__all__ = ["ROI_OPTION_KEYS", "matching_names", "filter_by_roi", "plan_lines"]

from fnmatch import fnmatchcase
from typing import Any, Iterable

from .plan import PlannedSeries
from .schema import EXTRAS_TABLE

ROI_OPTION_KEYS = ("roi_matched", "roi_referenced")
_CHUNK = 500


def matching_names(element_list: str | None, patterns: Iterable[str]) -> list[str]:
    """The ROI names of an ``ElementList`` ('\\'-joined) that match any glob, in order."""
    pats = [p.casefold() for p in patterns]
    names = [n for n in (element_list or "").split("\\") if n]
    return [n for n in names if any(fnmatchcase(n.casefold(), p) for p in pats)]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _extras_columns(conn) -> set[str]:
    from .db import column_names
    return {c.lower() for c in column_names(conn, EXTRAS_TABLE)}


def _rows(conn, column: str, values: Iterable[str], wanted: str) -> list[tuple]:
    """(SOPInstanc, ``wanted``) of the RTExtras rows whose ``column`` is one of ``values``."""
    values = sorted(set(values))
    out: list[tuple] = []
    for i in range(0, len(values), _CHUNK):
        chunk = values[i:i + _CHUNK]
        out += conn.execute(f"SELECT SOPInstanc, {_q(wanted)} FROM {_q(EXTRAS_TABLE)} WHERE "
                            f"{_q(column)} IN ({', '.join('?' * len(chunk))})", chunk).fetchall()
    return out


def filter_by_roi(resolver: Any, series: tuple[PlannedSeries, ...], patterns: Iterable[str],
                  with_referenced: bool = False
                  ) -> tuple[tuple[PlannedSeries, ...], dict[str, Any]]:
    """(the series kept and added, the options that say why) for a ``roi:`` selection."""
    conn = resolver.conn
    patterns = list(patterns)
    if not {"sopinstanc", "elementlist"} <= _extras_columns(conn):
        return (), {"roi_matched": {}}
    matched: dict[str, list[str]] = {}
    struct_sops: dict[str, str] = {}           # SOP UID -> its series, of matching instances
    for s in series:
        if (s.modality or "").upper() != "RTSTRUCT":
            continue
        by_sop = dict(_rows(conn, "SOPInstanc", [i.sop_uid for i in s.instances],
                            "ElementList"))
        names: list[str] = []
        for inst in s.instances:
            found = matching_names(by_sop.get(inst.sop_uid), patterns)
            if found:
                struct_sops[inst.sop_uid] = s.series_uid
                names += [n for n in found if n not in names]
        if names:
            matched[s.series_uid] = names
    kept = [s for s in series if s.series_uid in matched]
    options: dict[str, Any] = {"roi_matched": matched}
    if with_referenced and struct_sops:
        referenced = _referenced(resolver, struct_sops)
        referenced = {uid: why for uid, why in referenced.items() if uid not in matched}
        if referenced:
            kept += resolver.resolve(checked=None, uids=None, series=sorted(referenced))
            options["roi_referenced"] = referenced
    kept.sort(key=lambda s: (s.patient_id or "", s.study_uid or "", s.series_uid))
    return tuple(kept), options


def _referenced(resolver: Any, struct_sops: dict[str, str]) -> dict[str, str]:
    """Series UID -> structure set series, for the plans, doses and images they go with."""
    conn = resolver.conn
    columns = _extras_columns(conn)
    out: dict[str, str] = {}
    sop_owner: dict[str, str] = {}             # plan or dose SOP -> structure set series
    if "refstructset" in columns:
        for plan_sop, struct in _rows(conn, "RefStructSet", struct_sops, "RefStructSet"):
            sop_owner[plan_sop] = struct_sops[struct]
    if "refplan" in columns and sop_owner:
        plans = dict(sop_owner)
        for dose_sop, plan in _rows(conn, "RefPlan", plans, "RefPlan"):
            sop_owner[dose_sop] = plans[plan]
    for sop, series_uid in _series_of(resolver, sop_owner).items():
        out.setdefault(series_uid, sop_owner[sop])
    if "referencedseriesuid" in columns:
        for sop, image_series in _rows(conn, "SOPInstanc", struct_sops, "ReferencedSeriesUID"):
            if image_series:
                out.setdefault(image_series, struct_sops[sop])
    return out


def _series_of(resolver: Any, sops: Iterable[str]) -> dict[str, str]:
    im = resolver.im
    sops = sorted(set(sops))
    out: dict[str, str] = {}
    for i in range(0, len(sops), _CHUNK):
        chunk = sops[i:i + _CHUNK]
        out.update(resolver.conn.execute(
            f"SELECT {_q(im.key)}, {_q(im.link)} FROM {_q(im.name)} WHERE {_q(im.key)} IN "
            f"({', '.join('?' * len(chunk))})", chunk).fetchall())
    return out


def plan_lines(options: dict[str, Any]) -> list[str]:
    """What the dry run prints under a step's series: which ROI matched, what was added."""
    lines = [f"ROI match: {uid}: {', '.join(names)}"
             for uid, names in (options.get("roi_matched") or {}).items()]
    lines += [f"referenced by structure set {struct}: {uid}"
              for uid, struct in (options.get("roi_referenced") or {}).items()]
    return lines
