"""Reading events (SPEC §4 "Reading events", §6 ``eventId`` and held deliveries), on SQLite and
PostgreSQL: the list and its filters, one event with every delivery of it, validation,
tenancy, and paging while events are being published."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import pytest

from hookd.clock import iso_ms
from tests.conftest import Api
from tests.test_webhooks_api import assert_error, ok

# 2026-01-02T03:04:05.000Z and a minute apart after it.
T0 = 1_767_323_045_000
MINUTE = 60_000


@contextmanager
def clock_at(api: Api, ms: int) -> Iterator[None]:
    """Publish as if the time were ``ms`` (the store takes its clock as a parameter)."""
    saved = api.store.clock
    api.store.clock = lambda: ms
    try:
        yield
    finally:
        api.store.clock = saved


async def publish_at(api: Api, ms: int, topic: str = "post.created", **body: Any) -> dict[str, Any]:
    with clock_at(api, ms):
        if body:
            response = await api.post("/v2/events", json={"topic": topic, **body})
            published: dict[str, Any] = ok(response, 202)
            return published
        return await api.publish(topic)


async def listed(api: Api, query: str = "", key: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = ok(await api.get(f"/v2/events?{query}", key=key))
    return body


def ids(page: dict[str, Any]) -> list[str]:
    return [e["id"] for e in page["data"]]


async def walk(api: Api, query: str, limit: int) -> list[str]:
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        page = await listed(api, f"{query}&limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
        assert len(page["data"]) <= limit
        seen += ids(page)
        cursor = page["nextCursor"]
        if cursor is None:
            return seen
    raise AssertionError("the walk did not end")


# The list.


async def test_list_is_newest_first_without_test_events(api: Api) -> None:
    hook = await api.create_webhook(topics=["post.created", "comment.created"])
    events = [
        await publish_at(api, T0 + i * MINUTE, "comment.created" if i % 2 else "post.created")
        for i in range(5)
    ]
    ok(await api.post(f"/v2/webhooks/{hook['id']}/test", json={}), 202)
    page = await listed(api)
    assert page["nextCursor"] is None
    assert page["data"] == [
        {"object": "event", "id": e["id"], "topic": e["topic"], "createdAt": e["createdAt"]}
        for e in reversed(events)
    ], "expected the published events, newest first, and no test event"


async def test_topic_and_time_filters(api: Api) -> None:
    events = [
        await publish_at(api, T0 + i * MINUTE, "comment.created" if i % 2 else "post.created")
        for i in range(6)
    ]
    newest_first = list(reversed(events))
    page = await listed(api, "topic=comment.created")
    assert ids(page) == [e["id"] for e in newest_first if e["topic"] == "comment.created"]
    since, until = iso_ms(T0 + 2 * MINUTE), iso_ms(T0 + 4 * MINUTE)
    assert ids(await listed(api, f"since={since}&until={until}")) == [
        events[3]["id"],
        events[2]["id"],
    ], "expected since to be inclusive and until exclusive"
    assert ids(await listed(api, f"since={since}")) == [e["id"] for e in newest_first[:4]]
    assert ids(await listed(api, f"until={until}")) == [e["id"] for e in newest_first[2:]]
    assert ids(await listed(api, f"topic=post.created&since={since}&until={until}")) == [
        events[2]["id"]
    ]
    # Any offset: 05:05:05+02:00 and 02:35:05-00:30 are 03:05:05Z, the time of events[1]; a
    # "+" sent unencoded arrives as a space and means the same.
    for offset in (quote("+02:00"), "+02:00", "-00:30"):
        shifted = "2026-01-02T05:05:05" if offset != "-00:30" else "2026-01-02T02:35:05"
        got = ids(await listed(api, f"since={shifted}{offset}&until={until}"))
        assert got == [e["id"] for e in reversed(events[1:4])], (offset, got)


@pytest.mark.parametrize(
    ("query", "code", "param"),
    [
        ("limit=0", "parameter_invalid", "limit"),
        ("limit=101", "parameter_invalid", "limit"),
        ("limit=ten", "parameter_invalid", "limit"),
        ("topic=post.exploded", "parameter_invalid", "topic"),
        ("since=yesterday", "parameter_invalid", "since"),
        ("until=2026-01-02T03:04:05", "parameter_invalid", "until"),
        ("cursor=nonsense", "cursor_invalid", "cursor"),
        ("cursor=" + "a" * 600, "cursor_invalid", "cursor"),
        ("status=pending", "parameter_unknown", "status"),
        ("topic=post.created&topic=post.updated", "parameter_invalid", "topic"),
    ],
)
async def test_list_validation(api: Api, query: str, code: str, param: str) -> None:
    assert_error(await api.get(f"/v2/events?{query}"), 400, code, param)


async def test_an_empty_window_is_an_empty_list(api: Api) -> None:
    await api.publish()
    for window in (
        "since=2026-01-02T03:04:05Z&until=2026-01-02T03:04:05Z",
        "since=2030-01-01T00:00:00Z&until=2020-01-01T00:00:00Z",
    ):
        response = await api.get(f"/v2/events?{window}")
        assert response.status_code == 200, response.text
        assert response.json() == {"object": "list", "data": [], "nextCursor": None}, window


async def test_walking_pages_returns_every_event_once_and_cursors_keep_their_filters(
    api: Api,
) -> None:
    events = [await publish_at(api, T0 + i * MINUTE) for i in range(7)]
    expected = [e["id"] for e in reversed(events)]
    for limit in (1, 2, 3, 7, 100):
        assert await walk(api, "", limit) == expected, f"limit={limit}"
    since = iso_ms(T0 + MINUTE)
    assert await walk(api, f"since={since}", 2) == expected[:6]
    filtered = await listed(api, f"since={since}&limit=2")
    assert filtered["nextCursor"]
    for other in ("", f"since={iso_ms(T0)}", "topic=post.created", f"until={since}"):
        response = await api.get(f"/v2/events?{other}&cursor={filtered['nextCursor']}")
        assert_error(response, 400, "cursor_invalid", "cursor")
    # The same window written another way is the same list.
    same = quote("2026-01-02T05:05:05+02:00")
    assert ok(await api.get(f"/v2/events?since={same}&cursor={filtered['nextCursor']}"))
    hook = await api.create_webhook()
    deliveries = await api.get(
        f"/v2/webhooks/{hook['id']}/deliveries?cursor={filtered['nextCursor']}"
    )
    assert_error(deliveries, 400, "cursor_invalid", "cursor")


async def test_paging_is_stable_while_events_are_published(api: Api) -> None:
    before = [(await api.publish())["id"] for _ in range(12)]
    seen: list[str] = []
    cursor = None
    publishing = 0
    while True:
        query = "limit=3" + (f"&cursor={cursor}" if cursor else "")
        page, *more = await asyncio.gather(listed(api, query), *(api.publish() for _ in range(2)))
        publishing += len(more)
        seen += ids(page)
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)), "expected no event twice"
    assert set(before) <= set(seen), "expected every event that existed throughout"
    assert seen == sorted(seen, reverse=True), "expected newest first throughout"
    assert publishing >= 8


async def test_another_organizations_events_are_not_found(api: Api) -> None:
    mine = await api.publish()
    other_key = await api.new_org_key("other")
    theirs = await api.publish(key=other_key)
    assert ids(await listed(api)) == [mine["id"]]
    assert ids(await listed(api, key=other_key)) == [theirs["id"]]
    ok(await api.get(f"/v2/events/{mine['id']}"))
    for event_id in (
        theirs["id"],
        "notif_01890a5d-ac96-7bd3-8f3e-4a6b2c1d0e9f",
        "notif_nope",
        mine["id"].upper(),
        "6b04432dbafc271f8fbe01fb",
    ):
        response = await api.get(f"/v2/events/{event_id}")
        assert_error(response, 404, "resource_missing", "eventId")


# One event.


async def test_an_event_with_its_data_and_every_delivery(api: Api) -> None:
    first = await api.create_webhook(topics=["conversation.admin.replied"])
    second = await api.create_webhook(topics=["conversation.admin.replied", "post.created"])
    item = {"id": "c_1", "n": [1, 2.5, None, True], "text": "héllo\n\u2028"}
    changes = [{"field": "state", "oldValue": "open", "newValue": None}]
    published = ok(
        await api.post(
            "/v2/events",
            json={
                "topic": "conversation.admin.replied",
                "conversationId": "conv_9",
                "data": {"item": item, "changes": changes},
            },
        ),
        202,
    )
    response = await api.get(f"/v2/events/{published['id']}")
    body = ok(response)
    assert {k: body[k] for k in ("object", "id", "topic", "createdAt")} == published
    assert body["conversationId"] == "conv_9"
    assert "conversationUrl" not in body, "expected a field not published to be absent"
    assert body["data"]["item"] == item, "expected the item as published"
    assert body["data"]["changes"] == changes
    assert set(body["data"]) == {"item", "changes"}
    listed_deliveries = [
        ok(await api.get(f"/v2/webhooks/{hook['id']}/deliveries"))["data"][0]
        for hook in (first, second)
    ]
    assert body["deliveries"] == sorted(listed_deliveries, key=lambda d: d["id"]), (
        "expected every delivery, in the delivery log's shape, oldest first"
    )
    plain = ok(await api.get(f"/v2/events/{(await api.publish())['id']}"))
    assert plain["data"] == {"item": {"id": "p1"}, "changes": []}
    assert "conversationId" not in plain and len(plain["deliveries"]) == 1


async def test_deleted_webhooks_deliveries_are_not_shown(api: Api) -> None:
    kept = await api.create_webhook()
    gone = await api.create_webhook()
    event = await api.publish()
    ok(await api.delete(f"/v2/webhooks/{gone['id']}"))
    body = ok(await api.get(f"/v2/events/{event['id']}"))
    assert [d["webhookId"] for d in body["deliveries"]] == [kept["id"]]


# The delivery log of one event, and held deliveries.


async def test_deliveries_filtered_by_event(api: Api) -> None:
    hook = await api.create_webhook()
    other = await api.create_webhook()
    first, second = await api.publish(), await api.publish()
    path = f"/v2/webhooks/{hook['id']}/deliveries"
    page = ok(await api.get(f"{path}?eventId={first['id']}"))
    assert [(d["eventId"], d["webhookId"]) for d in page["data"]] == [(first["id"], hook["id"])]
    page = ok(await api.get(f"{path}?eventId={second['id']}&status=pending"))
    assert [d["eventId"] for d in page["data"]] == [second["id"]]
    assert ok(await api.get(f"{path}?eventId={second['id']}&status=failed"))["data"] == []
    unknown = "notif_01890a5d-ac96-7bd3-8f3e-4a6b2c1d0e9f"
    assert ok(await api.get(f"{path}?eventId={unknown}"))["data"] == []
    assert len(ok(await api.get(f"/v2/webhooks/{other['id']}/deliveries"))["data"]) == 2
    for bad in ("notif_x", "6b04432dbafc271f8fbe01fb", first["id"].upper()):
        assert_error(await api.get(f"{path}?eventId={bad}"), 400, "parameter_invalid", "eventId")
    unfiltered = ok(await api.get(f"{path}?limit=1"))
    assert unfiltered["nextCursor"]
    crossed = await api.get(f"{path}?eventId={first['id']}&cursor={unfiltered['nextCursor']}")
    assert_error(crossed, 400, "cursor_invalid", "cursor")


async def test_held_deliveries_have_no_next_attempt(api: Api) -> None:
    hook = await api.create_webhook()
    event = await api.publish()
    path = f"/v2/webhooks/{hook['id']}"

    async def next_attempts() -> set[Any]:
        [listed_one] = ok(await api.get(f"{path}/deliveries?eventId={event['id']}"))["data"]
        detail = ok(await api.get(f"{path}/deliveries/{listed_one['id']}"))
        [of_event] = ok(await api.get(f"/v2/events/{event['id']}"))["deliveries"]
        return {listed_one["nextAttemptAt"], detail["nextAttemptAt"], of_event["nextAttemptAt"]}

    [scheduled] = await next_attempts()
    assert scheduled is not None, "expected a pending delivery of an active webhook to be due"
    ok(await api.patch(path, json={"status": "paused"}))
    assert await next_attempts() == {None}, "expected a held delivery to show nextAttemptAt null"
    test = ok(await api.post(f"{path}/test", json={}), 202)
    assert test["nextAttemptAt"] is not None, "expected a test delivery to go out anyway"
    ok(await api.patch(path, json={"status": "active"}))
    assert await next_attempts() == {scheduled}, "expected reactivation to schedule it again"
