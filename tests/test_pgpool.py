"""hookd's pool of PostgreSQL connections (hookd.store.pgpool), against the real server:
connections are lent again, loans beyond the size wait in turn and time out, a connection
left mid-exchange is never lent again, idle ones are closed after their lifetime."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from hookd.store.pgpool import ConnectionPool

pytestmark = pytest.mark.parametrize("engine", ["postgres"])


async def _backends(dsn: str) -> int:
    """Connections to the test's database other than the one asking."""
    name = urllib.parse.urlsplit(dsn).path.lstrip("/")
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
        )
    finally:
        await conn.close()


async def _kill(dsn: str, pid: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()


@asynccontextmanager
async def _started(database_url: str, **options: Any) -> AsyncIterator[ConnectionPool]:
    pool = ConnectionPool(database_url, **{"max_size": 2, "server_settings": {}, **options})
    await pool.start()
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[ConnectionPool]:
    async with _started(database_url, server_settings={"jit": "off"}) as pool:
        yield pool


async def _pid(pool: ConnectionPool) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval("SELECT pg_backend_pid()"))


async def test_a_returned_connection_is_lent_again(engine: str, pool: ConnectionPool) -> None:
    first = await _pid(pool)
    assert await _pid(pool) == first
    assert (pool.size, pool.idle) == (1, 1)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SHOW jit") == "off"  # the pool's session settings


async def test_loans_beyond_the_size_wait_their_turn(engine: str, pool: ConnectionPool) -> None:
    got: list[str] = []

    async def borrow(name: str, hold: asyncio.Event) -> None:
        async with pool.acquire():
            got.append(name)
            await hold.wait()

    holds = {name: asyncio.Event() for name in "abcd"}
    a = asyncio.create_task(borrow("a", holds["a"]))
    b = asyncio.create_task(borrow("b", holds["b"]))
    await asyncio.sleep(0.2)
    c = asyncio.create_task(borrow("c", holds["c"]))
    await asyncio.sleep(0.01)
    d = asyncio.create_task(borrow("d", holds["d"]))
    await asyncio.sleep(0.1)
    assert sorted(got) == ["a", "b"] and pool.size == 2
    holds["b"].set()
    await b
    await asyncio.sleep(0.05)
    assert got[2:] == ["c"]  # first come, first served
    holds["a"].set()
    await a
    await asyncio.sleep(0.05)
    assert got[2:] == ["c", "d"]
    holds["c"].set()
    holds["d"].set()
    await asyncio.gather(c, d)
    assert (pool.size, pool.idle) == (2, 2)


async def test_a_wait_times_out_and_leaves_no_waiter_behind(
    engine: str, pool: ConnectionPool
) -> None:
    async with pool.acquire(), pool.acquire():
        with pytest.raises(TimeoutError):
            async with pool.acquire(timeout=0.1):
                pass
    # The timed-out waiter is not handed the connections that came back.
    assert (pool.size, pool.idle) == (2, 2)
    await _pid(pool)


async def test_a_server_error_leaves_the_connection_in_the_pool(
    engine: str, pool: ConnectionPool
) -> None:
    first = await _pid(pool)
    with pytest.raises(asyncpg.UndefinedTableError):
        async with pool.acquire() as conn:
            await conn.fetch("SELECT * FROM no_such_table")
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(asyncpg.DivisionByZeroError):
            await conn.fetchval("SELECT 1 / 0")
    assert await _pid(pool) == first


async def test_a_cancelled_query_ends_its_connection(
    engine: str, database_url: str, pool: ConnectionPool
) -> None:
    """A query cancelled in flight leaves its connection mid-exchange: it is closed, never
    lent again, and its place is opened anew."""
    first = await _pid(pool)
    started = asyncio.Event()

    async def sleep_long() -> None:
        async with pool.acquire() as conn:
            started.set()
            await conn.execute("SELECT pg_sleep(30)")

    task = asyncio.create_task(sleep_long())
    await started.wait()
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (pool.size, pool.idle) == (0, 0)
    assert await _pid(pool) != first
    assert pool.size == 1


async def test_a_connection_killed_while_idle_is_replaced(
    engine: str, database_url: str, pool: ConnectionPool
) -> None:
    """A connection whose server end went away while it was idle is never lent again.
    (One that died unnoticed fails at its first statement, and the driver retries:
    tests/test_database_unavailable.py.)"""
    first = await _pid(pool)
    await _kill(database_url, first)
    await asyncio.sleep(0.2)
    assert await _pid(pool) != first
    assert (pool.size, pool.idle) == (1, 1)


async def test_a_waiter_gets_the_place_of_a_connection_that_broke(
    engine: str, database_url: str
) -> None:
    async with _started(database_url, max_size=1) as pool:
        holding = asyncio.Event()
        fail = asyncio.Event()

        async def breaks() -> None:
            async with pool.acquire():
                holding.set()
                await fail.wait()
                raise RuntimeError("not the server's error: the connection is not trusted")

        breaking = asyncio.create_task(breaks())
        await holding.wait()
        waiting = asyncio.create_task(_pid(pool))
        await asyncio.sleep(0.05)
        fail.set()
        with pytest.raises(RuntimeError):
            await breaking
        await asyncio.wait_for(waiting, 10)
        assert pool.size == 1


async def test_a_waiter_cancelled_as_it_is_handed_a_connection_passes_it_on(
    engine: str, database_url: str
) -> None:
    async with _started(database_url, max_size=1) as pool:
        loan = pool.acquire()
        await loan.__aenter__()
        first = asyncio.create_task(_pid(pool))
        second = asyncio.create_task(_pid(pool))
        await asyncio.sleep(0.05)
        await loan.__aexit__(None, None, None)  # hands the connection to `first`...
        first.cancel()  # ...which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, 10)
        assert (pool.size, pool.idle) == (1, 1)


async def test_connections_idle_past_their_lifetime_are_closed(
    engine: str, database_url: str
) -> None:
    async with _started(database_url, max_size=3, idle_lifetime=0.2) as pool:
        release = asyncio.Event()

        async def hold() -> None:
            async with pool.acquire():
                await release.wait()

        holders = [asyncio.create_task(hold()) for _ in range(3)]
        await asyncio.sleep(0.2)
        release.set()
        await asyncio.gather(*holders)
        assert (pool.size, await _backends(database_url)) == (3, 3)
        await asyncio.sleep(0.3)
        for _ in range(3):
            await _pid(pool)  # each return closes the one idle longest
        await asyncio.sleep(0.2)
        assert (pool.size, await _backends(database_url)) == (1, 1)


async def test_close_ends_every_connection(engine: str, database_url: str) -> None:
    pool = ConnectionPool(database_url, max_size=2, server_settings={})
    await pool.start()
    loan = pool.acquire()
    await loan.__aenter__()
    await _pid(pool)
    await pool.close()
    assert pool.size == 1  # the one on loan, closed when it comes back
    await loan.__aexit__(None, None, None)
    assert pool.size == 0
    await asyncio.sleep(0.1)
    assert await _backends(database_url) == 0
    with pytest.raises(asyncpg.InterfaceError):
        await _pid(pool)
