"""Running hookd's processes: ``serve`` (API + worker), ``api`` and ``worker``."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import signal
import sys
from types import FrameType

import click
import uvicorn
import uvloop
from fastapi import FastAPI

from hookd import tracing
from hookd.api import create_app
from hookd.clock import Clock, system_clock
from hookd.delivery.guard import AddressGuard
from hookd.delivery.resolver import Resolver
from hookd.delivery.sender import Sender
from hookd.delivery.worker import Worker, WorkerConfig
from hookd.errors import HookdError, SettingsError
from hookd.limits import LimitedHttpToolsProtocol
from hookd.logs import configure_logging, get_logger, masked_settings
from hookd.metrics import METRICS, MetricsServer
from hookd.settings import DEFAULT_API_VERSION, Settings, database_location, database_problem
from hookd.store import Driver, Store, open_driver
from hookd.store.migrate import upgrade_async

__all__ = ["base_url", "build_worker", "dev_settings", "run_server"]

log = get_logger("hookd")


def open_driver_for(settings: Settings) -> Driver:
    return open_driver(
        settings.database_url,
        pool_size=settings.db_pool_size,
        sqlite_synchronous=settings.sqlite_synchronous,
    )


def batch_wait(settings: Settings) -> float:
    """Seconds a busy worker lets outcomes gather (``HOOKD_BATCH_WAIT_MS``; see
    ``Worker._batching``). By default 3 ms on PostgreSQL, where each round's statements cost
    as much per call as for 25 rows, and none on SQLite, whose one writer already commits a
    round's writes together and where the wait measured slower (bench/README.md)."""
    if settings.batch_wait_ms is not None:
        return settings.batch_wait_ms / 1000
    return 0.0 if settings.is_sqlite else 0.003


def build_worker(settings: Settings, store: Store, clock: Clock = system_clock) -> Worker:
    """The delivery worker that ``hookd serve`` and ``hookd worker`` run."""
    sender = Sender(
        AddressGuard(settings.allowed_networks, dns=Resolver(settings.dns_servers)),
        max_connections=settings.worker_concurrency,
        clock=clock,
    )
    config = WorkerConfig(
        retry_schedule=settings.retry_schedule,
        suspend_after=settings.suspend_after,
        max_in_flight_per_webhook=settings.max_in_flight_per_webhook,
        max_in_flight_per_org=settings.max_in_flight_per_org,
        concurrency=settings.worker_concurrency,
        poll_interval=settings.poll_interval,
        batch_wait=batch_wait(settings),
        lease_margin_ms=round(settings.lease_margin * 1000),
        worker_timeout=settings.worker_timeout,
        retention_days=settings.retention_days,
        # Expired leases are looked for at least as often as a lease's margin.
        maintenance_interval=min(5.0, settings.lease_margin),
    )
    return Worker(store, sender, config, clock=clock)


_LOOPBACK_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def dev_settings(settings: Settings) -> Settings:
    """``hookd serve --dev``: http:// URLs and loopback receivers allowed, which is only safe
    on a server nobody else can reach, so it listens on loopback only."""
    if not _is_loopback(settings.host):
        raise SettingsError(
            f"--dev listens on loopback only, not on {settings.host}; leave HOOKD_HOST and "
            "--host unset (127.0.0.1) or give a loopback address"
        )
    networks = [*settings.allowed_networks]
    networks += [net for net in _LOOPBACK_NETWORKS if net not in networks]
    return settings.model_copy(update={"allow_http": True, "allowed_networks": tuple(networks)})


def base_url(settings: Settings) -> str:
    """The URL that reaches the API on this machine (a wildcard address becomes loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(settings.host, settings.host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def _announce_key(key: str, url: str) -> None:
    click.echo(
        "\nhookd: created the organization 'default' and this API key for it (shown only once):\n\n"
        f"    {key}\n\n"
        "Use it as:\n\n"
        f"    export KEY=<the key above> HOOKD={url}\n"
        '    curl -H "Authorization: Bearer $KEY" $HOOKD/v2/webhooks\n'
    )
    sys.stdout.flush()


def _announce_dev(settings: Settings) -> None:
    line = "!" * 78
    click.echo(
        f"{line}\n"
        "hookd: DEVELOPMENT MODE (--dev). Webhook URLs may use http:// and hookd delivers to\n"
        "loopback receivers (127.0.0.0/8, ::1), so it listens on loopback only. Never use\n"
        f"--dev on a server that others can reach. API: {base_url(settings)}\n"
        f"{line}"
    )
    sys.stdout.flush()


def _tune_gc() -> None:
    # Everything loaded so far lives as long as the process: keep the collector from
    # re-scanning it, and collect the young generation less often (requests allocate a lot
    # of short-lived objects, almost none of them in cycles).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


class _Server(uvicorn.Server):
    """uvicorn's server, which also ends the event streams as soon as it is told to stop:
    uvicorn waits for open responses before it shuts down, and a stream never ends alone."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.hookd_app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # A signal handler runs between two bytecodes of the loop's thread: hand over.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not serving yet
            return
        loop.call_soon_threadsafe(self.hookd_app.state.feed.close)


def _migrate(settings: Settings) -> None:
    try:
        uvloop.run(upgrade_async(settings.database_url))
    except (HookdError, OSError) as exc:
        click.echo(f"hookd: {database_problem(settings, exc)}", err=True)
        sys.exit(1)


def run_server(
    settings: Settings, *, api: bool, worker: bool, bootstrap: bool, dev: bool = False
) -> None:
    """Apply migrations, then run the API (with uvicorn) and/or the delivery worker."""
    configure_logging(settings.log_level, settings.log_format)
    METRICS.configure(enabled=settings.metrics, webhook_labels=settings.metrics_webhook_labels)
    if dev:
        _announce_dev(settings)
    _migrate(settings)
    # SPEC §8: the settings in force, secrets masked (once the database is there: a process
    # that cannot start says why in one line); then tracing, if asked for.
    command = "serve" if api and worker else "api" if api else "worker"
    # Settings left to a default that depends on the engine are shown as in force.
    in_force = {**settings.model_dump(), "batch_wait_ms": batch_wait(settings) * 1000}
    log.info("settings", command=command, **masked_settings(in_force))
    tracing.configure()
    if not api:
        _tune_gc()
        uvloop.run(_worker_only(settings))
        return
    store = Store(open_driver_for(settings))
    engine: Worker | None = None

    async def on_startup(app: FastAPI) -> None:
        nonlocal engine
        await store.start()
        # On stdout with the key banner: stderr holds the logs, JSON lines with
        # HOOKD_LOG_FORMAT=json.
        click.echo(
            f"hookd: API at {base_url(settings)} (docs at {base_url(settings)}/docs), "
            f"database {database_location(settings)}"
        )
        sys.stdout.flush()
        if bootstrap:
            key = await store.bootstrap(settings.webhook_limit, DEFAULT_API_VERSION)
            if key is not None:
                _announce_key(key, base_url(settings))
        if worker:
            engine = build_worker(settings, store)
            app.state.worker = engine
            await engine.start()

    async def on_shutdown(app: FastAPI) -> None:
        if engine is not None:
            await engine.stop()
        await store.close()
        tracing.shutdown()

    app = create_app(settings, store, on_startup=on_startup, on_shutdown=on_shutdown)
    _tune_gc()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # httptools with SPEC §7's header size and header time limits (hookd/limits.py).
        http=LimitedHttpToolsProtocol,
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=10,
        server_header=False,
        # hookd never reads the client's address, so X-Forwarded-* need no rewriting: one
        # ASGI layer less on every request.
        proxy_headers=False,
    )
    server = _Server(config, app)
    # uvicorn re-raises SIGTERM/SIGINT once it has shut down, so that the default handler
    # ends the process "killed by signal". A graceful stop is a success: exit 0 instead.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    if not server.started:
        sys.exit(1)


async def _worker_only(settings: Settings) -> None:
    store = Store(open_driver_for(settings))
    await store.start()
    engine = build_worker(settings, store)
    exporter = None
    if settings.metrics and settings.metrics_port:
        exporter = MetricsServer(
            METRICS, settings.host, settings.metrics_port, settings.metrics_token
        )
        try:
            await exporter.start()
        except OSError as exc:
            # Delivering matters more than being watched: run on, without /metrics.
            log.error(
                "cannot serve metrics; the worker runs without /metrics (set "
                "HOOKD_METRICS_PORT to a free port, or 0)",
                address=f"{settings.host}:{settings.metrics_port}",
                error=exc.strerror or str(exc),
            )
            exporter = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await engine.start()
    log.info(
        "worker started",
        worker=engine.worker_id,
        database=database_location(settings),
        metrics=f"http://{settings.host}:{settings.metrics_port}/metrics" if exporter else "off",
    )
    await stop.wait()
    log.info("worker stopping")
    try:
        await engine.stop()
    except Exception:
        log.exception("the worker did not stop cleanly")
    if exporter is not None:
        await exporter.close()
    await store.close()
    tracing.shutdown()
