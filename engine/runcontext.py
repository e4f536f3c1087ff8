"""The facts a run record carries about who ran what where: user, host, process id,
conquest-run version and the job file's git commit.

``git`` is asked with a short timeout and only when the job file is in a git work tree; a
missing ``git``, a file outside any repository or a slow file system simply give no commit.
"""

from __future__ import annotations

__all__ = ["run_context", "job_commit"]

import getpass
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

GIT_TIMEOUT = 3.0   # seconds, per git call


def _git(folder: Path, *args: str) -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    try:
        done = subprocess.run([git, "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT, stdin=subprocess.DEVNULL,
                              env=dict(os.environ, GIT_TERMINAL_PROMPT="0", LC_ALL="C"))
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def job_commit(job_path: str | os.PathLike | None) -> str | None:
    """``HEAD``'s commit of the repository holding the job file, with ``+modified`` when the
    file differs from it (or ``+untracked``); None outside a git repository."""
    if not job_path:
        return None
    path = Path(job_path)
    if not path.is_file():
        return None
    folder = path.resolve().parent
    head = _git(folder, "rev-parse", "--verify", "-q", "HEAD")
    if not head:
        return None
    name = path.resolve().name
    if _git(folder, "ls-files", "--error-unmatch", "--", name) is None:
        return f"{head}+untracked"
    status = _git(folder, "status", "--porcelain", "--", name)
    return f"{head}+modified" if status else head


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def run_context(job_path: str | None, variables: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """The keywords ``AuditLog.start_run`` records for a run of ``job_path``."""
    from . import __version__
    context: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(),
                               "user": _user(), "version": __version__,
                               "job_commit": job_commit(job_path)}
    if variables:
        context["variables"] = dict(variables)
    return context
