"""Codec coverage: which pixel-data decoder stack decodes pydicom's bundled compressed files.

    python bench/bench_codecs.py [--json]

For every unique file of pydicom's bundled test data (``get_testdata_files("**/*")`` plus
``get_charset_files("*.dcm")``, read offline) whose transfer syntax is compressed (encapsulated
pixel data), tries ``Dataset.decompress(decoding_plugin=...)`` -- what the sender's decoding
fallback does -- once with each candidate stack, in a fresh read of the file:

* ``pylibjpeg``: pylibjpeg with pylibjpeg-openjpeg, pylibjpeg-libjpeg and pylibjpeg-rle;
* ``gdcm``: python-gdcm;
* ``pydicom``: pydicom's own decoders (RLE only), present with either stack.

A stack "covers" a file when its plugin (or pydicom's own, for RLE) decodes it.  Prints one line
per transfer syntax (files, decoded by each) and the totals; plugins that are not installed
are reported as such.  Run it where both stacks are installed.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections import Counter, defaultdict

PLUGINS = ("pylibjpeg", "gdcm", "pydicom")


def corpus() -> list[str]:
    from pydicom.data import get_charset_files, get_testdata_files

    files = sorted(set(get_testdata_files("**/*")) | set(get_charset_files("*.dcm")))
    return [f for f in files if not f.endswith((".py", ".json", ".txt", ".gz", ".bz2"))]


def compressed_files() -> list[tuple[str, str]]:
    from pydicom import dcmread

    out, seen = [], set()
    for path in corpus():
        try:
            ds = dcmread(path, stop_before_pixels=True)
            syntax = ds.file_meta.TransferSyntaxUID
        except Exception:
            continue
        key = (str(ds.get("SOPInstanceUID", path)), str(syntax))
        if syntax.is_compressed and key not in seen:
            seen.add(key)
            out.append((path, str(syntax)))
    return out


def decodes(path: str, plugin: str) -> bool | str:
    from pydicom import dcmread

    try:
        ds = dcmread(path)
        if "PixelData" not in ds:
            return "no pixel data"
        ds.decompress(decoding_plugin=plugin, generate_instance_uid=False)
        return True
    except Exception as exc:
        text = str(exc)
        return "not installed" if "missing dependencies" in text or "not available" in text \
            else False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="the per-file results as JSON")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import importlib.util

    for module, stack in (("pylibjpeg", "pylibjpeg"), ("gdcm", "python-gdcm")):
        if importlib.util.find_spec(module) is None:
            print(f"warning: {stack} is not installed: its column counts pydicom's own only")
    files = compressed_files()
    rows: dict[str, dict[str, bool | str]] = {}
    per_syntax: dict[str, Counter] = defaultdict(Counter)
    for path, syntax in files:
        got = {p: decodes(path, p) for p in PLUGINS}
        rows[path] = {"syntax": syntax, **got}
        per_syntax[syntax]["files"] += 1
        for stack in ("pylibjpeg", "gdcm"):
            if got[stack] is True or got["pydicom"] is True:
                per_syntax[syntax][stack] += 1
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    from pydicom.uid import UID

    print(f"| transfer syntax | files | pylibjpeg stack | gdcm stack |\n|---|---|---|---|")
    totals = Counter()
    for syntax, c in sorted(per_syntax.items(), key=lambda kv: UID(kv[0]).name):
        print(f"| {UID(syntax).name} | {c['files']} | {c['pylibjpeg']} | {c['gdcm']} |")
        totals.update(c)
    print(f"| **all** | {totals['files']} | {totals['pylibjpeg']} | {totals['gdcm']} |")
    failed = {stack: [p.rsplit('/', 1)[-1] for p, r in rows.items()
                      if r[stack] is not True and r["pydicom"] is not True]
              for stack in ("pylibjpeg", "gdcm")}
    for stack, names in failed.items():
        print(f"\nnot decoded by the {stack} stack: {', '.join(names) or 'none'}")


if __name__ == "__main__":
    main()
