"""Image statistics per series (pyconquest's ``analyse_images``), into a user table.

:func:`series_statistics` reads the pixel data of every instance of the selected series (a
selection as in a job: ``query``, ``patient``, ``modality``, ``roi`` ...) and gives one row per
series that has pixel data: instances, frames, rows, columns and the minimum, maximum, mean and
standard deviation of the pixel values after the modality rescale (RescaleSlope /
RescaleIntercept, so CT in HU).  Instances are read one at a time; the sums are float64.
``Archive.image_statistics(select, table=...)`` appends the rows to a user table through
``insert_rows``; ``conquest-run image-stats --table T`` does the same.  Decoding needs numpy
(and, for compressed pixel data, the decoders): the ``codecs`` extra.
"""

from __future__ import annotations

__all__ = ["series_statistics", "STAT_COLUMNS"]

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import ArchiveError

STAT_COLUMNS = ("SeriesInst", "PatientID", "Modality", "Instances", "Frames", "Rows",
                "Columns", "PixelMin", "PixelMax", "PixelMean", "PixelStd", "Unreadable",
                "Computed")


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        raise ArchiveError("image statistics decode pixel data, which needs numpy: "
                           "pip install 'conquest-run[codecs]'") from None
    return numpy


class _Sums:
    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.squares = 0.0
        self.low = math.inf
        self.high = -math.inf

    def add(self, values: Any) -> None:
        np = _numpy()
        flat = np.asarray(values, dtype=np.float64).ravel()
        if flat.size == 0:
            return
        self.count += int(flat.size)
        self.total += float(flat.sum())
        self.squares += float(np.dot(flat, flat))
        self.low = min(self.low, float(flat.min()))
        self.high = max(self.high, float(flat.max()))

    def row(self) -> dict[str, Any]:
        if not self.count:
            return {"PixelMin": None, "PixelMax": None, "PixelMean": None, "PixelStd": None}
        mean = self.total / self.count
        variance = max(self.squares / self.count - mean * mean, 0.0)
        return {"PixelMin": self.low, "PixelMax": self.high, "PixelMean": mean,
                "PixelStd": math.sqrt(variance)}


def _instance(path: Path) -> tuple[Any, Any] | None:
    """(the dataset, its rescaled pixel values), None without pixel data; raises when the
    pixel data cannot be decoded."""
    from pydicom import dcmread
    from pydicom.pixels import apply_rescale
    ds = dcmread(path, force=True)
    if "PixelData" not in ds and "FloatPixelData" not in ds and \
            "DoubleFloatPixelData" not in ds:
        return None
    return ds, apply_rescale(ds.pixel_array, ds)


def series_statistics(archive: Any, select: "dict[str, Any] | None" = None
                      ) -> tuple[list[dict[str, Any]], list[str]]:
    """(one row per selected series with pixel data, the instances that could not be decoded
    as 'PATH: reason')."""
    from .planner import plan_selection
    _numpy()
    plan = plan_selection(archive, select or {}, "image-stats")
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    root = Path(archive.data_dir).resolve()
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for series in plan.steps[0].series:
        sums, frames, instances, unreadable = _Sums(), 0, 0, 0
        shape: tuple[Any, Any] = (None, None)
        for inst in series.instances:
            path = (root / inst.path).resolve()
            if not path.is_relative_to(root):
                problems.append(f"{inst.path}: outside the data directory")
                unreadable += 1
                continue
            try:
                got = _instance(path)
            except Exception as exc:     # pydicom and the decoders raise many kinds
                problems.append(f"{inst.path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
                unreadable += 1
                continue
            if got is None:
                continue
            ds, values = got
            instances += 1
            frames += int(ds.get("NumberOfFrames") or 1)
            if shape == (None, None):
                shape = (ds.get("Rows"), ds.get("Columns"))
            sums.add(values)
        if not instances and not unreadable:
            continue                                  # no pixel data: not an image series
        rows.append({"SeriesInst": series.series_uid, "PatientID": series.patient_id,
                     "Modality": series.modality, "Instances": instances, "Frames": frames,
                     "Rows": None if shape[0] is None else int(shape[0]),
                     "Columns": None if shape[1] is None else int(shape[1]),
                     **sums.row(), "Unreadable": unreadable, "Computed": when})
    return rows, problems
