"""YAML with positions: ``yaml.safe_load`` semantics, plus where every key and value was written.

The document is composed into PyYAML's node tree with ``SafeLoader`` and the Python values are
built here, so that

* every key and value keeps its line and column (``Source.key_at`` / ``Source.value_at``, 1-based,
  addressed by a JSON path such as ``("steps", 0, "select", "patient")``);
* a key written twice in one mapping is refused at the second one (PyYAML silently keeps the last);
* a scalar that YAML resolved to a number, boolean, date or null keeps its original text, so a
  message can say ``quote it: "00123"``;
* anchors, aliases and ``<<`` merge keys work as with ``safe_load``.

Syntax errors come out as ``JobError`` located ``file:line:col``.
"""

from __future__ import annotations

__all__ = ["Source", "Position", "ScalarInfo", "load_source", "parse_source", "PathKey",
           "is_device"]

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import JobError

PathKey = tuple[Union[str, int], ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"
# deeper than any job needs, shallow enough for every later recursive stage (schema, JSON)
MAX_DEPTH = 64
# values an alias may repeat, over the whole document: a job reuses a few small blocks; an
# "alias bomb" (aliases of aliases) repeats millions
MAX_ALIAS_VALUES = 1000
_STR_TAG = "tag:yaml.org,2002:str"


@dataclass(frozen=True)
class Position:
    line: int      # 1-based
    column: int    # 1-based
    index: int     # 0-based character offset in the text


@dataclass(frozen=True)
class ScalarInfo:
    """How a scalar value was written: its exact source text and YAML style."""

    text: str               # the scalar as YAML read it (before type resolution)
    tag: str                # the resolved tag (tag:yaml.org,2002:int, ...)
    style: str | None       # None (plain), "'", '"', "|", ">"
    start: Position         # where the node starts (the quote or block indicator included)
    end: Position           # just after the node


@dataclass(frozen=True)
class Source:
    """A parsed YAML document with the position of each key and value."""

    path: str                                   # as the user named it, for messages
    text: str
    sha256: str                                 # of the file bytes
    data: Any
    keys: dict[PathKey, Position] = field(repr=False)
    values: dict[PathKey, Position] = field(repr=False)
    scalars: dict[PathKey, ScalarInfo] = field(repr=False)

    def value_at(self, path: PathKey) -> Position:
        """Where the value at ``path`` starts (the closest known ancestor if unknown)."""
        return self._closest(self.values, path)

    def key_at(self, path: PathKey) -> Position:
        """Where the key of ``path`` is written (its value for list items and the root)."""
        path = tuple(path)
        if path in self.keys:
            return self.keys[path]
        return self._closest(self.values, path)

    def _closest(self, table: dict[PathKey, Position], path: PathKey) -> Position:
        path = tuple(path)
        while path not in table and path:
            path = path[:-1]
        return table.get(path, Position(1, 1, 0))

    def error(self, message: str, pos: Position) -> JobError:
        return JobError(message, file=self.path, line=pos.line, column=pos.column)

    def locate_in_scalar(self, path: PathKey, value: str, offset: int) -> Position:
        """Where character ``offset`` of the string scalar at ``path`` was written.

        Aligns the value with its source text (block ``|``/``>``, quoted or plain, on one or
        several lines): each non-blank character of the value is found in order in the source,
        which skips indentation, folding and quote escapes well enough to point at a token.
        """
        info = self.scalars.get(tuple(path))
        if info is None:
            return self.value_at(path)
        text, i, end = self.text, info.start.index, info.end.index
        if info.style in ("|", ">"):
            newline = text.find("\n", i, end)
            i = end if newline < 0 else newline + 1
        elif info.style in ("'", '"'):
            i += 1
        offset = max(0, min(offset, len(value)))
        for k, ch in enumerate(value):
            if ch in " \t\r\n":
                if k == offset:
                    break
                if i < end and text[i] in " \t\r\n":
                    i += 1
                continue
            found = text.find(ch, i, end)
            if found < 0:
                break
            if k == offset:
                i = found
                break
            i = found + 1
        return self.position_of_index(i)

    def position_of_index(self, index: int) -> Position:
        """Line and column of a character offset in the text."""
        index = max(0, min(index, len(self.text)))
        line = self.text.count("\n", 0, index) + 1
        col = index - (self.text.rfind("\n", 0, index) + 1) + 1
        return Position(line, col, index)


def _pos(mark: Any) -> Position:
    return Position(mark.line + 1, mark.column + 1, mark.index)


def _yaml_error(exc: yaml.MarkedYAMLError, path: str) -> JobError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "invalid YAML"
    message = f"YAML syntax error: {problem}"
    if "'\\t'" in problem:
        message += " (indent with spaces, not tabs)"
    if exc.context and exc.problem and problem.startswith("but "):
        message = f"YAML syntax error: {exc.context} {problem}"
    elif exc.context and exc.problem and exc.context_mark is not None and exc.problem_mark is not None:
        message = (f"YAML syntax error: {problem} ({exc.context} at line "
                   f"{exc.context_mark.line + 1}, column {exc.context_mark.column + 1})")
    if mark is None:
        return JobError(message, file=path)
    return JobError(message, file=path, line=mark.line + 1, column=mark.column + 1)


def _reader_error(exc: yaml.reader.ReaderError, text: str, path: str) -> JobError:
    """A character YAML does not accept (a control character), located."""
    index = max(0, min(exc.position, len(text)))
    line = text.count("\n", 0, index) + 1
    col = index - (text.rfind("\n", 0, index) + 1) + 1
    char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "?")
    return JobError(f"YAML does not allow the control character U+{char:04X} here; remove it "
                    "(inside double quotes it can be written as an escape such as \\x1b)",
                    file=path, line=line, column=col)


class _Builder:
    """Python values from composed nodes, recording positions on the way."""

    def __init__(self, loader: yaml.SafeLoader, path: str) -> None:
        self.loader = loader
        self.path = path
        self.keys: dict[PathKey, Position] = {}
        self.values: dict[PathKey, Position] = {}
        self.scalars: dict[PathKey, ScalarInfo] = {}
        self._active: set[int] = set()
        self._built: set[int] = set()
        self._repeated = 0

    def _count_repeat(self, node: Node, path: PathKey) -> None:
        """Count a node built a second time (through an alias); refuse past the budget."""
        if id(node) not in self._built:
            self._built.add(id(node))
            return
        self._repeated += 1
        if self._repeated > MAX_ALIAS_VALUES:
            where = tuple(path)
            while where and where not in self.keys:
                where = where[:-1]
            pos = self.keys.get(where, _pos(node.start_mark))
            raise JobError(f"YAML aliases here repeat more than {MAX_ALIAS_VALUES} values in "
                           "all (aliases of aliases multiply); write the values out or use "
                           "fewer aliases", file=self.path, line=pos.line, column=pos.column)

    def build(self, node: Node, path: PathKey) -> Any:
        self._count_repeat(node, path)
        self.values.setdefault(path, _pos(node.start_mark))
        if len(path) > MAX_DEPTH:
            raise JobError(f"the YAML is nested more than {MAX_DEPTH} levels deep",
                           file=self.path, line=node.start_mark.line + 1,
                           column=node.start_mark.column + 1)
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if id(node) in self._active:
            raise JobError("a YAML alias refers to the node that contains it (recursive alias)",
                           file=self.path, line=node.start_mark.line + 1,
                           column=node.start_mark.column + 1)
        self._active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
        finally:
            self._active.discard(id(node))
        raise JobError(f"unsupported YAML node {node.tag}", file=self.path,
                       line=node.start_mark.line + 1, column=node.start_mark.column + 1)

    def _scalar(self, node: ScalarNode, path: PathKey) -> Any:
        try:
            value = self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            raise _yaml_error(exc, self.path) from None
        self.scalars[path] = ScalarInfo(node.value, node.tag, node.style,
                                        _pos(node.start_mark), _pos(node.end_mark))
        return value

    def _key(self, node: Node) -> Any:
        if not isinstance(node, ScalarNode):
            raise JobError("a mapping key must be a plain value, not a list or mapping",
                           file=self.path, line=node.start_mark.line + 1,
                           column=node.start_mark.column + 1)
        try:
            key = self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            raise _yaml_error(exc, self.path) from None
        if not isinstance(key, str):
            # keys are names: keep the text as written (``1: x`` has key "1")
            key = node.value
        return key

    def _mapping(self, node: MappingNode, path: PathKey) -> dict:
        out: dict[Any, Any] = {}
        merged: dict[Any, Any] = {}
        seen: dict[Any, Position] = {}
        explicit: dict[Any, Position] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                for source in self._merge_sources(value_node, path):
                    for k, v in source.items():
                        merged.setdefault(k, v)
                continue
            key = self._key(key_node)
            kpos = _pos(key_node.start_mark)
            if key in seen:
                first = seen[key]
                raise JobError(f"duplicate key {key!r} (first written at line {first.line}, "
                               f"column {first.column})", file=self.path, line=kpos.line,
                               column=kpos.column)
            seen[key] = kpos
            self.keys[path + (key,)] = kpos
            out[key] = self.build(value_node, path + (key,))
            explicit[key] = _pos(value_node.start_mark)
        for k, v in merged.items():
            out.setdefault(k, v)
        # keys written here win over merged ones, for their positions too
        for key, kpos in seen.items():
            self.keys[path + (key,)] = kpos
            self.values[path + (key,)] = explicit[key]
        return out

    def _merge_sources(self, node: Node, path: PathKey) -> list[dict]:
        nodes = node.value if isinstance(node, SequenceNode) else [node]
        sources = []
        for n in nodes:
            if not isinstance(n, MappingNode):
                raise JobError("a << merge key needs a mapping (or a list of mappings)",
                               file=self.path, line=n.start_mark.line + 1,
                               column=n.start_mark.column + 1)
            # positions of merged values are those of the anchor: record them under this path
            sources.append(self._mapping(n, path))
        return sources


def parse_source(text: str, path: str = "<string>", *, sha256: str | None = None) -> Source:
    """Parse one YAML document (``safe_load`` semantics) keeping node positions."""
    if sha256 is None:
        sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:
        raise _reader_error(exc, text, path) from None
    try:
        try:
            node = loader.get_single_node()
        except yaml.reader.ReaderError as exc:
            raise _reader_error(exc, text, path) from None
        except yaml.MarkedYAMLError as exc:
            raise _yaml_error(exc, path) from None
        except yaml.YAMLError as exc:
            raise JobError(f"YAML error: {exc}", file=path) from None
        except RecursionError:
            mark = loader.get_mark()
            raise JobError(f"the YAML is nested too deeply (more than {MAX_DEPTH} levels are "
                           "never needed)", file=path, line=mark.line + 1,
                           column=mark.column + 1) from None
        builder = _Builder(loader, path)
        data = None if node is None else builder.build(node, ())
    finally:
        loader.dispose()
    return Source(path, text, sha256, data, builder.keys if node is not None else {},
                  builder.values if node is not None else {},
                  builder.scalars if node is not None else {})


def is_device(path: str | Path) -> bool:
    """A character or block device (/dev/zero, a disk): reading it may never end.  A pipe
    (``/dev/stdin`` fed by one) is read to its end like a file."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def load_source(path: str | Path, *, display: str | None = None) -> Source:
    """Read and parse a YAML file; ``display`` is the name used in messages (default: ``path``)."""
    shown = display if display is not None else str(path)
    if is_device(path):
        raise JobError("a device, not a file (it could be read forever)", file=shown)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise JobError("job file not found", file=shown) from None
    except OSError as exc:
        raise JobError(f"cannot read the job file: {exc.strerror or exc}", file=shown) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise JobError(f"not UTF-8 text (byte {exc.start})", file=shown) from None
    return parse_source(text, shown, sha256=hashlib.sha256(raw).hexdigest())
