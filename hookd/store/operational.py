"""hookd's operational events (SPEC §4): ``webhook.suspended`` and ``delivery.failed``,
published by the settle that suspends the webhook or fails the delivery, in its transaction.

Settling a batch of outcomes (:func:`hookd.store.queue.settle`) brackets its writes with
:func:`watch` and :func:`publish`:

- :func:`watch`, before: only when a delivery of the batch may end ``failed`` (its attempt
  was the last one), so every other settle costs nothing more. It locks the batch's webhooks
  in id order (the order the settle itself keeps) and notes which are ``active`` and which of
  the batch's deliveries are still ``pending`` (not test deliveries).
- :func:`publish`, after: the webhooks it noted active that are ``suspended`` now, and the
  deliveries it noted pending that are ``failed`` now, are this settle's doing. For each, one
  event is written, with one delivery to every active webhook of the organization subscribed
  to its topic except the webhook concerned, all in a few batched statements, and announced
  to the event streams like any published event.

The whole runs as one transaction (see :meth:`hookd.store.Store.settle`), so an accepted
suspension or failure produces its event even if the process dies right after. A batch
written again (its first commit's answer was lost) finds its webhooks suspended and its
deliveries failed already, noted neither, and publishes nothing twice. No event is ever
published about a test delivery or a delivery of an operational topic: no loops.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import orjson

from hookd import objects
from hookd.ids import new_event_id
from hookd.logs import get_logger
from hookd.store.events import _delivery_row
from hookd.store.queries import Op, announce, many, notify, rows
from hookd.store.records import Delivery, Webhook, _json_list, record
from hookd.topics import DELIVERY_FAILED, WEBHOOK_SUSPENDED, is_operational_topic

__all__ = ["OperationalChange", "Watch", "log_changes", "may_publish", "publish", "watch"]

log = get_logger("hookd.delivery")


@record
class Watch:
    """What :func:`watch` noted before a settle: the batch's webhooks that were ``active``
    and its deliveries (not test deliveries) that were ``pending``."""

    active_webhooks: tuple[str, ...]
    pending_deliveries: tuple[str, ...]


@record
class OperationalChange:
    """A suspension or final failure that a settle made, and the event published about it
    (``event_id`` ``None`` for the failure of an operational-topic delivery: none is)."""

    topic: str
    organization_id: str
    webhook_id: str
    event_id: str | None
    fanned_out: int
    delivery_id: str | None = None
    delivery_event_id: str | None = None
    delivery_topic: str | None = None
    attempts: int = 0
    last_status_code: int | None = None
    last_status_message: str | None = None
    consecutive_failures: int = 0


def may_publish(deliveries: Sequence[Any]) -> bool:
    """Whether a settle of these delivery rows (``Settlement.deliveries``) may suspend a
    webhook or fail a delivery: only a delivery that ends ``failed`` does either."""
    return any(row["status"] == "failed" for row in deliveries)


def watch(webhook_ids: Sequence[str], delivery_ids: Sequence[str]) -> Op[Watch]:
    """Lock the batch's webhooks (id order) and note its active webhooks and its pending
    deliveries (``delivery_ids``: those the batch ends ``failed``)."""
    locked = yield rows("operational_lock_webhooks", ids=sorted(webhook_ids))
    pending = yield rows("operational_pending_deliveries", ids=list(delivery_ids))
    return Watch(
        tuple(r["id"] for r in locked if r["status"] == "active"),
        tuple(r["id"] for r in pending),
    )


def _data(item: dict[str, Any]) -> str:
    return orjson.dumps(
        {"object": "notification_event_data", "item": item, "changes": []}
    ).decode()


def publish(seen: Watch, now: int) -> Op[list[OperationalChange]]:
    """After the settle, in its transaction: publish an event for each suspension and final
    failure it made (see the module docstring); returns them all."""
    suspended = []
    if seen.active_webhooks:
        suspended = yield rows("operational_suspended", ids=list(seen.active_webhooks))
    failed = []
    if seen.pending_deliveries:
        failed = yield rows("operational_failed", ids=list(seen.pending_deliveries))
    if not suspended and not failed:
        return []
    # (change, event data) for each; a failure of an operational-topic delivery is only
    # reported (logged), never published.
    changes: list[tuple[OperationalChange, str | None]] = []
    for row in suspended:
        webhook = Webhook.from_row(row)
        item = objects.webhook_json(webhook)
        del item["secret"]
        change = OperationalChange(
            WEBHOOK_SUSPENDED,
            webhook.organization_id,
            webhook.id,
            new_event_id(now),
            0,
            consecutive_failures=webhook.consecutive_failures,
        )
        changes.append((change, _data(item)))
    for row in failed:
        delivery = Delivery.from_row(row)
        published = not is_operational_topic(delivery.topic)
        change = OperationalChange(
            DELIVERY_FAILED,
            row["organization_id"],
            delivery.webhook_id,
            new_event_id(now) if published else None,
            0,
            delivery_id=delivery.id,
            delivery_event_id=delivery.event_id,
            delivery_topic=delivery.topic,
            attempts=delivery.attempt_count,
            last_status_code=delivery.last_status_code,
            last_status_message=delivery.last_status_message,
        )
        data = _data(objects.delivery_json(delivery, webhook_active=False)) if published else None
        changes.append((change, data))
    to_publish = [(c, d) for c, d in changes if c.event_id is not None and d is not None]
    fanned_out: dict[str, int] = {}
    if to_publish:
        fanned_out = yield from _write(to_publish, now)
    return [
        dataclasses.replace(change, fanned_out=fanned_out.get(change.event_id or "", 0))
        for change, _data in changes
    ]


def _write(to_publish: list[tuple[OperationalChange, str]], now: int) -> Op[dict[str, int]]:
    """The events and their deliveries, a statement each for the whole batch; returns how
    many deliveries each event got."""
    organizations = sorted({change.organization_id for change, _d in to_publish})
    targets = yield rows("operational_targets", organization_ids=organizations)
    by_org: dict[str, list[tuple[str, tuple[str, ...]]]] = defaultdict(list)
    for target in targets:
        by_org[target["organization_id"]].append((target["id"], _json_list(target["topics"])))
    events = []
    deliveries = []
    fanned_out: dict[str, int] = defaultdict(int)
    for change, data in to_publish:
        assert change.event_id is not None
        events.append(
            {
                "id": change.event_id,
                "organization_id": change.organization_id,
                "topic": change.topic,
                "data": data,
                "conversation_id": None,
                "conversation_url": None,
                "is_test": False,
                "created_at": now,
                "traceparent": None,
            }
        )
        for webhook_id, topics in by_org.get(change.organization_id, ()):
            if webhook_id != change.webhook_id and change.topic in topics:
                deliveries.append(
                    _delivery_row(webhook_id, change.event_id, change.topic, False, now)
                )
                fanned_out[change.event_id] += 1
    yield many("event_insert", events)
    if deliveries:
        yield many("delivery_insert", deliveries)
        yield notify()
    for change, _data in to_publish:
        assert change.event_id is not None
        yield announce(change.organization_id, change.event_id)
    return fanned_out


def log_changes(changes: Sequence[OperationalChange]) -> None:
    """One structured line per suspension and final failure (SPEC §8), once committed."""
    for change in changes:
        if change.topic == WEBHOOK_SUSPENDED:
            log.warning(
                WEBHOOK_SUSPENDED,
                organization=change.organization_id,
                webhook=change.webhook_id,
                consecutive_failures=change.consecutive_failures,
                operational_event_id=change.event_id,
                notified_webhooks=change.fanned_out,
            )
        else:
            log.warning(
                DELIVERY_FAILED,
                organization=change.organization_id,
                webhook=change.webhook_id,
                delivery=change.delivery_id,
                event_id=change.delivery_event_id,
                topic=change.delivery_topic,
                attempts=change.attempts,
                status=change.last_status_code,
                reason=change.last_status_message,
                operational_event_id=change.event_id,
                notified_webhooks=change.fanned_out,
            )
