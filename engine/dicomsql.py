"""Parse a Conquest ``dicom.sql`` file into a list of levels and entries.

The format, as Conquest ships it::

    /* comment */
    *Patient*
    {
        { 0x0010, 0x0020, "PatientID", 64, SQL_C_CHAR, DT_STR },
        ...
    }

Sections are ``*Patient*``, ``*Study*``, ``*Series*``, ``*Image*`` and ``*WorkList*``; an entry is
``{ group, element, "Name", length, SQL-type, DICOM-type [, "HL7"] }``; numbers are hex or
decimal; the comma between entries is optional (Conquest's own file omits one).  Errors carry
``dicom.sql:LINE``.
"""

from __future__ import annotations

__all__ = ["Entry", "Level", "parse_dicom_sql", "read_dicom_sql", "LEVELS"]

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import DicomSqlError

# Section name -> (table name, level name used in the code)
LEVELS: dict[str, str] = {
    "Patient": "DICOMPatients",
    "Study": "DICOMStudies",
    "Series": "DICOMSeries",
    "Image": "DICOMImages",
    "WorkList": "DICOMWorkList",
}

SQL_TYPES = {"SQL_C_CHAR", "SQL_C_DATE"}
DICOM_TYPES = {
    "DT_STR", "DT_ISTR", "DT_MSTR", "DT_DATE", "DT_TIME", "DT_UI", "DT_UINT16", "DT_UINT32",
    "DT_FL", "DT_FD", "DT_STARTSEQUENCE", "DT_ENDSEQUENCE",
}


@dataclass(frozen=True)
class Entry:
    group: int
    element: int
    name: str            # the name as written, e.g. "StudyInstanceUID"
    length: int
    sql_type: str        # SQL_C_CHAR | SQL_C_DATE
    dicom_type: str      # DT_STR, DT_UI, ...
    hl7: str | None
    line: int

    @property
    def column(self) -> str:
        """The column name as Conquest makes it: the first 10 characters."""
        return self.name[:10]

    @property
    def tag(self) -> int:
        return (self.group << 16) | self.element

    @property
    def is_sequence_marker(self) -> bool:
        return self.dicom_type in ("DT_STARTSEQUENCE", "DT_ENDSEQUENCE")


@dataclass(frozen=True)
class Level:
    section: str          # "Patient", "Study", ...
    table: str            # "DICOMPatients", ...
    entries: tuple[Entry, ...]
    line: int

    @property
    def columns(self) -> tuple[Entry, ...]:
        """Entries that are columns (sequence markers are not)."""
        return tuple(e for e in self.entries if not e.is_sequence_marker)


_TOKEN = re.compile(
    r"""
    (?P<comment>/\*.*?\*/)
  | (?P<linecomment>(?://|\#)[^\n]*)
  | (?P<ws>\s+)
  | (?P<section>\*[A-Za-z]+\*)
  | (?P<lbrace>\{)
  | (?P<rbrace>\})
  | (?P<comma>,)
  | (?P<string>"[^"\n]*")
  | (?P<number>0[xX][0-9A-Fa-f]+|\d+)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE | re.DOTALL,
)


def _tokens(text: str, filename: str):
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            snippet = text[pos:pos + 20].split("\n")[0]
            if text.startswith("/*", pos):
                raise DicomSqlError("comment opened here is never closed", file=filename, line=line)
            raise DicomSqlError(f"unexpected text {snippet!r}", file=filename, line=line)
        kind = m.lastgroup
        value = m.group()
        if kind not in ("comment", "linecomment", "ws"):
            yield kind, value, line
        line += value.count("\n")
        pos = m.end()
    yield "eof", "", line


class _Parser:
    def __init__(self, text: str, filename: str) -> None:
        self.filename = filename
        self.toks = list(_tokens(text, filename))
        self.i = 0

    def peek(self):
        return self.toks[self.i]

    def take(self, kind: str, what: str):
        tok = self.toks[self.i]
        if tok[0] != kind:
            found = "end of file" if tok[0] == "eof" else repr(tok[1])
            raise DicomSqlError(f"expected {what}, found {found}", file=self.filename, line=tok[2])
        self.i += 1
        return tok

    def error(self, message: str, line: int) -> DicomSqlError:
        return DicomSqlError(message, file=self.filename, line=line)

    def parse(self) -> list[Level]:
        levels: list[Level] = []
        seen: set[str] = set()
        while self.peek()[0] != "eof":
            _, value, line = self.take("section", "a section such as *Patient*")
            section = value.strip("*")
            if section not in LEVELS:
                raise self.error(f"unknown section {value}; expected one of "
                                 + ", ".join(f"*{s}*" for s in LEVELS), line)
            if section in seen:
                raise self.error(f"section {value} appears twice", line)
            seen.add(section)
            levels.append(self.level(section, line))
        missing = [s for s in ("Patient", "Study", "Series", "Image") if s not in seen]
        if missing:
            raise self.error("missing section " + ", ".join(f"*{s}*" for s in missing),
                             self.peek()[2])
        return levels

    def level(self, section: str, line: int) -> Level:
        self.take("lbrace", "'{' after the section name")
        entries: list[Entry] = []
        while True:
            kind, _, tline = self.peek()
            if kind == "rbrace":
                self.i += 1
                break
            if kind == "comma" and entries:
                self.i += 1
                continue
            if kind == "eof":
                raise self.error(f"section *{section}* opened on line {line} is never closed "
                                 "with '}'", tline)
            if kind != "lbrace":
                raise self.error("expected an entry '{ group, element, \"Name\", length, "
                                 "SQL-type, DICOM-type }' or '}'", tline)
            entries.append(self.entry())
        if not entries:
            raise self.error(f"section *{section}* has no entries", line)
        names: dict[str, int] = {}
        for e in entries:
            if e.is_sequence_marker:
                continue
            if e.column.lower() in names:
                raise self.error(f"column {e.column!r} (from {e.name!r}) repeats the column on "
                                 f"line {names[e.column.lower()]}", e.line)
            names[e.column.lower()] = e.line
        return Level(section, LEVELS[section], tuple(entries), line)

    def number(self, what: str) -> int:
        _, value, _ = self.take("number", what)
        return int(value, 16) if value.lower().startswith("0x") else int(value)

    def entry(self) -> Entry:
        _, _, line = self.take("lbrace", "'{'")
        group = self.number("a group number such as 0x0010")
        self.take("comma", "','")
        element = self.number("an element number such as 0x0020")
        self.take("comma", "','")
        name = self.take("string", 'a quoted column name such as "PatientID"')[1][1:-1]
        self.take("comma", "','")
        length = self.number("a column length")
        self.take("comma", "','")
        _, sql_type, tl = self.take("ident", "an SQL type (SQL_C_CHAR or SQL_C_DATE)")
        if sql_type not in SQL_TYPES:
            raise self.error(f"unknown SQL type {sql_type!r}; expected SQL_C_CHAR or SQL_C_DATE", tl)
        self.take("comma", "','")
        _, dicom_type, tl = self.take("ident", "a DICOM type such as DT_STR")
        if dicom_type not in DICOM_TYPES:
            raise self.error(f"unknown DICOM type {dicom_type!r}; expected one of "
                             + ", ".join(sorted(DICOM_TYPES)), tl)
        hl7 = None
        if self.peek()[0] == "comma":
            self.i += 1
            hl7 = self.take("string", 'an HL7 tag such as "PID.4"')[1][1:-1]
        self.take("rbrace", "'}' closing the entry")
        if group > 0xFFFF or element > 0xFFFF:
            raise self.error("group and element must each fit in 16 bits", line)
        if not name:
            raise self.error("empty column name", line)
        if dicom_type not in ("DT_STARTSEQUENCE", "DT_ENDSEQUENCE"):
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
                raise self.error(f"column name {name!r} is not a plain identifier", line)
            if length <= 0:
                raise self.error(f"column {name!r} needs a length above 0", line)
        return Entry(group, element, name, length, sql_type, dicom_type, hl7, line)


def parse_dicom_sql(text: str, filename: str = "dicom.sql") -> list[Level]:
    """Parse the text of a dicom.sql file; raise DicomSqlError with ``filename:LINE``."""
    return _Parser(text, filename).parse()


def read_dicom_sql(path: str | Path) -> list[Level]:
    path = Path(path)
    from .source import is_device
    if is_device(path):
        raise DicomSqlError("cannot read: a device, not a file (it could be read forever)", file=str(path))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DicomSqlError(f"cannot read: {exc.strerror}", file=str(path)) from None
    return parse_dicom_sql(raw.decode("latin-1"), str(path))
