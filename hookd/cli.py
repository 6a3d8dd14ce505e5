"""The ``hookd`` command (SPEC §7)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from hookd import __version__
from hookd.clock import iso_ms
from hookd.errors import ApiError, DatabaseUnavailable, HookdError, SettingsError
from hookd.settings import (
    DEFAULT_API_VERSION,
    WEBHOOKS_SINCE,
    Settings,
    database_location,
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


# The flag that overrides a setting, to name in an error about a value given with it.
_FLAGS = {"database_url": "--database-url", "host": "--host", "port": "--port"}


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        message = str(exc)
        for field, flag in _FLAGS.items():
            variable = f"HOOKD_{field.upper()}:"
            if overrides.get(field) is not None and message.startswith(variable):
                message = flag + ":" + message.removeprefix(variable)
        _fail(message, 2)
        raise  # unreachable


def _existing_database(settings: Settings) -> Settings:
    """``settings`` if its SQLite file exists; else stop and say where hookd looked.

    ``orgs`` and ``keys`` manage a database that ``hookd migrate`` or ``hookd serve`` made:
    creating an empty one in whatever directory the command ran in hides the mistake.
    """
    if settings.is_sqlite and not os.path.exists(settings.sqlite_path):
        _fail(
            f"no database at {database_location(settings)}; run hookd migrate (or hookd serve) "
            "first, or point HOOKD_DATABASE_URL or --database-url at the database"
        )
    return settings


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
        result = asyncio.run(run())
    except DatabaseUnavailable as exc:
        _database_error(settings, exc)
    except ApiError as exc:
        _fail(f"{exc.message.removesuffix('.')} (database {database_location(settings)})")
    except (HookdError, OSError) as exc:
        _database_error(settings, exc)
    else:
        # On stderr, so that stdout stays the one id or key a script reads.
        click.echo(f"hookd: database {database_location(settings)}", err=True)
        return result
    raise AssertionError("unreachable")


def _database_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--database-url",
        envvar=None,
        default=None,
        help="Overrides HOOKD_DATABASE_URL (sqlite:///PATH or postgresql://...).",
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


@main.command(short_help="Run the API and the delivery worker in one process.")
@_server_options
@click.option(
    "--dev",
    is_flag=True,
    help="Development mode: accept http:// URLs and deliver to loopback receivers "
    "(127.0.0.0/8, ::1), listening on loopback only. Never in production.",
)
def serve(database_url: str | None, host: str | None, port: int | None, dev: bool) -> None:
    """Run the API and the delivery worker in one process; on an empty database, create the
    organization 'default' and print an API key for it."""
    from hookd.server import dev_settings, run_server

    settings = _settings(database_url=database_url, host=host, port=port)
    if dev:
        try:
            settings = dev_settings(settings)
        except SettingsError as exc:
            _fail(str(exc), 2)
    run_server(settings, api=True, worker=True, bootstrap=True, dev=dev)


@main.command(short_help="Run only the API (several may share one PostgreSQL).")
@_server_options
def api(database_url: str | None, host: str | None, port: int | None) -> None:
    """Run only the API (several may share one PostgreSQL database)."""
    from hookd.server import run_server

    settings = _settings(database_url=database_url, host=host, port=port)
    run_server(settings, api=True, worker=False, bootstrap=False)


@main.command(short_help="Run only the delivery worker (several may share one PostgreSQL).")
@_database_option
def worker(database_url: str | None) -> None:
    """Run only the delivery worker (several may share one PostgreSQL database)."""
    from hookd.server import run_server

    settings = _settings(database_url=database_url)
    run_server(settings, api=False, worker=True, bootstrap=False)


@main.command(short_help="Forward an organization's events to a URL on this machine.")
@click.option(
    "--forward-to",
    required=True,
    metavar="URL",
    help="Where to POST each event, e.g. http://localhost:3000/hooks.",
)
@click.option("--topics", default=None, metavar="T,...", help="Only these topics (default: all).")
@click.option(
    "--server",
    envvar="HOOKD_SERVER_URL",
    default="http://127.0.0.1:8080",
    show_default=True,
    help="The hookd server (or HOOKD_SERVER_URL).",
)
@click.option("--api-key", envvar="HOOKD_API_KEY", default=None, help="Or HOOKD_API_KEY.")
def listen(forward_to: str, topics: str | None, server: str, api_key: str | None) -> None:
    """Forward an organization's events, as they are published, to a URL on this machine."""
    from hookd.listen import Forwarder, run
    from hookd.topics import TOPIC_SET

    if not api_key:
        _fail("give the organization's API key with --api-key or HOOKD_API_KEY", 2)
        return
    wanted = None if topics is None else [t.strip() for t in topics.split(",") if t.strip()]
    unknown = [t for t in wanted or [] if t not in TOPIC_SET]
    if unknown or wanted == []:
        _fail(f"--topics: {', '.join(unknown) or topics!r} is not a known topic", 2)
    for name, url in (("--forward-to", forward_to), ("--server", server)):
        if not url.startswith(("http://", "https://")):
            _fail(f"{name} must be an http:// or https:// URL, not {url!r}", 2)
    forwarder = Forwarder(server, api_key, forward_to, wanted, out=click.echo)
    click.echo(
        f"hookd listen: signing secret {forwarder.secret} "
        "(the same on every run with this API key; check requests with hookd.verify)"
    )
    sys.exit(run(forwarder))


@main.command(short_help="Apply the schema migrations.")
@_database_option
def migrate(database_url: str | None) -> None:
    """Apply the schema migrations."""
    settings = _settings(database_url=database_url)
    try:
        asyncio.run(_prepare(settings))
    except (HookdError, OSError) as exc:
        _database_error(settings, exc)
    click.echo(f"hookd: the database schema of {database_location(settings)} is up to date")


@main.group(short_help="Manage organizations (tenants).")
def orgs() -> None:
    """Manage organizations (tenants)."""


def _webhook_version(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if value != WEBHOOKS_SINCE:
        raise click.BadParameter(
            f"{value} has no webhook endpoints, so every request of the organization would be "
            f"refused; use {WEBHOOKS_SINCE}"
        )
    return value


@orgs.command("create", short_help="Create an organization; prints its id.")
@click.argument("name")
@click.option(
    "--webhook-limit",
    type=click.IntRange(0, 1_000_000),
    default=None,
    help="Default: HOOKD_WEBHOOK_LIMIT.",
)
@click.option(
    "--default-version",
    default=DEFAULT_API_VERSION,
    show_default=True,
    callback=_webhook_version,
    help="The API version of requests without Featurebase-Version.",
)
@_database_option
def orgs_create(
    name: str, webhook_limit: int | None, default_version: str, database_url: str | None
) -> None:
    """Create an organization; prints its id."""
    settings = _settings(database_url=database_url)
    if not name.strip() or len(name) > 100:
        _fail("NAME must be 1 to 100 characters", 2)
    _existing_database(settings)
    limit = settings.webhook_limit if webhook_limit is None else webhook_limit
    org = _with_store(settings, lambda s: s.create_organization(name, limit, default_version))
    click.echo(org.id)


@orgs.command("list", short_help="List organizations, one a line.")
@_database_option
def orgs_list(database_url: str | None) -> None:
    """List organizations: id, name, webhook limit, default version, creation time."""
    settings = _existing_database(_settings(database_url=database_url))
    for org in _with_store(settings, lambda s: s.list_organizations()):
        click.echo(
            f"{org.id}\t{org.name}\t{org.webhook_limit}\t{org.default_version}\t{iso_ms(org.created_at)}"
        )


@main.group(short_help="Manage API keys.")
def keys() -> None:
    """Manage API keys."""


async def _org(store: Store, ref: str) -> str:
    org = await store.find_organization(ref)
    if org is None:
        raise ApiError(404, "resource_missing", f"no organization has the id or name {ref!r}")
    return org.id


@keys.command("create", short_help="Create an API key for ORG; prints only the key.")
@click.argument("org")
@click.option("--name", "label", default=None, help="A label to recognise the key by.")
@_database_option
def keys_create(org: str, label: str | None, database_url: str | None) -> None:
    """Create an API key for ORG (an id or a name); prints only the key."""
    settings = _existing_database(_settings(database_url=database_url))

    async def create(store: Store) -> str:
        _key, secret = await store.create_api_key(await _org(store, org), label)
        return secret

    click.echo(_with_store(settings, create))


@keys.command("list", short_help="List ORG's keys (never the keys themselves).")
@click.argument("org")
@_database_option
def keys_list(org: str, database_url: str | None) -> None:
    """List ORG's keys: id, label, creation time, active/revoked (never the key)."""
    settings = _existing_database(_settings(database_url=database_url))

    async def listing(store: Store) -> list[Any]:
        return await store.list_api_keys(await _org(store, org))

    for key in _with_store(settings, listing):
        state = "revoked" if key.revoked_at is not None else "active"
        click.echo(f"{key.id}\t{key.label or ''}\t{iso_ms(key.created_at)}\t{state}")


@keys.command("revoke", short_help="Revoke the key KEY_ID; it stops working at once.")
@click.argument("key_id")
@_database_option
def keys_revoke(key_id: str, database_url: str | None) -> None:
    """Revoke the key KEY_ID (from hookd keys list); it stops working at once."""
    settings = _existing_database(_settings(database_url=database_url))

    async def revoke(store: Store) -> bool:
        started = store.clock()
        key = await store.revoke_api_key(key_id)
        if key is None:
            raise ApiError(
                404,
                "resource_missing",
                f"no API key has the id {key_id!r}; see hookd keys list ORG",
            )
        # Revoking twice keeps the first time: an earlier one means it was already revoked.
        return key.revoked_at is not None and key.revoked_at < started

    already = _with_store(settings, revoke)
    click.echo(f"hookd: {'already revoked' if already else 'revoked'} {key_id}")
