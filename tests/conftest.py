"""Shared fixtures: real databases (a SQLite file and the machine's PostgreSQL), the app
over them, API keys, and a real HTTP receiver on 127.0.0.1.

Every test gets databases of its own, copied from a template migrated once per session,
and dropped afterwards. PostgreSQL is at HOOKD_TEST_POSTGRES (default
postgresql://postgres@127.0.0.1:5432/test); under CI=true an unreachable server fails the
run instead of skipping its tests.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NoReturn

import asyncpg
import httpx
import pytest

from hookd.api import create_app
from hookd.settings import DEFAULT_API_VERSION, Settings, load_settings
from hookd.store import Store, open_driver
from hookd.store.migrate import upgrade
from tests.receiver import Receiver

ADMIN_DSN = os.environ.get("HOOKD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
ENGINES = ["sqlite", "postgres"]


def dsn_for(database: str) -> str:
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{database}"


async def admin_sql(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def postgres_problem() -> str | None:
    try:
        asyncio.run(admin_sql("SELECT 1"))
    except Exception as exc:  # any failure to connect means the same thing here
        return f"PostgreSQL at {ADMIN_DSN} is unreachable: {type(exc).__name__}: {exc}"
    return None


def unavailable(problem: str) -> NoReturn:
    """A test needs something this machine lacks (PostgreSQL, chromium, promtool): it skips
    saying what, and fails instead under ``CI=true``, where everything must run."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(problem + " (CI=true: this test must run)")
    pytest.skip(problem + " (set CI=true to make this a failure)")


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated template database, created once per test session (per xdist worker)."""
    problem = postgres_problem()
    if problem is not None:
        unavailable(problem)
    name = f"hookd_tpl_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin_sql(f'CREATE DATABASE "{name}"'))
    try:
        upgrade(dsn_for(name))
        yield name
    finally:
        asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database of the test's engine."""
    if engine == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "hookd.db"
        shutil.copyfile(template, path)
        yield f"sqlite:///{path}"
        return
    template_name: str = request.getfixturevalue("postgres_template")
    name = f"hookd_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"'))
    try:
        yield dsn_for(name)
    finally:
        asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


TEST_SETTINGS: dict[str, Any] = {
    "allow_http": True,
    "allowed_networks": "127.0.0.0/8,::1/128",
    "retry_schedule": "0.2,0.4,0.8",
    "rate_limit": 0,
    "poll_interval": 0.2,
    "lease_margin": 2.0,
}


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings for tests: http:// and loopback receivers allowed, short retries."""
    return make_settings(database_url)


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values = {**TEST_SETTINGS, **overrides, "database_url": database_url}
    env = {f"HOOKD_{k.upper()}": str(v) for k, v in values.items()}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return load_settings()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = Store(open_driver(database_url, pool_size=4))
    await store.start()
    try:
        yield store
    finally:
        await store.close()


class Api:
    """An httpx client on the app, with the organization's key as default auth."""

    def __init__(self, client: httpx.AsyncClient, key: str, store: Store) -> None:
        self.client = client
        self.key = key
        self.store = store

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    async def request(
        self, method: str, path: str, *, key: str | None = None, **kw: Any
    ) -> httpx.Response:
        headers = {**self.auth(key), **kw.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kw)

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("POST", path, **kw)

    async def patch(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("PATCH", path, **kw)

    async def delete(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("DELETE", path, **kw)

    async def create_webhook(self, key: str | None = None, **fields: Any) -> dict[str, Any]:
        body = {
            "name": "Test hook",
            "url": "https://example.com/hook",
            "topics": ["post.created"],
            **fields,
        }
        response = await self.post("/v2/webhooks", json=body, key=key)
        assert response.status_code == 200, response.text
        created: dict[str, Any] = response.json()
        return created

    async def publish(
        self, topic: str = "post.created", item: dict[str, Any] | None = None, **kw: Any
    ) -> dict[str, Any]:
        response = await self.post(
            "/v2/events", json={"topic": topic, "data": {"item": item or {"id": "p1"}}}, **kw
        )
        assert response.status_code == 202, response.text
        published: dict[str, Any] = response.json()
        return published

    async def new_org_key(self, name: str, webhook_limit: int = 10) -> str:
        org = await self.store.create_organization(name, webhook_limit, DEFAULT_API_VERSION)
        _key, secret = await self.store.create_api_key(org.id, None)
        return secret


@pytest.fixture
async def api(settings: Settings, store: Store) -> AsyncIterator[Api]:
    """The app over a fresh database, and a key of its organization ``default``."""
    key = await store.bootstrap(10, DEFAULT_API_VERSION)
    assert key is not None
    app = create_app(settings, store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hookd.test") as client:
        yield Api(client, key, store)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A real HTTP server on 127.0.0.1 that records what it receives."""
    async with Receiver() as r:
        yield r


@pytest.fixture
async def delivering(api: Api, settings: Settings) -> AsyncIterator[Api]:
    """``api`` with a delivery worker running in the same process, as in ``hookd serve``."""
    from hookd.server import build_worker

    worker = build_worker(settings, api.store)
    await worker.start()
    api.worker = worker  # type: ignore[attr-defined]
    try:
        yield api
    finally:
        await worker.stop(grace=2.0)


async def run_sql(store: Store, sql: str) -> list[tuple[Any, ...]]:
    """Run a statement on the store's database behind hookd's back (to set up or inspect
    rows); its rows, if any."""
    driver: Any = store.driver
    if store.dialect == "sqlite":
        conn = sqlite3.connect(driver.path)
        try:
            found = [tuple(r) for r in conn.execute(sql).fetchall()]
            conn.commit()
            return found
        finally:
            conn.close()
    pg = await asyncpg.connect(driver.dsn)
    try:
        return [tuple(r) for r in await pg.fetch(sql)]
    finally:
        await pg.close()


async def eventually(check: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``check()`` (sync or async) until it returns something truthy; return that."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value {result!r})")
        await asyncio.sleep(interval)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Playwright drives Debian's chromium (``playwright install`` needs the network);
    ``scripts/test`` installs it. Missing, the browser tests skip, or fail when ``CI=true``."""
    chromium = shutil.which("chromium")
    if chromium is None:
        unavailable("chromium is not installed (apt-get install chromium, or run scripts/test)")
    return {**browser_type_launch_args, "executable_path": chromium}
