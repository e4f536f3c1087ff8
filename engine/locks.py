"""One run at a time per (job, target): an ``fcntl.flock`` on a lock file beside the database.

Two ``send`` runs of the same job to the same peer at once would each read the journal before
the other wrote to it, and send every instance twice.  ``run_lock`` takes an exclusive,
non-blocking lock on ``.<database name>.lock-<hash>`` (the hash of the job path and the target,
so no user text reaches the file name); the second run is refused at once with
``AlreadyRunning``.  The kernel drops the lock when the holder exits, even if it is killed, so
a stale file never blocks; the file itself is left in place (removing it would race).
"""

from __future__ import annotations

__all__ = ["run_lock", "lock_path", "AlreadyRunning"]

import fcntl
import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import ActionError


class AlreadyRunning(ActionError):
    """Another process holds the lock of this (job, target)."""


def lock_path(database: str | os.PathLike, job: str, target: str) -> Path:
    """The lock file of ``job`` (its path, made absolute) and ``target``, beside the database."""
    db = Path(os.path.abspath(database))
    key = hashlib.sha256(f"{os.path.abspath(job)}\0{target}".encode()).hexdigest()[:20]
    return db.parent / f".{db.name}.lock-{key}"


@contextmanager
def run_lock(database: str | os.PathLike, job: str, target: str, what: str = "run"
             ) -> Iterator[Path]:
    """Hold the (job, target) lock for the block; ``AlreadyRunning`` if another process has it.
    On a PostgreSQL index (a URL), a server advisory lock of the same key instead."""
    from .backends import is_postgres_url
    if is_postgres_url(database):
        from .backends.pglocks import session_lock
        with session_lock(str(database), "run", f"{os.path.abspath(job)}\0{target}") as taken:
            if not taken:
                raise AlreadyRunning(f"another {what} of {job} to {target} is already running "
                                     "(it holds the PostgreSQL advisory lock of that job and "
                                     "target); nothing was sent, try again when it has "
                                     "finished")
            yield Path(job)
        return
    path = lock_path(database, job, target)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        raise ActionError(f"cannot create the lock file {path}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(f"another {what} of {job} to {target} is already running "
                                 f"(it holds {path.name}); nothing was sent, try again when "
                                 "it has finished") from None
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
