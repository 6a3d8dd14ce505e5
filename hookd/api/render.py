"""The API's objects as JSON-ready dicts, and the response type that sends them."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse as StarletteJSONResponse

from hookd.clock import iso_ms, iso_or_none
from hookd.store.records import Attempt, Delivery, EventDetail, EventSummary, Webhook

__all__ = [
    "JSONResponse",
    "attempt_json",
    "delivery_json",
    "event_detail_json",
    "event_json",
    "webhook_json",
]


class JSONResponse(StarletteJSONResponse):
    """Compact JSON via orjson (a JSON response type, so OpenAPI documents it as JSON)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


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


def attempt_json(a: Attempt) -> dict[str, Any]:
    # Bodies are kept as received (at most 4 KiB of bytes); shown as text, with any bytes
    # that are not UTF-8 replaced, so binary or cut-off bodies never break the JSON.
    body = None if a.response_body is None else a.response_body.decode("utf-8", "replace")
    return {
        "object": "webhook_delivery_attempt",
        "id": a.id,
        "attemptNumber": a.attempt_number,
        "attemptedAt": iso_ms(a.attempted_at),
        "succeeded": a.succeeded,
        "statusCode": a.status_code,
        "responseTimeMs": a.response_time_ms,
        "responseBody": body,
        "error": a.error,
    }


def event_json(e: EventSummary) -> dict[str, Any]:
    """An event as lists and ``POST /v2/events`` show it (SPEC §4)."""
    return {"object": "event", "id": e.id, "topic": e.topic, "createdAt": iso_ms(e.created_at)}


# How encode_data (hookd.api.events) starts the stored data; what follows is {item, changes}.
_DATA_PREFIX = '{"object":"notification_event_data",'


def _published_data(stored: str) -> Any:
    """The event's ``data`` as published, ``{item, changes}``: the stored envelope data
    without its ``object``, embedded as it is (so integers beyond 64 bits stay exact)."""
    if stored.startswith(_DATA_PREFIX):
        return orjson.Fragment("{" + stored[len(_DATA_PREFIX) :])
    data = orjson.loads(stored)
    data.pop("object", None)
    return data


def event_detail_json(detail: EventDetail) -> dict[str, Any]:
    """``GET /v2/events/{eventId}``: the event, its data and conversation fields (when it
    carried them), and every delivery of it, oldest first."""
    e = detail.event
    body = event_json(EventSummary(e.id, e.topic, e.created_at))
    if e.conversation_id is not None:
        body["conversationId"] = e.conversation_id
    if e.conversation_url is not None:
        body["conversationUrl"] = e.conversation_url
    body["data"] = _published_data(e.data)
    statuses = detail.webhook_statuses
    body["deliveries"] = [
        delivery_json(d, statuses.get(d.webhook_id) == "active") for d in detail.deliveries
    ]
    return body
