"""Shared fixtures (owned by the archive core; other areas keep theirs in their own modules).

* ``reference_dir``: ``/work/shared/reference`` (or ``$CONQUEST_RUN_REFERENCE``), skipping the
  test when it is not there (CI has it beside the clone).
* ``test_data``: ``tests/data`` (facts committed with the tests).
* ``pydicom_files``: pydicom's bundled rtplan/rtdose/rtstruct/CT_small/MR_small copied into a
  fresh ``data/<safe PatientID>/`` tree; returns the data directory.
* ``sample_archive``: the committed example archive (``examples/sample/data``) copied to tmp;
  returns the data directory (no database yet).
* ``linked_rt``: a synthetic CT series + RTSTRUCT + RTPLAN + RTDOSE written by
  ``conquest_run.synthetic``; returns the data directory and the UIDs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from _backends import index_db  # noqa: F401  (both backends, for every module)
from _pg_support import pg_server, pg_url  # noqa: F401  (fixtures for every module)

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
PYDICOM_FILES = ("rtplan.dcm", "rtdose.dcm", "rtstruct.dcm", "CT_small.dcm", "MR_small.dcm")


def find_reference_dir() -> Path | None:
    env = os.environ.get("CONQUEST_RUN_REFERENCE")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "reference")
    for c in candidates:
        if (c / "conquest").is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    ref = find_reference_dir()
    if ref is None:
        pytest.skip("the shared reference data (../shared/reference) is not available")
    return ref


@pytest.fixture(scope="session")
def test_data() -> Path:
    return TESTS / "data"


def pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available")
    return Path(path)


def place_pydicom_files(data: Path) -> Path:
    """Copy pydicom's RT/CT/MR test files to ``data/<safe PatientID>/<name>``; returns ``data``."""
    import pydicom

    from conquest_run.store import safe_patient_dir

    for name in PYDICOM_FILES:
        src = pydicom_file(name)
        ds = pydicom.dcmread(src, stop_before_pixels=True, force=True)
        folder = data / safe_patient_dir(str(ds.get("PatientID", "") or ""))
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, folder / name)
    return data


@pytest.fixture
def pydicom_files(tmp_path: Path) -> Path:
    """pydicom's RT/CT/MR test files under data/<safe PatientID>/<name>."""
    return place_pydicom_files(tmp_path / "data")


@pytest.fixture
def sample_archive(tmp_path: Path) -> Path:
    src = REPO / "examples" / "sample" / "data"
    if not src.is_dir():
        pytest.skip("examples/sample/data has not been generated")
    data = tmp_path / "data"
    shutil.copytree(src, data)
    return data


@pytest.fixture
def linked_rt(tmp_path: Path):
    """A synthetic linked RT set in tmp_path/data; returns (data_dir, written files info)."""
    from conquest_run import synthetic

    data = tmp_path / "data"
    info = synthetic.write_linked_rt_set(data, seed=7, patient_id="RT^01", ct_slices=3)
    return data, info


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """tmp_path as the current directory, with the sample archive in data/ (not indexed)."""
    src = REPO / "examples" / "sample" / "data"
    if not src.is_dir():
        pytest.skip("examples/sample/data has not been generated")
    shutil.copytree(src, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    return tmp_path
