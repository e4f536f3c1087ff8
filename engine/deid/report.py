"""What a de-identified export says about itself: per-file actions, refusals, the mapping.

The report lists, per exported file (by its new path and new SOP instance UID), each tag's
actions with counts, and never an original value.  The mapping from originals to pseudonyms
is identifying data: it is written only when a job asks for it (``mapping: path``), never
inside the export, and the step says so with a warning.
"""

from __future__ import annotations

__all__ = ["DeidReport", "MAPPING_WARNING", "REPORT_NAME"]

import json
from dataclasses import dataclass, field
from typing import Any

REPORT_NAME = "deidentification.json"
MAPPING_WARNING = ("the de-identification mapping links pseudonyms to the original patient "
                   "IDs and UIDs: it is identifying data; keep it apart from the export")


@dataclass
class DeidReport:
    profile: str
    options: tuple[str, ...]
    release: str
    files: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)

    _totals: dict[str, int] = field(default_factory=dict)

    def add(self, path: str, sop_uid: str, counts: dict[str, dict[str, int]]) -> None:
        self.files.append({"path": path, "sop_uid": sop_uid, "actions": counts})
        for per in counts.values():
            for action, n in per.items():
                self._totals[action] = self._totals.get(action, 0) + n

    def refuse(self, sop_uid: str, reason: str) -> None:
        self.refused.append({"sop_uid": sop_uid, "reason": reason})

    def totals(self) -> dict[str, int]:
        return dict(sorted(self._totals.items()))

    def to_dict(self) -> dict[str, Any]:
        return {"format": 1, "standard": "DICOM PS3.15 Annex E, Table E.1-1",
                "release": self.release, "profile": self.profile,
                "options": list(self.options), "files": len(self.files),
                "actions": self.totals(), "refused": sorted(self.refused,
                                                            key=lambda r: r["sop_uid"]),
                "instances": sorted(self.files, key=lambda f: f["path"])}

    def write(self, fs: Any, path: Any) -> None:
        with fs.atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(json.dumps(self.to_dict(), indent=1) + "\n")


def write_mapping(fs: Any, path: Any, mapping: dict[str, dict[str, str]]) -> None:
    doc = {"warning": MAPPING_WARNING, **mapping}
    with fs.atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(doc, indent=1) + "\n")


__all__ += ["write_mapping"]
