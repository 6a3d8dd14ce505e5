"""Store operations of the delivery log: list, inspect, retry."""

from __future__ import annotations

from typing import Any

from hookd.store.queries import Op, notify, one, rows, run
from hookd.store.records import DELIVERY_STATUSES, Attempt, Delivery, Event

__all__ = ["get_delivery", "list_deliveries", "retry_delivery"]


def list_deliveries(
    webhook_id: str, status: str | None, before: str, limit: int, event_id: str | None = None
) -> Op[list[Delivery]]:
    """Up to ``limit`` deliveries of the webhook with ids below ``before``, newest first,
    of one ``status`` and one event's (``event_id``) if given.

    Without a status, the page of each status (read from the ``(webhook_id, status, id)``
    index) is merged: no index of its own has to be kept up to date on every delivery
    written. Run it as a snapshot read, so that the pages see one state. One event's
    deliveries are a few rows of the ``(event_id, webhook_id)`` index, read at once."""
    if event_id is not None:
        page = yield rows(
            "delivery_list_event",
            event_id=event_id,
            webhook_id=webhook_id,
            status=status,
            before=before,
            limit=limit,
        )
        return [Delivery.from_row(r) for r in page]
    found: list[Any] = []
    for wanted in (status,) if status is not None else DELIVERY_STATUSES:
        found += yield rows(
            "delivery_list", webhook_id=webhook_id, status=wanted, before=before, limit=limit
        )
    if status is None:
        found = sorted(found, key=lambda r: r["id"], reverse=True)[:limit]
    return [Delivery.from_row(r) for r in found]


def get_delivery(
    webhook_id: str, delivery_id: str
) -> Op[tuple[Delivery, Event, list[Attempt]] | None]:
    row = yield one("delivery_get", id=delivery_id, webhook_id=webhook_id)
    if row is None:
        return None
    delivery = Delivery.from_row(row)
    event = Event.from_row((yield one("event_get", id=delivery.event_id)))
    attempts = [
        Attempt.from_row(r) for r in (yield rows("delivery_attempts", delivery_id=delivery_id))
    ]
    return delivery, event, attempts


def retry_delivery(webhook_id: str, delivery_id: str, now: int) -> Op[Delivery | None]:
    """Queue a delivery for an attempt now. ``None`` if there is no such delivery; a
    cancelled delivery is returned unchanged (the caller refuses it)."""
    changed = yield run("delivery_retry", id=delivery_id, webhook_id=webhook_id, now=now)
    if changed:
        yield notify()
    row = yield one("delivery_get", id=delivery_id, webhook_id=webhook_id)
    return None if row is None else Delivery.from_row(row)
