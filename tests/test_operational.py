"""Operational topics (SPEC §4): ``webhook.suspended`` and ``delivery.failed``, published by
hookd when it suspends a webhook or a delivery fails for good, delivered to the other
subscribed webhooks (never to the one concerned, never about a test delivery or an
operational-topic delivery), listed in GET /v2/events, refused by POST /v2/events. On SQLite
and PostgreSQL, with a real worker and a real receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from hookd.api import create_app
from hookd.server import build_worker
from hookd.settings import DEFAULT_API_VERSION
from hookd.store import Store
from tests.conftest import Api, eventually, make_settings, run_sql
from tests.receiver import Receiver

OPERATIONAL = ["webhook.suspended", "delivery.failed"]


@pytest.fixture
async def ops(database_url: str, store: Store) -> AsyncIterator[Api]:
    """The app and a worker with one retry (0.05 s) and suspension after 2 failed deliveries."""
    settings = make_settings(database_url, retry_schedule="0.05", suspend_after=2)
    key = await store.bootstrap(10, DEFAULT_API_VERSION)
    assert key is not None
    app = create_app(settings, store)
    worker = build_worker(settings, store)
    await worker.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hookd.test") as client:
            yield Api(client, key, store)
    finally:
        await worker.stop(grace=2.0)


async def _deliveries(api: Api, webhook_id: str) -> list[dict[str, Any]]:
    response = await api.get(f"/v2/webhooks/{webhook_id}/deliveries?limit=100")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["data"]
    return found


async def _events(api: Api, topic: str) -> list[dict[str, Any]]:
    response = await api.get(f"/v2/events?topic={topic}&limit=100")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["data"]
    return found


async def test_failure_and_suspension_publish_one_event_each_to_the_other_webhooks(
    ops: Api, receiver: Receiver
) -> None:
    receiver.behave("/down", status=500)
    failing = await ops.create_webhook(
        url=receiver.url("/down"), topics=["post.created", *OPERATIONAL]
    )
    watcher = await ops.create_webhook(url=receiver.url("/ops"), topics=OPERATIONAL)
    other = await ops.create_webhook(url=receiver.url("/failed-only"), topics=["delivery.failed"])
    paused = await ops.create_webhook(url=receiver.url("/paused"), topics=OPERATIONAL)
    await ops.patch(f"/v2/webhooks/{paused['id']}", json={"status": "paused"})

    first = await ops.publish()
    second = await ops.publish()

    async def suspended() -> bool:
        found = await ops.get(f"/v2/webhooks/{failing['id']}")
        return bool(found.json()["status"] == "suspended")

    await eventually(suspended, timeout=15)
    # Two failures (one each) and one suspension reach the watcher; failures only the other.
    await receiver.wait_for(3, "/ops", timeout=15)
    await receiver.wait_for(2, "/failed-only", timeout=15)

    topics = sorted(r.json()["topic"] for r in receiver.on("/ops"))
    assert topics == ["delivery.failed", "delivery.failed", "webhook.suspended"], topics
    assert not receiver.on("/paused"), "a paused webhook got an operational event"
    assert all(r.json()["topic"] == "post.created" for r in receiver.on("/down")), (
        "the webhook concerned got an operational event about itself"
    )

    by_topic: dict[str, list[dict[str, Any]]] = {}
    for request in receiver.on("/ops"):
        body = request.json()
        by_topic.setdefault(body["topic"], []).append(body)
        assert body["webhookId"] == watcher["id"]
        assert request.header("X-Webhook-Signature"), "operational events are signed"
        assert request.header("webhook-id") == body["id"]

    item = by_topic["webhook.suspended"][0]["data"]["item"]
    assert item["object"] == "webhook" and item["id"] == failing["id"]
    assert item["status"] == "suspended" and "secret" not in item, item
    assert item["health"]["consecutiveFailures"] == 2, item

    failures = sorted((b["data"]["item"] for b in by_topic["delivery.failed"]), key=lambda d: d["eventId"])
    assert [d["eventId"] for d in failures] == sorted([first["id"], second["id"]])
    for delivery in failures:
        assert delivery["object"] == "webhook_delivery" and delivery["status"] == "failed"
        assert delivery["webhookId"] == failing["id"] and delivery["attemptCount"] == 2
        assert delivery["nextAttemptAt"] is None and delivery["lastStatus"]["code"] == 500

    # Listed among the organization's events, with the deliveries they made.
    listed = await _events(ops, "webhook.suspended")
    assert len(listed) == 1, listed
    detail = (await ops.get(f"/v2/events/{listed[0]['id']}")).json()
    assert detail["data"]["item"]["id"] == failing["id"]
    assert [d["webhookId"] for d in detail["deliveries"]] == [watcher["id"]]
    failed_events = await _events(ops, "delivery.failed")
    assert len(failed_events) == 2, failed_events
    detail = (await ops.get(f"/v2/events/{failed_events[0]['id']}")).json()
    assert sorted(d["webhookId"] for d in detail["deliveries"]) == sorted(
        [watcher["id"], other["id"]]
    )
    # Exactly once: nothing more arrives once everything settled.
    await eventually(
        lambda: _all_settled(ops, [watcher["id"], other["id"], failing["id"]]), timeout=10
    )
    assert len(receiver.on("/ops")) == 3 and len(receiver.on("/failed-only")) == 2


async def _all_settled(api: Api, webhook_ids: list[str]) -> bool:
    for webhook_id in webhook_ids:
        deliveries = await _deliveries(api, webhook_id)
        if any(d["status"] == "pending" and d["nextAttemptAt"] for d in deliveries):
            return False
    return True


async def test_no_event_about_test_or_operational_deliveries(
    ops: Api, receiver: Receiver
) -> None:
    receiver.behave("/down", status=500)
    receiver.behave("/ops-down", status=500)
    down = await ops.create_webhook(url=receiver.url("/down"), topics=["post.created"])
    # Subscribed to operational topics and failing: its failed operational deliveries must
    # not produce delivery.failed events (which it would get again: a loop).
    ops_down = await ops.create_webhook(url=receiver.url("/ops-down"), topics=OPERATIONAL)
    watcher = await ops.create_webhook(url=receiver.url("/ops"), topics=["delivery.failed"])

    tested = await ops.post(f"/v2/webhooks/{down['id']}/test", json={})
    assert tested.status_code == 202, tested.text
    await receiver.wait_for(1, "/down")
    await eventually(
        lambda: _delivery_status(ops, down["id"], tested.json()["id"], "failed"), timeout=10
    )

    await ops.publish()
    # One delivery.failed about post.created: to the watcher and to ops_down (which fails
    # it twice); that failure of an operational-topic delivery publishes nothing more.
    await receiver.wait_for(1, "/ops", timeout=15)
    await receiver.wait_for(2, "/ops-down", timeout=15)
    await eventually(lambda: _all_final(ops, ops_down["id"]), timeout=15)
    assert len(await _events(ops, "delivery.failed")) == 1
    assert len(receiver.on("/ops")) == 1, "an event about an operational or test delivery"
    assert receiver.on("/ops")[0].json()["data"]["item"]["webhookId"] == down["id"]
    assert watcher["id"] != down["id"]


async def _delivery_status(api: Api, webhook_id: str, delivery_id: str, status: str) -> bool:
    found = await api.get(f"/v2/webhooks/{webhook_id}/deliveries/{delivery_id}")
    return bool(found.json()["status"] == status)


async def _all_final(api: Api, webhook_id: str) -> bool:
    deliveries = await _deliveries(api, webhook_id)
    return bool(deliveries) and all(d["status"] in ("failed", "succeeded") for d in deliveries)


async def test_publishing_an_operational_topic_is_refused(api: Api) -> None:
    for topic in OPERATIONAL:
        response = await api.post("/v2/events", json={"topic": topic, "data": {"item": {}}})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "topic_reserved" and error["param"] == "topic", error
    assert (await api.get("/v2/events")).json()["data"] == []


async def test_webhooks_subscribe_to_operational_topics(api: Api) -> None:
    created = await api.create_webhook(topics=OPERATIONAL)
    assert created["topics"] == OPERATIONAL
    updated = await api.patch(
        f"/v2/webhooks/{created['id']}", json={"topics": ["delivery.failed", "post.created"]}
    )
    assert updated.status_code == 200 and updated.json()["topics"] == [
        "delivery.failed",
        "post.created",
    ]
    listed = await api.get("/v2/events?topic=webhook.suspended")
    assert listed.status_code == 200, listed.text


async def test_a_suspension_is_published_in_the_settles_transaction(
    ops: Api, receiver: Receiver
) -> None:
    """The event exists as soon as the suspension does: both are in one transaction."""
    receiver.behave("/down", status=500)
    failing = await ops.create_webhook(url=receiver.url("/down"), topics=["post.created"])
    await ops.create_webhook(url="https://example.com/ops", topics=["webhook.suspended"])
    await ops.publish()
    await ops.publish()
    store = ops.store

    async def suspended_and_published() -> tuple[int, int] | None:
        # One statement: one snapshot of both.
        found = await run_sql(
            store,
            f"SELECT (SELECT status FROM webhooks WHERE id = '{failing['id']}'), "
            "(SELECT count(*) FROM events WHERE topic = 'webhook.suspended')",
        )
        status, events = found[0]
        if status != "suspended":
            assert events == 0, "an event before the suspension"
            return None
        return 1, int(events)

    assert await eventually(suspended_and_published, timeout=15, interval=0.001) == (1, 1)


async def test_operational_events_reach_event_streams(
    ops: Api, receiver: Receiver, database_url: str
) -> None:
    from tests.test_stream import Served

    settings = make_settings(database_url, retry_schedule="0.05", suspend_after=2)
    receiver.behave("/down", status=500)
    failing = await ops.create_webhook(url=receiver.url("/down"), topics=["post.created"])
    async with (
        Served(ops, settings) as served,
        served.stream(topics="webhook.suspended,delivery.failed") as stream,
    ):
        await ops.publish()
        await ops.publish()
        got = await stream.events(3)
    assert sorted(e["topic"] for e in got) == [
        "delivery.failed",
        "delivery.failed",
        "webhook.suspended",
    ], got
    for envelope in got:
        assert envelope["webhookId"] is None and envelope["object"] == "notification_event"
        assert envelope["data"]["item"].get("webhookId", envelope["data"]["item"].get("id")) == (
            failing["id"]
        )
