"""hookd's pool of asyncpg connections.

asyncpg's own pool does more per loan than hookd needs: each acquire with a timeout runs
under a ``wait_for`` of its own, each release in a task of its own (``asyncio.shield``),
each loan wraps the connection in a proxy and re-arms an idle timer. A publish over
PostgreSQL takes two loans (the key's look-up, then the write), and they were about a
fifth of what it cost hookd: 1,277,262 instructions with asyncpg's pool against 1,023,295
with this one, for an event to 10 webhooks (``bench/README.md``). This pool lends
connections for the price of a list pop and an append:

* idle connections are kept most recently used first, so that a quiet pool keeps using
  the same few connections and the others reach their idle lifetime and are closed;
* at most ``max_size`` connections are open or opening; a loan beyond that waits, first
  come first served, until one comes back, up to a timeout (``TimeoutError``);
* a connection comes back into the pool only if the work done with it ended cleanly or
  with an error that the server reported (the protocol is then at rest, and a transaction
  block has rolled back). Anything else (a cancelled or timed-out query, a broken socket)
  may have left it mid-exchange: it is terminated, and its place goes to the next waiter,
  who opens a new one. A connection that died while idle fails at its first statement;
  the driver's callers retry once (``PostgresDriver._run``).

Nothing is reset between loans: hookd keeps no session state on pooled connections (no
SET, LISTEN or session-level lock), and the reset query asyncpg's pool may send would add
a round trip to every operation.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from types import TracebackType
from typing import Any

import asyncpg

__all__ = ["ConnectionPool"]


class ConnectionPool:
    """Lends asyncpg connections to one event loop's tasks (``async with pool.acquire()``)."""

    def __init__(
        self,
        dsn: str,
        *,
        max_size: int,
        server_settings: dict[str, str],
        command_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        idle_lifetime: float = 300.0,
    ) -> None:
        self.dsn = dsn
        self.max_size = max_size
        self._server_settings = server_settings
        self._command_timeout = command_timeout
        self._connect_timeout = connect_timeout
        self._idle_lifetime = idle_lifetime
        # (when it came back, connection), the most recently used last.
        self._idle: list[tuple[float, asyncpg.Connection]] = []
        self._size = 0  # connections open or being opened
        # Each waiter gets a connection, or None: "a place is free, open one".
        self._waiters: collections.deque[asyncio.Future[asyncpg.Connection | None]] = (
            collections.deque()
        )
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def size(self) -> int:
        """Connections open or being opened."""
        return self._size

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def start(self) -> None:
        """Open the first connection, so that a server that is not there is found now."""
        conn = await self._open()
        self._idle.append((time.monotonic(), conn))

    def acquire(self, timeout: float = 10.0) -> _Loan:
        """``async with pool.acquire() as conn``: a connection for the block's work."""
        return _Loan(self, timeout)

    async def close(self) -> None:
        """Close the idle connections; those on loan are closed when they come back."""
        self._closed = True
        idle, self._idle = self._idle, []
        self._size -= len(idle)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(asyncpg.InterfaceError("the connection pool is closed"))
        for _, conn in idle:
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # ------------------------------------------------------------------ lending

    async def _acquire(self, timeout: float) -> asyncpg.Connection:
        while True:
            if self._closed:
                raise asyncpg.InterfaceError("the connection pool is closed")
            while self._idle:
                conn = self._idle.pop()[1]
                if not conn.is_closed():
                    return conn
                self._size -= 1
            if self._size < self.max_size:
                return await self._open()
            conn = await self._wait(timeout)
            if conn is not None:
                return conn
            # A place came free: go round again (someone else may have taken it meanwhile).

    async def _open(self) -> asyncpg.Connection:
        self._size += 1
        try:
            conn: asyncpg.Connection = await asyncpg.connect(
                self.dsn,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
                server_settings=self._server_settings,
            )
        except BaseException:
            self._size -= 1
            self._hand_over(None)
            raise
        return conn

    async def _wait(self, timeout: float) -> asyncpg.Connection | None:
        waiter: asyncio.Future[asyncpg.Connection | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        except BaseException:
            # Handed something just as the wait ended: pass it on, so nothing leaks.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                given = waiter.result()
                if given is None:
                    self._hand_over(None)
                else:
                    self._release(given, broken=False)
            raise

    def _hand_over(self, conn: asyncpg.Connection | None) -> bool:
        """Give ``conn`` (or a free place) to the longest waiter; False if none waits."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def _release(self, conn: asyncpg.Connection, *, broken: bool) -> None:
        if broken or self._closed or conn.is_closed() or conn.is_in_transaction():
            if not conn.is_closed():
                conn.terminate()
            self._size -= 1
            if not self._closed:
                self._hand_over(None)
            return
        if self._hand_over(conn):
            return
        now = time.monotonic()
        self._idle.append((now, conn))
        # The connection idle longest, once past its lifetime, is closed (one per return;
        # the most recent always stays).
        if len(self._idle) > 1 and self._idle[0][0] < now - self._idle_lifetime:
            _, old = self._idle.pop(0)
            self._size -= 1
            task = asyncio.get_running_loop().create_task(self._close_quietly(old))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_quietly(conn: asyncpg.Connection) -> None:
        try:
            await conn.close(timeout=5)
        except Exception:
            conn.terminate()


class _Loan:
    """One connection on loan for an ``async with`` block."""

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: ConnectionPool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        self._conn = await self._pool._acquire(self._timeout)
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        conn, self._conn = self._conn, None
        if conn is not None:
            # An error the server reported leaves the exchange complete; anything else may not.
            broken = exc is not None and not isinstance(exc, asyncpg.PostgresError)
            self._pool._release(conn, broken=broken)
        return None
