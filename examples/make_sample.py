"""Write the sample archive: examples/sample/data/<PatientID>/<SOP UID>.dcm.

Deterministic: every UID, date and pixel derives from fixed seeds, so running this twice gives
byte-identical files.  Three patients, each with a planning CT, an RTSTRUCT on it, an RTPLAN on
the structure set and an RTDOSE on the plan; patient two's ID needs escaping for its folder
(``RT/002 A.B`` -> ``RT_002_A_B``), patient three also has an MR series and a second plan.

    python examples/make_sample.py [OUTPUT_DATA_DIR]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pydicom

from conquest_run import synthetic
from conquest_run.store import safe_component, safe_patient_dir

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "sample" / "data"


def write_sample(out: Path) -> list[str]:
    files: list[str] = []
    files += synthetic.write_linked_rt_set(
        out, seed="sample-1", patient_id="RT001", patient_name="DOE^JANE", ct_slices=4,
        size=32, beams=3, fractions=25, rois=("BODY", "PTV", "CTV", "SpinalCord")).files
    files += synthetic.write_linked_rt_set(
        out, seed="sample-2", patient_id="RT/002 A.B", patient_name="ROE^RICHARD",
        ct_slices=3, size=32, beams=5, fractions=30, rois=("BODY", "PTV", "Lung_L", "Lung_R")
    ).files
    rt3 = synthetic.write_linked_rt_set(
        out, seed="sample-3", patient_id="PAT003", patient_name="POE^EDGAR", ct_slices=3,
        size=32, beams=2, fractions=5, rois=("BODY", "PTV"))
    files += rt3.files
    # patient three: an MR series in the same study and a second (boost) plan + dose
    patient = synthetic.PatientSpec("PAT003", "POE^EDGAR")
    for ds in synthetic.mr_series(patient, "sample-3", rt3.study_uid, slices=2, size=32):
        files.append(_write(out, ds))
    ss = pydicom.dcmread(out / rt3.files[len(rt3.ct_sop_uids)])
    cts = [pydicom.dcmread(out / f) for f in rt3.files[:len(rt3.ct_sop_uids)]]
    boost = synthetic.rtplan(ss, "sample-3", beams=1, fractions=3, series_number=6,
                             label="BOOST")
    files.append(_write(out, boost))
    files.append(_write(out, synthetic.rtdose(boost, cts, "sample-3", series_number=7)))
    return files


def _write(out: Path, ds) -> str:
    path = out / safe_patient_dir(str(ds.PatientID)) / (safe_component(ds.SOPInstanceUID) + ".dcm")
    synthetic.write_dataset(ds, path)
    return path.relative_to(out).as_posix()


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def main(argv: list[str]) -> int:
    import argparse
    parser = argparse.ArgumentParser(
        prog="make_sample.py", description="Write the deterministic sample archive (three "
        "patients with linked CT, RTSTRUCT, RTPLAN, RTDOSE; one MR) as <PatientID>/<UID>.dcm.",
        epilog="An existing folder is replaced only when it holds exactly the files this "
               "script writes (a sample it made before); any other folder is refused.")
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT,
                        metavar="OUTPUT_DATA_DIR",
                        help=f"where to write (default: {DEFAULT_OUT.relative_to(HERE.parent)})")
    out = parser.parse_args(argv).out
    if out.exists() and not out.is_dir():
        print(f"make_sample.py: {out} exists and is not a folder; nothing written",
              file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".sample-", dir=out.parent))
    try:
        files = write_sample(tmp)
        if out.exists():
            there = _files(out)
            if there and there != set(files):
                print(f"make_sample.py: {out} holds files this script did not write; refusing "
                      "to replace it (remove it or name another folder)", file=sys.stderr)
                return 2
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    size = sum((out / f).stat().st_size for f in files)
    print(f"wrote {len(files)} files ({size // 1024} KB) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
