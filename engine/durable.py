"""Durable file writes for the archive: a file reaches its name only through a temporary name
in the same folder and a rename, after an fsync of its content, and its folder is fsync'ed after
the rename.  ``atomic_write`` does all of it for one file; ``store`` and the receiver use the
pieces to do it for a batch (``staged`` without fsync, ``fsync_all`` at once, the renames, one
fsync per folder).  Temporary names are ``.NAME.tmp-PID-hex``, so ``recovery`` can tell those of
a dead process.
"""

from __future__ import annotations

__all__ = ["atomic_write", "staged", "fsync_all", "fsync_path", "discard", "remove_original",
           "SourceKept"]

import os
import secrets
import shutil
from pathlib import Path


class SourceKept(Exception):
    """--move stored the file but could not remove the original."""


def atomic_write(target: Path, data: bytes | None = None, source: Path | None = None,
                  move: bool = False) -> None:
    """Write bytes (or copy/move ``source``) to ``target`` via a temp name + os.replace; the
    file and then its folder are fsync'ed before this returns (durable, not just in place).
    With ``move`` the original is removed only after that."""
    tmp = staged(target, data=data, source=source, link=move)
    try:
        os.replace(tmp, target)
    except BaseException:
        discard(tmp)
        raise
    if move:
        discard(tmp)        # a link onto the same file: rename() left both names
    fsync_path(target.parent)
    if move and source is not None:
        remove_original(source)


def staged(target: Path, data: bytes | None = None, source: Path | None = None,
            link: bool = False, sync: bool = True) -> Path:
    """``target``'s content under a temporary name in its folder, fsync'ed (unless ``sync``
    is false: the caller fsyncs it); ``link``: a hard link to ``source`` where the file system
    allows one (a move then costs no copy), else a copy.  The caller renames it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        if data is not None:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            return tmp
        assert source is not None
        if link and not source.is_symlink() and os.access(source.parent, os.W_OK | os.X_OK):
            # (a folder we cannot remove the original from gets a copy, never a shared inode)
            try:
                os.link(source, tmp)
            except OSError:          # another file system, or links not allowed: a copy
                pass
            else:
                if sync:
                    fsync_path(tmp)
                return tmp
        shutil.copyfile(source, tmp)
        if sync:
            fsync_path(tmp)
        return tmp
    except BaseException:
        discard(tmp)
        raise


def discard(tmp: Path) -> None:
    try:
        tmp.unlink()
    except OSError:
        pass


def remove_original(source: Path) -> None:
    try:
        os.unlink(source)
    except OSError as exc:   # stored all the same: the caller reports the original kept
        raise SourceKept(exc.strerror or str(exc)) from None


def fsync_all(paths: list[Path]) -> None:
    """fsync every file, several at once: the file system's journal then commits them together
    instead of once per file (fsync releases the GIL)."""
    if len(paths) < 4:
        for path in paths:
            fsync_path(path)
        return
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="store-fsync") as pool:
        for _ in pool.map(fsync_path, paths):
            pass


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
