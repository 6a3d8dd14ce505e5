"""The ``hookd`` command (SPEC §7)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from hookd import __version__
from hookd.clock import iso_ms
from hookd.errors import ApiError, DatabaseUnavailable, HookdError, SettingsError
from hookd.settings import (
    API_VERSIONS,
    DEFAULT_API_VERSION,
    Settings,
    database_problem,
    load_settings,
)
from hookd.store import Store, open_driver
from hookd.store.migrate import upgrade_async

__all__ = ["main"]

T = TypeVar("T")


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"hookd: {message}", err=True)
    sys.exit(code)


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        _fail(str(exc), 2)
        raise  # unreachable


def _database_error(settings: Settings, exc: BaseException) -> None:
    _fail(database_problem(settings, exc))


async def _prepare(settings: Settings) -> None:
    await upgrade_async(settings.database_url)


def _with_store(settings: Settings, action: Callable[[Store], Awaitable[T]]) -> T:
    async def run() -> T:
        await _prepare(settings)
        store = Store(open_driver(settings.database_url, pool_size=2))
        await store.start()
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except DatabaseUnavailable as exc:
        _database_error(settings, exc)
    except ApiError as exc:
        _fail(exc.message)
    except (HookdError, OSError) as exc:
        _database_error(settings, exc)
    raise AssertionError("unreachable")


def _database_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--database-url",
        envvar=None,
        default=None,
        help="Overrides HOOKD_DATABASE_URL (sqlite:///… or postgresql://…).",
    )(func)


def _server_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--port", type=int, default=None, help="Overrides HOOKD_PORT (default 8080)."
    )(func)
    func = click.option("--host", default=None, help="Overrides HOOKD_HOST (default 127.0.0.1).")(
        func
    )
    return _database_option(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hookd")
def main() -> None:
    """hookd: self-hostable webhooks with Featurebase's v2 API."""


@main.command()
@_server_options
def serve(database_url: str | None, host: str | None, port: int | None) -> None:
    """Run the API and the delivery worker in one process."""
    from hookd.server import run_server

    settings = _settings(database_url=database_url, host=host, port=port)
    run_server(settings, api=True, worker=True, bootstrap=True)


@main.command()
@_server_options
def api(database_url: str | None, host: str | None, port: int | None) -> None:
    """Run only the API (several may share one PostgreSQL database)."""
    from hookd.server import run_server

    settings = _settings(database_url=database_url, host=host, port=port)
    run_server(settings, api=True, worker=False, bootstrap=False)


@main.command()
@_database_option
def worker(database_url: str | None) -> None:
    """Run only the delivery worker (several may share one PostgreSQL database)."""
    from hookd.server import run_server

    settings = _settings(database_url=database_url)
    run_server(settings, api=False, worker=True, bootstrap=False)


@main.command()
@_database_option
def migrate(database_url: str | None) -> None:
    """Apply the schema migrations."""
    settings = _settings(database_url=database_url)
    try:
        asyncio.run(_prepare(settings))
    except (HookdError, OSError) as exc:
        _database_error(settings, exc)
    click.echo("hookd: the database schema is up to date")


@main.group()
def orgs() -> None:
    """Manage organizations (tenants)."""


@orgs.command("create")
@click.argument("name")
@click.option(
    "--webhook-limit",
    type=click.IntRange(0, 1_000_000),
    default=None,
    help="Default: HOOKD_WEBHOOK_LIMIT.",
)
@click.option(
    "--default-version",
    type=click.Choice(API_VERSIONS),
    default=DEFAULT_API_VERSION,
    show_default=True,
)
@_database_option
def orgs_create(
    name: str, webhook_limit: int | None, default_version: str, database_url: str | None
) -> None:
    """Create an organization; prints its id."""
    settings = _settings(database_url=database_url)
    if not name.strip() or len(name) > 100:
        _fail("NAME must be 1 to 100 characters", 2)
    limit = settings.webhook_limit if webhook_limit is None else webhook_limit
    org = _with_store(settings, lambda s: s.create_organization(name, limit, default_version))
    click.echo(org.id)


@orgs.command("list")
@_database_option
def orgs_list(database_url: str | None) -> None:
    """List organizations: id, name, webhook limit, default version, creation time."""
    settings = _settings(database_url=database_url)
    for org in _with_store(settings, lambda s: s.list_organizations()):
        click.echo(
            f"{org.id}\t{org.name}\t{org.webhook_limit}\t{org.default_version}\t{iso_ms(org.created_at)}"
        )


@main.group()
def keys() -> None:
    """Manage API keys."""


async def _org(store: Store, ref: str) -> str:
    org = await store.find_organization(ref)
    if org is None:
        raise ApiError(404, "resource_missing", f"no organization has the id or name {ref!r}")
    return org.id


@keys.command("create")
@click.argument("org")
@click.option("--name", "label", default=None, help="A label to recognise the key by.")
@_database_option
def keys_create(org: str, label: str | None, database_url: str | None) -> None:
    """Create an API key for ORG (an id or a name); prints only the key."""
    settings = _settings(database_url=database_url)

    async def create(store: Store) -> str:
        _key, secret = await store.create_api_key(await _org(store, org), label)
        return secret

    click.echo(_with_store(settings, create))


@keys.command("list")
@click.argument("org")
@_database_option
def keys_list(org: str, database_url: str | None) -> None:
    """List ORG's keys: id, label, creation time, active/revoked (never the key)."""
    settings = _settings(database_url=database_url)

    async def listing(store: Store) -> list[Any]:
        return await store.list_api_keys(await _org(store, org))

    for key in _with_store(settings, listing):
        state = "revoked" if key.revoked_at is not None else "active"
        click.echo(f"{key.id}\t{key.label or ''}\t{iso_ms(key.created_at)}\t{state}")


@keys.command("revoke")
@click.argument("key_id")
@_database_option
def keys_revoke(key_id: str, database_url: str | None) -> None:
    """Revoke the key KEY_ID (from hookd keys list); it stops working at once."""
    settings = _settings(database_url=database_url)
    key = _with_store(settings, lambda s: s.revoke_api_key(key_id))
    if key is None:
        _fail(f"no API key has the id {key_id!r}")
    click.echo(f"hookd: revoked {key_id}")
