"""The request hookd POSTs (SPEC §5): Featurebase's ``notification_event`` envelope, and the
headers that go with it. ``hookd listen`` sends the same request to a local URL."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import orjson

from hookd import __version__
from hookd.clock import iso_ms
from hookd.signing import signature_headers
from hookd.store.records import ClaimedDelivery, Event

__all__ = ["USER_AGENT", "build_body", "event_body", "request_headers"]

USER_AGENT = f"hookd/{__version__}"


def request_headers(
    secrets: Sequence[str],
    event_id: str,
    topic: str,
    attempt_number: int,
    body: bytes,
    timestamp: int,
    custom: Iterable[tuple[str, str]] = (),
) -> dict[str, str]:
    """Every header of an attempt: the webhook's ``custom`` ones first, so that hookd's own
    (the signatures over ``body`` with the live ``secrets``, newest first) override them."""
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **dict(custom),
        **signature_headers(secrets, event_id, timestamp, body),
        "X-Webhook-Topic": topic,
        "X-Webhook-Attempt": str(attempt_number),
    }


def event_body(event: Event, webhook_id: str | None, attempt_number: int) -> bytes:
    """The body of attempt ``attempt_number`` (1-based) of ``event`` to ``webhook_id``
    (``None``: to no webhook, as ``hookd listen`` forwards it)."""
    return _body(
        event.id,
        event.topic,
        event.organization_id,
        webhook_id,
        event.created_at,
        attempt_number,
        event.conversation_id,
        event.conversation_url,
        event.data,
    )


def build_body(claimed: ClaimedDelivery) -> bytes:
    """The body of the attempt about to be made for a claimed delivery."""
    return _body(
        claimed.event_id,
        claimed.topic,
        claimed.organization_id,
        claimed.webhook_id,
        claimed.event_created_at,
        claimed.attempt_count + 1,
        claimed.conversation_id,
        claimed.conversation_url,
        claimed.data,
    )


def _body(
    event_id: str,
    topic: str,
    organization_id: str,
    webhook_id: str | None,
    created_at: int,
    attempt_number: int,
    conversation_id: str | None,
    conversation_url: str | None,
    data: str,
) -> bytes:
    # ``data`` is stored already serialized (by orjson, from validated input), so the
    # envelope is assembled around it instead of parsing and re-encoding it per attempt.
    parts = [
        b'{"object":"notification_event","id":',
        orjson.dumps(event_id),
        b',"topic":',
        orjson.dumps(topic),
        b',"organizationId":',
        orjson.dumps(organization_id),
        b',"webhookId":',
        orjson.dumps(webhook_id),
        b',"createdAt":"',
        iso_ms(created_at).encode(),
        b'","deliveryStatus":"',
        b"pending" if attempt_number <= 1 else b"retrying",
        b'"',
    ]
    if conversation_id is not None:
        parts += (b',"conversationId":', orjson.dumps(conversation_id))
    if conversation_url is not None:
        parts += (b',"conversationUrl":', orjson.dumps(conversation_url))
    parts += (b',"data":', data.encode(), b"}")
    return b"".join(parts)
