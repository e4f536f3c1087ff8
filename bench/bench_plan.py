"""Planning speed: resolve job selections on a large synthetic index (no DICOM files needed).

    python bench/bench_plan.py [--series 5000] [--per-series 20]

Fills DICOMPatients/Studies/Series/Images by direct INSERTs into a temporary database (the files
are not on disk, so sizes come out None: the os.stat of each path is still done), then times
build_plan for: one modality (a fifth of the series), a query at instance level, and all series.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from conquest_run.archive import Archive
from conquest_run.jobs import parse_job
from conquest_run.planner import build_plan

MODALITIES = ("CT", "MR", "RTSTRUCT", "RTPLAN", "RTDOSE")


def fill(arc: Archive, n_series: int, per_series: int) -> None:
    conn = arc.connect()
    conn.close()
    conn = sqlite3.connect(arc.database)
    with conn:
        for s in range(n_series):
            pat, study = f"P{s // 10:05d}", f"1.2.{s // 5}"
            conn.execute("insert or ignore into DICOMPatients (PatientID) values (?)", (pat,))
            conn.execute("insert or ignore into DICOMStudies (StudyInsta, PatientID) values (?, ?)",
                         (study, pat))
            conn.execute("insert into DICOMSeries (SeriesInst, StudyInsta, SeriesPat, Modality) "
                         "values (?, ?, ?, ?)", (f"1.3.{s}", study, pat, MODALITIES[s % 5]))
            conn.executemany(
                "insert into DICOMImages (SOPInstanc, SeriesInst, ImagePat, ImageNumbe, "
                "SOPClassUI, ObjectFile) values (?, ?, ?, ?, '1.2.840.10008.5.1.4.1.1.2', ?)",
                [(f"1.4.{s}.{i}", f"1.3.{s}", pat, str(i), f"{pat}/{s}_{i}.dcm")
                 for i in range(per_series)])
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=5000)
    ap.add_argument("--per-series", type=int, default=20)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "data").mkdir()
        arc = Archive(Path(tmp) / "data", Path(tmp) / "c.db")
        t = time.perf_counter()
        fill(arc, a.series, a.per_series)
        print(f"index: {a.series} series x {a.per_series} instances in "
              f"{time.perf_counter() - t:.1f} s")
        cases = {
            "modality: CT": "select: {modality: CT}",
            "query, instance level": "select: {query: select SOPInstanc from DICOMImages "
                                     "where ImageNumbe = '1'}",
            "all series (query)": "select: {query: select SeriesInst from DICOMSeries}",
        }
        for label, sel in cases.items():
            job = parse_job(f"version: 1\n{sel}\naction: {{copy: {{destination: o}}}}", "b.yml")
            t = time.perf_counter()
            plan = build_plan(job, arc)
            dt = time.perf_counter() - t
            step = plan.steps[0]
            print(f"{label:24s} {len(step.series):6d} series {step.instance_count:8d} instances "
                  f"{dt:6.2f} s")


if __name__ == "__main__":
    main()
