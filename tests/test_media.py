"""Full and read-only media, and the umask (issue 14): a 2 MB tmpfs for store, serve and copy
(nothing half-written, the message says the disk is full, a non-zero exit); summary, query and
--dry-run on a read-only bind mount and on a chmod'd copy (as a process without
CAP_DAC_OVERRIDE), with a write command refused clearly; exports readable under umask 022."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pydicom
import pytest

from conquest_run import Archive, synthetic
from conquest_run.cli import main
from conquest_run.net.receiver import listen

from _net_support import NODELAY, STORESCU, free_port, require

pytestmark = pytest.mark.timeout(90)


def _cli(*args: str, cwd: Path | None = None, prefix: tuple[str, ...] = (),
         env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "conquest_run", *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


@contextmanager
def _mounted(args: list[str], folder: Path) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *args, str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount ({done.stderr.strip()}); needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _tmpfs(folder: Path, size: str = "2m"):
    return _mounted(["-t", "tmpfs", "-o", f"size={size}", "tmpfs"], folder)


def _indexed(db: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {r[0] for r in conn.execute("SELECT ObjectFile FROM DICOMImages")}
    finally:
        conn.close()


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _temp_files(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if p.name.startswith(".") and ".tmp" in p.name]


def _big_files(folder: Path, count: int, seed: str) -> list[Path]:
    """Files of about 130 kB (256x256 CT slices): a few of them fill a 2 MB tmpfs."""
    return synthetic.generate_files(folder, count, seed=seed, size=256)


# -- a full disk ------------------------------------------------------------------------------

def test_store_onto_a_full_disk_says_so_and_leaves_nothing_half_written(tmp_path):
    src = tmp_path / "src"
    _big_files(src, 30, "full-store")
    with _tmpfs(tmp_path / "small") as small:
        data, db = small / "data", small / "conquest.db"
        data.mkdir()
        Archive(data, db).rebuild()                    # an empty archive on the small disk
        done = _cli("store", str(src), "--data", str(data), "--database", str(db))
        assert done.returncode != 0
        assert "the disk is full" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and "cannot rollback" not in done.stderr
        assert _temp_files(small) == []
        assert {f for f in _files(data)} == _indexed(db)      # nothing stored unindexed
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
    assert len(list(src.rglob("*.dcm"))) == 30             # the originals are all kept


def test_serve_onto_a_full_disk_fails_the_c_stores_and_says_why(tmp_path):
    require(STORESCU)
    src = tmp_path / "src"
    _big_files(src, 30, "full-serve")
    notices: list[str] = []
    with _tmpfs(tmp_path / "small") as small:
        data, db = small / "data", small / "conquest.db"
        with listen(data, free_port(), database=db, log=notices.append) as rx:
            done = subprocess.run([STORESCU, "-v", "+sd", "+r", "-nh", "-aec", "CONQUEST",
                                   "127.0.0.1", str(rx.port), str(src)], env=NODELAY,
                                  capture_output=True, text=True, timeout=60)
        out = done.stdout + done.stderr
        acknowledged = out.count("Received Store Response (Success)")
        assert 0 < acknowledged < 30
        assert "Out of Resources" in out or "OutOfResources" in out or "A700" in out.upper()
        assert any("the disk is full" in n for n in notices), notices
        assert _temp_files(small) == []
        assert _files(data) == _indexed(db)            # every file indexed, none half-written
        assert len(_indexed(db)) >= acknowledged


def test_copy_onto_a_full_disk_says_so_and_exits_1(tmp_path):
    data, db = tmp_path / "data", tmp_path / "conquest.db"
    _big_files(data, 30, "full-copy")
    Archive(data, db).rebuild()
    with _tmpfs(tmp_path / "small") as small:
        job = tmp_path / "copy.yml"
        job.write_text("version: 1\nname: fill\nselect:\n  modality: [CT, MR]\naction:\n"
                       f"  copy: {{destination: {small / 'out'}}}\n")
        done = _cli(str(job), "--data", str(data), "--database", str(db))
        assert done.returncode == 1, done.stderr
        text = done.stdout + done.stderr
        assert "the disk is full" in text, text
        assert "Traceback" not in text
        assert _temp_files(small) == []
        for rel in _files(small / "out"):          # what is there is whole
            if rel.endswith(".dcm"):
                ds = pydicom.dcmread(small / "out" / rel)
                assert (data / ds.PatientID / f"{ds.SOPInstanceUID}.dcm").read_bytes() == \
                    (small / "out" / rel).read_bytes()


# -- read-only media --------------------------------------------------------------------------

def _ro_archive(root: Path) -> tuple[Path, Path]:
    data, db = root / "data", root / "conquest.db"
    synthetic.write_linked_rt_set(data)
    Archive(data, db).rebuild()
    return data, db


def _job(path: Path, out: Path) -> Path:
    path.write_text("version: 1\nname: export-plans\nselect:\n  modality: RTPLAN\naction:\n"
                    f"  copy: {{destination: {out}}}\n")
    return path


def _reads_and_refuses(root: Path, job: Path, prefix: tuple[str, ...] = ()) -> None:
    flags = ("--data", str(root / "data"), "--database", str(root / "conquest.db"))
    summary = _cli("summary", *flags, prefix=prefix)
    assert summary.returncode == 0, summary.stderr
    assert "RTPLAN" in summary.stdout
    dry = _cli("--dry-run", str(job), *flags, prefix=prefix)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "all done" in dry.stdout
    refused = _cli(str(job), *flags, prefix=prefix)
    assert refused.returncode != 0
    assert "read-only media" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert sorted(os.listdir(root)) == ["conquest.db", "data"]    # no -wal, -shm, shadow


def test_a_read_only_mount_can_be_read_and_refuses_writes(tmp_path, capsys):
    src = tmp_path / "src"
    _ro_archive(src)
    job = _job(tmp_path / "job.yml", tmp_path / "out")
    with _mounted(["--bind", "-o", "ro", str(src)], tmp_path / "ro") as ro:
        probe = subprocess.run(["touch", str(ro / "probe")], capture_output=True)
        if probe.returncode == 0:
            pytest.skip("the bind mount is not read-only here")
        _reads_and_refuses(ro, job)
        flags = ["--data", str(ro / "data"), "--database", str(ro / "conquest.db")]
        assert main(["query", "select PatientID from DICOMPatients", *flags]) == 0
        assert "RT001" in capsys.readouterr().out
        assert main(["rebuild", *flags]) != 0
        assert "read-only media" in capsys.readouterr().err
        assert sorted(os.listdir(ro)) == ["conquest.db", "data"]


def test_a_folder_without_write_permission_can_be_read_and_refuses_writes(tmp_path):
    src = tmp_path / "src"
    _ro_archive(src)
    job = _job(tmp_path / "job.yml", tmp_path / "out")
    for p in [src, *src.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    # root ignores permission bits; without CAP_DAC_OVERRIDE it meets them like any user
    drop = ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    try:
        _reads_and_refuses(src, job, prefix=drop)
    finally:
        for p in [src, *src.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)


# -- umask ------------------------------------------------------------------------------------

def test_exports_follow_the_umask(tmp_path):
    data, db = tmp_path / "data", tmp_path / "conquest.db"
    synthetic.write_linked_rt_set(data)
    Archive(data, db).rebuild()
    job = tmp_path / "export.yml"
    job.write_text(
        "version: 1\nname: export\nsteps:\n"
        f"  - name: copy\n    select: {{modality: RTPLAN}}\n"
        f"    action: {{copy: {{destination: {tmp_path / 'out'}}}}}\n"
        f"  - name: dump\n    select: {{modality: RTPLAN}}\n"
        f"    action: {{dump: {{file: {tmp_path / 'series.csv'}}}}}\n")
    done = subprocess.run(
        ["sh", "-c", 'umask 022 && exec "$@"', "sh", sys.executable, "-m", "conquest_run",
         str(job), "--data", str(data), "--database", str(db)],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    written.append(tmp_path / "series.csv")
    assert len(written) >= 3                  # the plan, the manifest, the CSV
    for p in written:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
