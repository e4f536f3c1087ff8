"""Whether a process still runs: the one test behind every "was its writer killed?" question
(stale temporary files, intent journals, shadow rebuilds, run rows shown as crashed)."""

from __future__ import annotations

__all__ = ["pid_alive"]

import os


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this host (a zombie, killed but not yet reaped,
    does not; another user's process does)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # another user's process
        return True
    except (OverflowError, ValueError):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[-1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True
