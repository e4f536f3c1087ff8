"""What a planned ``copy`` step will really do, for the plan: how many files are new, identical
(skipped) or different at their targets.  Reads only: the index (for layouts that need it) and
the destination's files (size first, SHA-256 only when the sizes agree)."""

from __future__ import annotations

__all__ = ["copy_preview", "describe_copy_preview"]

import hashlib
import os
from contextlib import closing
from pathlib import Path
from typing import Any

from .errors import ConquestRunError


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_preview(step, archive) -> dict[str, int] | None:
    """{"new", "identical", "different"} for a copy step; None when it cannot be told before
    the run (a de-identified copy, whose files are rewritten, or a layout problem)."""
    from .actions.copy import _index_values, _options, _relative_path, check_layout
    from .db import connect_reader
    if step.action != "copy" or step.options.get("deidentify"):
        return None
    try:
        destination, layout_name, _, _ = _options(step)
        layout = check_layout(layout_name, archive.schema)
    except ConquestRunError:
        return None
    dest = Path(os.path.abspath(destination))
    counts = {"new": 0, "identical": 0, "different": 0}
    if not dest.is_dir():
        counts["new"] = step.instance_count
        return counts
    data = Path(archive.data_dir)
    conn = connect_reader(archive.database) if layout.needs_index else None
    with closing(conn) if conn is not None else _nothing():
        for series in step.series:
            indexed = (_index_values(conn, archive.schema, layout, series.series_uid)
                       if conn is not None else {})
            for inst in series.instances:
                try:
                    target = dest / _relative_path(layout, series, inst,
                                                   indexed.get(inst.sop_uid, {}))
                except ConquestRunError:
                    return None
                if not target.is_file():
                    counts["new"] += 1
                    continue
                source = data / inst.path
                try:
                    same = (target.stat().st_size == source.stat().st_size
                            and _sha256(target) == _sha256(source))
                except OSError:
                    same = False
                counts["identical" if same else "different"] += 1
    return counts


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def describe_copy_preview(counts: dict[str, int], overwrite: str = "never") -> str:
    fate = {"never": "will fail (overwrite: never)", "if_different": "will be replaced",
            "always": "will be replaced"}.get(overwrite, "")
    return (f"{counts['new']} new, {counts['identical']} identical (skipped), "
            f"{counts['different']} different" + (f": {fate}" if counts["different"] else ""))
