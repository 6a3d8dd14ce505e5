"""The objects the store returns, built from database rows."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, dataclass_transform, get_args

import orjson

from hookd.errors import HookdError

__all__ = [
    "DELIVERY_STATUSES",
    "ApiKey",
    "Attempt",
    "AuthContext",
    "ClaimedDelivery",
    "Conflict",
    "Delivery",
    "DeliveryStatus",
    "Event",
    "EventDetail",
    "EventSummary",
    "Heartbeat",
    "Organization",
    "Peer",
    "PreviousSecrets",
    "Webhook",
    "dump_previous_secrets",
    "live_secrets",
    "previous_secrets",
    "record",
]

_C = TypeVar("_C")


@dataclass_transform(frozen_default=True)
def record(cls: type[_C]) -> type[_C]:
    """A value object: a slotted dataclass that the type checker treats as frozen.

    At run time it is not frozen: a frozen dataclass sets each field through
    ``object.__setattr__``, which made building a 21-field :class:`Webhook` two to three
    times slower, and records are built for every row hookd reads (every API request,
    every claimed delivery). mypy still rejects any assignment to a field.
    """
    return dataclass(slots=True)(cls)


class Conflict(HookdError):
    """A write broke a uniqueness or reference constraint (thrown into the operation)."""


@functools.lru_cache(maxsize=4096)
def _json_list(text: str) -> tuple[str, ...]:
    return tuple(orjson.loads(text))


@functools.lru_cache(maxsize=4096)
def _json_map(text: str) -> tuple[tuple[str, str], ...]:
    return tuple(orjson.loads(text).items())


PreviousSecrets = tuple[tuple[str, int], ...]
"""Secrets a rotation keeps live for a grace period: ``(secret, expires_at)``, newest first."""


@functools.lru_cache(maxsize=4096)
def previous_secrets(text: str) -> PreviousSecrets:
    """``webhooks.previous_secrets`` (JSON ``[{"secret", "expiresAt"}]``) as tuples."""
    if text == "[]":
        return ()
    return tuple((entry["secret"], int(entry["expiresAt"])) for entry in orjson.loads(text))


def dump_previous_secrets(entries: PreviousSecrets) -> str:
    return orjson.dumps([{"secret": s, "expiresAt": at} for s, at in entries]).decode()


def live_secrets(secret: str, previous: PreviousSecrets, now: int) -> list[str]:
    """The secrets that sign an attempt made at ``now``: the current one, then those whose
    grace period has not ended, newest first."""
    if not previous:
        return [secret]
    return [secret, *(s for s, expires_at in previous if expires_at > now)]


@record
class Organization:
    id: str
    name: str
    webhook_limit: int
    default_version: str
    created_at: int

    @classmethod
    def from_row(cls, row: Any) -> Organization:
        return cls(
            row["id"], row["name"], row["webhook_limit"], row["default_version"], row["created_at"]
        )


@record
class ApiKey:
    id: str
    organization_id: str
    label: str | None
    created_at: int
    revoked_at: int | None

    @classmethod
    def from_row(cls, row: Any) -> ApiKey:
        return cls(
            row["id"], row["organization_id"], row["label"], row["created_at"], row["revoked_at"]
        )


@record
class AuthContext:
    """Who a request's API key belongs to; ``request_count`` is set where counting is shared."""

    key_id: str
    revoked: bool
    organization: Organization
    request_count: int | None = None

    @classmethod
    def from_row(cls, row: Any) -> AuthContext:
        org = Organization(
            row["org_id"],
            row["org_name"],
            row["webhook_limit"],
            row["default_version"],
            row["org_created_at"],
        )
        count = row["request_count"] if "request_count" in row.keys() else None  # noqa: SIM118
        return cls(row["key_id"], row["revoked_at"] is not None, org, count)


@record
class Webhook:
    id: str
    organization_id: str
    name: str
    url: str
    description: str | None
    topics: tuple[str, ...]
    status: str
    timeout_ms: int
    headers: tuple[tuple[str, str], ...]
    secret: str
    previous_secrets: PreviousSecrets
    version: str
    created_at: int
    updated_at: int
    last_status_code: int | None
    last_status_message: str | None
    last_status_at: int | None
    avg_response_time: float
    last_response_time: int
    errors_since_last_success: int
    consecutive_failures: int
    last_success_at: int | None

    @classmethod
    def from_row(cls, row: Any) -> Webhook:
        return cls(
            id=row["id"],
            organization_id=row["organization_id"],
            name=row["name"],
            url=row["url"],
            description=row["description"],
            topics=_json_list(row["topics"]),
            status=row["status"],
            timeout_ms=row["timeout_ms"],
            headers=_json_map(row["headers"]),
            secret=row["secret"],
            previous_secrets=previous_secrets(row["previous_secrets"]),
            version=row["version"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            last_status_code=row["last_status_code"],
            last_status_message=row["last_status_message"],
            last_status_at=row["last_status_at"],
            avg_response_time=float(row["avg_response_time"]),
            last_response_time=row["last_response_time"],
            errors_since_last_success=row["errors_since_last_success"],
            consecutive_failures=row["consecutive_failures"],
            last_success_at=row["last_success_at"],
        )


@record
class Event:
    id: str
    organization_id: str
    topic: str
    data: str
    conversation_id: str | None
    conversation_url: str | None
    is_test: bool
    created_at: int

    @classmethod
    def from_row(cls, row: Any) -> Event:
        return cls(
            row["id"],
            row["organization_id"],
            row["topic"],
            row["data"],
            row["conversation_id"],
            row["conversation_url"],
            bool(row["is_test"]),
            row["created_at"],
        )


@record
class EventSummary:
    """An event as lists show it."""

    id: str
    topic: str
    created_at: int

    @classmethod
    def from_row(cls, row: Any) -> EventSummary:
        return cls(row["id"], row["topic"], row["created_at"])


DeliveryStatus = Literal["pending", "succeeded", "failed", "cancelled"]
# Every status a delivery can have; the unfiltered delivery list reads each one's page.
DELIVERY_STATUSES: tuple[DeliveryStatus, ...] = get_args(DeliveryStatus)


@record
class Delivery:
    id: str
    webhook_id: str
    event_id: str
    topic: str
    is_test: bool
    status: str
    attempt_count: int
    next_attempt_at: int | None
    in_flight: bool
    last_attempt_at: int | None
    last_status_code: int | None
    last_status_message: str | None
    created_at: int

    @classmethod
    def from_row(cls, row: Any) -> Delivery:
        return cls(
            row["id"],
            row["webhook_id"],
            row["event_id"],
            row["topic"],
            bool(row["is_test"]),
            row["status"],
            row["attempt_count"],
            row["next_attempt_at"],
            row["lease_until"] is not None,
            row["last_attempt_at"],
            row["last_status_code"],
            row["last_status_message"],
            row["created_at"],
        )


@record
class Attempt:
    id: str
    delivery_id: str
    attempt_number: int
    attempted_at: int
    succeeded: bool
    status_code: int | None
    response_time_ms: int
    response_body: bytes | None
    error: str | None

    @classmethod
    def from_row(cls, row: Any) -> Attempt:
        body = row["response_body"]
        return cls(
            row["id"],
            row["delivery_id"],
            row["attempt_number"],
            row["attempted_at"],
            bool(row["succeeded"]),
            row["status_code"],
            row["response_time_ms"],
            None if body is None else bytes(body),
            row["error"],
        )


@record
class ClaimedDelivery:
    """A delivery leased to this worker, with everything needed to send it."""

    id: str
    webhook_id: str
    event_id: str
    topic: str
    is_test: bool
    attempt_count: int
    lease_until: int
    lease_token: str
    data: str
    event_created_at: int
    conversation_id: str | None
    conversation_url: str | None
    organization_id: str
    url: str
    secret: str
    previous_secrets: PreviousSecrets
    headers: tuple[tuple[str, str], ...]
    timeout_ms: int
    # The trace context of the request that published the event (hookd.tracing), if any.
    traceparent: str | None = None

    @classmethod
    def from_row(cls, row: Any, token: str) -> ClaimedDelivery:
        return cls(
            id=row["id"],
            webhook_id=row["webhook_id"],
            event_id=row["event_id"],
            topic=row["topic"],
            is_test=bool(row["is_test"]),
            attempt_count=row["attempt_count"],
            lease_until=row["lease_until"],
            lease_token=token,
            data=row["data"],
            event_created_at=row["event_created_at"],
            conversation_id=row["conversation_id"],
            conversation_url=row["conversation_url"],
            organization_id=row["organization_id"],
            url=row["url"],
            secret=row["secret"],
            previous_secrets=previous_secrets(row["previous_secrets"]),
            headers=_json_map(row["headers"]),
            timeout_ms=row["timeout_ms"],
            traceparent=row["traceparent"],
        )


@record
class Peer:
    """A delivery worker as its heartbeat row says: its shares of the per-webhook and
    per-organization caps (the most it claims with), and whether it is stopping."""

    id: str
    webhook_share: int
    org_share: int
    stopping: bool

    @classmethod
    def from_row(cls, row: Any) -> Peer:
        return cls(
            id=row["id"],
            webhook_share=row["webhook_share"],
            org_share=row["org_share"],
            stopping=bool(row["stopping"]),
        )


@record
class Heartbeat:
    """What a heartbeat found and wrote: the other live workers, the dead ones it removed
    (and how many leases of theirs went back to the queue), and this worker's new row."""

    me: Peer
    peers: tuple[Peer, ...]
    reaped: tuple[str, ...]
    released: int


@record
class EventDetail:
    """An event with every delivery of it to the organization's webhooks, oldest first, and
    the status of each delivery's webhook (``active``, ``paused``, ``suspended``), which says
    whether a pending delivery is held."""

    event: Event
    deliveries: tuple[Delivery, ...]
    webhook_statuses: Mapping[str, str]
