"""The API's objects as JSON-ready dicts, and the response type that sends them."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse as StarletteJSONResponse

from hookd.clock import iso_ms
from hookd.objects import delivery_json, webhook_json
from hookd.store.records import Attempt, EventDetail, EventSummary

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
