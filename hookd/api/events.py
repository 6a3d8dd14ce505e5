"""Events (SPEC §4): publishing one to every subscribed webhook, listing them, and reading
one with every delivery of it."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import MISSING, WithJsonSchema
from starlette.responses import Response

from hookd import tracing
from hookd.api.auth import (
    Principal,
    authenticate,
    authenticate_in_write,
    confirm_key,
    count_request,
)
from hookd.api.feed import Feed
from hookd.api.pagination import Cursor, ListScope, cursors_for, page
from hookd.api.render import JSONResponse, event_detail_json, event_json
from hookd.api.routing import HookdRoute
from hookd.api.schemas import (
    TOPICS_LIST_PATTERN,
    EventDetailOut,
    EventIn,
    EventList,
    EventOut,
    StreamEventOut,
    component,
)
from hookd.api.spec import operation
from hookd.api.stream import EventStreamResponse, stream_events
from hookd.api.validation import (
    IDEMPOTENCY_KEY_PATTERN,
    anchored,
    full_match,
    parse_body,
    parse_time,
    read_body,
)
from hookd.clock import iso_ms
from hookd.errors import ApiError
from hookd.ids import is_event_id
from hookd.metrics import METRICS
from hookd.store import EventDraft, KeyCheck, KeyCheckFailed, Store
from hookd.store.events import FIRST_EVENT_PAGE
from hookd.topics import TOPIC_SET, is_conversation_topic

__all__ = ["encode_data", "lookup_router", "router"]

router = APIRouter(prefix="/v2/events", tags=["Events"], route_class=HookdRoute)
# /v2/events/{...}: routed after the webhook routes, whose paths have as many segments
# (hookd.api.routing tries those in order): GET /v2/webhooks/{id} is the hotter route.
lookup_router = APIRouter(prefix="/v2/events", tags=["Events"], route_class=HookdRoute)


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
        links={"getEvent": {"eventId": "$response.body#/id"}},
    ),
)
async def publish(
    request: Request,
    principal: Annotated[Principal, Depends(authenticate_in_write)],
    idempotency_key: IdempotencyKey = None,
) -> Response:
    # A key taken on trust (authenticate_in_write) is checked by the publish's write; an
    # answer before it (an invalid request) confirms the key first, so that a 401 or 429
    # comes before a 400 as SPEC §2 orders them.
    check: KeyCheck | None = getattr(request.state, "key_check", None)
    try:
        if idempotency_key is not None and not full_match(IDEMPOTENCY_KEY_PATTERN, idempotency_key):
            raise ApiError(
                400,
                "idempotency_key_invalid",
                "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces.",
                "Idempotency-Key",
            )
        body = parse_body(await read_body(request), EventIn)
        draft = _draft(body)
    except ApiError:
        if check is not None:
            await confirm_key(request, stale=False)
        raise
    store: Store = request.app.state.store
    with tracing.publish_span(principal.organization.id, body.topic) as span:
        if span is not None:
            # Each attempt's span links to this trace (hookd.tracing).
            draft = dataclasses.replace(draft, traceparent=tracing.traceparent())
        try:
            event_id, topic, created_at, created, used = await store.publish(
                principal.organization.id, draft, idempotency_key, check
            )
        except KeyCheckFailed as failed:
            if failed.request_count is not None and check is not None:  # counted, over the limit
                count_request(request, failed.request_count, check.checked_at)
            # The key is not as it was: look it up (the 401 due, or the principal as it is
            # now) and publish as for any other key.
            principal = await confirm_key(request, stale=True)
            event_id, topic, created_at, created, used = await store.publish(
                principal.organization.id, draft, idempotency_key
            )
        if used is not None and check is not None:  # counted by the statement
            count_request(request, used, check.checked_at)
        if span is not None:
            span.set_attribute("hookd.event", event_id)
    if created:
        METRICS.event_published(topic)
    response = JSONResponse(
        {"object": "event", "id": event_id, "topic": topic, "createdAt": iso_ms(created_at)},
        status_code=202,
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response


DateTime = Annotated[str | None, Query(max_length=64), WithJsonSchema(component("DateTime"))]
TopicQuery = Annotated[str | None, WithJsonSchema(component("Topic"))]


@router.get(
    "",
    **operation(
        "listEvents",
        "List events, newest first",
        ok=(200, EventList, "A page of the organization's events, newest first"),
    ),
)
async def list_events(
    request: Request,
    principal: Annotated[Principal, Depends(authenticate)],
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    cursor: Cursor = None,
    topic: TopicQuery = None,
    since: DateTime = None,
    until: DateTime = None,
) -> Response:
    if topic is not None and topic not in TOPIC_SET:
        raise ApiError(
            400, "parameter_invalid", "topic must be one of the topics of /openapi.json.", "topic"
        )
    since_ms = None if since is None else parse_time(since, "since")
    until_ms = None if until is None else parse_time(until, "until")
    # The cursor belongs to the list with these filters, however their times were written.
    scope = ListScope.of(
        "events", principal.organization.id, topic=topic, since=since_ms, until=until_ms
    )
    cursors = await cursors_for(request)
    before = cursors.decode_key(scope, cursor, is_key=is_event_id, first=FIRST_EVENT_PAGE)
    if since_ms is not None and until_ms is not None and until_ms <= since_ms:
        # An empty window is an empty list, as a database query would answer, not an error.
        return JSONResponse({"object": "list", "data": [], "nextCursor": None})
    store: Store = request.app.state.store
    found = await store.list_events(
        principal.organization.id,
        topic=topic,
        since=since_ms,
        until=until_ms,
        before=before,
        limit=limit + 1,
    )
    return JSONResponse(page(cursors, scope, found, limit, event_json, lambda e: (e.id,)))


def _topics(value: str | None) -> frozenset[str] | None:
    if value is None:
        return None
    if len(value) > 2000:
        raise ApiError(
            400, "parameter_too_long", "topics must be at most 2000 characters long.", "topics"
        )
    topics = frozenset(value.split(","))
    unknown = sorted(topics - TOPIC_SET)
    if unknown:
        shown = unknown[0] if len(unknown[0]) <= 60 else unknown[0][:57] + "..."
        raise ApiError(
            400,
            "topic_unknown",
            f"topics: {shown!r} is not a known topic; give topics separated by commas.",
            "topics",
        )
    return topics


@lookup_router.get(
    "/stream",
    response_class=EventStreamResponse,
    **operation(
        "streamEvents",
        "Stream events as they are published (Server-Sent Events)",
        ok=(
            200,
            StreamEventOut,
            "Server-Sent Events: `event: ready`, then one message per event (`id`: the event "
            "id, `data`: the delivery envelope with `webhookId: null`), comment lines as "
            "heartbeats, and `event: error` before hookd ends the stream",
        ),
        media_type="text/event-stream",
    ),
)
async def stream(
    request: Request,
    principal: Annotated[Principal, Depends(authenticate)],
    topics: Annotated[
        str | None,
        Query(max_length=2000),
        WithJsonSchema(
            {
                "type": "string",
                "pattern": TOPICS_LIST_PATTERN,
                "maxLength": 2000,
                "description": "Only these topics, separated by commas (default: every topic)",
            }
        ),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="Resume after this event: first every later one still kept",
        ),
        WithJsonSchema(component("EventId")),
    ] = None,
) -> Response:
    wanted = _topics(topics)
    if last_event_id is not None and not is_event_id(last_event_id.strip()):
        raise ApiError(
            400,
            "parameter_invalid",
            "Last-Event-ID must be the id of an event (notif_…) that this stream sent.",
            "Last-Event-ID",
        )
    feed: Feed = request.app.state.feed
    listener = await feed.subscribe(principal.organization.id, wanted)
    resume = None if last_event_id is None else last_event_id.strip()
    store: Store = request.app.state.store
    return EventStreamResponse(stream_events(feed, listener, resume, store.clock))


@lookup_router.get(
    "/{eventId}",
    **operation(
        "getEvent",
        "Get an event with its data and every delivery of it",
        ok=(200, EventDetailOut, "The event, its data and its deliveries"),
    ),
)
async def get_event(
    request: Request, principal: Annotated[Principal, Depends(authenticate)], eventId: str
) -> Response:
    store: Store = request.app.state.store
    found = (
        await store.get_event(principal.organization.id, eventId) if is_event_id(eventId) else None
    )
    if found is None:
        raise ApiError(404, "resource_missing", "No event has this id.", "eventId")
    return JSONResponse(event_detail_json(found))
