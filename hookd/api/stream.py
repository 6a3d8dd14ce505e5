"""``GET /v2/events/stream``: an organization's events as Server-Sent Events (SPEC §10).

One message per published event, as it is published: ``id`` is the event id and ``data``
the §5 envelope that a webhook would get, with ``webhookId: null`` (``hookd listen`` forwards
it as it is). The stream opens with an ``event: ready`` message whose ``id`` a client that reconnects
before any event came resumes from; a comment line every
:attr:`Feed.heartbeat` seconds keeps proxies from closing an idle stream; a stream that ends
on hookd's side sends ``event: error`` with a code and a message first (see
:data:`~hookd.api.feed.DROP_REASONS`). A client that reconnects with ``Last-Event-ID``
first gets every event published after that one that is still within the retention.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.responses import StreamingResponse

from hookd.api.feed import DROP_REASONS, Feed, Listener
from hookd.clock import Clock
from hookd.delivery.envelope import event_body
from hookd.errors import DatabaseUnavailable
from hookd.ids import event_id_floor, first_event_id
from hookd.store import Event, Store

__all__ = ["HEARTBEAT", "EventStreamResponse", "event_message", "stream_events"]

HEARTBEAT = b": heartbeat\n\n"
# How long a reconnecting EventSource waits, in ms (hookd listen has its own back-off).
_RETRY_MS = 2000
_REPLAY_PAGE = 100
# Events published this long before a listener subscribed may still reach it live, after
# a replay sent them too: those replayed ids are remembered, so that none is sent twice.
_OVERLAP_MS = 60_000


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], status_code: int = 200) -> None:
        # no-store: never cached; X-Accel-Buffering: nginx passes each message at once.
        super().__init__(
            content,
            status_code,
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )


def event_message(event: Event) -> bytes:
    """One event as an SSE message (compact JSON has no line breaks: one ``data`` line)."""
    return b"id: " + event.id.encode() + b"\ndata: " + event_body(event, None, 1) + b"\n\n"


def _control(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


async def _replay(store: Store, listener: Listener, after: str) -> AsyncIterator[Event]:
    """The listener's events published after ``after``, oldest first, a page at a time."""
    while listener.dropped is None:
        page = await store.events_after(listener.organization_id, after, _REPLAY_PAGE)
        for event in page:
            if listener.wants(event):
                yield event
        if len(page) < _REPLAY_PAGE:
            return
        after = page[-1].id


async def stream_events(
    feed: Feed, listener: Listener, last_event_id: str | None, clock: Clock
) -> AsyncIterator[bytes]:
    """The stream's messages for a subscribed ``listener``; unsubscribes it when done."""
    subscribed_at = clock()
    try:
        ready = {
            "object": "stream",
            "organizationId": listener.organization_id,
            "topics": None if listener.topics is None else sorted(listener.topics),
            "resumedAfter": last_event_id,
        }
        # The ready message's id is where a client that reconnects before it sees an event
        # resumes: from the moment it subscribed, so it misses nothing in between.
        resume = last_event_id or first_event_id(subscribed_at)
        yield f"retry: {_RETRY_MS}\nid: {resume}\n".encode() + _control("ready", ready)
        replayed: set[str] = set()
        if last_event_id is not None:
            overlap = event_id_floor(subscribed_at - _OVERLAP_MS)
            try:
                async for event in _replay(feed.store, listener, last_event_id):
                    if event.id >= overlap:
                        replayed.add(event.id)
                    yield event_message(event)
            except DatabaseUnavailable:
                listener.drop("database_unavailable")
        while True:
            live = await listener.next(feed.heartbeat)
            if listener.dropped is not None:
                reason = listener.dropped
                yield _control("error", {"code": reason, "message": DROP_REASONS[reason]})
                return
            if live is None:
                yield HEARTBEAT
            elif live.id not in replayed:
                yield event_message(live)
    finally:
        feed.unsubscribe(listener)
