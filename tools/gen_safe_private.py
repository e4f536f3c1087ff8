#!/usr/bin/env python3
"""Generate engine/deid/safe_private.json: DICOM PS3.15 Table E.3.10-1 (Safe Private Attributes).

dicom.nema.org is not reachable from this project's machines, and no PyPI release ships the
table (idiscore 1.6.0, whose default safe private list is empty, dicognito 0.19.0, deid 0.4.13,
DicomAnonymizer 0.0.1 and pymedphys 0.41.0 were looked at).  The
source is the generated copy kept in PyMedPhys's repository,
``lib/pymedphys/_dicom/deidentify/_standard/e3_10_1.json`` (commit 985a1bd9..., same rows as
a94ddab6...): written by ``pymedphys dev deid-tables`` from ``part15/sect_E.3.10.html`` of the
**2026d** edition, with the SHA-256 of that page and of its rows recorded.  This generator reads
that file, checks its schema, edition and row digest, and writes our form of each row:

    curl -fsSLO https://raw.githubusercontent.com/pymedphys/pymedphys/\\
985a1bd904a7d08d56d4ce50a4daff4f02493cfe/lib/pymedphys/_dicom/deidentify/_standard/e3_10_1.json
    python3 tools/gen_safe_private.py e3_10_1.json

Each row is (private creator, group, element byte) with the table's VR, VM and meaning.  The
table has no IOD or condition column; the meaning is kept as the table gives it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "engine" / "deid" / "safe_private.json"
SCHEMA = "pymedphys-deid-table/1"
TABLE = "PS3.15 Table E.3.10-1"
REPOSITORY = "pymedphys/pymedphys"
MEMBER = "lib/pymedphys/_dicom/deidentify/_standard/e3_10_1.json"
COMMIT = "985a1bd904a7d08d56d4ce50a4daff4f02493cfe"
_TAG = re.compile(r"\(([0-9A-Fa-f]{4}),xx([0-9A-Fa-f]{2})\)")
_RESERVED_ODD_GROUPS = {0x0001, 0x0003, 0x0005, 0x0007, 0xFFFF}     # PS3.5 7.8.1


def _digest(rows: list) -> str:
    canonical = json.dumps(rows, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def table(doc: dict) -> dict:
    if doc.get("schema") != SCHEMA or doc.get("table") != TABLE:
        raise SystemExit(f"not a {SCHEMA} file of {TABLE}")
    rows = doc["rows"]
    if _digest(rows) != doc.get("content_sha256"):
        raise SystemExit("the rows do not match their recorded content_sha256")
    out_rows, seen = [], set()
    for row in rows:
        match = _TAG.fullmatch(row["tag"])
        if not match:
            raise SystemExit(f"unexpected tag {row['tag']!r}")
        group, byte = int(match.group(1), 16), int(match.group(2), 16)
        if group % 2 == 0 or group in _RESERVED_ODD_GROUPS:
            raise SystemExit(f"{row['tag']} is not a private group")
        creator = row["private_creator"].strip(" ")
        key = (creator, group, byte)
        if not creator or key in seen:
            raise SystemExit(f"{row['tag']} {creator!r}: empty or repeated")
        seen.add(key)
        out_rows.append({"creator": creator, "group": f"{group:04X}", "element": f"{byte:02X}",
                         "vr": row["vr"], "vm": row["vm"], "meaning": row["meaning"],
                         "tag": row["tag"]})
    return {"standard": "DICOM PS3.15 Table E.3.10-1 (Safe Private Attributes)",
            "release": doc["edition"],
            "acknowledgement": doc["acknowledgement"],
            "scraped_from": doc.get("sources", []),
            "rows": out_rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help=f"{MEMBER} of {REPOSITORY}")
    ap.add_argument("-o", "--output", type=Path, default=OUT)
    args = ap.parse_args(argv)
    doc = json.loads(args.source.read_text(encoding="utf-8"))
    out = table(doc)
    out["source"] = {"repository": REPOSITORY, "member": MEMBER, "commit": COMMIT,
                     "content_sha256": doc["content_sha256"]}
    out["generated_by"] = "tools/gen_safe_private.py"
    args.output.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n",
                           encoding="utf-8")
    print(f"{args.output}: {len(out['rows'])} rows ({TABLE}, {out['release']})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
