"""Operational events survive ``kill -9`` (SPEC §4, issue 16): a real ``hookd serve`` is
killed several times while its deliveries fail for good and its webhooks get suspended, and
restarted; afterwards every suspension and every final failure has exactly one event, never
none and never two, because each is published in the transaction that records it."""

from __future__ import annotations

import collections
import random
import time
from pathlib import Path

import httpx
import orjson

from tests.processes import HookdProcesses, free_port
from tests.test_crash_safety import sql, wait_until

ENV = {
    "HOOKD_ALLOW_HTTP": "true",
    "HOOKD_ALLOWED_NETWORKS": "127.0.0.0/8",
    "HOOKD_RATE_LIMIT": "0",
    "HOOKD_RETRY_SCHEDULE": "0.05",
    "HOOKD_SUSPEND_AFTER": "3",
    "HOOKD_LEASE_MARGIN": "1",
    "HOOKD_POLL_INTERVAL": "0.1",
}
FAILING = 6
EVENTS = 30
KILLS = 3


def _settled(database_url: str) -> bool:
    """Nothing left to attempt: no lease, no pending delivery of an active webhook."""
    found = sql(
        database_url,
        "SELECT count(*) FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id "
        "WHERE d.lease_until IS NOT NULL OR (d.status = 'pending' AND w.status = 'active')",
    )
    return found == [(0,)]


def test_every_suspension_and_final_failure_has_exactly_one_event_across_kills(
    tmp_path: Path, database_url: str
) -> None:
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens: every attempt fails
    rng = random.Random(16)
    with HookdProcesses(tmp_path, env=ENV) as procs:
        server = procs.start("serve", database_url=database_url)
        headers = {"Authorization": f"Bearer {server.api_key()}"}
        with httpx.Client(base_url=server.base_url, headers=headers) as client:
            for n in range(FAILING):
                body = {"name": f"f{n}", "url": f"{refused}/f{n}", "topics": ["post.created"]}
                assert client.post("/v2/webhooks", json=body).status_code == 200
            watcher = {
                "name": "watcher",
                "url": f"{refused}/ops",
                "topics": ["webhook.suspended", "delivery.failed"],
            }
            assert client.post("/v2/webhooks", json=watcher).status_code == 200
            for _ in range(EVENTS):
                event = {"topic": "post.created", "data": {"item": {"id": "p"}}}
                assert client.post("/v2/events", json=event).status_code == 202
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.2, 0.8))
            server.kill()
            server = procs.start("serve", database_url=database_url)
        wait_until(lambda: _settled(database_url), 60, "every delivery settled or held")
        server.stop()

    suspended = {
        str(w) for (w,) in sql(database_url, "SELECT id FROM webhooks WHERE status = 'suspended'")
    }
    failed = {
        str(d)
        for (d,) in sql(
            database_url,
            "SELECT id FROM deliveries WHERE status = 'failed' AND NOT is_test "
            "AND topic NOT IN ('webhook.suspended', 'delivery.failed')",
        )
    }
    about: collections.Counter[tuple[str, str]] = collections.Counter()
    for topic, data in sql(
        database_url,
        "SELECT topic, data FROM events WHERE topic IN ('webhook.suspended', 'delivery.failed')",
    ):
        about[(str(topic), orjson.loads(data)["item"]["id"])] += 1

    assert len(suspended) >= FAILING, "every failing webhook ends suspended"
    assert failed, "some deliveries failed for good"
    expected = collections.Counter(
        {("webhook.suspended", w): 1 for w in suspended}
        | {("delivery.failed", d): 1 for d in failed}
    )
    missing = expected - about
    twice = about - expected
    assert not missing, f"{len(missing)} suspensions or failures without their event"
    assert not twice, f"events published twice or about nothing final: {sorted(twice)[:5]}"
