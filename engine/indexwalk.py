"""Reading and walking for the indexer: the files under ``data/`` (hidden and database files
left out) and their headers, read in this process or in forked helper processes while the
calling process writes.  ``BadFile`` / ``FlaggedFile`` are what a run reports per file."""

from __future__ import annotations

__all__ = ["BadFile", "FlaggedFile", "read_one", "read_all", "walk", "storable_name",
           "shown_name"]

import collections
import multiprocessing
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .dicomread import HeaderRecord, ReadSpec, read_header
from .errors import ArchiveError, DicomFileError

_CHUNK = 64            # files per task sent to a worker process
_HELPER_TIMEOUT = 600.0  # seconds for one chunk of files in a helper process


@dataclass(frozen=True)
class BadFile:
    path: str      # relative to the data directory
    reason: str


@dataclass(frozen=True)
class FlaggedFile:
    """A file indexed with warnings: RTExtras.Flags (e.g. ``meta-mismatch\\no-pixel-data``)."""

    path: str      # relative to the data directory (as given, for store)
    flags: str




# -- reading (in this process or in workers) ------------------------------------------------------

def read_one(data_dir: str, rel: str, spec: ReadSpec) -> HeaderRecord | BadFile:
    try:
        return read_header(os.path.join(data_dir, rel), rel, spec)
    except DicomFileError as exc:
        return BadFile(rel, exc.message)
    except Exception as exc:  # never let one file stop the run
        return BadFile(rel, f"unreadable: {type(exc).__name__}: {exc}")


def _read_chunk(data_dir: str, spec: ReadSpec, chunk: list[str]) -> list[HeaderRecord | BadFile]:
    return [read_one(data_dir, rel, spec) for rel in chunk]


def read_all(data_dir: Path, rels: list[str], spec: ReadSpec,
              workers: int) -> Iterator[HeaderRecord | BadFile]:
    """Read every file, in order.  With ``workers`` > 1, that many helper processes take
    chunks from a window kept ahead of them; whenever the oldest chunk is not back yet the
    calling process (which writes the index) reads the next chunk itself, so no core idles
    and the helpers never wait for the writer."""
    folder = str(data_dir)
    # Helpers are forked (cheap, nothing to re-import).  Forking a process that runs other
    # threads (a receiver, say) is unsafe and spawning depends on how the program was started,
    # so then the files are read in this process.
    can_fork = ("fork" in multiprocessing.get_all_start_methods()
                and threading.active_count() == 1)
    if workers <= 1 or len(rels) < 4 * _CHUNK or not can_fork:
        for rel in rels:
            yield read_one(folder, rel, spec)
        return
    ctx = multiprocessing.get_context("fork")
    chunks = iter([rels[i:i + _CHUNK] for i in range(0, len(rels), _CHUNK)])
    helpers = workers
    ahead = 16 * helpers                      # chunks queued for the helpers
    window: collections.deque = collections.deque()   # AsyncResult or a finished list
    queued = 0
    with ctx.Pool(helpers) as pool:
        while True:
            while queued < ahead:
                chunk = next(chunks, None)
                if chunk is None:
                    break
                window.append(pool.apply_async(_read_chunk, (folder, spec, chunk)))
                queued += 1
            if not window:
                break
            head = window[0]
            if isinstance(head, list):
                window.popleft()
                yield from head
            elif head.ready() or not _take_local(window, chunks, folder, spec):
                window.popleft()
                queued -= 1
                try:
                    results = head.get(timeout=_HELPER_TIMEOUT)
                except multiprocessing.TimeoutError:
                    raise ArchiveError(f"a worker process gave no result within "
                                       f"{_HELPER_TIMEOUT:.0f} s; run with one worker") from None
                yield from results


def _take_local(window: collections.deque, chunks: Iterator[list[str]], folder: str,
                spec: ReadSpec) -> bool:
    """Read the next chunk in this process (appended to the window); False when none is left."""
    chunk = next(chunks, None)
    if chunk is None:
        return False
    window.append(_read_chunk(folder, spec, chunk))
    return True


# -- walking -------------------------------------------------------------------------------

def walk(root: Path, base: Path, excluded: set[str]) -> Iterator[tuple[str, os.stat_result | None]]:
    """(relative path with '/', stat) of every regular file under root; hidden names yield
    (rel, None) so they can be counted as skipped; the database's own files are left out."""
    prefix = len(str(base.absolute())) + 1
    stack = [str(root.absolute())]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ArchiveError(f"cannot list folder: {exc.strerror}", file=folder) from None
        for entry in entries:
            path = entry.path
            rel = path[prefix:] if os.sep == "/" else path[prefix:].replace(os.sep, "/")
            if path in excluded:
                continue
            if entry.name.startswith("."):
                if not entry.is_dir(follow_symlinks=False):
                    yield rel, None
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(path)
            elif entry.is_file(follow_symlinks=False):
                try:
                    yield rel, entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue


def storable_name(rel: str) -> bool:
    """Whether a path from the file system can be an ObjectFile (no undecodable bytes)."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_name(rel: str) -> str:
    """A path with undecodable bytes, printable (each such byte as U+FFFD)."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")

