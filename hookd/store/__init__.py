"""hookd's database layer: one interface (:class:`Store`) over SQLite and PostgreSQL.

Operations are written once (``tenants``, ``webhooks``, ``events``, ``deliveries``,
``queue``) as generators of named SQL statements; a driver per engine runs them.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from hookd.clock import Clock, system_clock
from hookd.metrics import QueueSnapshot
from hookd.store import (
    deliveries,
    events,
    gauges,
    instance,
    operational,
    queue,
    rollups,
    sessions,
    tenants,
    webhooks,
)
from hookd.store.events import EventDraft, KeyCheck, KeyCheckFailed
from hookd.store.operational import OperationalChange
from hookd.store.postgres import PostgresDriver
from hookd.store.queries import EventSink, Op
from hookd.store.queue import ClaimRequest, Settlement
from hookd.store.records import (
    ApiKey,
    Attempt,
    AuthContext,
    ClaimedDelivery,
    Delivery,
    Event,
    EventDetail,
    EventSummary,
    Heartbeat,
    Organization,
    Peer,
    Webhook,
)
from hookd.store.rollups import Rollup
from hookd.store.sessions import DashboardSession
from hookd.store.sqlite import SqliteDriver

__all__ = [
    "ApiKey",
    "Attempt",
    "AuthContext",
    "ClaimRequest",
    "ClaimedDelivery",
    "DashboardSession",
    "Delivery",
    "Driver",
    "Event",
    "EventDetail",
    "EventDraft",
    "EventSink",
    "EventSummary",
    "Heartbeat",
    "KeyCheck",
    "KeyCheckFailed",
    "OperationalChange",
    "Organization",
    "Peer",
    "Rollup",
    "Settlement",
    "Store",
    "Webhook",
    "open_driver",
]

T = TypeVar("T")


class Driver(Protocol):
    """What the store needs from an engine."""

    dialect: str
    # Whether writes issued together commit in one transaction, in the order issued
    # (SQLite's group commit), so that a later one sees an earlier one's work.
    writes_commit_together: bool

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def read(self, op: Op[T], *, snapshot: bool = False) -> T: ...
    async def read_apart(self, op: Op[T]) -> T: ...
    async def write(self, op: Op[T], *, atomic_statements: bool = False) -> T: ...
    async def work(self, op: Op[T]) -> T: ...
    def notify_work(self) -> None: ...
    async def wait_for_work(self, timeout: float) -> bool: ...
    async def listen_events(self, sink: EventSink) -> None: ...


def open_driver(
    database_url: str, *, pool_size: int = 10, sqlite_synchronous: str = "normal"
) -> Driver:
    """The driver for ``database_url`` (not yet started)."""
    if database_url.startswith("sqlite:///"):
        return SqliteDriver(database_url[len("sqlite:///") :], synchronous=sqlite_synchronous)
    return PostgresDriver(database_url, pool_size=pool_size)


class Store:
    """Every read and write hookd makes. Times come from ``clock``."""

    def __init__(self, driver: Driver, clock: Clock = system_clock) -> None:
        self.driver = driver
        self.clock = clock

    @property
    def dialect(self) -> str:
        return self.driver.dialect

    @property
    def writes_commit_together(self) -> bool:
        return self.driver.writes_commit_together

    async def start(self) -> None:
        await self.driver.start()

    async def close(self) -> None:
        await self.driver.close()

    async def check_ready(self) -> None:
        """Raise :class:`DatabaseUnavailable` unless the database answers a read and
        accepts a write now (a real write transaction of one row): what ``/readyz`` says."""
        await self.driver.read(tenants.any_organization())
        await self.driver.write(instance.touch_readiness(self.clock()))

    async def cursor_key(self) -> bytes:
        """The key that signs list cursors, the same for every process of the installation.
        Migration 0004 makes it, so reading it is enough (a database that refuses writes
        still pages); should the row be gone, the first process to ask makes a new one."""
        stored = await self.driver.read(instance.named_value("cursor_key"))
        if stored is None:
            stored = await self.driver.write(
                instance.named_secret("cursor_key", secrets.token_hex(32), self.clock())
            )
        return bytes.fromhex(stored)

    # Organizations and API keys.

    async def create_organization(
        self, name: str, webhook_limit: int, default_version: str
    ) -> Organization:
        return await self.driver.write(
            tenants.create_organization(name, webhook_limit, default_version, self.clock())
        )

    async def list_organizations(self) -> list[Organization]:
        return await self.driver.read(tenants.list_organizations())

    async def find_organization(self, ref: str) -> Organization | None:
        return await self.driver.read(tenants.find_organization(ref))

    async def create_api_key(self, organization_id: str, label: str | None) -> tuple[ApiKey, str]:
        return await self.driver.write(tenants.create_api_key(organization_id, label, self.clock()))

    async def list_api_keys(self, organization_id: str) -> list[ApiKey]:
        return await self.driver.read(tenants.list_api_keys(organization_id))

    async def revoke_api_key(self, key_id: str) -> ApiKey | None:
        return await self.driver.write(tenants.revoke_api_key(key_id, self.clock()))

    async def authenticate(
        self, key_hash: str, window_start: int | None = None
    ) -> AuthContext | None:
        op = tenants.authenticate(key_hash, window_start)
        # Counting the request writes, and must then run in a transaction.
        return await (self.driver.read(op) if window_start is None else self.driver.write(op))

    async def bootstrap(self, webhook_limit: int, default_version: str) -> str | None:
        return await self.driver.write(
            tenants.bootstrap(webhook_limit, default_version, self.clock())
        )

    # Webhooks.

    async def create_webhook(self, organization_id: str, **fields: Any) -> Webhook:
        return await self.driver.write(
            webhooks.create_webhook(organization_id, now=self.clock(), **fields)
        )

    async def get_webhook(self, organization_id: str, webhook_id: str) -> Webhook | None:
        return await self.driver.read(webhooks.get_webhook(organization_id, webhook_id))

    async def list_webhooks(
        self, organization_id: str, status: str | None, before: str, limit: int
    ) -> list[Webhook]:
        return await self.driver.read(
            webhooks.list_webhooks(organization_id, status, before, limit)
        )

    async def update_webhook(
        self, organization_id: str, webhook_id: str, changes: Mapping[str, Any]
    ) -> Webhook | None:
        return await self.driver.write(
            webhooks.update_webhook(organization_id, webhook_id, changes, self.clock())
        )

    async def delete_webhook(self, organization_id: str, webhook_id: str) -> bool:
        return await self.driver.write(
            webhooks.delete_webhook(organization_id, webhook_id, self.clock())
        )

    async def rotate_secret(
        self, organization_id: str, webhook_id: str, secret: str, grace_ms: int = 0
    ) -> Webhook | None:
        """Replace the webhook's secret; the old one stays live for ``grace_ms`` (0: dies
        at once, with every earlier one). ``None`` if there is no such webhook."""
        return await self.driver.write(
            webhooks.rotate_secret(organization_id, webhook_id, secret, grace_ms, self.clock())
        )

    async def purge_expired_secrets(self) -> int:
        return await self.driver.write(webhooks.purge_expired_secrets(self.clock()))

    # Events.

    async def publish(
        self,
        organization_id: str,
        draft: EventDraft,
        idempotency_key: str | None,
        check: KeyCheck | None = None,
    ) -> tuple[str, str, int, bool, int | None]:
        """Publish an event: its id, topic, creation time, whether it was created (not an
        idempotent replay), and, with ``check`` on PostgreSQL (the write authenticates the
        request, see :class:`KeyCheck`), the request's count in its window."""
        if self.dialect == "postgresql":
            op = events.publish_in_one_statement(
                organization_id, draft, idempotency_key, self.clock(), check
            )
            return await self.driver.write(op, atomic_statements=True)
        event_id, topic, created_at, created = await self.driver.write(
            events.publish(organization_id, draft, idempotency_key, self.clock(), check)
        )
        return event_id, topic, created_at, created, None

    async def create_test_delivery(
        self, organization_id: str, webhook_id: str, draft: EventDraft
    ) -> Delivery:
        return await self.driver.write(
            events.create_test_delivery(organization_id, webhook_id, draft, self.clock())
        )

    async def recover(
        self, organization_id: str, webhook_id: str, topics: list[str], since: int, until: int
    ) -> int:
        """Queue the window's events that the webhook has no succeeded or pending delivery
        of, a page per transaction; returns how many."""
        queued = 0
        after = (since - 1, "")
        while True:
            op = events.recover_chunk(
                organization_id, webhook_id, topics, since, until, after, self.clock()
            )
            page = await self.driver.write(op)
            queued += page.queued
            if page.done:
                return queued
            after = (page.after_at, page.after_id)

    async def list_events(
        self,
        organization_id: str,
        *,
        topic: str | None = None,
        since: int | None = None,
        until: int | None = None,
        before: str | None = None,
        limit: int = 10,
    ) -> list[EventSummary]:
        """Published events (no test events) with ids below ``before`` (``None``: from the
        newest), newest first, of one ``topic`` if given, created in ``[since, until)`` (ms;
        either bound optional)."""
        return await self.driver.read(
            events.list_events(organization_id, topic, since, until, before, limit), snapshot=True
        )

    async def get_event(self, organization_id: str, event_id: str) -> EventDetail | None:
        """The organization's event with every delivery of it; ``None`` if it has none such."""
        return await self.driver.read(events.get_event(organization_id, event_id), snapshot=True)

    async def events_after(self, organization_id: str, after: str, limit: int) -> list[Event]:
        """Published events with ids above ``after``, oldest first (a stream catching up)."""
        return await self.driver.read(
            events.events_after(organization_id, after, limit), snapshot=True
        )

    async def events_by_ids(self, ids: list[str]) -> list[Event]:
        return await self.driver.read(events.events_by_ids(ids))

    # The delivery log.

    async def list_deliveries(
        self,
        webhook_id: str,
        status: str | None,
        before: str,
        limit: int,
        event_id: str | None = None,
    ) -> list[Delivery]:
        return await self.driver.read(
            deliveries.list_deliveries(webhook_id, status, before, limit, event_id),
            snapshot=status is None and event_id is None,
        )

    async def get_delivery(
        self, webhook_id: str, delivery_id: str
    ) -> tuple[Delivery, Event, list[Attempt]] | None:
        return await self.driver.read(
            deliveries.get_delivery(webhook_id, delivery_id), snapshot=True
        )

    async def retry_delivery(self, webhook_id: str, delivery_id: str) -> Delivery | None:
        return await self.driver.write(
            deliveries.retry_delivery(webhook_id, delivery_id, self.clock())
        )

    # The queue.

    async def settle(self, settlement: Settlement) -> list[OperationalChange]:
        """Record a batch of attempts' outcomes and the dashboard's rollups of them, atomically
        (PostgreSQL: one statement; SQLite: one transaction); returns the suspensions and
        final failures it made, whose operational events it published with it (SPEC §4)."""
        op = queue.settle(self.dialect, settlement, self.clock())
        if operational.may_publish(settlement.deliveries):
            # With operational events: on the API's connections, committed durably (crash
            # safety); a delivery ending failed is rare, so the usual settle stays on the
            # worker's connections.
            return await self.driver.write(op)
        return await self.driver.work(op)

    async def claim(self, request: ClaimRequest) -> list[ClaimedDelivery]:
        """Lease due deliveries to a worker."""
        return await self.driver.work(queue.claim(self.dialect, request))

    async def next_due(self) -> int | None:
        return await self.driver.read(queue.next_due())

    async def release(self, claimed: Sequence[ClaimedDelivery]) -> None:
        if claimed:
            await self.driver.write(queue.release(claimed))

    async def beat(
        self,
        worker: str,
        timeout_ms: int,
        decide: Callable[[list[Peer]], Peer],
        died: Callable[[str], bool],
    ) -> Heartbeat:
        """A worker's heartbeat (see :func:`hookd.store.queue.beat`)."""
        return await self.driver.write(queue.beat(worker, self.clock(), timeout_ms, decide, died))

    async def retire(self, worker: str) -> None:
        await self.driver.write(queue.retire(worker))

    async def release_expired(self) -> int:
        return await self.driver.write(queue.release_expired(self.clock()))

    async def purge(
        self, before_ms: int, before_id: str, batch: int, idempotency_before: int, rate_before: int
    ) -> int:
        return await self.driver.write(
            queue.purge(before_ms, before_id, batch, idempotency_before, rate_before)
        )

    async def queue_snapshot(self) -> QueueSnapshot:
        """The database-read gauges of ``/metrics`` (see :mod:`hookd.store.gauges`)."""
        return await self.driver.read_apart(gauges.queue_snapshot(self.clock()))

    def notify_work(self) -> None:
        self.driver.notify_work()

    # The dashboard's rollups (hookd.store.rollups).

    async def rollup_totals(self, webhook_ids: Sequence[str], since: int) -> dict[str, Rollup]:
        """These webhooks' attempts since ``since``, summed per webhook (the caller has
        checked that they are the organization's)."""
        return await self.driver.read(rollups.totals(webhook_ids, since))

    async def rollup_series(self, webhook_id: str, since: int) -> list[Rollup]:
        """One webhook's hourly rollups since ``since``, oldest first."""
        return await self.driver.read(rollups.series(webhook_id, since))

    # Dashboard sessions and portal links (hookd.store.sessions).

    async def create_session(
        self,
        organization_id: str,
        key_id: str,
        webhook_ids: Sequence[str] | None,
        read_only: bool,
        expires_at: int,
    ) -> str:
        """A new dashboard session (expired ones are forgotten on the way); its cookie value."""
        now = self.clock()

        def op() -> Op[str]:
            yield from sessions.purge_sessions(now)
            token: str = yield from sessions.create_session(
                organization_id, key_id, webhook_ids, read_only, expires_at, now
            )
            return token

        return await self.driver.write(op())

    async def get_session(self, token: str) -> DashboardSession | None:
        return await self.driver.read(sessions.get_session(token, self.clock()))

    async def end_session(self, session_id: str) -> None:
        await self.driver.write(sessions.end_session(session_id))

    async def create_portal_link(
        self,
        organization_id: str,
        key_id: str,
        webhook_ids: Sequence[str] | None,
        read_only: bool,
        expires_at: int,
    ) -> str:
        return await self.driver.write(
            sessions.create_portal_link(
                organization_id, key_id, webhook_ids, read_only, expires_at, self.clock()
            )
        )

    async def open_portal_link(self, token: str) -> str | None:
        return await self.driver.write(sessions.open_portal_link(token, self.clock()))

    async def listen_events(self, sink: EventSink) -> None:
        """Tell ``sink`` of the events published from now on (every API process's on
        PostgreSQL, this one's on SQLite); returns once it will hear them."""
        await self.driver.listen_events(sink)

    async def wait_for_work(self, timeout: float) -> bool:
        return await self.driver.wait_for_work(timeout)
