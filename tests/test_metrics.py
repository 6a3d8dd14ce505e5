"""Prometheus metrics (SPEC §8), scraped from real hookd processes delivering to a real
receiver on 127.0.0.1: attempts by outcome, failed deliveries and suspensions, events by
topic, HTTP requests by route template, the database-read gauges and their 5-s cache, the
token, webhook labels, and the worker's own metrics port."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bench.dns_server import DnsServer
from hookd.api import create_app
from hookd.metrics import (
    ATTEMPT_OUTCOMES,
    DELIVERY_STATES,
    METRIC_NAMES,
    WEBHOOK_STATUSES,
    QueueGauges,
    QueueSnapshot,
    TimedCounter,
)
from hookd.server import build_worker
from hookd.settings import Settings
from hookd.store import Store
from tests.conftest import Api, eventually, make_settings, run_sql
from tests.processes import HookdProcess, HookdProcesses, free_port, run_hookd
from tests.receiver import Receiver

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

BASE_ENV = {
    "HOOKD_ALLOW_HTTP": "true",
    "HOOKD_RATE_LIMIT": "0",
    "HOOKD_POLL_INTERVAL": "0.2",
    "HOOKD_LOG_LEVEL": "warning",
}


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name{labels}``; 0 when absent (a counter that never moved)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every series that has ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def get(url: str, authorization: str | None = None) -> httpx.Response:
    headers = {"Authorization": authorization} if authorization else {}
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(url, headers=headers)


async def scrape(url: str, token: str | None = None) -> Samples:
    response = await get(url, f"Bearer {token}" if token else None)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


async def call(
    server: HookdProcess, method: str, path: str, key: str, body: Any = None
) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.request(
            method, server.url(path), json=body, headers={"Authorization": f"Bearer {key}"}
        )


async def create_webhook(server: HookdProcess, key: str, url: str, **fields: Any) -> str:
    body = {"name": "m", "url": url, "topics": ["post.created"], **fields}
    response = await call(server, "POST", "/v2/webhooks", key, body)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


async def publish(server: HookdProcess, key: str, n: int = 1) -> None:
    for _ in range(n):
        body = {"topic": "post.created", "data": {"item": {"id": "p1"}}}
        response = await call(server, "POST", "/v2/events", key, body)
        assert response.status_code == 202, response.text


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    """A name server that knows no name (every lookup: NXDOMAIN)."""
    server = await DnsServer.start({})
    try:
        yield server
    finally:
        server.close()


async def test_serve_counts_each_attempt_outcome_failures_and_suspensions(
    database_url: str, tmp_path: Path, receiver: Receiver, dns: DnsServer
) -> None:
    """One webhook per outcome of SPEC §8, two events: exactly two attempts per outcome,
    every failing delivery counted failed (no retries) and every failing webhook suspended
    once (HOOKD_SUSPEND_AFTER=2)."""
    receiver.behave("/ok", status=200)
    receiver.behave("/redirect", status=302, headers={"Location": "/ok"})
    receiver.behave("/missing", status=404)
    receiver.behave("/broken", status=500)
    receiver.behave("/slow", status=200, delay=3.0)
    closed = free_port()  # nothing listens there: connection refused
    port = receiver.port
    targets = {
        "success": f"http://127.0.0.1:{port}/ok",
        "http_3xx": f"http://127.0.0.1:{port}/redirect",
        "http_4xx": f"http://127.0.0.1:{port}/missing",
        "http_5xx": f"http://127.0.0.1:{port}/broken",
        "timeout": f"http://127.0.0.1:{port}/slow",
        "dns": f"http://nowhere.test:{port}/dns",
        "connect": f"http://127.0.0.1:{closed}/closed",
        "tls": f"https://127.0.0.1:{port}/tls",  # TLS to a plain HTTP server
        "refused": f"http://127.0.0.2:{port}/refused",  # outside HOOKD_ALLOWED_NETWORKS
    }
    assert set(targets) == set(ATTEMPT_OUTCOMES)
    env = {
        **BASE_ENV,
        "HOOKD_ALLOWED_NETWORKS": "127.0.0.1/32",
        "HOOKD_RETRY_SCHEDULE": "",
        "HOOKD_SUSPEND_AFTER": "2",
        "HOOKD_DNS_SERVERS": dns.address,
    }
    with HookdProcesses(tmp_path, env=env) as procs:
        server = procs.start("serve", database_url=database_url)
        key = server.api_key()
        ids = {
            outcome: await create_webhook(
                server,
                key,
                url,
                requestConfig={"timeoutMs": 1000},
            )
            for outcome, url in targets.items()
        }
        await publish(server, key, 2)
        metrics_url = server.url("/metrics")

        async def all_attempted() -> Samples | None:
            found = await scrape(metrics_url)
            done = total(found, "hookd_delivery_attempts_total") == 2 * len(targets)
            return found if done and value(found, "hookd_deliveries_failed_total") == 16 else None

        samples = await eventually(all_attempted, timeout=20, interval=0.2)
        counts = {
            outcome: value(samples, "hookd_delivery_attempts_total", outcome=outcome)
            for outcome in ATTEMPT_OUTCOMES
        }
        assert counts == dict.fromkeys(ATTEMPT_OUTCOMES, 2.0), (
            f"two attempts of each outcome expected, got {counts}\n{server.describe()}"
        )
        for outcome in ATTEMPT_OUTCOMES:
            assert (
                value(samples, "hookd_delivery_attempt_duration_seconds_count", outcome=outcome)
                == 2
            ), outcome
        assert value(samples, "hookd_delivery_attempt_duration_seconds_sum", outcome="timeout") >= (
            2 * 0.99
        ), "a timed-out attempt lasts its timeoutMs"
        assert value(samples, "hookd_deliveries_failed_total") == 16
        assert value(samples, "hookd_webhook_suspensions_total") == 8
        assert value(samples, "hookd_events_published_total", topic="post.created") == 2

        # The gauges read the database (at most 5 s old).
        async def gauges_caught_up() -> Samples | None:
            found = await scrape(metrics_url)
            return found if value(found, "hookd_webhooks", status="suspended") == 8 else None

        samples = await eventually(gauges_caught_up, timeout=12, interval=0.5)
        assert value(samples, "hookd_webhooks", status="active") == 1
        assert value(samples, "hookd_webhooks", status="paused") == 0
        for state in DELIVERY_STATES:
            assert value(samples, "hookd_deliveries", state=state) == 0, state
        assert value(samples, "hookd_delivery_lag_seconds") == 0

        # A test delivery that fails is an attempt, not a failed delivery.
        tested = await call(server, "POST", f"/v2/webhooks/{ids['http_5xx']}/test", key)
        assert tested.status_code == 202, tested.text

        async def test_attempted() -> Samples | None:
            found = await scrape(metrics_url)
            done = value(found, "hookd_delivery_attempts_total", outcome="http_5xx") == 3
            return found if done else None

        samples = await eventually(test_attempted, timeout=10, interval=0.1)
        await asyncio.sleep(0.5)  # its outcome written too
        samples = await scrape(metrics_url)
        assert value(samples, "hookd_deliveries_failed_total") == 16, "test deliveries aside"

        # HTTP requests by route template; no id is ever a label value.
        assert (await call(server, "GET", f"/v2/webhooks/{ids['success']}", key)).status_code == 200
        assert (await call(server, "GET", f"/no/such/{ids['success']}", key)).status_code == 404
        text = (await get(metrics_url)).text
        samples = parse(text)
        requests = "hookd_http_requests_total"
        assert value(samples, requests, method="POST", route="/v2/webhooks", status="200") == 9
        assert value(samples, requests, method="POST", route="/v2/events", status="202") == 2
        assert value(samples, requests, method="GET", route="/v2/webhooks/{id}", status="200") == 1
        assert value(samples, requests, method="GET", route="unmatched", status="404") == 1
        assert (
            value(
                samples,
                "hookd_http_request_duration_seconds_count",
                method="POST",
                route="/v2/events",
                status="202",
            )
            == 2
        )
        leaked = [i for i in ids.values() if i in text]
        assert leaked == [], "no webhook id in a label value (HOOKD_METRICS_WEBHOOK_LABELS off)"


async def test_api_and_two_workers_count_each_attempt_once(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    """``api`` + two ``worker`` processes: the workers' counters sum to the attempts made,
    the api makes none and alone serves the gauges; every /metrics needs the token; webhook
    labels name the webhook and organization."""
    receiver.behave("/ok", status=200)
    receiver.behave("/fail", status=500)
    token = "t0k3n-for.metrics"
    env = {
        **BASE_ENV,
        "HOOKD_ALLOWED_NETWORKS": "127.0.0.0/8",
        "HOOKD_RETRY_SCHEDULE": "0.2",
        "HOOKD_SUSPEND_AFTER": "1000",
        "HOOKD_METRICS_TOKEN": token,
        "HOOKD_METRICS_WEBHOOK_LABELS": "true",
    }
    with HookdProcesses(tmp_path, env=env) as procs:
        api = procs.start("api", database_url=database_url)
        key = org_key(database_url)
        ok = await create_webhook(api, key, f"http://127.0.0.1:{receiver.port}/ok")
        fail = await create_webhook(api, key, f"http://127.0.0.1:{receiver.port}/fail")
        worker_ports = [free_port(), free_port()]
        for port in worker_ports:
            procs.start("worker", database_url=database_url, env={"HOOKD_METRICS_PORT": str(port)})
        await publish(api, key, 10)
        worker_urls = [f"http://127.0.0.1:{port}/metrics" for port in worker_ports]

        async def settled() -> list[Samples] | None:
            try:
                scrapes = [await scrape(url, token) for url in worker_urls]
            except httpx.ConnectError:
                return None  # a worker still starting (ready means: running for a while)
            attempts = sum(total(s, "hookd_delivery_attempts_total") for s in scrapes)
            failed = sum(value(s, "hookd_deliveries_failed_total") for s in scrapes)
            return scrapes if attempts == 30 and failed == 10 else None

        scrapes = await eventually(settled, timeout=20, interval=0.2)
        assert len(receiver.on("/ok")) == 10 and len(receiver.on("/fail")) == 20
        success = sum(total(s, "hookd_delivery_attempts_total", outcome="success") for s in scrapes)
        failures = sum(
            total(s, "hookd_delivery_attempts_total", outcome="http_5xx") for s in scrapes
        )
        assert (success, failures) == (10, 20), "each attempt counted once, by its worker"
        organization = _organization_of(scrapes)
        for webhook, outcome, attempts in ((ok, "success", 10), (fail, "http_5xx", 20)):
            labelled = sum(
                value(
                    s,
                    "hookd_delivery_attempts_total",
                    outcome=outcome,
                    organization=organization,
                    webhook=webhook,
                )
                for s in scrapes
            )
            assert labelled == attempts, (webhook, outcome)
        for s in scrapes:
            assert not any(name == "hookd_deliveries" for name, _ in s), (
                "the database-read gauges are served by serve and api only"
            )

        api_samples = await scrape(api.url("/metrics"), token)
        assert total(api_samples, "hookd_delivery_attempts_total") == 0
        assert value(api_samples, "hookd_events_published_total", topic="post.created") == 10
        for state in DELIVERY_STATES:
            assert value(api_samples, "hookd_deliveries", state=state) == 0, state
        assert value(api_samples, "hookd_webhooks", status="active") == 2

        # The token, on the api's port and on a worker's, in the error shape.
        for url in (api.url("/metrics"), worker_urls[0]):
            missing = await get(url)
            wrong = await get(url, "Bearer nope")
            basic = await get(url, f"Basic {token}")
            assert missing.status_code == 401, (url, missing.text)
            assert missing.headers["Featurebase-Version"] == "2026-01-01.nova"
            assert missing.headers["WWW-Authenticate"].startswith("Bearer")
            assert missing.json()["error"]["code"] == "metrics_token_missing"
            assert missing.json()["error"]["type"] == "authentication_error"
            for refused in (wrong, basic):
                assert refused.status_code == 401, (url, refused.text)
                assert refused.json() == {
                    "object": "error",
                    "error": {
                        "type": "authentication_error",
                        "code": "metrics_token_invalid",
                        "message": "The bearer token is not this server's HOOKD_METRICS_TOKEN.",
                        "param": None,
                        "status": 401,
                    },
                }
        elsewhere = await get(f"http://127.0.0.1:{worker_ports[0]}/v2/webhooks")
        assert elsewhere.status_code == 404
        assert elsewhere.json()["error"]["code"] == "route_not_found"


def org_key(database_url: str) -> str:
    """An API key of a new organization, made with the hookd command."""
    created = run_hookd("orgs", "create", "metrics", database_url=database_url)
    assert created.returncode == 0, created.stderr
    org = created.stdout.strip()
    made = run_hookd("keys", "create", org, database_url=database_url)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def _organization_of(scrapes: list[Samples]) -> str:
    for s in scrapes:
        for name, labels in s:
            if name == "hookd_delivery_attempts_total" and dict(labels).get("organization"):
                return dict(labels)["organization"]
    raise AssertionError("no attempt series carries an organization label")


async def test_gauges_by_state_lag_and_the_five_second_cache(
    api: Api, receiver: Receiver, settings: Settings
) -> None:
    """The gauges read the database: due, scheduled, held and in_flight as SPEC §8 defines
    them, the lag of the oldest due delivery; one query set per 5 s however many scrapes;
    the lag back to 0 once a worker has drained the backlog."""
    gauges: QueueGauges = api.client._transport.app.state.gauges  # type: ignore[attr-defined]
    now = [1000.0]
    gauges.clock = lambda: now[0]
    gauges.wait = 30.0  # every scrape here waits for its read (a loaded machine is slow)
    active = await api.create_webhook(url=receiver.url("/a"))
    paused = await api.create_webhook(url=receiver.url("/b"))
    for _ in range(4):
        await api.publish()
    response = await api.patch(f"/v2/webhooks/{paused['id']}", json={"status": "paused"})
    assert response.status_code == 200, response.text
    response = await api.post(f"/v2/webhooks/{paused['id']}/test")
    assert response.status_code == 202, response.text
    mine = [
        row[0]
        for row in await run_sql(
            api.store,
            f"SELECT id FROM deliveries WHERE webhook_id = '{active['id']}' ORDER BY id",
        )
    ]
    wall = int(time.time() * 1000)
    # One retry in an hour, one attempt under way, the oldest due one waiting for 60 s.
    await run_sql(
        api.store,
        f"UPDATE deliveries SET next_attempt_at = {wall + 3_600_000} WHERE id = '{mine[0]}'",
    )
    await run_sql(
        api.store,
        f"UPDATE deliveries SET lease_until = {wall + 60_000}, lease_token = 'gone-1' "
        f"WHERE id = '{mine[1]}'",
    )
    await run_sql(
        api.store, f"UPDATE deliveries SET next_attempt_at = {wall - 60_000} WHERE id = '{mine[2]}'"
    )

    async def scrape_app() -> Samples:
        response = await api.client.get("/metrics")
        assert response.status_code == 200, response.text
        return parse(response.text)

    reads = gauges.reads
    samples = await scrape_app()
    states = {s: value(samples, "hookd_deliveries", state=s) for s in DELIVERY_STATES}
    # Active webhook: 4 deliveries, 1 scheduled, 1 in flight, 2 due; paused webhook: its 4
    # deliveries held, its test delivery due (a paused webhook still sends those).
    assert states == {"due": 3, "scheduled": 1, "held": 4, "in_flight": 1}, states
    lag = value(samples, "hookd_delivery_lag_seconds")
    assert 60 <= lag < 75, f"the oldest due delivery has waited about 60 s, lag {lag}"
    assert {s: value(samples, "hookd_webhooks", status=s) for s in WEBHOOK_STATUSES} == {
        "active": 1,
        "paused": 1,
        "suspended": 0,
    }
    assert gauges.reads == reads + 1

    # Within 5 s: the same values, however many scrapes, even at once and after a change.
    await run_sql(api.store, f"UPDATE deliveries SET lease_until = NULL WHERE id = '{mine[1]}'")
    for _ in range(5):
        assert value(await scrape_app(), "hookd_deliveries", state="in_flight") == 1
    now[0] += 4.9
    await asyncio.gather(*(scrape_app() for _ in range(10)))
    assert gauges.reads == reads + 1, "one query set per 5 s"
    now[0] += 0.2
    concurrent = await asyncio.gather(*(scrape_app() for _ in range(10)))
    assert gauges.reads == reads + 2, "scrapes at once after 5 s share one read"
    assert {value(s, "hookd_deliveries", state="in_flight") for s in concurrent} == {0}

    # A worker drains what is due: nothing due, no lag.
    worker = build_worker(settings, api.store)
    await worker.start()
    try:
        await receiver.wait_for(4)

        async def drained() -> Samples | None:
            now[0] += 5.1
            found = await scrape_app()
            return found if value(found, "hookd_deliveries", state="due") == 0 else None

        samples = await eventually(drained, timeout=10, interval=0.1)
    finally:
        await worker.stop(grace=2.0)
    assert value(samples, "hookd_delivery_lag_seconds") == 0
    assert value(samples, "hookd_deliveries", state="held") == 4
    assert value(samples, "hookd_deliveries", state="scheduled") == 1


async def test_a_scrape_does_not_wait_long_for_a_slow_count() -> None:
    """Counting a huge queue may take longer than a scrape should: after the first read, a
    scrape waits at most ``wait`` seconds and answers with the last values meanwhile."""
    now = [0.0]
    reads: list[asyncio.Event] = []

    async def read() -> QueueSnapshot:
        done = asyncio.Event()
        reads.append(done)
        await done.wait()
        return QueueSnapshot({"due": len(reads)}, 0.0, {})

    gauges = QueueGauges(read, clock=lambda: now[0], wait=0.05)
    first = asyncio.ensure_future(gauges.refresh())
    await asyncio.sleep(0.1)
    assert not first.done(), "the first scrape waits: there is nothing else to show"
    reads[0].set()
    assert (await first).deliveries["due"] == 1
    now[0] = 5.0
    started = time.monotonic()
    stale = await gauges.refresh()
    assert time.monotonic() - started < 1.0
    assert stale.deliveries["due"] == 1, "the last values, while the count goes on"
    assert len(reads) == 2
    again = await gauges.refresh()
    assert again.deliveries["due"] == 1 and len(reads) == 2, "one read at a time"
    reads[1].set()
    await asyncio.sleep(0.01)
    assert (await gauges.refresh()).deliveries["due"] == 2
    assert len(reads) == 2 and gauges.reads == 2


async def test_metrics_off_removes_the_endpoint_in_every_process(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {**BASE_ENV, "HOOKD_METRICS": "false", "HOOKD_METRICS_PORT": str(port)}
    with HookdProcesses(tmp_path, env=env) as procs:
        server = procs.start("serve", database_url=database_url)
        procs.start("worker", database_url=database_url, env={"HOOKD_METRICS_PORT": str(port)})
        response = await get(server.url("/metrics"))
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "route_not_found"
        document = (await get(server.url("/openapi.json"))).json()
        assert "/metrics" not in document["paths"]
        with pytest.raises(httpx.ConnectError):
            await get(f"http://127.0.0.1:{port}/metrics")


async def test_the_openapi_document_states_the_metrics_token(
    store: Store, database_url: str
) -> None:
    for token, security in (("", []), ("s3cret", [{"metricsToken": []}])):
        app = create_app(make_settings(database_url, metrics_token=token), store)
        operation = app.openapi()["paths"]["/metrics"]["get"]
        assert operation["security"] == security, token
        assert ("401" in operation["responses"]) == bool(token), token


def test_every_metric_family_is_a_spec_name(tmp_path: Path) -> None:
    """What a process serves is exactly SPEC §8's names (plus nothing else named hookd_)."""
    with HookdProcesses(tmp_path, env=BASE_ENV) as procs:
        server = procs.start("serve", database_url=f"sqlite:///{tmp_path / 'h.db'}")
        text = httpx.get(server.url("/metrics"), timeout=5).text
    assert served_families(text) == set(METRIC_NAMES)


def served_families(text: str) -> set[str]:
    """The metric families of a scrape, by their ``# TYPE`` lines."""
    return set(re.findall(r"^# TYPE (hookd_\w+) ", text, re.MULTILINE))


@pytest.mark.parametrize("labelnames", [("outcome",), ("outcome", "organization", "webhook")])
def test_a_timed_counter_is_served_as_a_prometheus_counter_and_histogram_would_be(
    labelnames: tuple[str, ...],
) -> None:
    """hookd's own counter-and-histogram (the hot path's metrics) against prometheus_client's
    Counter and Histogram fed the same values: the same text, byte for byte, bounds and
    values on the bounds included."""
    bounds = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
    ours, theirs = CollectorRegistry(auto_describe=False), CollectorRegistry(auto_describe=False)
    timed = TimedCounter(
        ("x_things", "Things."), ("x_thing_seconds", "How long."), labelnames, bounds
    )
    ours.register(timed)
    counter = Counter("x_things", "Things.", labelnames, registry=theirs)
    histogram = Histogram(
        "x_thing_seconds", "How long.", labelnames, buckets=bounds, registry=theirs
    )
    assert generate_latest(ours) == generate_latest(theirs)
    rng = random.Random(20)
    values = [*bounds, 0.0, 0.004999, 30.0001, 1e9, *(rng.uniform(0, 40) for _ in range(500))]
    for i, seconds in enumerate(values):
        labels = tuple(f"{name}{i % 3}" for name in labelnames)
        timed.series(labels).observe(seconds)
        counter.labels(*labels).inc()
        histogram.labels(*labels).observe(seconds)
    text = generate_latest(ours)
    assert text == generate_latest(theirs)
    assert b'x_thing_seconds_bucket{le="+Inf",' in text or b',le="+Inf"}' in text
    with pytest.raises(ValueError, match="labels"):
        timed.series(("only", "too", "many", "labels"))
