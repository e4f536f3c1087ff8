"""One exception tree for every user-facing error.

Each error may carry where it happened (file, line, column; 1-based).  ``str(error)`` renders
``file:line:col: message`` (or the parts that are known), which is what the CLI prints.
"""

from __future__ import annotations

__all__ = [
    "ConquestRunError",
    "DicomSqlError",
    "JobError",
    "SqlCheckError",
    "ArchiveError",
    "DicomFileError",
    "NetworkError",
    "ActionError",
    "PlanChangedError",
    "Location",
]

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    file: str | None = None
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.line, self.column) if p is not None]
        return ":".join(str(p) for p in parts)


class ConquestRunError(Exception):
    """Base of every error conquest-run reports to a user (never shown as a traceback)."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.location = Location(None if file is None else str(file), line, column)

    @property
    def file(self) -> str | None:
        return self.location.file

    @property
    def line(self) -> int | None:
        return self.location.line

    @property
    def column(self) -> int | None:
        return self.location.column

    def __str__(self) -> str:
        where = str(self.location)
        return f"{where}: {self.message}" if where else self.message


class DicomSqlError(ConquestRunError):
    """A malformed dicom.sql file."""


class JobError(ConquestRunError):
    """An invalid job file (YAML, schema or reference error)."""


class SqlCheckError(JobError):
    """A job's SQL query refused by the checker."""


class ArchiveError(ConquestRunError):
    """The archive (data directory or database) cannot be used as asked."""


class DicomFileError(ConquestRunError):
    """A file that is not readable DICOM."""


class NetworkError(ConquestRunError):
    """A DICOM peer that cannot be reached or that refuses the association."""

    exit_code = 1


class ActionError(ConquestRunError):
    """An action that could not be carried out."""

    exit_code = 1


class PlanChangedError(ConquestRunError):
    """A saved plan no longer matches the archive it is applied to."""
