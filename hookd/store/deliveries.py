"""Store operations of the delivery log: list, inspect, retry."""

from __future__ import annotations

from hookd.store.queries import Op, notify, one, rows, run
from hookd.store.records import Attempt, Delivery, Event

__all__ = ["get_delivery", "list_deliveries", "retry_delivery"]


def list_deliveries(
    webhook_id: str, status: str | None, before: str, limit: int
) -> Op[list[Delivery]]:
    """Up to ``limit`` deliveries of the webhook with ids below ``before``, newest first."""
    if status is None:
        found = yield rows("delivery_list", webhook_id=webhook_id, before=before, limit=limit)
    else:
        found = yield rows(
            "delivery_list_status", webhook_id=webhook_id, status=status, before=before, limit=limit
        )
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
