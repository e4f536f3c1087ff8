"""A run record for the archive commands that change the archive outside a job
(``conquest-run rebuild`` and ``store``): the same ``ConquestRunRuns`` row a job run gets (state,
pid, host, user, version), named after the command, with one outcome per stored file or per bad
file, so that ``history`` answers "who changed this archive, when" for these too.
"""

from __future__ import annotations

__all__ = ["recorded_command"]

import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from .audit import CRASHED, INTERRUPTED, AuditLog
from .errors import ConquestRunError
from .report import Outcome


@contextmanager
def recorded_command(archive: Any, command: str, what: str
                     ) -> Iterator[Callable[..., None]]:
    """``with recorded_command(archive, "store", "3 paths") as finish: ...; finish(ok, summary,
    outcomes)``; an outcome's ``detail["patient_id"]`` fills the PatientID column.  A run row is opened before the work; it ends ``ok``/``failed`` from
    ``finish``, ``interrupted`` on Ctrl-C or SIGTERM, ``crashed`` on any other exception."""
    from .backends.errors import database_errors
    from .db import index_exists
    from .runcontext import run_context
    run_id = uuid.uuid4().hex
    from .errorlog import mark_run
    mark_run(run_id, f"{command} {what}".strip())
    context = {k: v for k, v in run_context(None).items() if k != "job_commit"}
    path = f"conquest-run {command} {what}".strip()
    opened: list[tuple[Any, AuditLog]] = []

    def open_log() -> AuditLog | None:
        """The log, its run row started; None while there is no database (a command that
        fails before making one leaves none behind)."""
        if not opened:
            if not index_exists(archive.database):
                return None
            conn = archive.connect()
            log = AuditLog(conn)
            log.start_run(run_id, path, "", command, **context)
            opened.append((conn, log))
        return opened[0][1]

    open_log()
    result: dict[str, Any] = {"ok": False, "summary": {}, "outcomes": []}

    def finish(ok: bool, summary: dict[str, Any], outcomes: list[Outcome] = ()) -> None:
        result.update(ok=ok, summary=summary, outcomes=list(outcomes))

    def end(**how: Any) -> None:
        log = open_log()
        if log is None:
            return
        for outcome in result["outcomes"]:
            log.record(run_id, 1, command, command, str(archive.data_dir), outcome)
        log.end_run(run_id, result["ok"] and not how, result["summary"], **how)

    def end_after_error(**how: Any) -> None:
        """The run row closed on the way out of an error; when that cannot be written either
        (a full disk), the error that stopped the command is the one the user sees."""
        try:
            end(**how)
        except (*database_errors(), OSError):
            pass

    try:
        yield finish
    except ConquestRunError as exc:      # a user error: the command failed, said why
        end_after_error(state="failed", error=str(exc))
        raise
    except KeyboardInterrupt as exc:
        import signal
        name = signal.Signals(getattr(exc, "signum", signal.SIGINT)).name
        end_after_error(state=INTERRUPTED, signal=name, error=f"interrupted by {name}")
        raise
    except BaseException as exc:
        end_after_error(state=CRASHED, error=f"{type(exc).__name__}: {exc}")
        raise
    else:
        end()
    finally:
        for conn, _ in opened:
            conn.close()
