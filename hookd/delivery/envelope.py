"""The request body hookd POSTs: Featurebase's ``notification_event`` envelope (SPEC §5)."""

from __future__ import annotations

import orjson

from hookd.clock import iso_ms
from hookd.store.records import ClaimedDelivery, Event

__all__ = ["build_body", "event_body"]


def event_body(event: Event, webhook_id: str, attempt_number: int) -> bytes:
    """The body of attempt ``attempt_number`` (1-based) of ``event`` to ``webhook_id``."""
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
    webhook_id: str,
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
