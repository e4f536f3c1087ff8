"""``rebuild --dry-run`` and ``store --dry-run``: what would be indexed or stored, changing
nothing (the database is opened read-only, or not at all when it does not exist yet)."""

from __future__ import annotations

__all__ = ["RebuildPreview", "StorePreview", "preview_rebuild", "preview_store"]

import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .indexer import BadFile, Indexer, LinkChecker, data_dir_error
from .indexwalk import storable_name, walk


@dataclass
class RebuildPreview:
    mode: str
    database_exists: bool
    on_disk: int = 0          # files found under the data directory (of the patients)
    to_read: int = 0          # files a rebuild would read and index
    new: int = 0              # of those, not in the index yet
    unchanged: int = 0        # left as they are
    to_remove: int = 0        # index rows whose files are gone

    def summary(self) -> str:
        if not self.database_exists:
            return (f"dry run: the index does not exist yet; a rebuild would create it and "
                    f"index {self.to_read} files (nothing was changed)")
        what = {"all": "re-index", "missing": "index", "refresh": "index"}[self.mode]
        return (f"dry run: rebuild ({self.mode}) would {what} {self.to_read} of "
                f"{self.on_disk} files ({self.new} not in the index yet), leave "
                f"{self.unchanged} as they are and remove {self.to_remove} index entries "
                f"whose files are gone (nothing was changed)")


@dataclass
class StorePreview:
    stored: list[tuple[str, str, bool]] = field(default_factory=list)  # source, ObjectFile, replaces
    bad: list[BadFile] = field(default_factory=list)

    def summary(self) -> str:
        replaced = sum(1 for *_, r in self.stored if r)
        return (f"dry run: store would put {len(self.stored)} files into the archive "
                f"({replaced} replacing an instance already there), {len(self.bad)} bad "
                f"(nothing was changed)")


def _connection(archive) -> tuple[sqlite3.Connection, bool]:
    """A read-only connection to the index, or an empty in-memory one when it is missing."""
    from .db import connect_reader, ensure_schema
    if Path(archive.database).is_file():
        return connect_reader(archive.database), True
    conn = sqlite3.connect(":memory:")
    ensure_schema(conn, archive.schema)
    return conn, False


def preview_rebuild(archive, *, mode: str = "all",
                    patients: Iterable[str] | None = None) -> RebuildPreview:
    from .store import safe_patient_dir
    data = Path(archive.data_dir)
    if not data.is_dir():
        raise data_dir_error(data)
    conn, exists = _connection(archive)
    with closing(conn):
        indexer = Indexer(conn, archive.schema, data, exclude=[archive.database])
        plist = None if patients is None else [str(p) for p in patients]
        known = indexer._known(plist) if exists else {}
    roots = [data] if plist is None else sorted({data / safe_patient_dir(p) for p in plist})
    seen = {}
    for root in roots:
        for rel, st in walk(root, data, indexer.excluded):
            if st is not None and storable_name(rel):
                seen[rel] = st
    out = RebuildPreview(mode, exists, on_disk=len(seen))
    out.new = sum(1 for rel in seen if rel not in known)
    if mode == "all" or not exists:
        out.to_read = len(seen)
        out.to_remove = sum(1 for rel in known if rel not in seen)
    elif mode == "missing":
        out.to_read = sum(1 for rel in seen if rel not in known or not known[rel][3])
        out.unchanged = len(seen) - out.to_read
    else:
        changed = sum(1 for rel, st in seen.items() if rel in known and (
            not known[rel][3] or known[rel][1] != st.st_size or known[rel][2] != st.st_mtime_ns))
        out.to_read = out.new + changed
        out.unchanged = len(seen) - out.to_read
        out.to_remove = sum(1 for rel in known if rel not in seen)
    return out


def preview_store(archive, paths: list[str]) -> StorePreview:
    """Each file's header read, its place in the archive worked out; nothing written."""
    from .dicomread import ReadSpec, read_header
    from .errors import DicomFileError
    from .store import _files_under, _Placer
    data = Path(archive.data_dir)
    if not data.is_dir():
        raise data_dir_error(data)
    out = StorePreview()
    spec = ReadSpec.from_schema(archive.schema)
    conn, _ = _connection(archive)
    with closing(conn):
        placer = _Placer(conn, archive.schema, data)
        checker = LinkChecker(conn, archive.schema)
        for shown, path in _files_under(paths):
            if not path.is_file():
                out.bad.append(BadFile(shown, "no such file" if not path.exists()
                                       else "not a regular file"))
                continue
            try:
                record = read_header(path, shown, spec)
                _, rel = placer.destination(record)
            except DicomFileError as exc:
                out.bad.append(BadFile(shown, exc.message))
                continue
            conflict = checker.check(record)
            if conflict is not None:
                out.bad.append(BadFile(shown, conflict))
                continue
            checker.note(record)
            out.stored.append((shown, rel, placer.previous(record.sop_uid) is not None))
    return out
