#!/usr/bin/env python3
"""Generate engine/deid/table_e1_1.json: DICOM PS3.15 Table E.1-1 as data.

dicom.nema.org is not reachable from this project's machines, so the table is taken from a
package that ships it generated from the standard: idiscore's ``idiscore/_public_dicom.py``
(scraped by idiscore's own generator from PS3.15 chapter E; the module docstring names the
scrape date).  The module is read as text with ``ast`` (nothing of it is imported or run).

    pip download --no-deps --only-binary=:all: --python-version 3.12 idiscore==1.6.0 -d /tmp/w
    python3 tools/gen_deid_table.py /tmp/w/idiscore-1.6.0-py2.py3-none-any.whl

Each row is one attribute (or a repeating group / the private attributes) with its Basic
Profile action and the action of every option column that names it.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "engine" / "deid" / "table_e1_1.json"
# idiscore's rule-set name -> our option name (the standard's column)
COLUMNS = {
    "Basic Application Level Confidentiality Profile": "basic",
    "Retain Safe Private Option": "retain-safe-private",
    "Retain UIDs": "retain-uids",
    "Retain Device Identity Option": "retain-device-identity",
    "Retain Institution Identity Option": "retain-institution-identity",
    "Retain Patient Characteristics Option": "retain-patient-characteristics",
    "Retain Longitudinal Temporal Information with Full Dates Option":
        "retain-longitudinal-full-dates",
    "Retain Longitudinal Temporal Information with Modified Dates Option":
        "retain-longitudinal-modified-dates",
    "Clean Descriptors Option": "clean-descriptors",
    "Clean Structured Content Option": "clean-structured-content",
    "Clean Graphics Option": "clean-graphics",
}


def _read(wheel: Path, member: str) -> str:
    with zipfile.ZipFile(wheel) as z:
        return z.read(member).decode("utf-8")


def _action_keys(dicom_py: str) -> dict[str, str]:
    """ActionCodes attribute name -> the standard's letter(s), from idiscore/dicom.py."""
    keys = {}
    for node in ast.walk(ast.parse(dicom_py)):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                and getattr(node.value.func, "id", "") == "ActionCode":
            keys[node.targets[0].id] = node.value.args[0].value
    return keys


def _selector(call: ast.Call) -> str:
    kind = call.func.id
    if kind == "SingleTag":
        return call.args[0].value.upper()
    if kind == "RepeatingGroup":
        return call.args[0].value.upper().replace("X", "x")
    if kind == "PrivateTags":
        return "private"
    raise ValueError(f"unknown tag identifier {kind}")


def table(public_py: str, dicom_py: str) -> dict:
    keys = _action_keys(dicom_py)
    scraped = re.search(r"scrape date: (\S+)", public_py)
    page = re.search(r"(https?://\S+chapter_E\.html)", public_py)
    rows: dict[str, dict[str, str]] = {}
    columns = {}
    for node in ast.parse(public_py).body:
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
            continue
        kw = {k.arg: k.value for k in node.value.keywords}
        name = kw["name"].value
        column = COLUMNS[name]
        columns[column] = {"name": name, "code": kw["code"].value}
        for rule in kw["rules"].elts:
            ident, action = rule.elts
            rows.setdefault(_selector(ident), {})[column] = keys[action.attr]
    try:
        from pydicom.datadict import keyword_for_tag
    except ImportError:       # keywords are a convenience for readers only
        def keyword_for_tag(tag: int) -> str:
            return ""
    out_rows = []
    for sel in sorted(rows):
        kwd = keyword_for_tag(int(sel, 16)) if re.fullmatch(r"[0-9A-F]{8}", sel) else ""
        out_rows.append({"tag": sel, "keyword": kwd, **rows[sel]})
    return {"standard": "DICOM PS3.15 Table E.1-1 (Application Level Confidentiality "
                        "Profile Attributes)",
            "release": f"the edition published as 'current' on {scraped.group(1)}"
                       if scraped else "unknown",
            "scraped_from": page.group(1) if page else "",
            "columns": columns, "rows": out_rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel", type=Path, help="idiscore wheel (.whl)")
    ap.add_argument("-o", "--output", type=Path, default=OUT)
    args = ap.parse_args(argv)
    doc = table(_read(args.wheel, "idiscore/_public_dicom.py"),
                _read(args.wheel, "idiscore/dicom.py"))
    doc["source"] = {"package": args.wheel.name,
                     "member": "idiscore/_public_dicom.py",
                     "wheel_sha256": hashlib.sha256(args.wheel.read_bytes()).hexdigest()}
    doc["generated_by"] = "tools/gen_deid_table.py"
    args.output.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"{args.output}: {len(doc['rows'])} rows, {len(doc['columns'])} columns",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
