"""The C-MOVE destinations ``serve`` knows: ``--node AE=HOST:PORT`` and ``--nodes FILE``.

``FILE`` is either YAML with a ``nodes:`` map in the form a job uses
(``NAME: {host: H, port: P, called_ae: AE}``; the destination is looked up by ``called_ae``)
or Conquest's ``ACRNEMA.MAP`` (``AE  HOST  PORT  [compression]`` rows, ``/* ... */`` comments),
including its wildcard rows: ``*`` and ``?`` in the AE title, and ``*`` as the host meaning
"the address the request came from".  The first row that matches wins, ``--node`` before the
file's rows.  The compression column is read and ignored: files go as stored.
"""

from __future__ import annotations

__all__ = ["Node", "Nodes", "parse_node", "read_nodes_file"]

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConquestRunError
from .settings import ae_title_problem

CALLER = "*"          # an ACRNEMA.MAP host: the address of the peer asking


@dataclass(frozen=True)
class Node:
    ae: str                 # an AE title, or a pattern with * and ? (ACRNEMA.MAP rows)
    host: str               # a host, or CALLER
    port: int
    where: str = ""         # where it was declared (for messages)

    def matches(self, ae: str) -> bool:
        if "*" in self.ae or "?" in self.ae:
            return fnmatch.fnmatchcase(ae, self.ae.replace("[", "[[]"))
        return ae == self.ae


@dataclass(frozen=True)
class Nodes:
    rows: tuple[Node, ...] = ()

    def lookup(self, ae: str, caller: str = "") -> tuple[str, int] | None:
        """(host, port) of the destination AE title ``ae``; None when unknown."""
        ae = ae.strip()
        for node in self.rows:
            if node.matches(ae):
                host = caller if node.host == CALLER else node.host
                return (host, node.port) if host else None
        return None

    def __add__(self, other: "Nodes") -> "Nodes":
        return Nodes(self.rows + other.rows)


def _port(text: str, where: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise ConquestRunError(f"{where}: the port {text!r} is not a number from 1 to 65535")
    return int(text)


def _ae(text: str, where: str, pattern: bool = False) -> str:
    problem = ae_title_problem(text)
    if problem:
        raise ConquestRunError(f"{where}: the AE title {text!r} {problem}")
    if not pattern and ("*" in text or "?" in text):
        raise ConquestRunError(f"{where}: the AE title {text!r} has a wildcard (only "
                               "ACRNEMA.MAP rows may)")
    return text


def parse_node(text: str) -> Node:
    """``AE=HOST:PORT`` (``--node``)."""
    where = f"--node {text}"
    ae, sep, address = text.partition("=")
    host, colon, port = address.rpartition(":")
    if not sep or not colon or not host or not ae:
        raise ConquestRunError(f"{where}: expected AE=HOST:PORT, e.g. STORESCP=127.0.0.1:11113")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return Node(_ae(ae.strip(), where), host.strip(), _port(port.strip(), where), where)


def read_nodes_file(path: str | Path) -> Nodes:
    """A YAML ``nodes:`` map, or an ``ACRNEMA.MAP`` (told apart by a ``nodes:`` key)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConquestRunError(f"{path}: cannot read the nodes file: "
                               f"{exc.strerror or exc}") from None
    if re.search(r"^nodes\s*:", text, re.MULTILINE):
        return _yaml_nodes(path)
    return _acrnema_map(text, str(path))


def _yaml_nodes(path: Path) -> Nodes:
    from ..errors import JobError
    from ..source import load_source

    try:
        source = load_source(path)
    except JobError as exc:
        raise ConquestRunError(str(exc)) from None
    data = source.data
    nodes = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(nodes, dict):
        raise ConquestRunError(f"{path}: nodes: must be a map of NAME: {{host, port, "
                               "called_ae}}")
    rows = []
    for name, node in nodes.items():
        where = _located(source, path, ("nodes", name), f"nodes.{name}")
        if not isinstance(node, dict):
            raise ConquestRunError(f"{where}: expected {{host, port, called_ae}}")
        missing = [k for k in ("host", "port", "called_ae") if k not in node]
        if missing:
            raise ConquestRunError(f"{where}: nodes.{name} needs {', '.join(missing)}")
        unknown = sorted(set(node) - {"host", "port", "called_ae", "calling_ae"})
        if unknown:
            raise ConquestRunError(f"{where}: nodes.{name}: unknown key {unknown[0]!r}")
        host, port, ae = node["host"], node["port"], node["called_ae"]
        if not isinstance(host, str) or not host.strip():
            raise ConquestRunError(f"{where}: nodes.{name}.host must be a host name or address")
        if isinstance(port, bool) or not isinstance(port, int):
            raise ConquestRunError(f"{where}: nodes.{name}.port must be a whole number")
        if not isinstance(ae, str):
            raise ConquestRunError(f"{where}: nodes.{name}.called_ae must be text")
        rows.append(Node(_ae(ae, where), host.strip(), _port(str(port), where), where))
    return Nodes(tuple(rows))


def _located(source, path: Path, key: tuple, fallback: str) -> str:
    pos = source.keys.get(key) if hasattr(source, "keys") else None
    if pos is not None and hasattr(pos, "line"):
        return f"{path}:{pos.line}:{pos.column}"
    return f"{path}: {fallback}"


def _acrnema_map(text: str, name: str) -> Nodes:
    """Rows ``AE HOST PORT [compression]``; ``/* */`` block comments and ``#`` lines skipped."""
    rows = []
    in_comment = False
    for number, line in enumerate(text.splitlines(), 1):
        out = ""
        rest = line
        while rest:
            if in_comment:
                end = rest.find("*/")
                if end < 0:
                    rest = ""
                else:
                    in_comment, rest = False, rest[end + 2:]
            else:
                start = rest.find("/*")
                if start < 0:
                    out, rest = out + rest, ""
                else:
                    out, rest, in_comment = out + rest[:start], rest[start + 2:], True
        fields = out.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{name}:{number}"
        if len(fields) < 3:
            raise ConquestRunError(f"{where}: expected AE HOST PORT [compression], not "
                                   f"{out.strip()!r}")
        ae, host, port = fields[:3]
        if host != CALLER and ("*" in host or "?" in host):
            raise ConquestRunError(f"{where}: the host {host!r}: only a lone * (the address "
                                   "of the peer asking) is understood")
        rows.append(Node(_ae(ae, where, pattern=True), host, _port(port, where), where))
    return Nodes(tuple(rows))
