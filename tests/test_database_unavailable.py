"""SPEC §2/§7: "Database unreachable → 503 with code database_unavailable, never a
traceback; /readyz says so" — and hookd recovers by itself when the database is back.

PostgreSQL is made unreachable for real: the app talks to it through a TCP proxy in the
test, which is stopped (and its live connections cut) and later restarted on the same port.
SQLite has no server to lose; what a client can meet is a file that is no longer a
database (wiped or overwritten in place), a file locked by another process, and a file
replaced or deleted under a running hookd.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from hookd.api import create_app
from hookd.settings import DEFAULT_API_VERSION
from hookd.store import Store, open_driver
from tests.conftest import admin_sql, make_settings

NOVA = "2026-01-01.nova"
VALID_BODY: dict[str, Any] = {
    "name": "Hook",
    "url": "https://example.com/hook",
    "topics": ["post.created"],
}
EVENT = {"topic": "post.created", "data": {"item": {"id": "p1"}}}


class TcpProxy:
    """Forwards 127.0.0.1:<port> to an upstream address until stopped; can start again on
    the same port."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every live connection, as a crashed server would."""
        assert self._server is not None
        self._server.close()
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()
        await self._server.wait_closed()
        self._server = None
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                writer.transport.abort()
                return
            self._transports |= {writer.transport, up_writer.transport}
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._handlers.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._transports.discard(writer.transport)
            writer.transport.abort()


def _with_port(dsn: str, port: int) -> str:
    parts = urllib.parse.urlsplit(dsn)
    netloc = parts.netloc.rsplit("@", 1)
    host = netloc[-1].rsplit(":", 1)[0]
    userinfo = netloc[0] + "@" if len(netloc) == 2 else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}{host}:{port}"))


def assert_unavailable(response: httpx.Response) -> None:
    """SPEC: 503, code database_unavailable, type api_error, JSON, never a traceback."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("Featurebase-Version") == NOVA, response.headers
    assert response.json() == {
        "object": "error",
        "error": {
            "type": "api_error",
            "code": "database_unavailable",
            "message": response.json()["error"]["message"],
            "param": None,
            "status": 503,
        },
    }
    message = response.json()["error"]["message"]
    assert isinstance(message, str) and message.strip()
    for leak in ("Traceback", "asyncpg", "sqlite3", "Error:", 'File "', "127.0.0.1"):
        assert leak not in response.text, response.text


@contextlib.asynccontextmanager
async def client_for(
    database_url: str, store: Store, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(database_url, **settings), store)
    # A server fault must show as the 500 a client would get, not as an exception here.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://hookd.test") as client:
        yield client


async def _requests_while_down(
    client: httpx.AsyncClient, key: str, hook_id: str
) -> list[tuple[str, httpx.Response]]:
    auth = {"Authorization": f"Bearer {key}"}
    return [
        ("GET list", await client.get("/v2/webhooks", headers=auth)),
        ("POST create", await client.post("/v2/webhooks", headers=auth, json=VALID_BODY)),
        ("GET one", await client.get(f"/v2/webhooks/{hook_id}", headers=auth)),
        ("PATCH", await client.patch(f"/v2/webhooks/{hook_id}", headers=auth, json={"name": "x"})),
        ("DELETE", await client.delete(f"/v2/webhooks/{hook_id}", headers=auth)),
        ("POST secret", await client.post(f"/v2/webhooks/{hook_id}/secret", headers=auth)),
        ("POST event", await client.post("/v2/events", headers=auth, json=EVENT)),
        ("GET deliveries", await client.get(f"/v2/webhooks/{hook_id}/deliveries", headers=auth)),
    ]


# PostgreSQL.


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    upstream = urllib.parse.urlsplit(
        os.environ.get("HOOKD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    )
    proxy = TcpProxy(upstream.hostname or "127.0.0.1", upstream.port or 5432)
    await proxy.start()
    try:
        yield proxy
    finally:
        if proxy._server is not None:
            await proxy.stop()


@pytest.mark.parametrize("engine", ["postgres"])
async def test_postgres_unreachable_is_503_and_recovers(
    engine: str, database_url: str, proxy: TcpProxy
) -> None:
    dsn = _with_port(database_url, proxy.port)
    assert dsn != database_url
    store = Store(open_driver(dsn, pool_size=3))
    await store.start()
    try:
        key = await store.bootstrap(10, DEFAULT_API_VERSION)
        assert key is not None
        auth = {"Authorization": f"Bearer {key}"}
        async with (
            client_for(dsn, store) as client,
            client_for(dsn, store, rate_limit=100) as limited,
        ):
            created = await client.post("/v2/webhooks", headers=auth, json=VALID_BODY)
            assert created.status_code == 200, created.text
            hook = created.json()
            assert (await client.get("/v2/webhooks", headers=auth)).status_code == 200
            assert (await limited.get("/v2/webhooks", headers=auth)).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            assert proxy.connections >= 1, "the app really goes through the proxy"

            await proxy.stop()

            started = time.monotonic()
            for _round in range(2):
                for label, response in await _requests_while_down(client, key, hook["id"]):
                    try:
                        assert_unavailable(response)
                    except AssertionError as exc:
                        raise AssertionError(f"{label}: {exc}") from None
                # The rate-limited app counts requests in the database: same answer.
                assert_unavailable(await limited.get("/v2/webhooks", headers=auth))
                ready = await client.get("/readyz")
                assert_unavailable(ready)
                healthz = await client.get("/healthz")
                assert healthz.status_code == 200
                assert healthz.headers["Featurebase-Version"] == NOVA
            assert time.monotonic() - started < 30, "503s come without long hangs"
            # Unauthenticated requests still get their 401, not a 503: no key was looked up.
            assert (await client.get("/v2/webhooks")).status_code == 401

            await proxy.start()

            # The pool reconnects by itself: the very next requests work.
            listed = await client.get("/v2/webhooks", headers=auth)
            assert listed.status_code == 200, listed.text
            assert [w["id"] for w in listed.json()["data"]] == [hook["id"]]
            assert (await client.get("/readyz")).status_code == 200
            again = await client.post("/v2/webhooks", headers=auth, json=VALID_BODY)
            assert again.status_code == 200, again.text
            assert (await limited.get("/v2/webhooks", headers=auth)).status_code == 200
            event = await client.post("/v2/events", headers=auth, json=EVENT)
            assert event.status_code == 202, event.text
            # Nothing half-done while the database was away: the refused PATCH, DELETE and
            # secret rotation changed nothing.
            fetched = (await client.get(f"/v2/webhooks/{hook['id']}", headers=auth)).json()
            assert fetched == hook
    finally:
        await store.close()


@pytest.mark.parametrize("engine", ["postgres"])
async def test_postgres_down_at_the_first_request(
    engine: str, database_url: str, proxy: TcpProxy
) -> None:
    """The pool's connections all die while idle (nothing notices until a request comes)."""
    dsn = _with_port(database_url, proxy.port)
    store = Store(open_driver(dsn, pool_size=2))
    await store.start()
    try:
        key = await store.bootstrap(10, DEFAULT_API_VERSION)
        assert key is not None
        await proxy.stop()
        async with client_for(dsn, store) as client:
            assert_unavailable(await client.get("/readyz"))
            assert_unavailable(
                await client.get("/v2/webhooks", headers={"Authorization": f"Bearer {key}"})
            )
            await proxy.start()
            response = await client.get("/v2/webhooks", headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 200, response.text
    finally:
        await store.close()


async def _terminate_backends(database_url: str) -> int:
    name = urllib.parse.urlsplit(database_url).path.lstrip("/")
    admin = await asyncpg.connect(database_url)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
    finally:
        await admin.close()
    return int(killed)


@pytest.mark.parametrize("engine", ["postgres"])
async def test_postgres_backends_terminated_is_never_500(engine: str, database_url: str) -> None:
    """A PostgreSQL restart (or an administrator) kills hookd's connections: requests meet
    dead pooled connections. Each answer is a success or a clean 503, never a 500, and the
    service is back to normal right after."""
    store = Store(open_driver(database_url, pool_size=3))
    await store.start()
    try:
        key = await store.bootstrap(10, DEFAULT_API_VERSION)
        assert key is not None
        auth = {"Authorization": f"Bearer {key}"}
        async with client_for(database_url, store) as client:
            seen: list[tuple[str, int]] = []
            for pause in (0, 0, 0, 0, 0, 0, 0.2, 0.2):
                # Use several pooled connections at once, then kill them all.
                results = await asyncio.gather(
                    *(client.get("/v2/webhooks", headers=auth) for _ in range(3))
                )
                assert all(r.status_code == 200 for r in results)
                assert await _terminate_backends(database_url) >= 1
                await asyncio.sleep(pause)
                for label, response in (
                    ("GET", await client.get("/v2/webhooks", headers=auth)),
                    ("POST", await client.post("/v2/webhooks", headers=auth, json=VALID_BODY)),
                    ("readyz", await client.get("/readyz")),
                ):
                    seen.append((label, response.status_code))
                    if response.status_code not in (200, 503):
                        continue
                    if response.status_code == 503:
                        assert_unavailable(response)
            assert all(status in (200, 503) for _, status in seen), str(seen)
            final = await client.get("/v2/webhooks", headers=auth)
            assert final.status_code == 200, final.text
            assert (await client.get("/readyz")).status_code == 200
    finally:
        await store.close()


# SQLite.


@pytest.fixture
async def sqlite_app(
    database_url: str,
) -> AsyncIterator[tuple[httpx.AsyncClient, str, Path, dict[str, Any]]]:
    """An app over its own store on the test's SQLite file, a key, and one webhook."""
    path = Path(database_url[len("sqlite:///") :])
    store = Store(open_driver(database_url))
    await store.start()
    try:
        key = await store.bootstrap(10, DEFAULT_API_VERSION)
        assert key is not None
        async with client_for(database_url, store) as client:
            created = await client.post(
                "/v2/webhooks", headers={"Authorization": f"Bearer {key}"}, json=VALID_BODY
            )
            assert created.status_code == 200, created.text
            yield client, key, path, created.json()
    finally:
        with contextlib.suppress(Exception):
            await store.close()


def _overwrite_in_place(path: Path, data: bytes | None) -> None:
    """Wipe (``None``) or overwrite the database file's bytes, keeping the same file."""
    if data is None:
        os.truncate(path, 0)
        for suffix in ("-wal",):
            wal = Path(str(path) + suffix)
            if wal.exists():
                os.truncate(wal, 0)
        return
    with open(path, "r+b") as f:
        f.write(data)


@pytest.mark.parametrize("engine", ["sqlite"])
@pytest.mark.parametrize("how", ["wiped", "overwritten"])
async def test_sqlite_file_no_longer_a_database_is_503(
    engine: str, sqlite_app: tuple[httpx.AsyncClient, str, Path, dict[str, Any]], how: str
) -> None:
    client, key, path, hook = sqlite_app
    await asyncio.to_thread(
        _overwrite_in_place, path, None if how == "wiped" else b"this is not a database!" * 4096
    )
    for _round in range(2):
        for label, response in await _requests_while_down(client, key, hook["id"]):
            try:
                assert_unavailable(response)
            except AssertionError as exc:
                raise AssertionError(f"{label}: {exc}") from None
        assert_unavailable(await client.get("/readyz"))
        assert (await client.get("/healthz")).status_code == 200


def _lock(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=1)
    conn.execute("BEGIN EXCLUSIVE")
    return conn


@pytest.mark.parametrize("engine", ["sqlite"])
async def test_sqlite_locked_by_another_process_is_503_and_recovers(
    engine: str, sqlite_app: tuple[httpx.AsyncClient, str, Path, dict[str, Any]]
) -> None:
    """Another process holds the write lock (say, a backup or a stuck sqlite3 shell):
    writes give up after the busy timeout with a 503; reads go on (WAL); then it recovers."""
    client, key, path, hook = sqlite_app
    auth = {"Authorization": f"Bearer {key}"}
    lock = await asyncio.to_thread(_lock, path)
    try:
        started = time.monotonic()
        refused = await client.post("/v2/webhooks", headers=auth, json=VALID_BODY)
        assert_unavailable(refused)
        assert time.monotonic() - started < 30
        listed = await client.get("/v2/webhooks", headers=auth)
        assert listed.status_code == 200, listed.text
        assert [w["id"] for w in listed.json()["data"]] == [hook["id"]]
    finally:
        await asyncio.to_thread(lock.execute, "ROLLBACK")
        await asyncio.to_thread(lock.close)
    created = await client.post("/v2/webhooks", headers=auth, json=VALID_BODY)
    assert created.status_code == 200, created.text
    assert len((await client.get("/v2/webhooks", headers=auth)).json()["data"]) == 2


def _replace(path: Path, how: str) -> None:
    aside = Path(str(path) + ".aside")
    path.rename(aside)
    for suffix in ("-wal", "-shm"):
        side = Path(str(path) + suffix)
        if side.exists():
            side.rename(Path(str(aside) + suffix))
    if how == "directory":
        path.mkdir()
    elif how == "other-file":
        path.write_bytes(b"not a database" * 1000)
    elif how == "deleted":
        for suffix in ("", "-wal", "-shm"):
            Path(str(aside) + suffix).unlink(missing_ok=True)


@pytest.mark.parametrize("engine", ["sqlite"])
@pytest.mark.parametrize("how", ["directory", "other-file", "deleted"])
async def test_sqlite_file_replaced_under_a_running_hookd(
    engine: str, sqlite_app: tuple[httpx.AsyncClient, str, Path, dict[str, Any]], how: str
) -> None:
    """The database file at HOOKD_DATABASE_URL is replaced (by a directory or another
    file) or deleted while hookd runs. hookd's open connections still point at the old,
    now unlinked file, so without a check writes "succeed" into a file that nobody will
    ever open again (lost at the next restart) and /readyz says ready. A hookd restarted
    now could not open its database: /readyz must say so, and writes must be refused."""
    client, key, path, _hook = sqlite_app
    await asyncio.to_thread(_replace, path, how)
    auth = {"Authorization": f"Bearer {key}"}
    ready = await client.get("/readyz")
    write = await client.post("/v2/webhooks", headers=auth, json=VALID_BODY)
    assert ready.status_code != 500 and write.status_code != 500
    assert_unavailable(ready)
    assert_unavailable(write)


async def _refuse_writes(store: Store, database_url: str, refuse: bool) -> None:
    """Make the database refuse writes (or take them again) while reads still work: what a
    read-only file, a full disk or a read-only replica does."""
    if store.dialect == "sqlite":
        # The error SQLite gives for a read-only database file, on hookd's own writer
        # connection (permissions cannot show it: the tests may run as root).
        writer: sqlite3.Connection = store.driver._writer  # type: ignore[attr-defined]
        writer.execute(f"PRAGMA query_only={'ON' if refuse else 'OFF'}")
        return
    name = urllib.parse.urlsplit(database_url).path.lstrip("/")
    setting = (
        "SET default_transaction_read_only = on"
        if refuse
        else "RESET default_transaction_read_only"
    )
    # From another database: this one may already refuse ALTER DATABASE itself.
    await admin_sql(f'ALTER DATABASE "{name}" {setting}')
    # Sessions take the database's settings when they start: the pool reconnects.
    await _terminate_backends(database_url)


async def test_readyz_is_503_while_the_database_refuses_writes(
    database_url: str, store: Store
) -> None:
    key = await store.bootstrap(10, DEFAULT_API_VERSION)
    assert key is not None
    auth = {"Authorization": f"Bearer {key}"}
    async with client_for(database_url, store) as client:
        assert (await client.get("/readyz")).status_code == 200
        await _refuse_writes(store, database_url, True)
        try:
            assert_unavailable(await client.get("/readyz"))
            listed = await client.get("/v2/webhooks", headers=auth)
            assert listed.status_code == 200, (
                "reads still work, which is why /readyz must try a write: " + listed.text
            )
            assert_unavailable(await client.post("/v2/webhooks", headers=auth, json=VALID_BODY))
        finally:
            await _refuse_writes(store, database_url, False)
        assert (await client.get("/readyz")).status_code == 200, "ready again once writes work"
