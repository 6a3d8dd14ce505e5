"""``POST /v2/events``: publishing an event to every subscribed webhook (SPEC §4)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Request
from pydantic import MISSING, WithJsonSchema
from starlette.responses import Response

from hookd.api.auth import Principal, authenticate
from hookd.api.render import JSONResponse
from hookd.api.routing import HookdRoute
from hookd.api.schemas import EventIn, EventOut
from hookd.api.spec import operation
from hookd.api.validation import (
    IDEMPOTENCY_KEY_PATTERN,
    anchored,
    full_match,
    parse_body,
    read_body,
)
from hookd.clock import iso_ms
from hookd.errors import ApiError
from hookd.metrics import EVENTS
from hookd.store import EventDraft, Store
from hookd.topics import is_conversation_topic

__all__ = ["encode_data", "router"]

router = APIRouter(prefix="/v2/events", tags=["Events"], route_class=HookdRoute)


def encode_data(item: dict[str, Any], changes: list[dict[str, Any]]) -> str:
    """The envelope's ``data`` object as compact JSON text, stored once and sent as is."""
    data = {"object": "notification_event_data", "item": item, "changes": changes}
    try:
        return orjson.dumps(data).decode()
    except orjson.JSONEncodeError:
        pass
    # orjson refuses integers beyond 64 bits and very deep nesting; the standard library
    # takes both (within its own recursion limit).
    try:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (ValueError, RecursionError):
        raise ApiError(
            400, "parameter_invalid", "data is nested too deeply to be sent as JSON.", "data"
        ) from None


def _draft(body: EventIn) -> EventDraft:
    conversation = is_conversation_topic(body.topic)
    for field in ("conversationId", "conversationUrl"):
        if getattr(body, field) is not MISSING and not conversation:
            raise ApiError(
                400,
                "parameter_invalid",
                f"{field} is only accepted for conversation.* and conversation_part.* topics; "
                "remove it.",
                field,
            )
    changes = [change.model_dump() for change in body.data.changes]
    return EventDraft(
        body.topic,
        encode_data(body.data.item, changes),
        None if body.conversationId is MISSING else body.conversationId,
        None if body.conversationUrl is MISSING else body.conversationUrl,
    )


IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": anchored(IDEMPOTENCY_KEY_PATTERN),
            "description": "1 to 255 printable ASCII characters without spaces. The same key "
            "in the same organization within 24 hours answers the first event again "
            "(Idempotent-Replayed: true) and creates nothing.",
        }
    ),
]


@router.post(
    "",
    **operation(
        "publishEvent",
        "Publish an event",
        ok=(202, EventOut, "Accepted: stored, and queued to every subscribed webhook"),
        body=EventIn,
        headers=("Idempotent-Replayed",),
    ),
)
async def publish(
    request: Request,
    principal: Annotated[Principal, Depends(authenticate)],
    idempotency_key: IdempotencyKey = None,
) -> Response:
    if idempotency_key is not None and not full_match(IDEMPOTENCY_KEY_PATTERN, idempotency_key):
        raise ApiError(
            400,
            "idempotency_key_invalid",
            "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces.",
            "Idempotency-Key",
        )
    body = parse_body(await read_body(request), EventIn)
    store: Store = request.app.state.store
    event_id, topic, created_at, created = await store.publish(
        principal.organization.id, _draft(body), idempotency_key
    )
    if created:
        EVENTS.inc()
    response = JSONResponse(
        {"object": "event", "id": event_id, "topic": topic, "createdAt": iso_ms(created_at)},
        status_code=202,
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response
