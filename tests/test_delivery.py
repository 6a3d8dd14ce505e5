"""The delivery engine end to end (SPEC §4, §5): publish, fan-out, signed requests, retries,
health, suspension, pause, secrets, the in-flight cap and leases, on SQLite and PostgreSQL,
with a real receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import standardwebhooks
import svix.webhooks

from hookd import __version__
from hookd.delivery.outcomes import retry_delay_ms
from hookd.delivery.worker import Worker
from hookd.server import build_worker
from hookd.settings import Settings
from hookd.store import ClaimRequest
from tests.conftest import Api, eventually, make_settings, run_sql
from tests.receiver import Receiver


def settings_for(api: Api, **overrides: Any) -> Settings:
    """Test settings on the api's database, changed by ``overrides``."""
    url = api.store.driver.path if api.store.dialect == "sqlite" else api.store.driver.dsn  # type: ignore[attr-defined]
    database_url = f"sqlite:///{url}" if api.store.dialect == "sqlite" else url
    return make_settings(database_url, **overrides)


@asynccontextmanager
async def worker_for(api: Api, clock: Any = None, **overrides: Any) -> AsyncIterator[Worker]:
    """A worker over the api's store with settings changed by ``overrides``."""
    settings = settings_for(api, **overrides)
    worker = (
        build_worker(settings, api.store, clock) if clock else build_worker(settings, api.store)
    )
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop(grace=2.0)


async def webhook(
    api: Api, receiver: Receiver, path: str = "/hook", **fields: Any
) -> dict[str, Any]:
    return await api.create_webhook(url=receiver.url(path), **fields)


async def get_webhook(api: Api, webhook_id: str) -> dict[str, Any]:
    response = await api.get(f"/v2/webhooks/{webhook_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def deliveries(api: Api, webhook_id: str) -> list[dict[str, Any]]:
    response = await api.get(f"/v2/webhooks/{webhook_id}/deliveries?limit=100")
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


# Publishing.


async def test_publish_delivers_the_signed_envelope(delivering: Api, receiver: Receiver) -> None:
    api = delivering
    hook = await webhook(api, receiver, requestConfig={"headers": {"X-Custom": "yes"}})
    item = {"id": "post_1", "title": "Hello", "nested": {"n": [1, 2.5, None, True]}}
    changes = [{"field": "title", "oldValue": None, "newValue": "Hello"}]
    response = await api.post(
        "/v2/events", json={"topic": "post.created", "data": {"item": item, "changes": changes}}
    )
    assert response.status_code == 202, response.text
    event = response.json()
    assert set(event) == {"object", "id", "topic", "createdAt"}
    assert event["object"] == "event" and event["topic"] == "post.created"
    assert event["id"].startswith("notif_")

    [got] = await receiver.wait_for(1)
    body = got.json()
    assert body == {
        "object": "notification_event",
        "id": event["id"],
        "topic": "post.created",
        "organizationId": (await api.store.list_organizations())[0].id,
        "webhookId": hook["id"],
        "createdAt": event["createdAt"],
        "deliveryStatus": "pending",
        "data": {"object": "notification_event_data", "item": item, "changes": changes},
    }, "the request body is the §5 envelope of the published event"
    assert got.header("Content-Type") == "application/json"
    assert got.header("User-Agent") == f"hookd/{__version__}"
    assert got.header("X-Custom") == "yes", "the webhook's own headers are sent"
    assert got.header("X-Webhook-Topic") == "post.created"
    assert got.header("X-Webhook-Attempt") == "1"
    assert got.header("webhook-id") == event["id"]
    timestamp = got.header("X-Webhook-Timestamp")
    assert timestamp is not None and abs(int(timestamp) - time.time()) < 30
    assert got.header("webhook-timestamp") == timestamp

    secret = hook["secret"]
    expected = hmac.new(
        secret.encode(), f"{timestamp}.".encode() + got.body, hashlib.sha256
    ).hexdigest()
    assert got.header("X-Webhook-Signature") == expected, (
        "Featurebase's hex HMAC over '{timestamp}.{body}'"
    )
    key = base64.b64decode(secret.removeprefix("whsec_"))
    standard = hmac.new(
        key, f"{event['id']}.{timestamp}.".encode() + got.body, hashlib.sha256
    ).digest()
    assert got.header("webhook-signature") == "v1," + base64.b64encode(standard).decode()
    headers = {k.lower(): v for k, v in got.headers.items()}
    standardwebhooks.Webhook(secret).verify(got.body.decode(), headers)
    svix.webhooks.Webhook(secret).verify(got.body.decode(), headers)


async def test_only_active_subscribed_webhooks_of_the_organization_receive(
    delivering: Api, receiver: Receiver
) -> None:
    api = delivering
    subscribed = await webhook(
        api, receiver, "/subscribed", topics=["post.created", "post.updated"]
    )
    await webhook(api, receiver, "/other-topic", topics=["comment.created"])
    paused = await webhook(api, receiver, "/paused")
    await api.patch(f"/v2/webhooks/{paused['id']}", json={"status": "paused"})
    other_key = await api.new_org_key("other")
    await api.create_webhook(key=other_key, url=receiver.url("/other-org"))

    await api.publish("post.created")
    await receiver.wait_for(1, "/subscribed")
    await asyncio.sleep(0.3)
    assert {r.path for r in receiver.requests} == {"/subscribed"}
    assert len(await deliveries(api, subscribed["id"])) == 1
    assert await deliveries(api, paused["id"]) == [], "a paused webhook gets no new deliveries"


async def test_webhooks_subscribed_since_the_last_publish_receive(
    delivering: Api, receiver: Receiver
) -> None:
    """On PostgreSQL a publish is one statement that finds its targets itself, sent with as
    many delivery ids as the last publish of the organization and topic had targets (and
    two more). One that finds more writes nothing, not even its idempotency key, and is sent
    again with enough: every webhook subscribed since gets its delivery, and the key holds
    after."""
    api = delivering
    first = await webhook(api, receiver, "/first")
    await api.publish()
    await receiver.wait_for(1, "/first")
    later = [await webhook(api, receiver, f"/later-{n}") for n in range(5)]
    headers = {"Idempotency-Key": "after-five-more"}
    published = await api.publish(headers=headers)
    await receiver.wait_for(7)
    for hook in (first, *later):
        assert published["id"] in [d["eventId"] for d in await deliveries(api, hook["id"])]
    again = await api.post(
        "/v2/events", json={"topic": "post.created", "data": {"item": {}}}, headers=headers
    )
    assert again.json() == published and again.headers.get("Idempotent-Replayed") == "true"
    await asyncio.sleep(0.3)
    assert len(receiver.requests) == 7


async def test_conversation_fields_are_copied_to_the_envelope(
    delivering: Api, receiver: Receiver
) -> None:
    api = delivering
    await webhook(
        api, receiver, topics=["conversation.admin.replied", "conversation_part.redacted"]
    )
    await api.post(
        "/v2/events",
        json={
            "topic": "conversation.admin.replied",
            "conversationId": "conv_1",
            "conversationUrl": "https://app.example.com/c/1",
            "data": {"item": {"id": "part_1"}},
        },
    )
    await api.post(
        "/v2/events", json={"topic": "conversation_part.redacted", "data": {"item": {"id": "p"}}}
    )
    received = await receiver.wait_for(2)
    by_topic = {r.json()["topic"]: r.json() for r in received}
    replied = by_topic["conversation.admin.replied"]
    assert replied["conversationId"] == "conv_1"
    assert replied["conversationUrl"] == "https://app.example.com/c/1"
    redacted = by_topic["conversation_part.redacted"]
    assert "conversationId" not in redacted and "conversationUrl" not in redacted, (
        "absent, not null"
    )
    assert redacted["data"]["changes"] == []


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"topic": "post.nope", "data": {"item": {}}}, "topic_unknown", "topic"),
        ({"data": {"item": {}}}, "parameter_missing", "topic"),
        ({"topic": "post.created"}, "parameter_missing", "data"),
        ({"topic": "post.created", "data": {}}, "parameter_missing", "data.item"),
        ({"topic": "post.created", "data": {"item": [1]}}, "parameter_invalid_type", "data.item"),
        (
            {"topic": "post.created", "data": {"item": {}, "changes": {}}},
            "parameter_invalid_type",
            "data.changes",
        ),
        (
            {"topic": "post.created", "data": {"item": {}, "changes": [{"oldValue": 1}]}},
            "parameter_missing",
            "data.changes.0.field",
        ),
        (
            {"topic": "post.created", "data": {"item": {}, "changes": [{"field": "a", "x": 1}]}},
            "parameter_unknown",
            "data.changes.0.x",
        ),
        ({"topic": "post.created", "data": {"item": {}}, "extra": 1}, "parameter_unknown", "extra"),
        (
            {"topic": "post.created", "data": {"item": {}, "more": 1}},
            "parameter_unknown",
            "data.more",
        ),
        (
            {"topic": "post.created", "conversationId": "c", "data": {"item": {}}},
            "parameter_invalid",
            "conversationId",
        ),
        (
            {"topic": "conversation.read", "conversationUrl": "http://x.com", "data": {"item": {}}},
            "url_scheme_invalid",
            "conversationUrl",
        ),
        (
            {
                "topic": "conversation.read",
                "conversationUrl": "https://a@x.com",
                "data": {"item": {}},
            },
            "url_invalid",
            "conversationUrl",
        ),
        (
            {"topic": "conversation.read", "conversationId": 5, "data": {"item": {}}},
            "parameter_invalid_type",
            "conversationId",
        ),
    ],
)
async def test_publish_validation(
    delivering: Api, receiver: Receiver, body: dict[str, Any], code: str, param: str
) -> None:
    api = delivering
    hook = await webhook(api, receiver, topics=["post.created", "conversation.read"])
    response = await api.post("/v2/events", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error
    assert await deliveries(api, hook["id"]) == [], "a refused publish creates nothing"


async def test_idempotency_key_returns_the_first_event(delivering: Api, receiver: Receiver) -> None:
    api = delivering
    hook = await webhook(api, receiver)
    headers = {"Idempotency-Key": "order-42"}
    responses = await asyncio.gather(*[api.publish(headers=headers) for _ in range(10)])
    assert all(r == responses[0] for r in responses), (
        "concurrent requests with one key get one answer"
    )
    await receiver.wait_for(1)
    assert len(await deliveries(api, hook["id"])) == 1, "one key, one delivery"
    again = await api.post(
        "/v2/events", json={"topic": "post.created", "data": {"item": {}}}, headers=headers
    )
    assert again.json() == responses[0] and again.headers.get("Idempotent-Replayed") == "true"

    other_key = await api.new_org_key("other")
    other = await api.publish(key=other_key, headers=headers)
    assert other["id"] != responses[0]["id"], "keys are per organization"

    # A key older than 24 hours no longer holds.
    await _sql(api, "UPDATE idempotency_keys SET created_at = created_at - 90000000")
    later = await api.publish(headers=headers)
    assert later["id"] != responses[0]["id"]
    bad = await api.post(
        "/v2/events",
        json={"topic": "post.created", "data": {"item": {}}},
        headers={"Idempotency-Key": "x" * 256},
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "idempotency_key_invalid"


async def _sql(api: Api, sql: str) -> None:
    """Run a statement on the test's database, behind hookd's back (to age rows)."""
    await run_sql(api.store, sql)


# Retries and health.


async def test_failures_are_retried_on_the_schedule_then_fail(
    delivering: Api, receiver: Receiver
) -> None:
    api = delivering
    receiver.behave("/hook", status=500, body=b"boom")
    hook = await webhook(api, receiver)
    started = time.monotonic()
    await api.publish()
    received = await receiver.wait_for(4, timeout=15)
    assert [r.header("X-Webhook-Attempt") for r in received] == ["1", "2", "3", "4"]
    assert [r.json()["deliveryStatus"] for r in received] == [
        "pending",
        "retrying",
        "retrying",
        "retrying",
    ]
    gaps = [b.at - a.at for a, b in itertools.pairwise(received)]
    # The test schedule is 0.2, 0.4, 0.8 s with ±10 % jitter (plus a little loop latency).
    for gap, expected in zip(gaps, (0.2, 0.4, 0.8), strict=True):
        assert expected * 0.85 <= gap <= expected * 1.1 + 0.35, (
            f"retry after {gap:.3f}s, expected ~{expected}s"
        )
    assert len({r.header("webhook-id") for r in received}) == 1, (
        "webhook-id is the same on every attempt"
    )

    [delivery] = await eventually(lambda: settled(api, hook["id"]))
    assert delivery["status"] == "failed" and delivery["attemptCount"] == 4
    assert delivery["nextAttemptAt"] is None
    current = await get_webhook(api, hook["id"])
    assert current["lastStatus"]["code"] == 500
    assert current["lastStatus"]["message"] == "Internal Server Error"
    assert current["health"]["errorsSinceLastSuccess"] == 4
    assert current["health"]["consecutiveFailures"] == 1, "one delivery ended failed"
    assert current["health"]["lastSuccessAt"] is None
    assert current["status"] == "active"
    await asyncio.sleep(0.5)
    assert len(receiver.requests) == 4, "no attempt after the schedule is used up"
    assert time.monotonic() - started < 10


async def settled(api: Api, webhook_id: str, count: int = 1) -> list[dict[str, Any]] | None:
    """The webhook's deliveries once there are ``count`` and none is pending, else None."""
    found = await deliveries(api, webhook_id)
    done = len(found) >= count and all(d["status"] != "pending" for d in found)
    return found if done else None


async def test_success_after_failure_resets_the_counters(
    delivering: Api, receiver: Receiver
) -> None:
    api = delivering
    receiver.behave("/hook", status=503)
    hook = await webhook(api, receiver)
    await api.publish()
    await receiver.wait_for(2)
    receiver.behave("/hook", status=200, body=b"ok")
    await receiver.wait_for(3)
    current = await eventually(lambda: _with_success(api, hook["id"]))
    health = current["health"]
    assert health["errorsSinceLastSuccess"] == 0 and health["consecutiveFailures"] == 0
    assert current["lastStatus"]["code"] == 200 and current["lastStatus"]["message"] == "Success"
    assert isinstance(health["avgResponseTime"], int) and isinstance(
        health["lastResponseTime"], int
    )
    [delivery] = await deliveries(api, hook["id"])
    assert delivery["status"] == "succeeded" and delivery["attemptCount"] == 3


async def _with_success(api: Api, webhook_id: str) -> dict[str, Any] | None:
    current = await get_webhook(api, webhook_id)
    return current if current["health"]["lastSuccessAt"] else None


def test_retry_delays_have_ten_percent_jitter() -> None:
    rng = random.Random(7)
    schedule = (60.0, 3600.0, 21600.0)
    for attempt, base in enumerate(schedule, start=1):
        delays = [retry_delay_ms(schedule, attempt, rng) for _ in range(2000)]
        assert all(d is not None and base * 900 <= d <= base * 1100 for d in delays)
        assert (
            min(d for d in delays if d) < base * 920 and max(d for d in delays if d) > base * 1080
        ), "jitter spans ±10 %"
    assert retry_delay_ms(schedule, 4, rng) is None, "after the 4th attempt the delivery fails"


async def test_timeouts_redirects_and_refusals_are_failures(api: Api, receiver: Receiver) -> None:
    receiver.behave("/slow", delay=1.6)
    receiver.behave("/moved", status=302, headers={"Location": "/elsewhere"})
    slow = await webhook(api, receiver, "/slow", requestConfig={"timeoutMs": 1000})
    moved = await webhook(api, receiver, "/moved", topics=["post.updated"])
    async with worker_for(api, retry_schedule=""):
        await api.publish("post.created")
        await api.publish("post.updated")
        slow_now = await eventually(lambda: _with_status(api, slow["id"]))
        moved_now = await eventually(lambda: _with_status(api, moved["id"]))
    assert slow_now["lastStatus"]["code"] == 0
    assert slow_now["lastStatus"]["message"] == "Timed out after 1000 ms"
    assert slow_now["health"]["lastResponseTime"] == 1000, "a timeout counts as the timeout"
    assert moved_now["lastStatus"]["code"] == 302
    assert "not followed" in moved_now["lastStatus"]["message"]
    assert receiver.on("/elsewhere") == [], "redirects are not followed"


async def _with_status(api: Api, webhook_id: str) -> dict[str, Any] | None:
    current = await get_webhook(api, webhook_id)
    return current if current["lastStatus"] else None


async def test_loopback_is_refused_unless_allowed(api: Api, receiver: Receiver) -> None:
    hook = await webhook(api, receiver)
    async with worker_for(api, allowed_networks="", retry_schedule=""):
        await api.publish()
        current = await eventually(lambda: _with_status(api, hook["id"]))
    message = current["lastStatus"]["message"]
    assert current["lastStatus"]["code"] == 0
    assert (
        "127.0.0.1" in message and "loopback" in message and "HOOKD_ALLOWED_NETWORKS" in message
    ), message
    assert receiver.requests == [], "nothing reached the refused address"
    [delivery] = await deliveries(api, hook["id"])
    detail = (await api.get(f"/v2/webhooks/{hook['id']}/deliveries/{delivery['id']}")).json()
    [attempt] = detail["attempts"]
    assert attempt["statusCode"] is None and "loopback" in attempt["error"]


async def test_consecutive_failed_deliveries_suspend_the_webhook(
    api: Api, receiver: Receiver
) -> None:
    receiver.behave("/hook", status=500)
    hook = await webhook(api, receiver)
    async with worker_for(api, retry_schedule="", suspend_after=3):
        for _ in range(3):
            await api.publish()
        current = await eventually(lambda: _suspended(api, hook["id"]))
        assert current["health"]["consecutiveFailures"] == 3
        # Suspended: new events are not fanned out to it.
        await api.publish()
        await asyncio.sleep(0.3)
        assert len(await deliveries(api, hook["id"])) == 3
        assert len(receiver.requests) == 3
        # Reactivated: health starts over and it receives again.
        receiver.behave("/hook", status=204)
        reactivated = await api.patch(f"/v2/webhooks/{hook['id']}", json={"status": "active"})
        assert reactivated.json()["status"] == "active"
        assert reactivated.json()["health"] == {
            "avgResponseTime": 0,
            "consecutiveFailures": 0,
            "errorsSinceLastSuccess": 0,
            "lastResponseTime": 0,
            "lastSuccessAt": None,
        }
        await api.publish()
        await receiver.wait_for(4)


async def _suspended(api: Api, webhook_id: str) -> dict[str, Any] | None:
    current = await get_webhook(api, webhook_id)
    return current if current["status"] == "suspended" else None


async def test_paused_webhooks_hold_deliveries_until_reactivated(
    delivering: Api, receiver: Receiver
) -> None:
    api = delivering
    receiver.behave("/hook", status=500)
    hook = await webhook(api, receiver)
    await api.publish()
    await receiver.wait_for(1)
    await api.patch(f"/v2/webhooks/{hook['id']}", json={"status": "paused"})
    await asyncio.sleep(1.0)  # the retries (0.2 s, 0.4 s) fall due while paused
    assert len(receiver.requests) == 1, "held while paused"
    [held] = await deliveries(api, hook["id"])
    assert held["status"] == "pending", "held, not dropped"
    receiver.behave("/hook", status=204)
    await api.patch(f"/v2/webhooks/{hook['id']}", json={"status": "active"})
    received = await receiver.wait_for(2)
    assert received[1].header("X-Webhook-Attempt") == "2"
    [done] = await eventually(lambda: settled(api, hook["id"]))
    assert done["status"] == "succeeded"


async def test_deleting_a_webhook_cancels_its_deliveries(
    delivering: Api, receiver: Receiver
) -> None:
    api = delivering
    receiver.behave("/hook", status=500)
    hook = await webhook(api, receiver)
    await api.publish()
    await receiver.wait_for(1)
    deleted = await api.delete(f"/v2/webhooks/{hook['id']}")
    assert deleted.status_code == 200
    await asyncio.sleep(1.0)
    assert len(receiver.requests) == 1, "no attempts after deletion"
    found = await api.store.list_deliveries(hook["id"], None, "g", 10)
    assert [d.status for d in found] == ["cancelled"]


async def test_secret_refresh_applies_to_every_later_attempt(
    delivering: Api, receiver: Receiver
) -> None:
    api = delivering
    receiver.behave("/hook", status=500)
    hook = await webhook(api, receiver)
    await api.publish()
    [first] = await receiver.wait_for(1)
    refreshed = (await api.post(f"/v2/webhooks/{hook['id']}/secret")).json()
    assert refreshed["secret"] != hook["secret"]
    receiver.behave("/hook", status=204)
    received = await receiver.wait_for(2)
    retry = received[1]
    headers = {k.lower(): v for k, v in retry.headers.items()}
    standardwebhooks.Webhook(refreshed["secret"]).verify(retry.body.decode(), headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(hook["secret"]).verify(retry.body.decode(), headers)
    old = {k.lower(): v for k, v in first.headers.items()}
    standardwebhooks.Webhook(hook["secret"]).verify(first.body.decode(), old)


async def test_in_flight_attempts_per_webhook_are_capped(api: Api, receiver: Receiver) -> None:
    receiver.behave("/a", delay=0.25)
    receiver.behave("/b", delay=0.25)
    await webhook(api, receiver, "/a")
    await webhook(api, receiver, "/b")
    for _ in range(12):
        await api.publish()
    async with worker_for(api, max_in_flight_per_webhook=3):
        await receiver.wait_for(24, timeout=15)
    assert receiver.max_active["/a"] == 3, (
        f"at most 3 at once per webhook, saw {receiver.max_active}"
    )
    assert receiver.max_active["/b"] == 3


async def test_a_failing_webhook_does_not_hold_up_a_healthy_one(
    api: Api, receiver: Receiver
) -> None:
    receiver.behave("/slow", delay=1.5)
    await webhook(api, receiver, "/slow", requestConfig={"timeoutMs": 1000})
    await webhook(api, receiver, "/fast")
    for _ in range(30):
        await api.publish()
    async with worker_for(api, max_in_flight_per_webhook=2, retry_schedule=""):
        started = time.monotonic()
        await receiver.wait_for(30, "/fast", timeout=10)
        elapsed = time.monotonic() - started
    assert elapsed < 1.0, (
        f"the healthy webhook's 30 deliveries took {elapsed:.2f}s behind a timing-out one"
    )


# Isolation (SPEC §5): caps and fairness, end to end.


async def test_test_deliveries_are_held_to_the_in_flight_cap(api: Api, receiver: Receiver) -> None:
    receiver.behave("/hook", delay=0.3)
    hook = await webhook(api, receiver)
    paused = await api.patch(f"/v2/webhooks/{hook['id']}", json={"status": "paused"})
    assert paused.status_code == 200, paused.text
    for _ in range(9):
        assert (await api.post(f"/v2/webhooks/{hook['id']}/test")).status_code == 202
    async with worker_for(api, max_in_flight_per_webhook=3):
        await receiver.wait_for(9, timeout=15)
    assert receiver.max_active["/hook"] == 3, (
        f"test deliveries, like any other, at most 3 at once: {receiver.max_active}"
    )


async def test_an_organization_is_held_to_its_in_flight_cap(api: Api, receiver: Receiver) -> None:
    for path in ("/a", "/b", "/c"):
        receiver.behave(path, delay=0.3)
        await webhook(api, receiver, path)
    for _ in range(8):
        await api.publish()
    async with worker_for(api, max_in_flight_per_org=4):
        await receiver.wait_for(24, timeout=15)
    assert receiver.max_active_total == 4, (
        f"at most 4 attempts at once for the organization's 3 webhooks: {receiver.max_active}"
    )


async def test_a_backlog_of_one_organization_holds_back_no_other(
    api: Api, receiver: Receiver
) -> None:
    for path in ("/busy0", "/busy1"):
        receiver.behave(path, delay=0.2)
        await webhook(api, receiver, path)
    for _ in range(40):
        await api.publish()  # 80 deliveries, 4 at a time (the worker's concurrency)
    other = await api.new_org_key("other")
    await api.create_webhook(key=other, url=receiver.url("/other"))
    async with worker_for(api, worker_concurrency=4):
        await receiver.wait_for(4)
        for _ in range(2):
            await api.publish(key=other)
        await receiver.wait_for(2, "/other", timeout=15)
        busy_done = len(receiver.requests) - 2
    assert busy_done < 40, (
        f"the other organization's 2 deliveries waited for {busy_done} of the 80 in the backlog"
    )


async def test_a_due_retry_is_not_held_back_by_a_backlog(api: Api, receiver: Receiver) -> None:
    receiver.behave("/hook", status=500, delay=0.3)
    await webhook(api, receiver)
    for _ in range(100):
        await api.publish()
    async with worker_for(api, max_in_flight_per_webhook=1, retry_schedule="0.3"):
        [failed] = await receiver.wait_for(1)
        receiver.behave("/hook", delay=0.02)  # from the next request on: 204, quickly
        await receiver.wait_for(101, timeout=30)
    ids = [r.header("webhook-id") for r in receiver.requests]
    retry_at = ids.index(failed.header("webhook-id"), 1)
    assert retry_at < 50, (
        f"the retry, due 0.3 s after the failure, came after {retry_at - 1} of the 99 "
        "deliveries of the backlog"
    )


async def test_an_expired_lease_is_delivered_again(api: Api, receiver: Receiver) -> None:
    await webhook(api, receiver, requestConfig={"timeoutMs": 1000})
    await api.publish()
    # A worker that claims and then dies without a word.
    [claimed] = await api.store.claim(ClaimRequest(api.store.clock(), 10, 10, 500, "dead-worker-1"))
    async with worker_for(api):
        await asyncio.sleep(0.3)
        assert receiver.requests == [], "not sent while the lease is valid"
        [got] = await receiver.wait_for(1, timeout=8)
    assert got.header("webhook-id") == claimed.event_id


async def test_slow_worker_outcome_after_lease_loss_is_not_lost(
    api: Api, receiver: Receiver
) -> None:
    """Concurrent attempts to one webhook from several batches keep exact counts."""
    receiver.behave("/hook", status=500)
    hook = await webhook(api, receiver)
    async with worker_for(api, retry_schedule="", max_in_flight_per_webhook=10, suspend_after=1000):
        await asyncio.gather(*[api.publish() for _ in range(40)])
        await receiver.wait_for(40)
        current = await eventually(lambda: _errors_at_least(api, hook["id"], 40))
    assert current["health"]["errorsSinceLastSuccess"] == 40
    assert current["health"]["consecutiveFailures"] == 40


async def _errors_at_least(api: Api, webhook_id: str, n: int) -> dict[str, Any] | None:
    current = await get_webhook(api, webhook_id)
    return current if current["health"]["errorsSinceLastSuccess"] >= n else None


async def test_metrics_count_events_and_attempts(delivering: Api, receiver: Receiver) -> None:
    api = delivering

    async def sample(name: str, labels: str = "") -> float:
        text = (await api.client.get("/metrics")).text
        for line in text.splitlines():
            if line.startswith(name + labels + " "):
                return float(line.split()[-1])
        return 0.0

    events_before = await sample("hookd_events_published_total", '{topic="post.created"}')
    ok_before = await sample("hookd_delivery_attempts_total", '{outcome="success"}')
    await webhook(api, receiver)
    await api.publish()
    await api.publish()
    await receiver.wait_for(2)
    await eventually(lambda: settled(api, (receiver.requests[0].json())["webhookId"], 2))
    assert (
        await sample("hookd_events_published_total", '{topic="post.created"}') == events_before + 2
    )
    assert await sample("hookd_delivery_attempts_total", '{outcome="success"}') == ok_before + 2
    metrics = await api.client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")


async def test_an_unprintable_answer_cannot_jam_the_worker(
    delivering: Api, receiver: Receiver
) -> None:
    """A reason phrase that is not UTF-8 (aiohttp keeps it as surrogates, which no database
    stores) is cleaned, and deliveries to other webhooks carry on."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        writer.write(
            b"HTTP/1.1 500 Bad\xffThing\x00\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    api = delivering
    odd = await api.create_webhook(url=f"http://127.0.0.1:{port}/odd", topics=["post.created"])
    healthy = await webhook(api, receiver, topics=["post.updated"])
    async with server:
        for _ in range(3):
            await api.publish("post.created")
            await api.publish("post.updated")
        await receiver.wait_for(3)
        await eventually(lambda: settled(api, odd["id"], 3))
    await eventually(lambda: settled(api, healthy["id"], 3))
    current = await get_webhook(api, odd["id"])
    assert current["lastStatus"]["code"] == 500
    assert (
        current["lastStatus"]["message"].startswith("Bad")
        and "\x00" not in current["lastStatus"]["message"]
    )
