"""conquest-run serve against hostile peers (issue 15): connect-and-close, silent and dripping
connections, huge PDU lengths and association requests.  Raw sockets against the real CLI in a
subprocess; its memory read from /proc."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from _net_support import free_port, require, stop, wait_port

pytestmark = pytest.mark.timeout(90)
ECHOSCU = "/usr/bin/echoscu"


@contextmanager
def serve(tmp: Path, *extra: str) -> Iterator[tuple[subprocess.Popen, int]]:
    port = free_port()
    log = (tmp / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "conquest_run", "serve", "--port", str(port),
                             "--data", str(tmp / "data"), "--database", str(tmp / "conquest.db"),
                             *extra], stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_port(port, proc)
        yield proc, port
    finally:
        stop(proc)
        log.close()


def log_of(tmp: Path) -> str:
    return (tmp / "serve.log").read_text()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def closed_within(sock: socket.socket, seconds: float, drip: bytes = b"") -> float:
    """Seconds until the peer closes ``sock`` (dripping ``drip`` every 0.2 s meanwhile)."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < seconds:
        try:
            if drip:
                sock.sendall(drip)
            if sock.recv(100) == b"":
                return time.monotonic() - started
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - started
    raise AssertionError(f"still open after {seconds} s")


def echoscu(port: int) -> tuple[subprocess.CompletedProcess, float]:
    require(ECHOSCU)
    started = time.monotonic()
    done = subprocess.run([ECHOSCU, "-aec", "CONQUEST", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30)
    return done, time.monotonic() - started


def associate_rq(contexts: int) -> bytes:
    """A well-formed A-ASSOCIATE-RQ PDU proposing ``contexts`` presentation contexts."""
    def item(kind: int, value: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(value)) + value

    body = [item(0x10, b"1.2.840.10008.3.1.1.1")]
    for n in range(contexts):
        cid = (2 * n + 1) % 256
        body.append(item(0x20, struct.pack(">BBBB", cid, 0, 0, 0)
                         + item(0x30, b"1.2.840.10008.5.1.4.1.1.2")
                         + item(0x40, b"1.2.840.10008.1.2")))
    body.append(item(0x50, item(0x51, struct.pack(">L", 16384))
                     + item(0x52, b"1.2.3.4")))
    variable = struct.pack(">HH16s16s32x", 1, 0, b"CONQUEST".ljust(16), b"HOSTILE".ljust(16)) \
        + b"".join(body)
    return struct.pack(">BBL", 1, 0, len(variable)) + variable


def test_connect_and_close_does_not_lock_peers_out(tmp_path):
    with serve(tmp_path) as (proc, port):
        for _ in range(10):
            socket.create_connection(("127.0.0.1", port)).close()
        done, seconds = echoscu(port)
    assert done.returncode == 0, done.stderr
    assert seconds < 1.0


def test_max_associations_is_an_option_and_setup_time_is_bounded(tmp_path):
    with serve(tmp_path, "--max-associations", "2", "--acse-timeout", "1") as (proc, port):
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        time.sleep(0.3)
        done, _ = echoscu(port)                 # two silent peers hold the two slots
        assert "Local Limit Exceeded" in done.stdout + done.stderr
        for sock in silent:                     # ARTIM: closed within the ACSE timeout
            assert closed_within(sock, 3.0) < 3.0
            sock.close()
        done, seconds = echoscu(port)
    assert done.returncode == 0, done.stderr
    assert seconds < 1.0


def test_a_dripping_connection_is_dropped_within_the_acse_timeout(tmp_path):
    with serve(tmp_path, "--acse-timeout", "1") as (proc, port):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(struct.pack(">BBL", 1, 0, 1000))     # a plausible request, then a drip
        assert closed_within(sock, 4.0, drip=b"\0") < 3.0
        sock.close()
        done, seconds = echoscu(port)
        assert done.returncode == 0 and seconds < 1.0
    assert "no complete A-ASSOCIATE-RQ within the ACSE timeout" in log_of(tmp_path)


def test_a_huge_pdu_length_is_refused_at_once_without_buffering(tmp_path):
    with serve(tmp_path) as (proc, port):
        time.sleep(0.5)
        before = rss_kb(proc.pid)
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(struct.pack(">BBL", 1, 0, 0xFFFFFFFF))
        started, sent = time.monotonic(), 0
        with pytest.raises(OSError):
            while sent < 300 * 1024 * 1024:
                sock.sendall(b"\0" * (1024 * 1024))
                sent += 1024 * 1024
        assert time.monotonic() - started < 5.0
        sock.close()
        time.sleep(0.3)
        grown = rss_kb(proc.pid) - before
        done, seconds = echoscu(port)
        assert done.returncode == 0 and seconds < 1.0
    assert grown < 20 * 1024, f"serve grew by {grown} kB"
    assert sent < 50 * 1024 * 1024
    assert "an association request of 4,294,967,295 bytes refused" in log_of(tmp_path)


def test_a_huge_association_request_is_refused_at_once(tmp_path):
    request = associate_rq(20000)              # ~1.4 MB, well-formed
    with serve(tmp_path) as (proc, port):
        time.sleep(0.5)
        before = rss_kb(proc.pid)
        started = time.monotonic()
        sock = socket.create_connection(("127.0.0.1", port))
        with pytest.raises(OSError):
            sock.sendall(request)
            sock.settimeout(5)
            if sock.recv(100) == b"":
                raise ConnectionResetError("closed")
        assert time.monotonic() - started < 2.0
        sock.close()
        grown = rss_kb(proc.pid) - before
    assert grown < 20 * 1024, f"serve grew by {grown} kB"
    assert "association request of 1," in log_of(tmp_path)


def test_more_than_128_presentation_contexts_are_rejected(tmp_path):
    request = associate_rq(1000)               # under the byte cap, over DICOM's 128
    assert len(request) < 128 * 1024
    with serve(tmp_path) as (proc, port):
        started = time.monotonic()
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(request)
        sock.settimeout(5)
        answer = sock.recv(100)
        sock.close()
        assert time.monotonic() - started < 2.0
    assert answer[:1] == b"\x03"               # A-ASSOCIATE-RJ
    assert "1,000 presentation contexts refused" in log_of(tmp_path)
