"""Operational events survive ``kill -9`` (SPEC §4, issue 16): a real ``hookd serve`` is
killed several times while its deliveries fail for good and its webhooks get suspended, and
restarted; afterwards every suspension and every final failure has exactly one event, never
none and never two, because each is published in the transaction that records it."""

from __future__ import annotations

import collections
import contextlib
import http.server
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson

from tests.processes import HookdProcesses
from tests.test_crash_safety import sql, wait_until

ENV = {
    "HOOKD_ALLOW_HTTP": "true",
    "HOOKD_ALLOWED_NETWORKS": "127.0.0.0/8",
    "HOOKD_RATE_LIMIT": "0",
    "HOOKD_RETRY_SCHEDULE": "0.05",
    "HOOKD_SUSPEND_AFTER": "6",
    "HOOKD_MAX_IN_FLIGHT_PER_WEBHOOK": "2",
    "HOOKD_LEASE_MARGIN": "1",
    "HOOKD_POLL_INTERVAL": "0.1",
}
FAILING = 6
EVENTS = 30
KILLS = 4


@contextlib.contextmanager
def failing_receiver(delay: float) -> Iterator[str]:
    """A receiver on 127.0.0.1 that answers every request 500 after ``delay`` seconds, so
    that failures and suspensions spread over the time the test kills hookd in."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            time.sleep(delay)
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


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
    rng = random.Random(16)
    with failing_receiver(0.1) as refused, HookdProcesses(tmp_path, env=ENV) as procs:
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
        mid_work = 0
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.1, 0.6))
            mid_work += not _settled(database_url)
            server.kill()
            server = procs.start("serve", database_url=database_url)
        wait_until(lambda: _settled(database_url), 60, "every delivery settled or held")
        server.stop()
    assert mid_work >= 2, f"only {mid_work} of the kills came while deliveries were under way"

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
