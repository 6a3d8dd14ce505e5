"""HTTP limits on the wire (SPEC §7): a request's header block is at most 16 KiB and must
arrive within 10 s.

uvicorn's httptools protocol has neither limit: one request with a 96 MB header cost
seconds of CPU and hundreds of MB while every other client waited, and a client sending
its headers a byte at a time (slowloris) held its connection for as long as it liked.
:class:`LimitedHttpToolsProtocol` is that protocol with both limits, checked where the
bytes arrive, before the parser has buffered more than one read past the limit and before
the application sees the request:

* **Size.** Bytes received since the request began are counted until its header block is
  complete. When they pass 16 KiB while the block is still incomplete, or when a block
  completes and its request line and headers add up to more, hookd answers ``431`` in the
  SPEC error shape and closes the connection.
* **Time.** From the moment a connection opens, and again from each response, the client
  has 10 s to send a complete header block. If it has not, hookd answers ``408`` (when part
  of a request came) and closes the connection, within half a second of the deadline (one
  sweep over the server's connections twice a second); an idle keep-alive connection is
  closed earlier by uvicorn's own keep-alive timeout.

The cost per request is a byte count per read and a clock reading per response; it was
chosen over h11's limits (h11 parses in Python: far slower) and over a timer per request by
counting instructions (README, "Design decisions").
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hookd.errors import ApiError
from hookd.settings import DEFAULT_API_VERSION

__all__ = ["HEADER_TIMEOUT", "MAX_HEADER_BYTES", "LimitedHttpToolsProtocol"]

MAX_HEADER_BYTES = 16 * 1024
HEADER_TIMEOUT = 10.0
_NEVER = float("inf")
# What a request line adds to the URL and the version: "GET ", " HTTP/1.1\r\n" and the
# blank line ending the block. Each header adds ": " and "\r\n".
_LINE_OVERHEAD = 24
_HEADER_OVERHEAD = 4


def _error_bytes(error: ApiError) -> bytes:
    body = orjson.dumps(error.body())
    head = (
        f"HTTP/1.1 {error.status} {_PHRASES[error.status]}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"featurebase-version: {DEFAULT_API_VERSION}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_PHRASES = {408: "Request Timeout", 431: "Request Header Fields Too Large"}
_TOO_LARGE = _error_bytes(
    ApiError(
        431,
        "headers_too_large",
        f"The request line and headers are over {MAX_HEADER_BYTES // 1024} KiB; send less.",
    )
)
_TOO_SLOW = _error_bytes(
    ApiError(
        408,
        "request_timeout",
        f"The request's headers did not arrive within {HEADER_TIMEOUT:g} s.",
    )
)


def _sweep(server_state: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Every :data:`_SWEEP_EVERY` s: cut off the connections of this server whose header
    block is late. One timer per server, not one per request: a request then costs a clock
    reading, not a timer armed and cancelled."""
    now = loop.time()
    for connection in list(server_state.connections):
        if (
            isinstance(connection, LimitedHttpToolsProtocol)
            and connection._in_head
            and connection._head_deadline < now
        ):
            connection._head_timed_out()
    server_state._hookd_sweeper = loop.call_later(_SWEEP_EVERY, _sweep, server_state, loop)


_SWEEP_EVERY = 0.5


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with SPEC §7's header size and header time limits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._head_deadline = 0.0
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_deadline = self.loop.time() + HEADER_TIMEOUT
        if getattr(self.server_state, "_hookd_sweeper", None) is None:
            self.server_state._hookd_sweeper = self.loop.call_later(  # type: ignore[attr-defined]
                _SWEEP_EVERY, _sweep, self.server_state, self.loop
            )

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._in_head:
            super().data_received(data)
            return
        self._head_bytes += len(data)
        super().data_received(data)
        # Still no end of the header block, and already too many bytes for one.
        if self._in_head and self._head_bytes > MAX_HEADER_BYTES and not self._refused:
            self._refuse(_TOO_LARGE)

    def on_headers_complete(self) -> None:
        # The read that completed the block may also hold body bytes: measure the block
        # itself, but only when the count says it might be too large.
        if self._head_bytes > MAX_HEADER_BYTES and self._head_size() > MAX_HEADER_BYTES:
            self._refuse(_TOO_LARGE)
            return
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        # What comes next on this connection is the next request's header block, counted
        # from now (a pipelined one must not slip past the size limit) and timed from the
        # response (below); until then the deadline cannot pass.
        self._in_head = True
        self._head_bytes = 0
        self._head_deadline = _NEVER

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._head_deadline = self.loop.time() + HEADER_TIMEOUT

    def _head_size(self) -> int:
        return (
            len(self.url)
            + _LINE_OVERHEAD
            + sum(len(name) + len(value) + _HEADER_OVERHEAD for name, value in self.headers)
        )

    def _head_timed_out(self) -> None:
        if self.transport.is_closing():
            return
        if self._head_bytes:
            self._refuse(_TOO_SLOW)
        else:
            self._refused = True
            self.transport.close()

    def _refuse(self, response: bytes) -> None:
        self._refused = True
        self.transport.write(response)
        self.transport.close()
