"""The delivery log (SPEC §6): list, inspect, retry, test, recover, and retention, on SQLite
and PostgreSQL with a real receiver."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from hookd.clock import iso_ms
from hookd.store.records import DELIVERY_STATUSES
from tests.conftest import Api, eventually
from tests.receiver import Receiver
from tests.test_delivery import deliveries, settled, webhook, worker_for

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def _detail(api: Api, webhook_id: str, delivery_id: str) -> dict[str, Any]:
    response = await api.get(f"/v2/webhooks/{webhook_id}/deliveries/{delivery_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# Listing and inspecting.


async def test_list_and_inspect_deliveries(delivering: Api, receiver: Receiver) -> None:
    api = delivering
    receiver.behave("/hook", status=500, body=b'{"error":"nope"}')
    hook = await webhook(api, receiver)
    events = [await api.publish(item={"id": f"p{i}"}) for i in range(3)]
    await receiver.wait_for(3 * 4, timeout=15)
    found = await eventually(lambda: settled(api, hook["id"], 3))
    assert [d["eventId"] for d in found] == [e["id"] for e in reversed(events)], "newest first"
    first = found[-1]
    assert set(first) == {
        "object",
        "id",
        "webhookId",
        "eventId",
        "topic",
        "status",
        "attemptCount",
        "nextAttemptAt",
        "lastAttemptAt",
        "lastStatus",
        "createdAt",
    }
    assert first["object"] == "webhook_delivery" and first["webhookId"] == hook["id"]
    assert (
        first["status"] == "failed"
        and first["attemptCount"] == 4
        and first["nextAttemptAt"] is None
    )
    assert (
        first["lastStatus"]["code"] == 500
        and first["lastStatus"]["message"] == "Internal Server Error"
    )
    assert ISO.match(first["createdAt"]) and ISO.match(first["lastAttemptAt"])

    detail = await _detail(api, hook["id"], first["id"])
    assert detail["payload"]["id"] == events[0]["id"]
    assert detail["payload"]["data"]["item"] == {"id": "p0"}
    assert detail["payload"]["deliveryStatus"] == "retrying", "the payload of the latest attempt"
    assert [a["attemptNumber"] for a in detail["attempts"]] == [1, 2, 3, 4]
    attempt = detail["attempts"][0]
    assert attempt["object"] == "webhook_delivery_attempt"
    assert attempt["succeeded"] is False and attempt["statusCode"] == 500
    assert attempt["responseBody"] == '{"error":"nope"}' and attempt["error"] is None
    assert isinstance(attempt["responseTimeMs"], int) and ISO.match(attempt["attemptedAt"])

    # Filters and pages.
    failed = await api.get(f"/v2/webhooks/{hook['id']}/deliveries?status=failed&limit=2")
    body = failed.json()
    assert len(body["data"]) == 2 and body["nextCursor"]
    rest = await api.get(
        f"/v2/webhooks/{hook['id']}/deliveries?status=failed&limit=2&cursor={body['nextCursor']}"
    )
    assert [d["id"] for d in rest.json()["data"]] == [first["id"]] and rest.json()[
        "nextCursor"
    ] is None
    succeeded = await api.get(f"/v2/webhooks/{hook['id']}/deliveries?status=succeeded")
    assert succeeded.json()["data"] == []


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("status=done", "parameter_invalid"),
        ("limit=0", "parameter_invalid"),
        ("limit=101", "parameter_invalid"),
        ("cursor=nonsense", "cursor_invalid"),
        ("other=1", "parameter_unknown"),
    ],
)
async def test_list_validation(api: Api, query: str, code: str) -> None:
    hook = await api.create_webhook()
    response = await api.get(f"/v2/webhooks/{hook['id']}/deliveries?{query}")
    assert response.status_code == 400 and response.json()["error"]["code"] == code, response.text


async def _set_statuses(api: Api, statuses: dict[str, str]) -> None:
    driver: Any = api.store.driver
    if api.store.dialect == "sqlite":
        conn = sqlite3.connect(driver.path)
        with conn:
            conn.executemany(
                "UPDATE deliveries SET status = ? WHERE id = ?",
                [(status, id_) for id_, status in statuses.items()],
            )
        conn.close()
    else:
        pg = await asyncpg.connect(driver.dsn)
        await pg.executemany(
            "UPDATE deliveries SET status = $1 WHERE id = $2",
            [(status, id_) for id_, status in statuses.items()],
        )
        await pg.close()


async def test_unfiltered_list_merges_every_status_in_id_order(api: Api) -> None:
    # The unfiltered list reads each status's page from the status index and merges them:
    # every status must show, newest first, across page boundaries.
    hook = await api.create_webhook()
    other = await api.create_webhook()
    for _ in range(13):
        await api.publish()
    created = await deliveries(api, hook["id"])
    assert len(created) == 13
    wanted = {d["id"]: DELIVERY_STATUSES[i % len(DELIVERY_STATUSES)] for i, d in enumerate(created)}
    await _set_statuses(api, wanted)
    seen: list[dict[str, Any]] = []
    cursor = ""
    while True:
        response = await api.get(f"/v2/webhooks/{hook['id']}/deliveries?limit=4{cursor}")
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["data"]) <= 4
        seen += page["data"]
        if not page["nextCursor"]:
            break
        cursor = f"&cursor={page['nextCursor']}"
    assert [d["id"] for d in seen] == sorted(wanted, reverse=True)
    assert {d["id"]: d["status"] for d in seen} == wanted
    assert {d["status"] for d in seen} == set(DELIVERY_STATUSES)
    for status in DELIVERY_STATUSES:
        response = await api.get(f"/v2/webhooks/{hook['id']}/deliveries?limit=100&status={status}")
        assert [d["id"] for d in response.json()["data"]] == sorted(
            (i for i, s in wanted.items() if s == status), reverse=True
        )
    assert len(await deliveries(api, other["id"])) == 13, "another webhook's list is its own"


async def test_cursor_of_another_list_is_refused(api: Api) -> None:
    one = await api.create_webhook()
    two = await api.create_webhook()
    for _ in range(3):
        await api.publish()
    page = (await api.get(f"/v2/webhooks/{one['id']}/deliveries?limit=1")).json()
    assert page["nextCursor"]
    other = await api.get(f"/v2/webhooks/{two['id']}/deliveries?cursor={page['nextCursor']}")
    assert other.status_code == 400 and other.json()["error"]["code"] == "cursor_invalid"
    webhooks = await api.get(f"/v2/webhooks?cursor={page['nextCursor']}")
    assert webhooks.status_code == 400 and webhooks.json()["error"]["code"] == "cursor_invalid"


async def test_other_organizations_deliveries_are_not_found(api: Api) -> None:
    hook = await api.create_webhook()
    await api.publish()
    [delivery] = await deliveries(api, hook["id"])
    other_key = await api.new_org_key("other")
    other_hook = await api.create_webhook(key=other_key)
    paths = [
        ("GET", f"/v2/webhooks/{hook['id']}/deliveries"),
        ("GET", f"/v2/webhooks/{hook['id']}/deliveries/{delivery['id']}"),
        ("POST", f"/v2/webhooks/{hook['id']}/deliveries/{delivery['id']}/retry"),
        ("POST", f"/v2/webhooks/{hook['id']}/test"),
        ("POST", f"/v2/webhooks/{hook['id']}/recover"),
    ]
    for method, path in paths:
        response = await api.request(
            method, path, key=other_key, json={"since": iso_ms(0)} if "recover" in path else None
        )
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "resource_missing"
    # A delivery id under a webhook it does not belong to is unknown too.
    crossed = await api.get(
        f"/v2/webhooks/{other_hook['id']}/deliveries/{delivery['id']}", key=other_key
    )
    assert crossed.status_code == 404
    for bad in ("nope", "A" * 24, "0" * 25):
        response = await api.get(f"/v2/webhooks/{hook['id']}/deliveries/{bad}")
        assert (
            response.status_code == 404 and response.json()["error"]["code"] == "resource_missing"
        )


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\x01\x02\xff\xfe binary",
        b"\xc3\x28 invalid utf-8 \xe2\x82",
        b"x" * 100_000,
        "caf\u00e9 \u2603".encode() * 2000,
    ],
)
async def test_response_bodies_are_kept_truncated_and_safe(
    delivering: Api, receiver: Receiver, body: bytes
) -> None:
    api = delivering
    receiver.behave("/hook", status=200, body=body)
    hook = await webhook(api, receiver)
    await api.publish()
    [delivery] = await eventually(lambda: settled(api, hook["id"], 1))
    detail = await _detail(api, hook["id"], delivery["id"])
    kept = detail["attempts"][0]["responseBody"]
    assert isinstance(kept, str)
    assert len(kept.encode("utf-8", "surrogatepass")) <= 4096 * 3, (
        "at most 4 KiB of bytes, shown as text"
    )
    expected = body[:4096].decode("utf-8", "replace")
    assert kept == expected


# Retry.


async def test_retry_queues_any_delivery_but_a_cancelled_one(
    delivering: Api, receiver: Receiver
) -> None:
    api = delivering
    receiver.behave("/hook", status=200)
    hook = await webhook(api, receiver)
    await api.publish()
    [delivery] = await eventually(lambda: settled(api, hook["id"], 1))
    assert delivery["status"] == "succeeded"
    retried = await api.post(f"/v2/webhooks/{hook['id']}/deliveries/{delivery['id']}/retry")
    assert retried.status_code == 202, retried.text
    assert retried.json()["status"] == "pending" and retried.json()["id"] == delivery["id"]
    await receiver.wait_for(2)
    detail = await eventually(lambda: _attempts_at_least(api, hook["id"], delivery["id"], 2))
    assert [a["attemptNumber"] for a in detail["attempts"]] == [1, 2], "the new attempt is appended"
    assert detail["status"] == "succeeded"

    await api.delete(f"/v2/webhooks/{hook['id']}")
    gone = await api.post(f"/v2/webhooks/{hook['id']}/deliveries/{delivery['id']}/retry")
    assert gone.status_code == 404


async def _attempts_at_least(
    api: Api, webhook_id: str, delivery_id: str, n: int
) -> dict[str, Any] | None:
    detail = await _detail(api, webhook_id, delivery_id)
    return detail if len(detail["attempts"]) >= n and detail["status"] != "pending" else None


async def test_retry_of_a_failed_delivery_makes_one_more_attempt(
    delivering: Api, receiver: Receiver
) -> None:
    api = delivering
    receiver.behave("/hook", status=500)
    hook = await webhook(api, receiver)
    await api.publish()
    [delivery] = await eventually(lambda: settled(api, hook["id"], 1))
    assert delivery["status"] == "failed"
    receiver.behave("/hook", status=204)
    await api.post(f"/v2/webhooks/{hook['id']}/deliveries/{delivery['id']}/retry")
    detail = await eventually(lambda: _attempts_at_least(api, hook["id"], delivery["id"], 5))
    assert detail["status"] == "succeeded" and detail["attemptCount"] == 5


async def test_retry_of_a_held_delivery_waits_for_reactivation(
    delivering: Api, receiver: Receiver
) -> None:
    api = delivering
    receiver.behave("/hook", status=500)
    hook = await webhook(api, receiver)
    await api.publish()
    [delivery] = await eventually(lambda: settled(api, hook["id"], 1))
    await api.patch(f"/v2/webhooks/{hook['id']}", json={"status": "paused"})
    retried = await api.post(f"/v2/webhooks/{hook['id']}/deliveries/{delivery['id']}/retry")
    assert retried.status_code == 202 and retried.json()["status"] == "pending"
    await asyncio.sleep(0.5)
    assert len(receiver.requests) == 4, "held while the webhook is paused"
    receiver.behave("/hook", status=204)
    await api.patch(f"/v2/webhooks/{hook['id']}", json={"status": "active"})
    await receiver.wait_for(5)


async def test_retry_validation(api: Api) -> None:
    hook = await api.create_webhook()
    missing = await api.post(f"/v2/webhooks/{hook['id']}/deliveries/{'0' * 24}/retry")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "deliveryId"


# Test events.


async def test_test_event_is_sent_whatever_the_status(delivering: Api, receiver: Receiver) -> None:
    api = delivering
    hook = await webhook(api, receiver, topics=["comment.created", "post.created"])
    await api.patch(f"/v2/webhooks/{hook['id']}", json={"status": "paused"})
    response = await api.post(f"/v2/webhooks/{hook['id']}/test")
    assert response.status_code == 202, response.text
    delivery = response.json()
    assert delivery["object"] == "webhook_delivery" and delivery["topic"] == "comment.created"
    [got] = await receiver.wait_for(1)
    body = got.json()
    assert body["data"]["item"]["object"] == "test" and body["webhookId"] == hook["id"]
    assert body["topic"] == "comment.created"
    chosen = await api.post(f"/v2/webhooks/{hook['id']}/test", json={"topic": "ticket.created"})
    assert chosen.status_code == 202 and chosen.json()["topic"] == "ticket.created"
    await receiver.wait_for(2)
    bad = await api.post(f"/v2/webhooks/{hook['id']}/test", json={"topic": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "topic_unknown"
    extra = await api.post(f"/v2/webhooks/{hook['id']}/test", json={"x": 1})
    assert extra.status_code == 400 and extra.json()["error"]["code"] == "parameter_unknown"
    # Tests do not count toward suspension and are not recovered as events.
    current = (await api.get(f"/v2/webhooks/{hook['id']}")).json()
    assert current["status"] == "paused"


async def test_failing_test_event_does_not_suspend(api: Api, receiver: Receiver) -> None:
    receiver.behave("/hook", status=500)
    hook = await webhook(api, receiver)
    async with worker_for(api, suspend_after=1):
        await api.post(f"/v2/webhooks/{hook['id']}/test")
        await receiver.wait_for(1)
        await asyncio.sleep(0.5)
    current = (await api.get(f"/v2/webhooks/{hook['id']}")).json()
    assert current["status"] == "active" and current["health"]["consecutiveFailures"] == 0
    assert current["lastStatus"]["code"] == 500, "the test's outcome shows in lastStatus"
    assert current["health"]["errorsSinceLastSuccess"] == 1, (
        "a failed test attempt counts as a failed attempt (README: test deliveries and health)"
    )
    assert len(receiver.requests) == 1, "test deliveries are attempted once"


async def test_successful_test_event_neither_clears_nor_adds_to_consecutive_failures(
    api: Api, receiver: Receiver
) -> None:
    """The README's rule: a test attempt moves lastStatus, the timings, errorsSinceLastSuccess
    and lastSuccessAt, but consecutiveFailures counts only real deliveries that ended failed."""
    receiver.behave("/hook", status=500)
    hook = await webhook(api, receiver)
    async with worker_for(api, retry_schedule=""):
        await api.publish()
        await eventually(lambda: settled(api, hook["id"], 1))
        failing = (await api.get(f"/v2/webhooks/{hook['id']}")).json()["health"]
        assert (failing["consecutiveFailures"], failing["errorsSinceLastSuccess"]) == (1, 1)
        receiver.behave("/hook", status=204)
        await api.post(f"/v2/webhooks/{hook['id']}/test")
        await eventually(lambda: settled(api, hook["id"], 2))
    current = (await api.get(f"/v2/webhooks/{hook['id']}")).json()
    assert current["lastStatus"]["code"] == 204 and current["lastStatus"]["message"] == "Success"
    assert current["health"]["errorsSinceLastSuccess"] == 0
    assert current["health"]["lastSuccessAt"] is not None
    assert current["health"]["consecutiveFailures"] == 1, (
        "a test delivery must not reset the count of failed deliveries"
    )


# Recovery.


async def test_recover_queues_what_did_not_succeed_once(api: Api, receiver: Receiver) -> None:
    hook = await webhook(api, receiver, topics=["post.created", "post.updated"])
    await api.patch(f"/v2/webhooks/{hook['id']}", json={"status": "paused"})
    since = datetime.now(UTC) - timedelta(seconds=5)
    missed = [await api.publish("post.created", item={"id": f"m{i}"}) for i in range(3)]
    await api.publish("comment.created")  # not on the webhook's topics
    await api.patch(f"/v2/webhooks/{hook['id']}", json={"status": "active"})
    async with worker_for(api):
        recovered = await api.post(
            f"/v2/webhooks/{hook['id']}/recover", json={"since": _iso(since)}
        )
        assert recovered.status_code == 202, recovered.text
        assert recovered.json() == {"object": "recovery", "queued": 3}
        again = await api.post(f"/v2/webhooks/{hook['id']}/recover", json={"since": _iso(since)})
        assert again.json()["queued"] == 0, (
            "nothing new while the first recovery is pending or done"
        )
        received = await receiver.wait_for(3)
        assert sorted(r.header("webhook-id") or "" for r in received) == sorted(
            e["id"] for e in missed
        )
        await eventually(lambda: settled(api, hook["id"], 3))
        after = await api.post(f"/v2/webhooks/{hook['id']}/recover", json={"since": _iso(since)})
        assert after.json()["queued"] == 0, "events with a succeeded delivery are not queued again"


async def test_recover_requeues_failed_deliveries(api: Api, receiver: Receiver) -> None:
    receiver.behave("/hook", status=500)
    hook = await webhook(api, receiver)
    since = datetime.now(UTC) - timedelta(seconds=5)
    async with worker_for(api, retry_schedule=""):
        await api.publish()
        await eventually(lambda: settled(api, hook["id"], 1))
        receiver.behave("/hook", status=204)
        recovered = await api.post(
            f"/v2/webhooks/{hook['id']}/recover",
            json={"since": _iso(since), "until": _iso(datetime.now(UTC) + timedelta(seconds=1))},
        )
        assert recovered.json()["queued"] == 1
        await receiver.wait_for(2)
        found = await eventually(lambda: settled(api, hook["id"], 2))
    assert sorted(d["status"] for d in found) == ["failed", "succeeded"]


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({}, "parameter_missing", "since"),
        ({"since": "yesterday"}, "parameter_invalid", "since"),
        ({"since": "2025-01-15T10:30:00"}, "parameter_invalid", "since"),
        ({"since": 5}, "parameter_invalid_type", "since"),
        ({"since": "NOW-10", "until": "NOW-20"}, "window_invalid", "until"),
        ({"since": "NOW-40d"}, "window_outside_retention", "since"),
        ({"since": "NOW+1d"}, "window_invalid", "since"),
        ({"since": "NOW+1d", "until": "NOW+2d"}, "window_invalid", "since"),
        ({"since": "NOW-10", "until": "NOW+31d"}, "window_too_long", "until"),
        ({"since": "2025-01-15 10:30:00Z"}, "parameter_invalid", "since"),
        ({"since": "NOW-40d", "until": "NOW-35d"}, "window_outside_retention", "since"),
        ({"since": "NOW-10", "extra": True}, "parameter_unknown", "extra"),
    ],
)
async def test_recover_validation(api: Api, body: dict[str, Any], code: str, param: str) -> None:
    hook = await api.create_webhook()
    now = datetime.now(UTC)

    def resolve(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(("NOW-", "NOW+")):
            amount = value[4:]
            delta = (
                timedelta(days=int(amount[:-1]))
                if amount.endswith("d")
                else timedelta(seconds=int(amount))
            )
            return _iso(now - delta if value[3] == "-" else now + delta)
        return value

    response = await api.post(
        f"/v2/webhooks/{hook['id']}/recover", json={k: resolve(v) for k, v in body.items()}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error
    assert error["param"] is None or error["message"].startswith(error["param"]) or (
        code == "window_too_long"
    ), f"expected the message to name the field it blames: {error}"


# Retention.


class MovableClock:
    """Wall-clock milliseconds plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> int:
        return int(time.time() * 1000) + self.offset_ms


async def test_retention_purges_old_rows_and_keeps_new_ones(api: Api, receiver: Receiver) -> None:
    receiver.behave("/hook", status=500)
    hook = await webhook(api, receiver)
    clock = MovableClock()
    api.store.clock = clock
    clock.offset_ms = -31 * 86_400_000  # a month ago
    async with worker_for(api, clock=clock, retry_schedule="0.05") as worker:
        for i in range(5):
            await api.publish(item={"id": f"old{i}"})
        await receiver.wait_for(10)
        await eventually(lambda: settled(api, hook["id"], 5))
        clock.offset_ms = 0  # today
        fresh = await api.publish(item={"id": "new"})
        await receiver.wait_for(12)
        await eventually(lambda: settled(api, hook["id"], 6))
        removed = await worker.purge()
    # Each old delivery failed for good: its delivery.failed event (SPEC §4, delivered to no
    # webhook here) is as old, and goes too.
    assert removed == 15, "5 old deliveries, their 5 events and the 5 delivery.failed events"
    left = await deliveries(api, hook["id"])
    assert [d["eventId"] for d in left] == [fresh["id"]]
    detail = await _detail(api, hook["id"], left[0]["id"])
    assert len(detail["attempts"]) == 2, "the new delivery keeps its attempts"
    # The new event, and the delivery.failed event about its delivery.
    assert await _counts(api) == {"events": 2, "deliveries": 1, "attempts": 2}


@pytest.mark.parametrize("engine", ["postgres"])  # SQLite: purge and recovery take turns
async def test_retention_purge_spares_rows_a_recovery_or_a_claim_holds(
    api: Api, receiver: Receiver
) -> None:
    """The queue tables have no foreign keys (migration 0008); the purge keeps their rows
    consistent by locking: an old event that a recovery has read (and holds FOR KEY SHARE)
    and an old delivery that a claim holds are skipped, with the delivery's attempts, and go
    at the next purge once released."""
    receiver.behave("/hook", status=500)
    hook = await webhook(api, receiver)
    clock = MovableClock()
    api.store.clock = clock
    clock.offset_ms = -31 * 86_400_000
    async with worker_for(api, clock=clock, retry_schedule="") as worker:
        for i in range(2):
            await api.publish(item={"id": f"old{i}"})
        await eventually(lambda: settled(api, hook["id"], 2))
        clock.offset_ms = 0
        [kept, gone] = await deliveries(api, hook["id"])
        driver: Any = api.store.driver
        holder = await asyncpg.connect(driver.dsn)
        try:
            async with holder.transaction():
                await holder.execute(
                    "SELECT id FROM events WHERE id = $1 FOR KEY SHARE", kept["eventId"]
                )
                await holder.execute(
                    "SELECT id FROM deliveries WHERE id = $1 FOR UPDATE", kept["id"]
                )
                removed = await worker.purge()
                counts = await _counts(api)
            assert [d["id"] for d in await deliveries(api, hook["id"])] == [kept["id"]]
        finally:
            await holder.close()
        # The other delivery and its event went, and both delivery.failed events (no
        # delivery of theirs); the held event and delivery, with its attempt, stayed.
        assert removed == 4, gone
        assert counts == {"events": 1, "deliveries": 1, "attempts": 1}
        assert await worker.purge() == 2
    assert await _counts(api) == {"events": 0, "deliveries": 0, "attempts": 0}


async def _counts(api: Api) -> dict[str, int]:
    driver: Any = api.store.driver
    counts = {}
    for table in ("events", "deliveries", "attempts"):
        if api.store.dialect == "sqlite":
            conn = sqlite3.connect(driver.path)
            counts[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            conn.close()
        else:
            pg = await asyncpg.connect(driver.dsn)
            counts[table] = await pg.fetchval(f"SELECT count(*) FROM {table}")
            await pg.close()
    return counts


async def test_retry_asked_during_an_attempt_is_not_lost(api: Api, receiver: Receiver) -> None:
    receiver.behave("/hook", status=500, delay=0.5)
    hook = await webhook(api, receiver)
    async with worker_for(api, retry_schedule=""):
        await api.publish()
        await receiver.wait_for(1)  # the first attempt is under way
        [delivery] = await deliveries(api, hook["id"])
        retried = await api.post(f"/v2/webhooks/{hook['id']}/deliveries/{delivery['id']}/retry")
        assert retried.status_code == 202
        receiver.behave("/hook", status=204)
        await receiver.wait_for(2, timeout=10)
        detail = await eventually(lambda: _attempts_at_least(api, hook["id"], delivery["id"], 2))
    assert [a["succeeded"] for a in detail["attempts"]] == [False, True]
    assert detail["status"] == "succeeded", "the retry asked for mid-attempt was made"
