"""The 27 event topics of Featurebase's webhooks, in the reference's order."""

from __future__ import annotations

__all__ = ["CONVERSATION_TOPIC_PREFIXES", "TOPICS", "TOPIC_SET", "is_conversation_topic"]

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

TOPIC_SET: frozenset[str] = frozenset(TOPICS)

CONVERSATION_TOPIC_PREFIXES = ("conversation.", "conversation_part.")


def is_conversation_topic(topic: str) -> bool:
    """Whether events of ``topic`` may carry ``conversationId``/``conversationUrl`` (SPEC §4)."""
    return topic.startswith(CONVERSATION_TOPIC_PREFIXES)
