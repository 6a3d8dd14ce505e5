"""Store operations on events: publishing (which creates deliveries), test events, recovery,
and reading events back (the list, one event with its deliveries, a stream's catch-up)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hookd.ids import EVENT_ID_PREFIX, event_id_floor, new_event_id, new_object_id
from hookd.store.queries import Op, announce, many, notify, one, rows, run, value
from hookd.store.records import Delivery, Event, EventDetail, EventSummary, _json_list, record

__all__ = [
    "FIRST_EVENT_PAGE",
    "IDEMPOTENCY_TTL_MS",
    "EventDraft",
    "KeyCheck",
    "KeyCheckFailed",
    "create_test_delivery",
    "events_after",
    "events_by_ids",
    "get_event",
    "list_events",
    "publish",
    "publish_in_one_statement",
    "recover_chunk",
]

IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000
_RECOVER_CHUNK = 500


@record
class EventDraft:
    """A validated event to publish; ``data`` is the envelope's ``data`` as JSON text."""

    topic: str
    data: str
    conversation_id: str | None = None
    conversation_url: str | None = None
    # The W3C traceparent of the publishing request (hookd.tracing), when tracing is on.
    traceparent: str | None = None


@record
class KeyCheck:
    """The authentication that a publish does in its own write, for an API key that this
    process authenticated before (hookd.api.auth.KnownKeys): the key (``key_hash``) must
    still be live and of the organization, whose default version must still be
    ``default_version``. On PostgreSQL, with ``window_start``, the publish statement also
    counts the request in the key's window, and it must be within ``rate_limit`` (SQLite
    counts requests in the API process). ``checked_at``: the request's time, which its
    rate-limit headers are computed from. ``counted``: the request's number in its key's
    window when the API process counted it already (SQLite), so that a look-up after a
    failed check does not count it again."""

    key_hash: str
    default_version: str | None
    window_start: int | None
    rate_limit: int
    checked_at: int
    counted: int | None = None


class KeyCheckFailed(Exception):
    """A publish's :class:`KeyCheck` failed, and nothing was written. ``request_count``:
    the request's number in its window when the key holds but the count is over the limit
    (the request was counted); ``None`` when the key no longer holds as it was (revoked,
    gone, or its organization's default version changed; nothing was counted)."""

    def __init__(self, request_count: int | None) -> None:
        super().__init__(request_count)
        self.request_count = request_count


def _insert_event(
    organization_id: str, draft: EventDraft, now: int, *, is_test: bool, event_id: str
) -> Op[Event]:
    event = Event(
        event_id,
        organization_id,
        draft.topic,
        draft.data,
        draft.conversation_id,
        draft.conversation_url,
        is_test,
        now,
    )
    yield run(
        "event_insert", **_event_columns(event_id, organization_id, draft, now), is_test=is_test
    )
    return event


def _event_columns(
    event_id: str, organization_id: str, draft: EventDraft, now: int
) -> dict[str, Any]:
    """An event's columns as statement parameters (``is_test`` aside)."""
    return {
        "id": event_id,
        "organization_id": organization_id,
        "topic": draft.topic,
        "data": draft.data,
        "conversation_id": draft.conversation_id,
        "conversation_url": draft.conversation_url,
        "created_at": now,
        "traceparent": draft.traceparent,
    }


def _delivery_row(
    webhook_id: str, event_id: str, topic: str, is_test: bool, now: int
) -> dict[str, Any]:
    return {
        "id": new_object_id(now),
        "webhook_id": webhook_id,
        "event_id": event_id,
        "topic": topic,
        "is_test": is_test,
        "next_attempt_at": now,
        "created_at": now,
    }


def publish(
    organization_id: str,
    draft: EventDraft,
    idempotency_key: str | None,
    now: int,
    check: KeyCheck | None = None,
) -> Op[tuple[str, str, int, bool]]:
    """Store an event and one delivery per subscribed active webhook, in one transaction.

    Returns the event's ``(id, topic, created_at, created)``: the new event's, or, when the
    idempotency key was used in the last 24 hours, the first event's with ``created`` false
    (and nothing is written). With ``check``, the key is checked first, in the same
    transaction (:class:`KeyCheck`, its count aside; :class:`KeyCheckFailed` if it fails,
    and nothing is written).
    """
    if check is not None and not (
        yield value(
            "api_key_holds",
            key_hash=check.key_hash,
            organization_id=organization_id,
            default_version=check.default_version,
        )
    ):
        raise KeyCheckFailed(None)
    event_id = new_event_id(now)
    if idempotency_key is not None:
        taken = yield run(
            "idempotency_claim",
            organization_id=organization_id,
            key=idempotency_key,
            event_id=event_id,
            created_at=now,
            expired_before=now - IDEMPOTENCY_TTL_MS,
        )
        if not taken:
            first = yield one(
                "idempotency_get", organization_id=organization_id, key=idempotency_key
            )
            if first is not None:
                return first["id"], first["topic"], first["created_at"], False
    yield from _insert_event(organization_id, draft, now, is_test=False, event_id=event_id)
    targets = yield rows("webhooks_active", organization_id=organization_id)
    batch = [
        _delivery_row(t["id"], event_id, draft.topic, False, now)
        for t in targets
        if draft.topic in _json_list(t["topics"])
    ]
    if batch:
        yield many("delivery_insert", batch)
        yield notify()
    yield announce(organization_id, event_id)
    return event_id, draft.topic, now, True


# How many targets the last publish of each organization and topic through this process
# had: the number of delivery ids the next one sends (ids are cheap, a statement sent
# again is not).
_TARGETS_SEEN: dict[tuple[str, str], int] = {}
_TARGETS_SEEN_MAX = 10_000
_SPARE_IDS = 2


def publish_in_one_statement(
    organization_id: str,
    draft: EventDraft,
    idempotency_key: str | None,
    now: int,
    check: KeyCheck | None = None,
) -> Op[tuple[str, str, int, bool, int | None]]:
    """:func:`publish` for PostgreSQL in one atomic statement: the idempotency key, the
    event and its deliveries are written together or not at all, and the statement finds
    the targets itself, so a publish is one round trip. It needs a delivery id per target:
    it is sent as many as the last publish of the organization and topic had targets, and
    a few more, and is sent again with enough in the rare case that they do not suffice (a
    webhook created or subscribed since), having written nothing.

    With ``check``, the same statement authenticates the request (:class:`KeyCheck`;
    :class:`KeyCheckFailed` if it fails) and the result's last item is the request's count
    in its window (``None`` when not counted)."""
    event_id = new_event_id(now)
    seen = (organization_id, draft.topic)
    wanted = _TARGETS_SEEN.get(seen, 0) + _SPARE_IDS
    request_count: int | None = None
    while True:
        written = yield one(
            "publish",
            **_event_columns(event_id, organization_id, draft, now),
            key=idempotency_key,
            expired_before=now - IDEMPOTENCY_TTL_MS,
            delivery_ids=[new_object_id(now) for _ in range(wanted)],
            key_hash=None if check is None else check.key_hash,
            default_version=None if check is None else check.default_version,
            window_start=None if check is None else check.window_start,
            rate_limit=0 if check is None else check.rate_limit,
        )
        if check is not None:
            request_count = written["request_count"]
            if not written["key_ok"] or (
                request_count is not None and request_count > check.rate_limit
            ):
                raise KeyCheckFailed(request_count if written["key_ok"] else None)
            # Authenticated and counted once: a statement sent again (more ids) checks no more.
            check = None
        targets = written["targets"]
        if len(_TARGETS_SEEN) >= _TARGETS_SEEN_MAX and seen not in _TARGETS_SEEN:
            _TARGETS_SEEN.clear()
        _TARGETS_SEEN[seen] = targets
        if targets <= wanted:
            break
        wanted = targets + _SPARE_IDS
    if not written["created"]:
        first = yield one("idempotency_get", organization_id=organization_id, key=idempotency_key)
        return first["id"], first["topic"], first["created_at"], False, request_count
    if written["deliveries"]:
        yield notify()
    yield announce(organization_id, event_id)
    return event_id, draft.topic, now, True, request_count


def create_test_delivery(
    organization_id: str, webhook_id: str, draft: EventDraft, now: int
) -> Op[Delivery]:
    """A synthetic event and its delivery to one webhook, sent whatever the webhook's status."""
    event = yield from _insert_event(
        organization_id, draft, now, is_test=True, event_id=new_event_id(now)
    )
    row = _delivery_row(webhook_id, event.id, draft.topic, True, now)
    yield many("delivery_insert", [row])
    yield notify()
    created = yield one("delivery_get", id=row["id"], webhook_id=webhook_id)
    return Delivery.from_row(created)


@dataclass(frozen=True, slots=True)
class RecoveryPage:
    """Where a recovery stands: events queued by the last chunk, and where to go on."""

    queued: int
    after_at: int
    after_id: str
    done: bool


def recover_chunk(
    organization_id: str,
    webhook_id: str,
    topics: list[str],
    since: int,
    until: int,
    after: tuple[int, str],
    now: int,
) -> Op[RecoveryPage]:
    """One page of a recovery, in its own transaction: the next events of ``[since, until)``
    on ``topics`` after ``after`` (created_at, id), each queued unless it already has a
    succeeded or pending delivery to the webhook. Recoveries of one webhook take turns page
    by page (PostgreSQL: an advisory lock; SQLite: its one writer), so a second recovery of
    a window sees the first one's deliveries and queues nothing new; nothing else waits.
    """
    yield run("recover_lock", webhook_id=webhook_id)
    page = yield rows(
        "recover_page",
        organization_id=organization_id,
        webhook_id=webhook_id,
        topics=topics,
        since=since,
        until=until,
        after_at=after[0],
        after_id=after[1],
        limit=_RECOVER_CHUNK,
    )
    missing = [r for r in page if r["missing"]]
    if missing:
        yield many(
            "delivery_insert",
            [_delivery_row(webhook_id, r["id"], r["topic"], False, now) for r in missing],
        )
        yield notify()
    if not page:
        return RecoveryPage(0, after[0], after[1], True)
    last = page[-1]
    return RecoveryPage(len(missing), last["created_at"], last["id"], len(page) < _RECOVER_CHUNK)


# Sorts above every event id (hex digits and "-" sort below "g"): the newest page's bound.
FIRST_EVENT_PAGE = EVENT_ID_PREFIX + "g"


def list_events(
    organization_id: str,
    topic: str | None,
    since: int | None,
    until: int | None,
    before: str | None,
    limit: int,
) -> Op[list[EventSummary]]:
    """Up to ``limit`` published events with ids below ``before`` (``None``: from the
    newest), newest first, of one ``topic`` if given, created in ``[since, until)`` (either
    bound optional). Run it in a transaction (a snapshot read), where ``custom_plans``
    applies."""
    before = FIRST_EVENT_PAGE if before is None else before
    params = {
        "organization_id": organization_id,
        "before": before if until is None else min(before, event_id_floor(until)),
        "low": event_id_floor(0 if since is None else since),
        "limit": limit,
    }
    yield run("custom_plans")
    if topic is None:
        found = yield rows("event_list", **params)
    else:
        found = yield rows("event_list_topic", topic=topic, **params)
    return [EventSummary.from_row(r) for r in found]


def get_event(organization_id: str, event_id: str) -> Op[EventDetail | None]:
    """The organization's event with its deliveries; ``None`` for another's or none."""
    row = yield one("event_get_in_org", id=event_id, organization_id=organization_id)
    if row is None:
        return None
    found = yield rows("event_deliveries", event_id=event_id, organization_id=organization_id)
    return EventDetail(
        Event.from_row(row),
        tuple(Delivery.from_row(r) for r in found),
        {r["webhook_id"]: r["webhook_status"] for r in found},
    )


def events_after(organization_id: str, after: str, limit: int) -> Op[list[Event]]:
    """Up to ``limit`` published events with ids above ``after``, oldest first (in a
    transaction: see :func:`list_events`)."""
    yield run("custom_plans")
    found = yield rows("events_after", organization_id=organization_id, after=after, limit=limit)
    return [Event.from_row(r) for r in found]


def events_by_ids(ids: list[str]) -> Op[list[Event]]:
    """The events of ``ids`` that exist (in any order)."""
    found = yield rows("events_by_ids", ids=ids)
    return [Event.from_row(r) for r in found]
