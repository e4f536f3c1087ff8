"""Putting back what a ``delete: {files: quarantine}`` run moved to ``data/.quarantine/<run id>/``.

``restore(archive, conn, run)`` finds the run's quarantine folder (``run``: the run id or a
unique prefix of it, hex digits only, so no user text reaches a path), refuses before moving
anything when a file would overwrite a newer one (a file at its place again, or its SOP instance
indexed again), then moves every file back to its place, re-indexes them and removes the emptied
quarantine folders.  Files go back as hard links and leave the quarantine only once indexed, so
a restore killed halfway is finished by running it again.  The indexer never looks inside
``data/.quarantine/`` (hidden folders are not walked).
"""

from __future__ import annotations

__all__ = ["restore", "RestoreResult", "find_run"]

import os
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ActionError, ArchiveError
from .indexer import BadFile, Indexer
from .indexwalk import read_one
from .dicomread import HeaderRecord, ReadSpec
from .removalfiles import fsync_dirs
from .removals import quarantine_root

_RUN_ID = re.compile(r"[0-9a-f]{4,64}")
_SHOW = 10


@dataclass
class RestoreResult:
    run_id: str
    folder: Path
    restored: list[tuple[str, HeaderRecord]] = field(default_factory=list)  # (rel, header)
    bad: list[BadFile] = field(default_factory=list)

    def summary(self) -> str:
        text = f"restored {len(self.restored)} files of run {self.run_id} from {self.folder}"
        return text + (f", {len(self.bad)} not indexed" if self.bad else ", all indexed")


def find_run(data_dir: Path, run: str) -> tuple[str, Path]:
    """(run id, its quarantine folder); a clear refusal when there is none (exit 2)."""
    if not _RUN_ID.fullmatch(run):
        raise ArchiveError(f"{run!r} is not a run id (hex digits, at least 4; see "
                           "'conquest-run history')")
    root = quarantine_root(data_dir)
    try:
        names = sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        names = []
    found = [n for n in names if n.startswith(run)]
    if not found:
        raise ArchiveError(f"run {run} has no quarantine in {root} (only a delete with "
                           "files: quarantine keeps one, and a restore empties it); nothing "
                           "was restored")
    if len(found) > 1:
        raise ArchiveError(f"run {run} is ambiguous: {', '.join(found[:5])} are all in {root}; "
                           "give more of the run id")
    return found[0], root / found[0]


def _files(folder: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath, name)
            if full.is_file() and not full.is_symlink():
                out.append(full.relative_to(folder).as_posix())
    return out


def _conflicts(conn: sqlite3.Connection, schema: Any, data_dir: Path, folder: Path,
               rels: list[str]) -> tuple[list[str], dict[str, HeaderRecord | BadFile]]:
    from .store import resolve_inside
    im = schema.images
    spec = ReadSpec.from_schema(schema)
    problems: list[str] = []
    headers: dict[str, HeaderRecord | BadFile] = {}
    for rel in rels:
        try:
            dest = resolve_inside(data_dir, *rel.split("/"))
        except ArchiveError:
            problems.append(f"{rel}: it would go outside the data directory")
            continue
        ours = _put_back_before(folder / rel, dest)
        if os.path.lexists(dest) and not ours:
            problems.append(f"{rel}: a file is there again (newer than the quarantined copy)")
            continue
        item = read_one(str(folder), rel, spec)
        headers[rel] = item
        if isinstance(item, HeaderRecord):
            row = conn.execute(f'SELECT ObjectFile FROM "{im.name}" WHERE "{im.key}" = ?',
                               (item.sop_uid,)).fetchone()
            if row is not None and not (ours and (row[0] or "").replace("\\", "/") == rel):
                problems.append(f"{rel}: its instance {item.sop_uid} is in the archive again "
                                f"(as {row[0]}), newer than the quarantined copy")
    return problems, headers


def _put_back_before(src: Path, dest: Path) -> bool:
    """Whether ``dest`` is the quarantined file itself (a hard link an interrupted restore
    made): then it is this restore's to finish, not a newer file."""
    try:
        return os.path.samefile(src, dest)
    except OSError:
        return False


def _link_back(src: Path, dest: Path) -> bool:
    """Put ``src`` at ``dest`` without overwriting (a file that appeared meanwhile stays): a
    hard link, so that the quarantined name goes only once the file is indexed, and a restore
    killed halfway is finished by running it again.  False when it had to be renamed (no hard
    links on this file system)."""
    if _put_back_before(src, dest):
        return True
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(dest):
            raise FileExistsError(17, "File exists", str(dest)) from None
        os.rename(src, dest)
        return False
    return True


def _prune(folder: Path, root: Path) -> None:
    """Remove the emptied folders of a restored run (and the quarantine root when empty)."""
    for dirpath, _, _ in sorted(os.walk(folder), key=lambda t: -len(t[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass
    try:
        os.rmdir(root)
    except OSError:
        pass


def restore(archive: Any, conn: sqlite3.Connection, run: str) -> RestoreResult:
    """Put a quarantined run's files back and index them (see the module docstring)."""
    data_dir = Path(archive.data_dir)
    run_id, folder = find_run(data_dir, run)
    rels = _files(folder)
    if not rels:
        raise ArchiveError(f"run {run_id} has no files left in {folder}; nothing was restored")
    problems, headers = _conflicts(conn, archive.schema, data_dir, folder, rels)
    if problems:
        shown = "; ".join(problems[:_SHOW]) + (f"; and {len(problems) - _SHOW} more"
                                               if len(problems) > _SHOW else "")
        raise ActionError(f"restore of run {run_id} refused: {len(problems)} of {len(rels)} "
                          f"files would overwrite newer ones ({shown}); nothing was restored")
    result = RestoreResult(run_id, folder)
    moved: list[str] = []
    linked: list[str] = []
    touched: set[Path] = set()
    for rel in rels:
        dest = data_dir / rel
        try:
            if _link_back(folder / rel, dest):
                linked.append(rel)
        except OSError as exc:
            why = "a file appeared there meanwhile" if isinstance(exc, FileExistsError) \
                else exc.strerror or str(exc)
            result.bad.append(BadFile(rel, f"not restored ({why}); it stays in {folder}"))
            continue
        touched.add(dest.parent)
        moved.append(rel)
    for parent in touched:
        fsync_dirs([parent])
    indexed = Indexer(conn, archive.schema, data_dir).index_files(moved)
    not_indexed = {b.path for b in indexed.bad}
    result.bad.extend(indexed.bad)
    for rel in moved:
        item = headers.get(rel)
        if rel not in not_indexed and isinstance(item, HeaderRecord):
            result.restored.append((rel, item))
    for rel in linked:                   # indexed (or reported): the quarantined name goes
        try:
            os.unlink(folder / rel)
        except FileNotFoundError:
            pass
    _prune(folder, quarantine_root(data_dir))
    return result
