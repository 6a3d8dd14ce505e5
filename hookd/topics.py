"""The 27 event topics of Featurebase's webhooks, in the reference's order, and hookd's own
operational topics (SPEC §4), which webhooks may subscribe to but only hookd publishes."""

from __future__ import annotations

__all__ = [
    "ALL_TOPICS",
    "CONVERSATION_TOPIC_PREFIXES",
    "DELIVERY_FAILED",
    "OPERATIONAL_TOPICS",
    "TOPICS",
    "TOPIC_SET",
    "WEBHOOK_SUSPENDED",
    "is_conversation_topic",
    "is_operational_topic",
]

TOPICS: tuple[str, ...] = (
    "post.created",
    "post.updated",
    "post.deleted",
    "post.voted",
    "ticket.created",
    "ticket.updated",
    "ticket.deleted",
    "changelog.published",
    "comment.created",
    "comment.updated",
    "comment.deleted",
    "conversation.user.created",
    "conversation.user.replied",
    "conversation.admin.replied",
    "conversation.admin.closed",
    "conversation.handover_requested",
    "conversation.admin.assigned",
    "conversation.admin.noted",
    "conversation.admin.snoozed",
    "conversation.admin.unsnoozed",
    "conversation.admin.opened",
    "conversation.priority.updated",
    "conversation.deleted",
    "conversation.contact.attached",
    "conversation.contact.detached",
    "conversation.read",
    "conversation_part.redacted",
)

WEBHOOK_SUSPENDED = "webhook.suspended"
DELIVERY_FAILED = "delivery.failed"
#: Published by hookd itself (hookd.store.operational); ``POST /v2/events`` refuses them.
OPERATIONAL_TOPICS: tuple[str, ...] = (WEBHOOK_SUSPENDED, DELIVERY_FAILED)
#: Every topic a webhook may subscribe to, a stream may filter on and an event may have.
ALL_TOPICS: tuple[str, ...] = TOPICS + OPERATIONAL_TOPICS

TOPIC_SET: frozenset[str] = frozenset(ALL_TOPICS)

CONVERSATION_TOPIC_PREFIXES = ("conversation.", "conversation_part.")


def is_conversation_topic(topic: str) -> bool:
    """Whether events of ``topic`` may carry ``conversationId``/``conversationUrl`` (SPEC §4)."""
    return topic.startswith(CONVERSATION_TOPIC_PREFIXES)


def is_operational_topic(topic: str) -> bool:
    """Whether ``topic`` is one of hookd's own (SPEC §4 "Operational topics")."""
    return topic in OPERATIONAL_TOPICS
