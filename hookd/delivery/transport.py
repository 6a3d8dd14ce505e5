"""hookd's HTTP/1.1 client for attempts: one POST, its answer, and a pool of keep-alive
connections, on an asyncio protocol with httptools' C parser.

Why not aiohttp's client, which hookd used until now: an attempt needs a small part of what
a general-purpose client does per request (URL objects, case-insensitive header multidicts,
payload objects, stream readers, cookie and redirect handling, its own timers), and on this
path that part was most of hookd's CPU per delivery. Against the same nginx, in the same
run, the raw aiohttp sender of ``bench/baseline.py`` needed 212 µs of CPU per signed POST
and this client's loop 77 to 87 µs (``bench/README.md``, "The delivery client").

What it does, and nothing more:

* Connections go only where :class:`~hookd.delivery.guard.AddressGuard` allows: the host is
  resolved through the guard and the socket connects to exactly the addresses it returned,
  so nothing resolves the name a second time. They are tried with the families taking
  turns (IPv6 and IPv4, the resolver's first family first), the next one starting beside
  the last after 250 ms (Happy Eyeballs, RFC 8305). TLS verifies the host's
  name (``server_hostname``) with the system's authorities or the context given.
* Idle connections are kept per ``(scheme, host, port)`` for ``keepalive`` seconds and reused
  while the receiver keeps them alive (``Connection: close``, HTTP/1.0 without keep-alive,
  a body beyond the cap or an unread one end them). At most ``limit`` connections are open;
  a new one closes the longest-idle connection of another host first, or waits for one.
* A reused connection that the receiver had already closed (the request went out, nothing
  came back) is retried once on a new connection: the receiver saw nothing, or at most a
  request it will see again anyway (delivery is at least once).
* Redirects are never followed (the caller records a 3xx as such); at most ``max_body``
  bytes of a response body are kept, and at most ``MAX_HEAD`` bytes of status line and
  headers are accepted.
* TLS connections are aborted rather than closed: waiting for the receiver's
  ``close_notify`` held a socket up to 30 s after every attempt, so one tenant could run
  hookd out of file descriptors.

The caller bounds each attempt in time: ``post(..., deadline=)`` (a time of the loop's
clock) covers DNS, connecting, TLS, the request and its answer. On a reused connection that
is one timer on the answer's future rather than an ``asyncio.timeout`` around the request
(which costs more per request than anything else the client does); a new connection is
made under ``asyncio.timeout_at``. Either way the attempt ends with :class:`TimeoutError`.
A connection whose request timed out or was cancelled is closed, never reused.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import ssl
import time
from collections.abc import Sequence

import httptools
import yarl

from hookd.delivery.guard import AddressGuard, IPAddress

__all__ = [
    "MAX_HEAD",
    "BadResponse",
    "ConnectFailed",
    "HttpTransport",
    "Response",
    "ServerDisconnected",
    "interleaved",
]

_Key = tuple[str, str, int]  # scheme, host (as sent: IDNA-encoded), port
# The most a status line and headers may take (aiohttp's default limits allow 8 KiB a line).
MAX_HEAD = 65536
# How long a connection attempt runs alone before the next address starts beside it.
_STAGGER = 0.25


class ConnectFailed(OSError):
    """No address of the host accepted a connection; ``os_error`` is the last refusal."""

    def __init__(self, host: str, port: int, os_error: OSError) -> None:
        super().__init__(os_error.errno, os_error.strerror or str(os_error))
        self.host = host
        self.port = port
        self.os_error = os_error


class ServerDisconnected(ConnectionError):
    """The connection ended before a whole answer arrived."""


class BadResponse(Exception):
    """The receiver answered with something that is not HTTP/1.x."""


class Response:
    """An answer: its status, reason phrase, ``Retry-After`` (if sent) and body (capped)."""

    __slots__ = ("body", "reason", "retry_after", "status")

    def __init__(self, status: int, reason: str, retry_after: str | None, body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.retry_after = retry_after
        self.body = body


class _Connection(asyncio.Protocol):
    """One connection, and the parser of the answer it is waiting for."""

    def __init__(self, pool: HttpTransport, key: _Key, tls: bool) -> None:
        self.pool = pool
        self.key = key
        self.tls = tls
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.counted = False  # in the pool's count of open connections, until it ends
        self.idle_since = 0.0
        self.waiter: asyncio.Future[Response] | None = None
        # Bytes beyond the answer arrived with it: the connection cannot be used again.
        self.spoiled = False
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._reason: list[bytes] = []
        self._retry_after: bytes | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._got_data = False
        self._head_size = 0
        self._headers_done = False
        self._informational = False
        self._answered = False
        self.keep_alive = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._got_data = True
        if self.waiter is None:
            # Nothing was asked: whatever this is, the connection cannot be trusted again.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("the receiver switched protocols"))
            return
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"invalid HTTP response: {exc}"))
            return
        if not self._headers_done:
            # The parser keeps a status line and headers whole until they end: bound them,
            # or a receiver could send one endless header until the attempt's deadline.
            self._head_size += len(data)
            if self._head_size > MAX_HEAD:
                self._fail(BadResponse(f"the answer's headers exceed {MAX_HEAD} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._gone(self)
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and not self._informational:
            # An answer whose body runs until the connection ends (no length, not chunked):
            # the end is the end of the body.
            self.keep_alive = False
            self._finish()
            return
        waiter.set_exception(ServerDisconnected())

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._answered:
            self.spoiled = True

    def on_status(self, status: bytes) -> None:
        self._reason.append(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 11 and name.lower() == b"retry-after":
            self._retry_after = value

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        self._status = status
        # 1xx answers (100 Continue, 103 Early Hints) precede the real one.
        self._informational = 100 <= status < 200 and status != 101
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        room = self.pool.max_body - self._size
        if room > 0:
            self._chunks.append(body if len(body) <= room else body[:room])
        self._size += len(body)
        if self._size > self.pool.max_body:
            # Enough of it: the attempt ends here, and the connection with the rest.
            self._finish()

    def on_message_complete(self) -> None:
        if self._informational:
            self._reset()
            self._got_data = True
            return
        # Reusable only if the receiver keeps it alive and the whole body was read.
        self.keep_alive = self._parser.should_keep_alive() and self._size <= self.pool.max_body
        self._finish()

    # the connection's work

    def _finish(self) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        self._answered = True
        reason = b"".join(self._reason).decode("utf-8", "surrogateescape")
        retry_after = self._retry_after
        body = b"".join(self._chunks)
        waiter.set_result(
            Response(
                self._status,
                reason,
                None if retry_after is None else retry_after.decode("latin-1"),
                body,
            )
        )

    def _fail(self, exc: BaseException) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    async def request(self, head: bytes, body: bytes, deadline: float | None = None) -> Response:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Response] = loop.create_future()
        self.waiter = waiter
        timer = None if deadline is None else loop.call_at(deadline, _expire, waiter)
        self._reset()
        self.transport.writelines((head, body))
        try:
            return await waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        transport = self.transport
        if transport is not None:
            if self.tls:
                # No waiting for the receiver's close_notify (see the module docstring).
                transport.abort()
            else:
                transport.close()
        self.pool._gone(self)


class HttpTransport:
    """Sends POSTs over pooled keep-alive connections (see the module docstring)."""

    def __init__(
        self,
        guard: AddressGuard,
        *,
        limit: int = 256,
        keepalive: float = 30.0,
        max_body: int = 4096,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.guard = guard
        self.limit = limit
        self.keepalive = keepalive
        self.max_body = max_body
        self.ssl_context = ssl_context if ssl_context is not None else ssl.create_default_context()
        self._idle: dict[_Key, list[_Connection]] = {}
        self._open = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def post(
        self, url: yarl.URL, headers: dict[str, str], body: bytes, deadline: float | None = None
    ) -> Response:
        """POST ``body`` to ``url`` with ``headers`` (Host and Content-Length are added), by
        ``deadline`` (the loop's time; None: no limit) or raise :class:`TimeoutError`."""
        scheme = url.scheme
        host = url.raw_host
        if scheme not in ("http", "https") or not host:
            raise ValueError(f"Invalid URL: {url}")
        port = url.port or (443 if scheme == "https" else 80)
        # Judged on every request, keep-alive ones included (the verdict is cached).
        self.guard.check_literal(host)
        head = _head(url, host, headers, len(body))
        key = (scheme, host, port)
        conn = self._reuse(key)
        if conn is not None:
            try:
                return await self._exchange(conn, head, body, deadline)
            except ServerDisconnected:
                # The receiver had closed it while it was idle (nothing came back).
                if conn._got_data:
                    raise
        async with asyncio.timeout_at(deadline):  # None: no limit
            conn = await self._connect(key)
        return await self._exchange(conn, head, body, deadline)

    async def _exchange(
        self, conn: _Connection, head: bytes, body: bytes, deadline: float | None
    ) -> Response:
        try:
            response = await conn.request(head, body, deadline)
        except BaseException:
            conn.close()
            raise
        if conn.keep_alive and not conn.closed and not conn.spoiled:
            self._release(conn)
        else:
            conn.close()
        return response

    def _reuse(self, key: _Key) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if not conn.closed and transport is not None and not transport.is_closing():
                if time.monotonic() - conn.idle_since < self.keepalive:
                    return conn
                conn.close()
        return None

    async def _connect(self, key: _Key) -> _Connection:
        await self._room()
        self._open += 1
        try:
            conn = await self._open_connection(key)
            if conn.closed:
                raise ServerDisconnected()
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        conn.counted = True  # from now on it leaves the count when it ends (_gone)
        return conn

    async def _open_connection(self, key: _Key) -> _Connection:
        """A connection to one of the addresses the guard allows for the host, the families
        taking turns from the resolver's first (:func:`interleaved`); when one has not
        connected within ``_STAGGER`` s the next starts beside it and the first to connect
        wins (Happy Eyeballs, RFC 8305), so an address that never answers (an unreachable
        IPv6 route) costs a quarter second, not the attempt."""
        _scheme, host, port = key
        waiting = interleaved(await self.guard.resolve(host, port))
        racing: list[asyncio.Task[_Connection]] = []
        failures: list[OSError] = []
        try:
            while waiting or racing:
                if waiting:
                    racing.append(asyncio.create_task(self._dial(key, str(waiting.pop(0)))))
                done, _ = await asyncio.wait(
                    racing,
                    timeout=_STAGGER if waiting else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in done:
                    racing.remove(task)
                    exc = task.exception()
                    if exc is None:
                        return task.result()
                    if isinstance(exc, ssl.SSLError) or not isinstance(exc, OSError):
                        raise exc
                    failures.append(exc)
            raise ConnectFailed(host, port, failures[-1])
        finally:
            for task in racing:
                task.cancel()
                task.add_done_callback(_close_late_winner)

    async def _dial(self, key: _Key, address: str) -> _Connection:
        scheme, host, port = key
        tls = scheme == "https"
        conn = _Connection(self, key, tls)
        await asyncio.get_running_loop().create_connection(
            lambda: conn,
            address,
            port,
            ssl=self.ssl_context if tls else None,
            server_hostname=host if tls else None,
        )
        return conn

    async def _room(self) -> None:
        while self._open >= self.limit:
            oldest = self._oldest_idle()
            if oldest is not None:
                oldest.close()
                continue
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)

    def _oldest_idle(self) -> _Connection | None:
        oldest: _Connection | None = None
        for idle in self._idle.values():
            for conn in idle:
                if not conn.closed and (oldest is None or conn.idle_since < oldest.idle_since):
                    oldest = conn
        return oldest

    def _release(self, conn: _Connection) -> None:
        if self._closed:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.key, []).append(conn)
        if self._waiting:
            # Someone waits for room: an idle connection is room (it may be closed for them).
            self._wake()
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self.keepalive, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        for key in list(self._idle):
            kept = []
            for conn in self._idle[key]:
                if conn.closed:
                    continue
                if now - conn.idle_since >= self.keepalive:
                    conn.close()
                else:
                    kept.append(conn)
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]
        if self._idle:
            self._sweeper = asyncio.get_running_loop().call_later(self.keepalive, self._sweep)

    def _gone(self, conn: _Connection) -> None:
        if conn.counted:
            conn.counted = False
            self._open -= 1
            self._wake()

    def _wake(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        """Close every idle connection; connections in use close when their request ends."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    @property
    def open_connections(self) -> int:
        return self._open


def interleaved(addresses: Sequence[IPAddress]) -> list[IPAddress]:
    """``addresses`` in the order they are tried (RFC 8305, section 4): the first one's
    family first, then the two families taking turns, each in the resolver's order. A host
    whose IPv6 addresses all black-hole then reaches its first IPv4 address after one
    stagger, however many IPv6 addresses the resolver listed first."""
    if not addresses:
        return []
    first = addresses[0].version
    same = [a for a in addresses if a.version == first]
    other = [a for a in addresses if a.version != first]
    return [a for pair in itertools.zip_longest(same, other) for a in pair if a is not None]


def _expire(waiter: asyncio.Future[Response]) -> None:
    """The deadline of a request passed before its answer came."""
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _close_late_winner(task: asyncio.Task[_Connection]) -> None:
    """A connection attempt that lost the race: close it if it connected anyway."""
    if not task.cancelled() and task.exception() is None:
        task.result().close()


def _head(url: yarl.URL, host: str, headers: dict[str, str], length: int) -> bytes:
    """The request line and headers of a POST, refusing a header that would split them."""
    authority = f"[{host}]" if ":" in host else host
    if not url.is_default_port():
        authority = f"{authority}:{url.port}"
    target = url.raw_path_qs or "/"
    text = "".join(
        [
            f"POST {target} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {length}\r\n",
            *[f"{name}: {value}\r\n" for name, value in headers.items()],
            "\r\n",
        ]
    )
    # Exactly one line break per line (request line, Host, Content-Length, each header, the
    # blank line) and no NUL: counted once over the whole head rather than per header.
    lines = len(headers) + 4
    if text.count("\n") != lines or text.count("\r") != lines or "\0" in text:
        bad = next((n for n, v in headers.items() if any(c in n or c in v for c in "\r\n\0")), None)
        where = "the URL" if bad is None else f"the header {bad!r}"
        raise ValueError(f"{where} holds a line break or NUL")
    return text.encode("utf-8")
