"""HTTP limits on the wire (SPEC §7, hookd/limits.py), against a real ``hookd serve``: a
header block over 16 KiB gets ``431`` at once, one not complete within 10 s gets ``408`` and
the connection closed, and neither holds up other clients."""

from __future__ import annotations

import concurrent.futures
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.processes import HookdProcess, HookdProcesses

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HookdProcess]:
    where = tmp_path_factory.mktemp("limits")
    with HookdProcesses(where) as procs:
        yield procs.start("serve", database_url=f"sqlite:///{where / 'hookd.db'}")


def _connect(server: HookdProcess) -> socket.socket:
    assert server.port is not None
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return received
        if not chunk:
            return received
        received += chunk


def _error(response: bytes, status: int, code: str) -> None:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), response[:300]
    assert b"content-type: application/json" in head.lower(), head
    error = orjson.loads(body)["error"]
    assert (error["status"], error["code"], error["type"]) == (
        status,
        code,
        "invalid_request_error",
    ), error


def _rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _huge_header(server: HookdProcess) -> tuple[bytes, int]:
    """Send a request whose one header is 96 MB; returns the answer and the bytes sent."""
    sock = _connect(server)
    sent = 0
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: hookd\r\nX-Padding: ")
        chunk = b"a" * MiB
        for _ in range(96):
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        return _read_all(sock), sent
    finally:
        sock.close()


def test_a_96_mb_header_is_refused_at_once_while_others_are_served(
    server: HookdProcess,
) -> None:
    before = _rss_peak_kib(server.pid)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        huge = pool.submit(_huge_header, server)
        with httpx.Client() as client:
            # Served meanwhile (if the refusal is not already there) and right after.
            while not huge.done():
                assert client.get(server.url("/healthz"), timeout=10).status_code == 200
            assert client.get(server.url("/healthz"), timeout=10).status_code == 200
        response, sent = huge.result()
    _error(response, 431, "headers_too_large")
    assert sent < 96 * MiB, "hookd stopped reading long before the 96 MB were sent"
    grown = (_rss_peak_kib(server.pid) - before) / 1024
    assert grown < 32, f"hookd's memory grew by {grown:.0f} MiB for a refused request"


def _request_with_headers(server: HookdProcess, size: int) -> bytes:
    sock = _connect(server)
    try:
        padding = b"p" * size
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: hookd\r\nConnection: close\r\nX-Padding: "
            + padding
            + b"\r\n\r\n"
        )
        return _read_all(sock)
    finally:
        sock.close()


def test_the_limit_is_16_kib_of_request_line_and_headers(server: HookdProcess) -> None:
    assert _request_with_headers(server, 15 * 1024).startswith(b"HTTP/1.1 200 "), (
        "a 15 KiB header block is served"
    )
    _error(_request_with_headers(server, 17 * 1024), 431, "headers_too_large")
    # Many small headers count as much as one big one.
    sock = _connect(server)
    try:
        headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(200))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: hookd\r\n" + headers + b"\r\n")
        _error(_read_all(sock), 431, "headers_too_large")
    finally:
        sock.close()


def _slowloris(server: HookdProcess) -> tuple[bytes, float]:
    """Send a request's headers a byte every half second; returns what came back and when."""
    sock = _connect(server)
    started = time.monotonic()
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: hookd\r\n")
        sock.settimeout(0.5)
        received = b""
        for byte in b"X-Slow: " + b"s" * 60:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        return received, time.monotonic() - started
    finally:
        sock.close()


def _silent(server: HookdProcess) -> tuple[bytes, float]:
    sock = _connect(server)
    started = time.monotonic()
    try:
        return _read_all(sock), time.monotonic() - started
    finally:
        sock.close()


def test_a_client_that_sends_its_headers_too_slowly_is_disconnected(
    server: HookdProcess,
) -> None:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(_slowloris, server)
        silent = pool.submit(_silent, server)
        with httpx.Client() as client:
            assert client.get(server.url("/healthz"), timeout=10).status_code == 200
        response, slow_after = slow.result()
        nothing, silent_after = silent.result()
    _error(response, 408, "request_timeout")
    assert slow_after < 25, "the slow client was cut off, not served for as long as it sent"
    assert nothing == b"", "a connection that never sent anything is closed without a word"
    assert silent_after < 25
