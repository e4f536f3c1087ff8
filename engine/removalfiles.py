"""One journaled removal and its file: the ``Removal`` entry (see ``removals.py``), the file's
identity (size, mtime_ns, inode), and ``settle``: take the file to its holding name (a hidden
name beside it, or its place in ``data/.quarantine/<run id>/``), compare it with the journal,
then remove it, leave it in quarantine, or put it back when it is not the file the delete saw
(a later store replaced it) or its instance was indexed again at that path.
"""

from __future__ import annotations

__all__ = ["Removal", "KEEP", "REMOVE", "QUARANTINE", "QUARANTINE_DIR", "PLANNED", "TAKING",
           "identity", "quarantine_root", "hold_path", "checked_path", "outcome_of",
           "failed_removal", "settle", "fsync_dirs"]

import os
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import ActionError
from .report import DONE, FAILED, SKIPPED, Outcome

QUARANTINE_DIR = ".quarantine"
KEEP, REMOVE, QUARANTINE = "keep", "remove", "quarantine"
PLANNED, TAKING = "planned", "taking"


@dataclass(frozen=True)
class Removal:
    """One deleted index row and what becomes of its file."""

    run_id: str
    step: int
    step_name: str
    action: str
    target: str
    sop_uid: str
    series_uid: str
    patient_id: str | None
    object_file: str              # relative to the data directory
    files: str                    # keep | remove | quarantine
    size: int | None = None       # the file's identity when the delete transaction saw it
    mtime_ns: int | None = None
    inode: int | None = None
    bytes: int | None = None      # as planned, for the audit detail
    state: str = PLANNED

    @property
    def identity(self) -> tuple[int, int, int] | None:
        return None if self.inode is None else (self.size, self.mtime_ns, self.inode)


def identity(path: Path) -> tuple[int, int, int] | None:
    """(size, mtime_ns, inode) of a regular file (not following a symlink); None otherwise."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def quarantine_root(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / QUARANTINE_DIR


# -- settling one entry --------------------------------------------------------------------
def hold_path(data_dir: Path, r: Removal, path: Path) -> Path:
    """Where the file is taken to: its place in the run's quarantine, or a hidden name beside
    it (the run id made a safe path component, whoever chose it)."""
    from .store import safe_component
    run = safe_component(r.run_id)
    if r.files == QUARANTINE:
        return quarantine_root(data_dir) / run / os.path.normpath(r.object_file)
    return path.parent / f".{path.name}.deleting-{run[:12]}"


def _put_back(hold: Path, path: Path) -> None:
    """Return a held file to its place without overwriting what may be there now (an even
    newer copy, which then wins: the held one is dropped)."""
    try:
        os.link(hold, path)
    except FileExistsError:
        pass
    except OSError:
        if not os.path.lexists(path):
            os.rename(hold, path)
            return
    os.unlink(hold)


def _indexed_again(conn: sqlite3.Connection, schema: Any, r: Removal) -> bool:
    if schema is None:
        return False
    im = schema.images
    row = conn.execute(f'SELECT ObjectFile FROM "{im.name}" WHERE "{im.key}" = ?',
                       (r.sop_uid,)).fetchone()
    return row is not None and (row[0] or "").replace("\\", "/") == r.object_file


def outcome_of(r: Removal, status: str, reason: str, **detail: Any) -> Outcome:
    return Outcome(r.sop_uid, r.series_uid, status, reason, detail)


def failed_removal(r: Removal, reason: str, path: str) -> Outcome:
    return outcome_of(r, FAILED, reason, path=path, row_deleted=True, file_kept=True,
                      file_removed=False)


def checked_path(data_dir: Path, r: Removal) -> tuple[Path, str] | Outcome:
    """The file of an entry and its absolute path, or the failed outcome refusing it (a path
    that leaves the data directory)."""
    from .actions._local import inside, source_path
    verb = "remove" if r.files == REMOVE else "quarantine"
    try:
        path = source_path(data_dir, r.object_file)
    except ActionError as exc:
        return failed_removal(r, f"refused to {verb}: {exc.message}",
                              str(data_dir / r.object_file))
    absolute = os.path.abspath(path)
    if not inside(data_dir, path):
        return failed_removal(r, f"refused to {verb} {absolute}: it resolves outside the data "
                              f"directory ({os.path.realpath(path)})", absolute)
    return path, absolute


def settle(conn: sqlite3.Connection, data_dir: Path, r: Removal, schema: Any,
            touched: set[Path]) -> Outcome:
    """Carry out one entry's file part; the outcome to record."""
    def outcome(status: str, reason: str, **detail: Any) -> Outcome:
        return outcome_of(r, status, reason, **detail)

    if r.files == KEEP:
        return outcome(DONE, "row deleted, file kept", path=r.object_file, file_removed=False)
    verb = "remove" if r.files == REMOVE else "quarantine"

    def failed(reason: str, path: str) -> Outcome:
        return failed_removal(r, reason, path)
    checked = checked_path(data_dir, r)
    if isinstance(checked, Outcome):
        return checked
    path, absolute = checked
    hold = hold_path(data_dir, r, path)
    if not os.path.lexists(hold):
        if not os.path.lexists(path):
            if r.state == TAKING:     # the interrupted run had taken it: it was ours
                return _gone(outcome, r, absolute, hold)
            return outcome(DONE, "the file was already gone", path=absolute, file_removed=False)
        if identity(path) is None and not os.path.islink(path):
            try:                       # not a regular file: refused as unlink refuses it
                os.unlink(path)
            except OSError as exc:
                return failed(f"could not {verb} the file: {exc.strerror or exc}; its row is "
                              "deleted, remove it by hand", absolute)
            return outcome(DONE, "row and file deleted", path=absolute, file_removed=True)
        try:
            if r.files == QUARANTINE:
                hold.parent.mkdir(parents=True, exist_ok=True)
            os.rename(path, hold)
        except FileNotFoundError:
            return outcome(DONE, "the file was already gone", path=absolute, file_removed=False)
        except OSError as exc:
            return failed(f"could not {verb} the file: {exc.strerror or exc}; its row is "
                          "deleted, remove it by hand", absolute)
    touched.update({path.parent, hold.parent})
    held = identity(hold)
    replaced = held != r.identity
    if replaced or _indexed_again(conn, schema, r):
        _put_back(hold, path)
        why = ("a newer copy was stored at this path since the delete's transaction (its size, "
               "mtime or inode differ)" if replaced else "the instance was indexed again at "
               "this path since the delete's transaction")
        return outcome(SKIPPED, f"row deleted; file kept: {why}", path=absolute,
                       file_removed=False, file_kept=True, newer_copy=True)
    if r.files == QUARANTINE:
        return outcome(DONE, "row deleted, file quarantined", path=absolute,
                       file_removed=False, quarantined=str(os.path.abspath(hold)))
    try:
        os.unlink(hold)
    except FileNotFoundError:
        pass
    except OSError as exc:
        _put_back(hold, path)
        return failed(f"could not remove the file: {exc.strerror or exc}; its row is deleted, "
                      "remove it by hand", absolute)
    return outcome(DONE, "row and file deleted", path=absolute, file_removed=True)


def _gone(outcome: Callable[..., Outcome], r: Removal, absolute: str, hold: Path) -> Outcome:
    if r.files == QUARANTINE:
        return outcome(FAILED, "row deleted; the file is neither in place nor in quarantine",
                       path=absolute, row_deleted=True, file_removed=False)
    return outcome(DONE, "row and file deleted", path=absolute, file_removed=True)


def fsync_dirs(folders: Iterable[Path]) -> None:
    for folder in folders:
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
