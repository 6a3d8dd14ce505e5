"""The webhook and delivery objects as JSON-ready dicts: what the API answers (see
:mod:`hookd.api.render`) and what hookd's operational events carry as ``data.item``
(:mod:`hookd.store.operational`), so both layers render them one way."""

from __future__ import annotations

from typing import Any

from hookd.clock import iso_ms, iso_or_none
from hookd.store.records import Delivery, Webhook

__all__ = ["delivery_json", "webhook_json"]


def _last_status(code: int | None, message: str | None, at: int | None) -> dict[str, Any] | None:
    """``{code, message, timestamp}`` of the latest attempt, or ``None`` before any."""
    if at is None:
        return None
    return {"code": code or 0, "message": message or "", "timestamp": iso_ms(at)}


def webhook_json(w: Webhook) -> dict[str, Any]:
    """The webhook object of the Featurebase reference."""
    return {
        "object": "webhook",
        "id": w.id,
        "name": w.name,
        "url": w.url,
        "description": w.description,
        "topics": list(w.topics),
        "status": w.status,
        "requestConfig": {"timeoutMs": w.timeout_ms, "headers": dict(w.headers)},
        "lastStatus": _last_status(w.last_status_code, w.last_status_message, w.last_status_at),
        "health": {
            "avgResponseTime": round(w.avg_response_time),
            "consecutiveFailures": w.consecutive_failures,
            "errorsSinceLastSuccess": w.errors_since_last_success,
            "lastResponseTime": w.last_response_time,
            "lastSuccessAt": iso_or_none(w.last_success_at),
        },
        "secret": w.secret,
        "createdAt": iso_ms(w.created_at),
        "updatedAt": iso_ms(w.updated_at),
        "version": w.version,
    }


def delivery_json(d: Delivery, webhook_active: bool = True) -> dict[str, Any]:
    """A delivery in the log (SPEC §6). ``nextAttemptAt`` is ``null`` when no attempt is
    scheduled: the delivery is finished, or held because its webhook is not active (test
    deliveries are sent whatever the webhook's status)."""
    scheduled = d.status == "pending" and (webhook_active or d.is_test)
    return {
        "object": "webhook_delivery",
        "id": d.id,
        "webhookId": d.webhook_id,
        "eventId": d.event_id,
        "topic": d.topic,
        "status": d.status,
        "attemptCount": d.attempt_count,
        "nextAttemptAt": iso_or_none(d.next_attempt_at) if scheduled else None,
        "lastAttemptAt": iso_or_none(d.last_attempt_at),
        "lastStatus": _last_status(d.last_status_code, d.last_status_message, d.last_attempt_at),
        "createdAt": iso_ms(d.created_at),
    }
