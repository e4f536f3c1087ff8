"""The error log (pyconquest's rotating ``pyconquest_error.log``): off unless asked for.

``conquest-run --log-file PATH ...`` (any command; or ``log_file:`` in the project file, see
:func:`log_file_of`) appends the warnings and errors of the command to ``PATH``, rotated by size
(``logging.handlers.RotatingFileHandler``: 1 MiB, 3 old files ``PATH.1`` .. ``PATH.3``), one
line per event::

    2026-12-02T01:59:03+0000 ERROR run=3f0c... pid=812 conquest_run.runner: step 1 (copy): ...

Events: every line a command writes on stderr (located errors, notes, refusals; ``note:``
lines are warnings, the others errors), the failed outcomes and step errors of a job run, and
Python warnings.  The run id is the audit log's (``ConquestRunRuns.RunId``) from the moment a
job run or a recorded command starts (:func:`mark_run`), ``-`` before.
"""

from __future__ import annotations

__all__ = ["take_log_file", "log_file_of", "logging_to", "mark_run", "log_step", "LOGGER"]

import logging
import logging.handlers
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

LOGGER = "conquest_run"
MAX_BYTES = 1024 * 1024
BACKUPS = 3
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_REDRAW = re.compile(r"\x1b\[(\d*[AKJ]|\?25[lh])")     # cursor moves, erases: a live display
_FORMAT = "%(asctime)s %(levelname)s run=%(run_id)s pid=%(process)d %(name)s: %(message)s"


def take_log_file(argv: list[str]) -> tuple[list[str], str | None]:
    """(argv without ``--log-file PATH`` / ``--log-file=PATH``, PATH or None); the last wins.
    A ``--log-file`` without a value is left in place for the parser to refuse."""
    out: list[str] = []
    path = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out += argv[i:]
            break
        if arg == "--log-file" and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            path = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--log-file="):
            path = arg.split("=", 1)[1] or None
            i += 1
            continue
        out.append(arg)
        i += 1
    return out, path


def log_file_of(cli_value: str | None, project: "dict[str, Any] | None" = None) -> str | None:
    """The log file to use: ``--log-file`` first, then the project file's ``log_file:``.

    Hook for the project file (``conquest-run.yml``): its loader passes its settings here;
    until then only ``--log-file`` is read."""
    if cli_value:
        return cli_value
    value = (project or {}).get("log_file")
    return str(value) if value else None


class _RunId:
    """The run id the next lines carry; owned by one ``logging_to`` block."""

    def __init__(self) -> None:
        self.value = "-"


class _Stamp(logging.Filter):
    def __init__(self, run: _RunId) -> None:
        super().__init__()
        self.run = run

    def filter(self, record: logging.LogRecord) -> bool:
        marked = getattr(record, "run_id", None)
        if marked and getattr(record, "marks_run", False):
            self.run.value = marked
        record.run_id = self.run.value
        record.msg = str(record.msg).replace("\n", " | ")
        return record.levelno >= logging.WARNING


class _StderrTee:
    """sys.stderr that also logs each complete line it is given (not progress bars)."""

    def __init__(self, stream: Any, logger: logging.Logger) -> None:
        self._stream = stream
        self._logger = logger
        self._pending = ""

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._log(line)
        return written

    def _log(self, line: str) -> None:
        if "\r" in line or _REDRAW.search(line):     # a progress bar being drawn
            return
        line = _ANSI.sub("", line).strip()
        if not line:
            return
        level = logging.WARNING if line.startswith(("note:", "warning:")) else logging.ERROR
        self._logger.log(level, "%s", line)

    def flush(self) -> None:
        self._stream.flush()

    def close_pending(self) -> None:
        if self._pending:
            self._log(self._pending)
            self._pending = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def logging_to(path: str | os.PathLike | None, *, max_bytes: int = MAX_BYTES,
               backups: int = BACKUPS) -> Iterator[None]:
    """While the block runs, warnings and errors go to ``path`` too (nothing when None)."""
    if not path:
        yield
        return
    path = Path(path)
    if path.is_dir():
        from .errors import ArchiveError
        raise ArchiveError(f"--log-file {path} is a folder; give a file name")
    if path.parent and not path.parent.is_dir():
        from .errors import ArchiveError
        raise ArchiveError(f"--log-file {path}: the folder {path.parent} does not exist")
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes,
                                                   backupCount=backups, encoding="utf-8")
    formatter = logging.Formatter(_FORMAT, "%Y-%m-%dT%H:%M:%S%z")
    handler.setFormatter(formatter)
    handler.addFilter(_Stamp(_RunId()))
    logger = logging.getLogger(LOGGER)
    old_level, old_stderr = logger.level, sys.stderr
    logger.setLevel(logging.INFO)                   # the run marks are INFO, not written
    logger.addHandler(handler)
    tee = _StderrTee(sys.stderr, logging.getLogger(f"{LOGGER}.stderr"))
    sys.stderr = tee
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.addHandler(handler)
    try:
        yield
    finally:
        tee.close_pending()
        sys.stderr = old_stderr
        logging.captureWarnings(False)
        warnings_logger.removeHandler(handler)
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()


def mark_run(run_id: str, what: str) -> None:
    """Tell the error log (if any) that the lines from here on belong to ``run_id``."""
    logging.getLogger(f"{LOGGER}.run").info("run %s: %s", run_id, what,
                                             extra={"run_id": run_id, "marks_run": True})


def log_step(report: Any) -> None:
    """The step errors and failed outcomes of a step report, one event each."""
    logger = logging.getLogger(f"{LOGGER}.runner")
    label = f"step {report.index} ({report.name}, {report.action} -> {report.target})"
    if report.error:
        logger.error("%s: %s", label, report.error)
    for outcome in report.outcomes:
        if outcome.status == "failed":
            what = outcome.sop_uid or outcome.detail.get("path") or "-"
            logger.error("%s: %s failed: %s", label, what, outcome.reason)
        elif "warning" in (outcome.reason or ""):
            logger.warning("%s: %s: %s", label, outcome.sop_uid or "-", outcome.reason)
