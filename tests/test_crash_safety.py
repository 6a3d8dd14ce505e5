"""Crash safety with real ``hookd`` processes and a real receiver on 127.0.0.1 (SPEC §4, §5
Guarantees, §6 retention, §7), on SQLite and PostgreSQL unless noted.

- ``kill -9`` of ``hookd serve`` while it drains 2,000 deliveries: after a restart every
  delivery arrives, duplicates are bounded by (and are exactly among) the deliveries leased at
  the kill, and the delivery log ends all ``succeeded``.
- ``kill -9`` while 32 clients publish: every event answered ``202`` reaches every webhook;
  retrying the cut-off requests with their ``Idempotency-Key`` creates no second event.
- SIGTERM of ``hookd serve`` / ``hookd worker`` with attempts in flight: exits 0 promptly, the
  attempts finish and are recorded, nothing is sent again after a restart; SIGTERM in the
  middle of a drain leaves no lease behind and no delivery is sent twice.
- PostgreSQL: ``hookd api`` + two ``hookd worker``: every delivery exactly once, both workers
  work, the per-webhook in-flight cap holds across both.
- A retention purge killed with ``kill -9`` inside a batch leaves a consistent database, and
  a restart finishes it.
- Recovery (issue 21), with leases of 10 minutes, so that only a worker's death gives them
  back: a process restarted after ``kill -9`` has its predecessor's leases back by the time
  it is ready; a surviving worker of the same host (SQLite: ``serve`` next to ``worker``)
  takes a killed one's leases over without any restart, long before its heartbeat lapses;
  a rolling restart (SIGTERM, start again, one process after the other) leaves no lease
  behind and sends nothing twice.

The receiver runs an aiohttp server in a background thread (the test thread blocks on
processes) and records for every request the pair (``webhook-id`` header = event id, body's
``webhookId``), its path, ``X-Webhook-Attempt``, and how many requests per path were open at
once. Measured numbers are printed with ``[crash-safety]`` (see them with ``pytest -s``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiohttp import web

from tests.processes import HookdProcess, HookdProcesses, run_hookd

# Every process: plain http to loopback, no rate limit, leases that expire within seconds.
BASE_ENV = {
    "HOOKD_ALLOW_HTTP": "true",
    "HOOKD_ALLOWED_NETWORKS": "127.0.0.0/8",
    "HOOKD_RATE_LIMIT": "0",
    "HOOKD_LEASE_MARGIN": "1",
    "HOOKD_POLL_INTERVAL": "0.2",
    "HOOKD_RETRY_SCHEDULE": "0.5,0.5,0.5",
    "HOOKD_LOG_FORMAT": "json",
}
TOPIC = "post.created"
Pair = tuple[str, str]  # (event id, webhook id)


# The receiver.


@dataclass(frozen=True, slots=True)
class Hit:
    event_id: str
    webhook_id: str
    path: str
    attempt: int
    started: float


class ThreadedReceiver:
    """An HTTP receiver on 127.0.0.1 in a thread of its own; answers 204 after ``delay``."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.hits: list[Hit] = []
        self.answered: list[Pair] = []
        self.active: collections.Counter[str] = collections.Counter()
        self.max_active: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._serve, name="receiver", daemon=True)
        self._ready = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    # Snapshots, safe from the test thread.

    def pairs(self) -> collections.Counter[Pair]:
        with self.lock:
            return collections.Counter((h.event_id, h.webhook_id) for h in self.hits)

    def count(self) -> int:
        with self.lock:
            return len(self.hits)

    def in_flight(self) -> int:
        with self.lock:
            return sum(self.active.values())

    # The server.

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path
        with self.lock:
            self.active[path] += 1
            self.max_active[path] = max(self.max_active[path], self.active[path])
        try:
            body = await request.read()
            hit = Hit(
                request.headers.get("webhook-id", ""),
                str(orjson.loads(body).get("webhookId")),
                path,
                int(request.headers.get("X-Webhook-Attempt", "0")),
                time.monotonic(),
            )
            with self.lock:
                self.hits.append(hit)
            if self.delay:
                await asyncio.sleep(self.delay)
            with self.lock:
                self.answered.append((hit.event_id, hit.webhook_id))
            return web.Response(status=204)
        finally:
            with self.lock:
                self.active[path] -= 1

    async def _start(self) -> None:
        app = web.Application(client_max_size=1024**2)
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> ThreadedReceiver:
        self._thread.start()
        assert self._ready.wait(10), "the receiver did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.close()


# The API and the database, from the test thread.


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def create_webhooks(
    base_url: str, key: str, urls: list[str], timeout_ms: int = 1000
) -> list[dict[str, Any]]:
    hooks = []
    for i, url in enumerate(urls):
        body = {
            "name": f"hook {i}",
            "url": url,
            "topics": [TOPIC],
            "requestConfig": {"timeoutMs": timeout_ms},
        }
        response = httpx.post(f"{base_url}/v2/webhooks", json=body, headers=auth(key))
        assert response.status_code == 200, response.text
        hooks.append(response.json())
    return hooks


async def _publish_async(
    base_url: str,
    key: str,
    count: int | None,
    concurrency: int,
    accepted: list[str],
    errors: list[str],
    halt: threading.Event,
) -> None:
    """``concurrency`` clients publish until ``count`` events were sent (or ``halt`` is set,
    or the server stops answering); 202s go to ``accepted``, anything else to ``errors``
    (for a request that got no answer: its ``Idempotency-Key``, to retry it)."""
    sent = 0
    run = uuid.uuid4().hex[:8]  # Idempotency-Keys unique across calls on one database
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, headers=auth(key), limits=limits) as client:

        async def publisher(n: int) -> None:
            nonlocal sent
            while not halt.is_set() and (count is None or sent < count):
                sent += 1
                body = {"topic": TOPIC, "data": {"item": {"id": f"p{n}-{sent}"}}}
                ikey = f"ik-{run}-{n}-{sent}"
                try:
                    response = await client.post(
                        "/v2/events", json=body, headers={"Idempotency-Key": ikey}, timeout=10
                    )
                except httpx.HTTPError:
                    errors.append(ikey)
                    if count is None:
                        return  # the server is gone
                    raise
                if response.status_code == 202:
                    accepted.append(response.json()["id"])
                else:
                    errors.append(f"{response.status_code} {response.text}")
                    if count is not None:
                        raise AssertionError(f"publish answered {response.status_code}")

        await asyncio.gather(*(publisher(n) for n in range(concurrency)))


def publish(base_url: str, key: str, count: int, concurrency: int = 32) -> list[str]:
    """Publish ``count`` events with ``concurrency`` clients; every one must get a 202."""
    accepted: list[str] = []
    errors: list[str] = []
    asyncio.run(
        _publish_async(base_url, key, count, concurrency, accepted, errors, threading.Event())
    )
    assert not errors and len(set(accepted)) == count, errors[:5]
    return accepted


def delivery_log(base_url: str, key: str, webhook_id: str) -> list[dict[str, Any]]:
    """Every delivery of a webhook, through GET /v2/webhooks/{id}/deliveries, all pages."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    with httpx.Client(base_url=base_url, headers=auth(key)) as client:
        while True:
            params: dict[str, Any] = {"limit": 100}
            if cursor:
                params["cursor"] = cursor
            response = client.get(f"/v2/webhooks/{webhook_id}/deliveries", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            found += page["data"]
            cursor = page["nextCursor"]
            if cursor is None:
                return found


def sql(database_url: str, query: str) -> list[tuple[Any, ...]]:
    """Run one statement against the database (from outside hookd); its rows."""
    if database_url.startswith("sqlite:///"):
        conn = sqlite3.connect(database_url[len("sqlite:///") :], timeout=30)
        try:
            rows = [tuple(r) for r in conn.execute(query).fetchall()]
            conn.commit()
            return rows
        finally:
            conn.close()

    async def run() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(database_url, timeout=10)
        try:
            return [tuple(r) for r in await conn.fetch(query)]
        finally:
            await conn.close()

    return asyncio.run(run())


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last value {result!r})")
        time.sleep(interval)


def wait_all_succeeded(database_url: str, timeout: float, what: str) -> None:
    """Wait until every delivery in the database is recorded as succeeded."""
    wait_until(
        lambda: (
            sql(database_url, "SELECT count(*) FROM deliveries WHERE status <> 'succeeded'")
            == [(0,)]
        ),
        timeout,
        what,
    )


def leased(database_url: str) -> set[Pair]:
    return {
        (str(e), str(w))
        for e, w in sql(
            database_url,
            "SELECT event_id, webhook_id FROM deliveries WHERE lease_until IS NOT NULL",
        )
    }


def failed_attempt_pairs(database_url: str) -> set[Pair]:
    rows = sql(
        database_url,
        "SELECT d.event_id, d.webhook_id FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
        " WHERE NOT a.succeeded",
    )
    return {(str(e), str(w)) for e, w in rows}


def stop(process: HookdProcess) -> None:
    """SIGTERM a process that is not under test for its exit code: it must shut down by
    itself (not need SIGKILL) without a traceback. Exit 0 on SIGTERM is asserted by
    test_sigterm_finishes_and_records_attempts_in_flight (``serve``) and tests/test_cli.py;
    here -15 is tolerated so that those bugs do not hide the crash-safety results."""
    code = process.stop()
    assert code in (0, -signal.SIGTERM), process.describe()
    assert "Traceback" not in process.stderr(), process.describe()


def report(text: str) -> None:
    """Measured numbers, shown with ``pytest -s`` (and in the captured output on failure)."""
    print(f"\n[crash-safety] {text}")


def bootstrap_key(database_url: str) -> str:
    """The organization ``default`` and a key for it, made with the CLI (for ``hookd api``,
    which does not bootstrap)."""
    made = run_hookd("orgs", "create", "default", database_url=database_url)
    assert made.returncode == 0, made.stderr
    made = run_hookd("keys", "create", "default", database_url=database_url)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[HookdProcesses]:
    with HookdProcesses(tmp_path, env=BASE_ENV) as procs:
        yield procs


# 1. kill -9 while draining.

WEBHOOKS = 4
EVENTS = 500
CONCURRENCY = 16
PER_WEBHOOK = 8
IN_FLIGHT_BOUND = min(CONCURRENCY, WEBHOOKS * PER_WEBHOOK)
DRAIN_ENV = {
    "HOOKD_WORKER_CONCURRENCY": str(CONCURRENCY),
    "HOOKD_MAX_IN_FLIGHT_PER_WEBHOOK": str(PER_WEBHOOK),
}


def prepare_backlog(
    processes: HookdProcesses, database_url: str, receiver: ThreadedReceiver
) -> tuple[str, list[dict[str, Any]], list[str]]:
    """The organization's key (printed by `hookd serve`) and 4 webhooks, then a backlog of
    500 events published through `hookd api` (no worker), so that every event is answered
    202 before any delivery starts."""
    server = processes.start("serve", database_url=database_url, env=DRAIN_ENV)
    key = server.api_key()
    urls = [receiver.url(f"/h{i}") for i in range(WEBHOOKS)]
    hooks = create_webhooks(server.base_url, key, urls)
    stop(server)
    api = processes.start("api", database_url=database_url, env=DRAIN_ENV)
    events = publish(api.base_url, key, EVENTS)
    stop(api)
    assert receiver.count() == 0
    return key, hooks, events


def test_sigkill_while_draining_delivers_everything_with_bounded_duplicates(
    processes: HookdProcesses, database_url: str
) -> None:
    total = WEBHOOKS * EVENTS
    with ThreadedReceiver(delay=0.02) as receiver:
        key, hooks, events = prepare_backlog(processes, database_url, receiver)
        expected = {(e, h["id"]) for e in events for h in hooks}
        assert len(expected) == total

        server = processes.start("serve", database_url=database_url, env=DRAIN_ENV)
        started = time.monotonic()
        wait_until(lambda: len(receiver.pairs()) >= total * 0.4, 30, "40 % delivered")
        in_flight_at_receiver = receiver.in_flight()
        assert server.kill() == -9
        killed_after = time.monotonic() - started
        arrived_at_kill = receiver.pairs()
        leased_at_kill = leased(database_url)
        assert len(arrived_at_kill) < total * 0.75, "the kill was not in the middle of the drain"
        assert len(leased_at_kill) <= IN_FLIGHT_BOUND

        server = processes.start("serve", database_url=database_url, env=DRAIN_ENV)
        wait_until(lambda: expected <= set(receiver.pairs()), 45, "every delivery arrived")
        drained_after = time.monotonic() - started
        logs = wait_until(
            lambda: all_succeeded(server.base_url, key, hooks, events), 15, "log all succeeded"
        )
        time.sleep(0.5)  # anything still to come would be a duplicate too
        received = receiver.pairs()
        stop(server)

    duplicates = {pair: n - 1 for pair, n in received.items() if n > 1}
    with receiver.lock:
        attempt_headers = collections.Counter(
            h.attempt for h in receiver.hits if (h.event_id, h.webhook_id) in duplicates
        )
    report(
        f"sigkill-drain {database_url.split(':')[0]}: killed after {killed_after:.2f}s with "
        f"{len(arrived_at_kill)}/{total} delivered; receiver had {in_flight_at_receiver} "
        f"requests open; {len(leased_at_kill)} deliveries leased in the database (bound "
        f"{IN_FLIGHT_BOUND}); duplicates {sum(duplicates.values())}; all {total} arrived "
        f"{drained_after:.2f}s after the first start; attemptCount>1: "
        f"{sum(1 for d in logs if d['attemptCount'] > 1)}; X-Webhook-Attempt of the "
        f"duplicated deliveries' requests {dict(attempt_headers)}"
    )
    assert set(received) == expected, "only the published (event, webhook) pairs arrive"
    assert sum(duplicates.values()) <= IN_FLIGHT_BOUND, duplicates
    assert max(receiver.max_active.values()) <= PER_WEBHOOK, receiver.max_active
    # A delivery arrives twice only if its outcome was lost with the process (its lease was
    # still held at the kill), or if an attempt failed (e.g. a timeout) and was retried.
    unexplained = set(duplicates) - leased_at_kill - failed_attempt_pairs(database_url)
    assert not unexplained, f"duplicates that were not in flight at the kill: {unexplained}"
    assert len(logs) == total


def test_sigterm_while_draining_sends_each_delivery_once(
    processes: HookdProcesses, database_url: str
) -> None:
    """A graceful stop in the middle of a drain loses no outcome: after a restart nothing is
    sent twice (the attempts under way finished and were recorded, the rest went back)."""
    total = WEBHOOKS * EVENTS
    with ThreadedReceiver(delay=0.02) as receiver:
        key, hooks, events = prepare_backlog(processes, database_url, receiver)
        expected = {(e, h["id"]) for e in events for h in hooks}
        server = processes.start("serve", database_url=database_url, env=DRAIN_ENV)
        wait_until(lambda: len(receiver.pairs()) >= total * 0.4, 30, "40 % delivered")
        in_flight_at_receiver = receiver.in_flight()
        server.signal(signal.SIGTERM)
        server.wait(20)
        assert "Traceback" not in server.stderr(), server.describe()
        arrived_at_stop = len(receiver.pairs())
        assert arrived_at_stop < total * 0.75, "the stop was not in the middle of the drain"
        assert leased(database_url) == set(), "a graceful stop leaves no delivery leased"
        [(recorded,)] = sql(
            database_url, "SELECT count(*) FROM deliveries WHERE status = 'succeeded'"
        )
        assert recorded == arrived_at_stop, "every delivery that arrived is recorded"

        server = processes.start("serve", database_url=database_url, env=DRAIN_ENV)
        wait_until(lambda: expected <= set(receiver.pairs()), 45, "every delivery arrived")
        wait_until(
            lambda: all_succeeded(server.base_url, key, hooks, events), 15, "log all succeeded"
        )
        time.sleep(0.5)
        received = receiver.pairs()
        stop(server)
    report(
        f"sigterm-drain {database_url.split(':')[0]}: stopped with {arrived_at_stop}/{total} "
        f"delivered and {in_flight_at_receiver} requests open at the receiver; duplicates "
        f"{sum(received.values()) - len(received)}"
    )
    assert set(received) == expected
    twice = {pair: n for pair, n in received.items() if n > 1}
    assert not twice, f"sent again after a graceful stop: {twice}"


def all_succeeded(
    base_url: str, key: str, hooks: list[dict[str, Any]], events: list[str]
) -> list[dict[str, Any]] | None:
    """Every webhook's delivery log, if it holds one delivery per event and all succeeded."""
    logs: list[dict[str, Any]] = []
    for hook in hooks:
        log = delivery_log(base_url, key, hook["id"])
        if sorted(d["eventId"] for d in log) != sorted(events):
            raise AssertionError(f"webhook {hook['id']}: the log does not hold one per event")
        if any(d["status"] != "succeeded" for d in log):
            return None
        logs += log
    return logs


def test_sigkill_while_publishing_delivers_every_accepted_event(
    processes: HookdProcesses, database_url: str
) -> None:
    with ThreadedReceiver(delay=0.005) as receiver:
        server = processes.start("serve", database_url=database_url, env=DRAIN_ENV)
        key = server.api_key()
        urls = [receiver.url(f"/h{i}") for i in range(WEBHOOKS)]
        hooks = create_webhooks(server.base_url, key, urls)
        hook_ids = {h["id"] for h in hooks}

        accepted: list[str] = []
        errors: list[str] = []
        halt = threading.Event()
        killed = threading.Event()

        def killer() -> None:
            wait_until(lambda: len(accepted) >= 400 or halt.is_set(), 30, "400 accepted", 0.005)
            server.kill()
            killed.set()

        thread = threading.Thread(target=killer)
        thread.start()
        try:
            asyncio.run(_publish_async(server.base_url, key, None, 32, accepted, errors, halt))
        finally:
            halt.set()
            thread.join()
        assert killed.is_set() and server.returncode == -9
        accepted_at_kill = len(accepted)
        arrived_at_kill = len(receiver.pairs())
        leased_at_kill = leased(database_url)
        stored = {str(r[0]) for r in sql(database_url, "SELECT id FROM events")}
        assert set(accepted) <= stored, "an event answered 202 is not in the database"
        unanswered = stored - set(accepted)

        server = processes.start("serve", database_url=database_url, env=DRAIN_ENV)
        # The clients retry what was cut off, with the same Idempotency-Key: an event that was
        # committed but not answered is returned, not created again (SPEC §4).
        retried = []
        for ikey in errors:
            response = httpx.post(
                server.url("/v2/events"),
                json={"topic": TOPIC, "data": {"item": {"id": ikey}}},
                headers={**auth(key), "Idempotency-Key": ikey},
            )
            assert response.status_code == 202, response.text
            retried.append(response.json()["id"])
        assert unanswered <= set(retried), "a retry created a second event for a stored one"
        stored = {str(r[0]) for r in sql(database_url, "SELECT id FROM events")}
        assert stored == set(accepted) | set(retried), "one event per Idempotency-Key"
        assert len(stored) == len(accepted) + len(errors)
        expected = {(e, h) for e in stored for h in hook_ids}
        wait_until(lambda: expected <= set(receiver.pairs()), 45, "every accepted event arrived")
        wait_all_succeeded(database_url, 15, "every stored delivery succeeded")
        for hook in hooks:
            log = delivery_log(server.base_url, key, hook["id"])
            assert {d["status"] for d in log} == {"succeeded"}
            assert set(accepted) <= {d["eventId"] for d in log}
            assert len(log) == len({d["eventId"] for d in log}) == len(stored)
        time.sleep(0.5)
        received = receiver.pairs()
        stop(server)

    duplicates = sum(n - 1 for n in received.values())
    report(
        f"sigkill-publish {database_url.split(':')[0]}: {accepted_at_kill} events accepted, "
        f"{len(errors)} requests cut off, {len(unanswered)} of them stored but unanswered "
        f"(returned again on retry); {arrived_at_kill} deliveries had arrived; "
        f"{len(leased_at_kill)} leased at the kill; duplicates {duplicates}"
    )
    assert {e for e, _ in received} == stored and {w for _, w in received} == hook_ids
    assert duplicates <= IN_FLIGHT_BOUND


# 2. Graceful SIGTERM.


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_sigterm_finishes_and_records_attempts_in_flight(
    processes: HookdProcesses, database_url: str, command: str
) -> None:
    with ThreadedReceiver(delay=1.5) as receiver:
        if command == "serve":
            server = processes.start("serve", database_url=database_url)
            key, api = server.api_key(), server
        else:  # `hookd api` publishes, `hookd worker` delivers and is the one stopped
            key = bootstrap_key(database_url)
            api = processes.start("api", database_url=database_url)
            server = processes.start("worker", database_url=database_url)
        urls = [receiver.url("/a"), receiver.url("/b")]
        hooks = create_webhooks(api.base_url, key, urls, timeout_ms=5000)
        events = publish(api.base_url, key, 4, concurrency=4)
        expected = {(e, h["id"]) for e in events for h in hooks}
        wait_until(lambda: set(receiver.pairs()) == expected, 10, "all 8 attempts started")
        assert receiver.in_flight() == len(expected)
        with receiver.lock:
            last_claim = max(h.started for h in receiver.hits)

        sent = time.monotonic()
        server.signal(signal.SIGTERM)
        code = server.wait(20)  # the default grace is 35 s: reaching it is a failure too
        took = time.monotonic() - sent
        first = server
        with receiver.lock:
            answered = list(receiver.answered)
        assert took < 10, f"SIGTERM took {took:.1f} s"
        assert "Traceback" not in first.stderr(), first.describe()
        assert set(answered) == expected, "the attempts in flight were cut off"
        stored = sql(
            database_url,
            "SELECT d.status, d.attempt_count, d.lease_until, count(a.id) FROM deliveries d"
            " LEFT JOIN attempts a ON a.delivery_id = d.id AND a.succeeded"
            " GROUP BY d.id, d.status, d.attempt_count, d.lease_until",
        )
        assert sorted(stored) == [("succeeded", 1, None, 1)] * len(expected), (
            "each delivery in flight at SIGTERM is recorded as succeeded, with its attempt"
        )

        server = processes.start(command, database_url=database_url)
        if command == "serve":
            api = server
        for hook in hooks:
            log = delivery_log(api.base_url, key, hook["id"])
            assert [(d["status"], d["attemptCount"]) for d in log] == [("succeeded", 1)] * 4
        # Had an outcome been lost, its lease (timeout 5 s + margin 1 s) would have run out by
        # now and a maintenance round (every second) have put it back in the queue.
        time.sleep(max(0.0, last_claim + 5 + 1 + 1.5 - time.monotonic()))
        assert receiver.count() == len(expected), "a recorded attempt was sent again"
        stop(server)
        if api is not server:
            stop(api)
    report(
        f"sigterm {command} {database_url.split(':')[0]}: exit code {code} after {took:.2f}s, "
        f"{len(answered)} attempts in flight answered and recorded"
    )
    # Checked last, so that the checks above run whatever the exit code.
    assert code == 0, f"hookd {command} must exit 0 on SIGTERM\n" + first.describe()


# 3. Two workers and one api process on PostgreSQL.


def worker_deliveries(process: HookdProcess) -> list[str]:
    """The deliveries a worker logged as succeeded (HOOKD_LOG_LEVEL=debug, json)."""
    found = []
    for line in process.stderr().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "attempt succeeded":
            found.append(record["delivery"])
    return found


@pytest.mark.parametrize("engine", ["postgres"])
def test_two_workers_and_an_api_deliver_each_once_within_the_global_cap(
    processes: HookdProcesses, database_url: str
) -> None:
    cap = 3
    # Default worker concurrency (256, far more than the 4 x 3 slots): each worker takes its
    # fair share of every webhook's cap (2 of 3 with two workers alive), so both take part
    # and webhooks are served by both at once, while the cap holds across them.
    env = {
        "HOOKD_MAX_IN_FLIGHT_PER_WEBHOOK": str(cap),
        "HOOKD_LOG_LEVEL": "debug",
    }
    key = bootstrap_key(database_url)
    with ThreadedReceiver(delay=0.02) as receiver:
        api = processes.start("api", database_url=database_url, env=env)
        hooks = create_webhooks(
            api.base_url, key, [receiver.url(f"/h{i}") for i in range(WEBHOOKS)]
        )
        backlog = publish(api.base_url, key, 300)  # 1,200 deliveries waiting
        workers = [
            processes.start("worker", database_url=database_url, env=env, wait=False)
            for _ in range(2)
        ]
        for worker in workers:
            worker.wait_ready()
        started = time.monotonic()
        live = publish(api.base_url, key, 100, concurrency=8)  # while the workers drain
        expected = {(e, h["id"]) for e in backlog + live for h in hooks}
        wait_until(lambda: set(receiver.pairs()) >= expected, 45, "all delivered")
        took = time.monotonic() - started
        wait_all_succeeded(database_url, 10, "all recorded")
        time.sleep(0.5)
        received = receiver.pairs()
        max_active = dict(receiver.max_active)
        per_worker = [worker_deliveries(w) for w in workers]
        for process in [*workers, api]:
            stop(process)

    report(
        f"multi-worker: {len(expected)} deliveries in {took:.2f}s, per worker "
        f"{[len(w) for w in per_worker]}, max concurrent per webhook {max_active}"
    )
    webhook_of = dict(sql(database_url, "SELECT id, webhook_id FROM deliveries"))
    report(
        "multi-worker: deliveries per (worker, webhook) "
        + str(
            [
                sorted(collections.Counter(webhook_of.get(d, "?")[-4:] for d in w).items())
                for w in per_worker
            ]
        )
    )
    twice = {pair: n for pair, n in received.items() if n > 1}
    assert not twice, f"{len(twice)} deliveries were sent more than once: {list(twice)[:5]}"
    assert set(received) == expected
    assert sorted(per_worker[0] + per_worker[1]) == sorted(webhook_of), (
        "each delivery was attempted by exactly one of the workers"
    )
    assert all(len(w) >= 100 for w in per_worker), "both workers must have done a share"
    shared = {webhook_of[d] for d in per_worker[0]} & {webhook_of[d] for d in per_worker[1]}
    assert shared, "no webhook was served by both workers: the global cap was not exercised"
    assert all(n <= cap for n in max_active.values()), (
        f"more than {cap} attempts at once to one webhook across the workers: {max_active}"
    )
    assert max(max_active.values()) == cap, "the cap was never reached: the test proves nothing"


# 4. A retention purge interrupted by kill -9.

DAY_MS = 86_400_000
OLD_DELIVERIES = 20_000
RECENT_DELIVERIES = 300


def _oid(seconds: int, n: int) -> str:
    return f"{seconds:08x}{n:016x}"


def seed_retention(database_url: str) -> None:
    """An organization, a paused webhook, 20,000 deliveries (each with its event and two
    attempts) three days old, and 300 recent ones; every delivery is finished."""
    now = int(time.time() * 1000)
    org, hook = _oid(now // 1000 - 10 * 86400, 1), _oid(now // 1000 - 10 * 86400, 2)
    events, deliveries, attempts = [], [], []
    for i in range(OLD_DELIVERIES + RECENT_DELIVERIES):
        old = i < OLD_DELIVERIES
        at = now - 3 * DAY_MS + i if old else now - 60_000 + i
        seconds = at // 1000
        event_id = f"notif_{'old' if old else 'new'}_{i:08d}"
        delivery_id = _oid(seconds, 0x100000 + i)
        data = '{"object":"notification_event_data","item":{"id":"x"},"changes":[]}'
        events.append((event_id, org, TOPIC, data, None, None, False, at))
        deliveries.append(
            (delivery_id, hook, event_id, TOPIC, False, "succeeded", 2, None, None, None,
             at + 2000, 204, "Success", at)
        )  # fmt: skip
        for n in (1, 2):
            attempts.append(
                (_oid(seconds + n, 0x200000 + 2 * i + n), delivery_id, hook, n, at + 1000 * n,
                 n == 2, 500 if n == 1 else 204, 12, None, None)
            )  # fmt: skip
    org_row = (org, "default", 10, "2026-01-01.nova", now - 10 * DAY_MS)
    hook_row = (
        hook, org, "old hook", "http://127.0.0.1:9/none", None, f'["{TOPIC}"]', "paused", 1000,
        "{}", "whsec_" + "A" * 44, "1.0", now - 10 * DAY_MS, now - 10 * DAY_MS,
    )  # fmt: skip
    columns = {
        "organizations": "id, name, webhook_limit, default_version, created_at",
        "webhooks": "id, organization_id, name, url, description, topics, status, timeout_ms,"
        " headers, secret, version, created_at, updated_at",
        "events": "id, organization_id, topic, data, conversation_id, conversation_url,"
        " is_test, created_at",
        "deliveries": "id, webhook_id, event_id, topic, is_test, status, attempt_count,"
        " next_attempt_at, lease_until, lease_token, last_attempt_at, last_status_code,"
        " last_status_message, created_at",
        "attempts": "id, delivery_id, webhook_id, attempt_number, attempted_at, succeeded,"
        " status_code, response_time_ms, response_body, error",
    }
    tables: dict[str, list[tuple[Any, ...]]] = {
        "organizations": [org_row],
        "webhooks": [hook_row],
        "events": events,
        "deliveries": deliveries,
        "attempts": attempts,
    }
    if database_url.startswith("sqlite:///"):
        conn = sqlite3.connect(database_url[len("sqlite:///") :])
        try:
            with conn:
                for table, rows in tables.items():
                    marks = ", ".join("?" * len(rows[0]))
                    conn.executemany(
                        f"INSERT INTO {table} ({columns[table]}) VALUES ({marks})", rows
                    )
        finally:
            conn.close()
        return

    async def load() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            async with conn.transaction():
                for table, rows in tables.items():
                    names = [c.strip() for c in columns[table].split(",")]
                    await conn.copy_records_to_table(table, records=rows, columns=names)
        finally:
            await conn.close()

    asyncio.run(load())


COUNTS = (
    "SELECT (SELECT count(*) FROM events WHERE id LIKE 'notif_old%'),"
    " (SELECT count(*) FROM deliveries WHERE event_id LIKE 'notif_old%'),"
    " (SELECT count(*) FROM attempts a WHERE a.delivery_id IN"
    "   (SELECT id FROM deliveries WHERE event_id LIKE 'notif_new%')),"
    " (SELECT count(*) FROM events WHERE id LIKE 'notif_new%'),"
    " (SELECT count(*) FROM deliveries WHERE event_id LIKE 'notif_new%'),"
    " (SELECT count(*) FROM attempts)"
)


def check_consistent(database_url: str) -> tuple[int, ...]:
    """Referential consistency, and the recent rows untouched; returns the counts."""
    orphans = sql(
        database_url,
        "SELECT (SELECT count(*) FROM attempts a WHERE NOT EXISTS"
        "         (SELECT 1 FROM deliveries d WHERE d.id = a.delivery_id)),"
        " (SELECT count(*) FROM deliveries d WHERE NOT EXISTS"
        "         (SELECT 1 FROM events e WHERE e.id = d.event_id)),"
        " (SELECT count(*) FROM deliveries d WHERE NOT EXISTS"
        "         (SELECT 1 FROM attempts a WHERE a.delivery_id = d.id))",
    )
    assert orphans == [(0, 0, 0)], (
        "(attempts without delivery, deliveries without event, deliveries that lost "
        f"their attempts): {orphans}"
    )
    [counts] = sql(database_url, COUNTS)
    old_events, old_deliveries, recent_attempts, recent_events, recent_deliveries, all_attempts = (
        counts
    )
    assert (recent_events, recent_deliveries, recent_attempts) == (
        RECENT_DELIVERIES,
        RECENT_DELIVERIES,
        2 * RECENT_DELIVERIES,
    ), "recent rows were purged"
    assert all_attempts == 2 * (old_deliveries + recent_deliveries)
    assert old_deliveries <= old_events, "a purged event still has deliveries"
    return tuple(int(c) for c in counts)


def purge_transaction_open(database_url: str) -> bool:
    """Whether a write transaction (the purge's, nothing else writes here) is open."""
    if database_url.startswith("sqlite:///"):
        conn = sqlite3.connect(database_url[len("sqlite:///") :], timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc), exc
            return True
        finally:
            conn.close()
    [(n,)] = sql(
        database_url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND xact_start IS NOT NULL AND query ILIKE 'DELETE%'",
    )
    return bool(n)


def test_retention_purge_killed_midway_leaves_a_consistent_database(
    processes: HookdProcesses, database_url: str
) -> None:
    seed_retention(database_url)
    env = {"HOOKD_RETENTION_DAYS": "1"}
    assert check_consistent(database_url)[:2] == (OLD_DELIVERIES, OLD_DELIVERIES)

    worker = processes.start("worker", database_url=database_url, env=env, wait=False)
    samples: list[tuple[float, int]] = []

    def midway() -> bool:
        [(n,)] = sql(database_url, "SELECT count(*) FROM deliveries")
        samples.append((time.monotonic(), int(n)))
        purged = OLD_DELIVERIES + RECENT_DELIVERIES - n
        # Kill while a purge batch's transaction is open, not in the pause between batches.
        return 6_000 <= purged <= OLD_DELIVERIES - 4_000 and purge_transaction_open(database_url)

    wait_until(midway, 30, "the purge under way", interval=0.002)
    assert worker.kill() == -9
    old_events, old_deliveries, *_ = check_consistent(database_url)
    t0 = samples[0][0]
    changes = [
        (round(t - t0, 2), n)
        for i, (t, n) in enumerate(samples)
        if i == 0 or n != samples[i - 1][1]
    ]
    report(
        f"purge {database_url.split(':')[0]}: killed with {old_deliveries} old deliveries and "
        f"{old_events} old events left of {OLD_DELIVERIES}, inside a purge transaction; "
        f"deliveries over time {changes}"
    )
    assert 0 < old_deliveries < OLD_DELIVERIES, "the kill did not interrupt the purge"

    worker = processes.start("worker", database_url=database_url, env=env)
    wait_until(lambda: check_consistent(database_url)[:2] == (0, 0), 30, "the purge completed", 0.2)
    stop(worker)
    assert "purged old rows" in worker.stderr()
    [(hooks, orgs)] = sql(
        database_url, "SELECT (SELECT count(*) FROM webhooks), (SELECT count(*) FROM organizations)"
    )
    assert (hooks, orgs) == (1, 1)


# 5. Recovery (issue 21): leases come back as soon as a worker's death is certain.

# Leases that outlive the test, and heartbeats that lapse only after 20 s: what gives a dead
# worker's leases back sooner is the process check of its own host, at the start of its
# successor or at the next heartbeat (every 2 s) of a worker that survives it.
RECOVERY_ENV = {
    "HOOKD_LEASE_MARGIN": "600",
    "HOOKD_WORKER_TIMEOUT": "20",
    "HOOKD_MAX_IN_FLIGHT_PER_WEBHOOK": "4",
}
DELIVERER = {"sqlite": "serve", "postgresql": "worker"}


def worker_ids(database_url: str) -> list[str]:
    """The workers registered (by their heartbeats), in id order."""
    return [str(r[0]) for r in sql(database_url, "SELECT id FROM workers ORDER BY id")]


def leases_of(database_url: str, worker: str) -> set[Pair]:
    """The (event, webhook) pairs leased to ``worker``."""
    return {
        (str(e), str(w))
        for e, w, token in sql(
            database_url,
            "SELECT event_id, webhook_id, lease_token FROM deliveries"
            " WHERE lease_until IS NOT NULL",
        )
        if str(token).startswith(worker + "-")
    }


def start_backlog(
    processes: HookdProcesses, database_url: str, receiver: ThreadedReceiver, events: int
) -> tuple[HookdProcess, set[Pair]]:
    """An organization (made with the CLI), 4 webhooks, ``events`` events published through a
    running ``hookd api``, which delivers nothing; the api and the (event, webhook) pairs."""
    key = bootstrap_key(database_url)
    api = processes.start("api", database_url=database_url, env=RECOVERY_ENV)
    hooks = create_webhooks(api.base_url, key, [receiver.url(f"/h{i}") for i in range(WEBHOOKS)])
    published = publish(api.base_url, key, events)
    return api, {(e, h["id"]) for e in published for h in hooks}


def check_received(
    received: collections.Counter[Pair], expected: set[Pair], in_flight: set[Pair]
) -> int:
    """Every delivery arrived, and only those leased to a killed worker may have arrived
    twice; how many did."""
    assert set(received) == expected, "every published delivery, and nothing else"
    duplicates = {pair for pair, n in received.items() if n > 1}
    assert duplicates <= in_flight, f"sent twice but not in flight: {duplicates - in_flight}"
    assert max(received.values()) <= 2
    return len(duplicates)


def finish_drain(
    database_url: str, receiver: ThreadedReceiver, expected: set[Pair], *running: HookdProcess
) -> collections.Counter[Pair]:
    """Wait until every expected delivery arrived and is recorded as succeeded, and a moment
    more for any second copy; stop ``running``; what arrived, and how often."""
    wait_until(lambda: expected <= set(receiver.pairs()), 60, "every delivery arrived")
    wait_all_succeeded(database_url, 15, "every delivery recorded")
    time.sleep(0.5)
    received = receiver.pairs()
    for process in running:
        stop(process)
    return received


def test_a_restarted_process_takes_back_its_killed_predecessors_leases_at_start(
    processes: HookdProcesses, database_url: str
) -> None:
    command = DELIVERER[database_url.split(":")[0]]
    with ThreadedReceiver(delay=0.2) as receiver:
        api, expected = start_backlog(processes, database_url, receiver, 50)
        deliverer = processes.start(command, database_url=database_url, env=RECOVERY_ENV)
        wait_until(lambda: len(receiver.pairs()) >= 40, 30, "40 delivered")
        [dead] = worker_ids(database_url)
        assert deliverer.kill() == -9
        held = leases_of(database_url, dead)
        assert len(held) == WEBHOOKS * 4, "every webhook's cap was in use at the kill"

        restarted = processes.start(command, database_url=database_url, env=RECOVERY_ENV)
        # Ready means started: the predecessor's leases (10 minutes long) are back already.
        assert leases_of(database_url, dead) == set(), "the killed process's leases are back"
        assert dead not in worker_ids(database_url)
        received = finish_drain(database_url, receiver, expected, restarted, api)
    report(
        f"restart {database_url.split(':')[0]}: {command} killed holding {len(held)} leases, "
        f"all back when its successor was ready; duplicates "
        f"{check_received(received, expected, held)}"
    )


def start_two_deliverers(
    processes: HookdProcesses, database_url: str
) -> tuple[list[HookdProcess], list[str]]:
    """Two processes that deliver (SQLite: ``serve`` and ``worker`` on one file; PostgreSQL:
    two ``worker``), started together; and their worker ids, in the same order."""
    first = DELIVERER[database_url.split(":")[0]]
    both = [
        processes.start(command, database_url=database_url, env=RECOVERY_ENV, wait=False)
        for command in (first, "worker")
    ]
    for process in both:
        process.wait_ready()
    return both, [id_of(process, database_url) for process in both]


def id_of(process: HookdProcess, database_url: str) -> str:
    """The worker id of a running process (``host/pid/...``), from its heartbeat row."""
    [found] = [w for w in worker_ids(database_url) if w.split("/")[1] == str(process.pid)]
    return found


def all_busy(database_url: str, ids: list[str]) -> bool:
    """Whether every one of the workers ``ids`` holds a lease."""
    return all(leases_of(database_url, w) for w in ids)


def test_a_surviving_worker_takes_over_a_killed_ones_leases_without_a_restart(
    processes: HookdProcesses, database_url: str
) -> None:
    with ThreadedReceiver(delay=0.2) as receiver:
        api, expected = start_backlog(processes, database_url, receiver, 150)
        (survivor, victim), (_, victim_id) = start_two_deliverers(processes, database_url)
        wait_until(lambda: all_busy(database_url, worker_ids(database_url)), 30, "both busy")
        assert victim.kill() == -9
        held = leases_of(database_url, victim_id)
        arrived_at_kill = len(receiver.pairs())
        # Within 15 s, before its heartbeat (every 2 s) could have lapsed for the 20 s of
        # HOOKD_WORKER_TIMEOUT: the survivor knew at once that its process was gone.
        wait_until(
            lambda: not leases_of(database_url, victim_id), 15, "the victim's leases returned"
        )
        assert victim_id not in worker_ids(database_url)
        received = finish_drain(database_url, receiver, expected, survivor, api)
    assert "dead workers removed" in survivor.stderr() and victim_id in survivor.stderr()
    report(
        f"takeover {database_url.split(':')[0]}: victim killed at {arrived_at_kill}/"
        f"{len(expected)} delivered holding {len(held)} leases; duplicates "
        f"{check_received(received, expected, held)}"
    )


def test_a_rolling_restart_returns_every_lease_and_sends_nothing_twice(
    processes: HookdProcesses, database_url: str
) -> None:
    """SIGTERM each delivering process in turn and start it again, in the middle of a drain:
    each returns its leases as it stops, and no delivery is sent twice."""
    with ThreadedReceiver(delay=0.3) as receiver:
        api, expected = start_backlog(processes, database_url, receiver, 200)
        deliverers, ids = start_two_deliverers(processes, database_url)
        stopped_at = []
        for n in range(2):
            wait_until(lambda: all_busy(database_url, worker_ids(database_url)), 30, "both busy")
            going, gone_id = deliverers[n], ids[n]
            going.signal(signal.SIGTERM)
            assert going.wait(20) == 0, going.describe()
            stopped_at.append(len(receiver.pairs()))
            assert leases_of(database_url, gone_id) == set(), "a stopped process holds no lease"
            assert gone_id not in worker_ids(database_url)
            deliverers[n] = processes.start(
                going.command, database_url=database_url, env=RECOVERY_ENV
            )
            ids[n] = id_of(deliverers[n], database_url)
        received = finish_drain(database_url, receiver, expected, *deliverers, api)
    report(
        f"rolling restart {database_url.split(':')[0]}: stopped at {stopped_at} of "
        f"{len(expected)} delivered; duplicates {sum(received.values()) - len(received)}"
    )
    assert stopped_at[-1] < len(expected), "the restarts came after the drain"
    assert set(received) == expected
    assert max(received.values()) == 1, "a graceful stop sends nothing twice"
