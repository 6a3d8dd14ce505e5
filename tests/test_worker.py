"""The delivery worker's liveness and shares of the caps (hookd/delivery/worker.py, SPEC §5
Guarantees), in process, on SQLite and PostgreSQL unless noted.

- Worker ids tell whether a worker of this host (and pid namespace) no longer runs.
- A worker that starts returns the leases of its dead predecessor on this host at once
  (not when they expire) and takes its share of the caps at once.
- A worker elsewhere (liveness unknowable from here) keeps its leases while it heartbeats,
  and loses them once its heartbeat has lapsed for the worker timeout.
- The workers' shares of the caps never add up to more than a cap, also while a worker
  joins or stops; a stopping worker gives its shares back at once, before its last
  attempts are over.
- PostgreSQL: a worker cut off from the database stops its attempts before the others take
  it for dead, so an attempt never runs twice at once.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import subprocess
import sys
import urllib.parse
from typing import Any

import pytest

from hookd.delivery.worker import new_worker_id, ran_here_and_died
from hookd.server import build_worker
from hookd.store import ClaimRequest, Peer, Store, open_driver
from tests.conftest import Api, eventually, make_settings, run_sql
from tests.receiver import Receiver
from tests.test_database_unavailable import TcpProxy
from tests.test_delivery import settings_for, webhook, worker_for

# Leases that outlive anything a test waits for: only liveness can give them back.
LONG_LEASE = {"lease_margin": 600}


def _gone_pid() -> int:
    """The pid of a process that ran on this host and has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_worker_ids_tell_which_local_workers_no_longer_run() -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as running:
        try:
            assert not ran_here_and_died(new_worker_id(running.pid)), "it still runs"
        finally:
            running.kill()
    assert ran_here_and_died(new_worker_id(_gone_pid()))
    assert not ran_here_and_died(new_worker_id()), "this very process"
    host = socket.gethostname()[:64]
    elsewhere = new_worker_id(_gone_pid()).replace(host, "another-host", 1)
    assert not ran_here_and_died(elsewhere), "another host's worker: cannot know, alive"
    other_space = new_worker_id(_gone_pid()).rsplit("/", 1)[0] + "/00000000abcdef012345"
    assert not ran_here_and_died(other_space), "another pid namespace (a container): alive"
    assert not ran_here_and_died("0123456789ab"), "an id of an older hookd"
    assert not ran_here_and_died(f"{host}/not-a-pid/abc")


async def pretend_worker(api: Api, worker_id: str, shares: tuple[int, int] = (10, 100)) -> None:
    """A heartbeat of another worker, written as that worker would."""
    me = Peer(worker_id, shares[0], shares[1], False)
    await api.store.beat(worker_id, 60_000, lambda _peers: me, lambda _id: False)


async def leased_to_another_worker(
    api: Api, receiver: Receiver, worker_id: str, events: int, shares: tuple[int, int]
) -> None:
    """``events`` deliveries to one webhook, claimed (for 10 minutes) by another worker
    that has just recorded a heartbeat with ``shares`` of the caps."""
    await webhook(api, receiver)
    for _ in range(events):
        await api.publish()
    await pretend_worker(api, worker_id, shares)
    request = ClaimRequest(api.store.clock(), 50, 10, 600_000, f"{worker_id}-1", worker=worker_id)
    assert len(await api.store.claim(request)) == events


async def leases_of(api: Api, worker_id: str) -> int:
    prefix = f"{worker_id}-"
    [(count,)] = await run_sql(
        api.store,
        f"SELECT count(*) FROM deliveries WHERE substr(lease_token, 1, {len(prefix)}) = '{prefix}'",
    )
    return int(count)


async def registered(api: Api, worker_id: str) -> bool:
    return bool(await run_sql(api.store, f"SELECT id FROM workers WHERE id = '{worker_id}'"))


async def test_a_worker_takes_back_its_dead_predecessors_leases_at_start(
    api: Api, receiver: Receiver
) -> None:
    dead = new_worker_id(_gone_pid())  # killed with SIGKILL: its heartbeat still looks recent
    await leased_to_another_worker(api, receiver, dead, 3, (10, 100))
    async with worker_for(api, **LONG_LEASE) as worker:
        assert await leases_of(api, dead) == 0, (
            "the dead predecessor's leases are returned at start, not when they expire"
        )
        assert not await registered(api, dead)
        assert (worker.me.webhook_share, worker.me.org_share) == (10, 100), (
            "the whole of both caps at once: the dead worker's shares are free"
        )
        arrived = await receiver.wait_for(3)
    assert len({r.header("webhook-id") for r in arrived}) == 3


async def test_a_worker_elsewhere_is_dead_only_once_its_heartbeat_lapsed(
    api: Api, receiver: Receiver
) -> None:
    other = "another-host/1/00000000aabbccddeeff"
    await leased_to_another_worker(api, receiver, other, 2, (5, 50))
    async with worker_for(api, worker_timeout=2.0, **LONG_LEASE) as worker:
        # While the other worker heartbeats (here for twice the timeout), its attempts
        # could still be running: nothing is sent again, and its shares are respected.
        for _ in range(20):
            await pretend_worker(api, other, (5, 50))
            await asyncio.sleep(0.2)
        assert receiver.requests == [], "sent again while its worker still heartbeats"
        assert (worker.me.webhook_share, worker.me.org_share) == (5, 50)
        # Its heartbeats stop: it is dead once they have lapsed for the worker timeout.
        arrived = await receiver.wait_for(2, timeout=10)
        assert await leases_of(api, other) == 0 and not await registered(api, other)
        await eventually(lambda: worker.me.webhook_share == 10 and worker.me.org_share == 100)
    assert len({r.header("webhook-id") for r in arrived}) == 2


async def test_shares_never_add_up_to_more_than_the_caps(
    api: Api, receiver: Receiver, database_url: str
) -> None:
    settings = make_settings(
        database_url, max_in_flight_per_webhook=5, max_in_flight_per_org=7, worker_timeout=2.0
    )
    receiver.behave("/slow", delay=1.5)
    await webhook(api, receiver, "/slow")
    workers = [build_worker(settings, api.store) for _ in range(2)]
    sums: list[tuple[int, int]] = []

    def fair() -> bool:
        sums.append(
            (sum(w.me.webhook_share for w in workers), sum(w.me.org_share for w in workers))
        )
        return {(w.me.webhook_share, w.me.org_share) for w in workers} == {(3, 4), (2, 3)}

    stopped: list[asyncio.Task[None]] = []
    try:
        await workers[0].start()
        assert (workers[0].me.webhook_share, workers[0].me.org_share) == (5, 7)
        await workers[1].start()
        assert fair() is False, "a worker that joins starts with what the others leave"
        await eventually(fair, interval=0.001)

        # The worker with an attempt under way stops: its shares come back to the other at
        # once, not after its last attempt.
        await api.publish()
        await receiver.wait_for(1, "/slow")
        holder, other = workers if await leases_of(api, workers[0].worker_id) else workers[::-1]
        stopped.append(asyncio.create_task(holder.stop(grace=5.0)))
        await eventually(lambda: (other.me.webhook_share, other.me.org_share) == (5, 7))
        assert not stopped[0].done(), "the shares came back before the attempt was over"
        stopped.append(asyncio.create_task(other.stop(grace=2.0)))
    finally:
        if not stopped:
            stopped = [asyncio.create_task(w.stop(grace=2.0)) for w in workers]
        await asyncio.gather(*stopped)
    assert max(w for w, _o in sums) <= 5 and max(o for _w, o in sums) <= 7, sums
    assert len(receiver.on("/slow")) == 1, "the attempt under way at the stop was finished"


@pytest.mark.parametrize("engine", ["postgres"])
async def test_a_worker_cut_off_from_the_database_stops_its_attempts_first(
    api: Api, receiver: Receiver, database_url: str
) -> None:
    """The worker cut off stops its attempt after half the worker timeout; the other worker
    takes it for dead after the whole timeout and sends it again: never two at once."""
    settings = {"worker_timeout": 2.0, **LONG_LEASE}
    receiver.behave("/slow", delay=20)
    await webhook(api, receiver, "/slow", requestConfig={"timeoutMs": 30000})
    url = urllib.parse.urlsplit(database_url)
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    proxied = url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}").geturl()
    cut_off_store = Store(open_driver(proxied, pool_size=2))
    await cut_off_store.start()
    cut_off = build_worker(make_settings(proxied, **settings), cut_off_store)
    try:
        await cut_off.start()
        await api.publish()
        [first] = await receiver.wait_for(1, "/slow")
        async with worker_for(api, **settings):
            await proxy.stop()
            [_first, again] = await receiver.wait_for(2, "/slow", timeout=15)
            assert again.header("webhook-id") == first.header("webhook-id")
            assert receiver.max_active["/slow"] == 1, (
                "the first attempt was still open when the delivery was sent again"
            )
            await proxy.start()  # back in touch: the cut-off worker claims again
            await eventually(lambda: cut_off.in_touch, timeout=10)
    finally:
        await cut_off.stop(grace=1.0)
        await cut_off_store.close()
        if proxy._server is not None:
            await proxy.stop()


@pytest.mark.parametrize("engine", ["sqlite"])
async def test_on_sqlite_a_turn_settles_and_claims_in_one_commit(
    api: Api, receiver: Receiver
) -> None:
    """SQLite's one writer commits the writes waiting together: a turn of the worker queues
    its claim right behind its settle, so both land in one transaction (one commit, one
    write of the pages they share), and the claim sees the lease the settle ended."""
    hook = await webhook(api, receiver)
    for _ in range(4):
        await api.publish()
    statements: list[str] = []
    writer = api.store.driver._writer  # type: ignore[attr-defined]
    writer.set_trace_callback(statements.append)
    try:
        # One attempt at a time: each turn settles the last outcome and claims the next.
        async with worker_for(api, max_in_flight_per_webhook=1):
            await receiver.wait_for(4, timeout=10)
            await eventually(lambda: _all_succeeded(api, hook["id"]), timeout=10)
    finally:
        writer.set_trace_callback(None)
    transactions: list[list[str]] = [[]]
    for sql in statements:
        if sql.strip().upper() == "COMMIT":
            transactions.append([])
        else:
            transactions[-1].append(sql)
    both = [
        t
        for t in transactions
        if any("SET status = CASE WHEN retry_requested" in s for s in t)
        and any("SET lease_until = " in s and "lease_token = " in s for s in t)
    ]
    assert len(both) >= 3, f"{len(both)} of 3 turns settled and claimed in one commit"


async def _all_succeeded(api: Api, webhook_id: str) -> bool:
    response = await api.get(f"/v2/webhooks/{webhook_id}/deliveries?limit=100")
    data = response.json()["data"]
    return len(data) == 4 and all(d["status"] == "succeeded" for d in data)


async def test_busy_workers_wait_for_outcomes_by_default_on_postgresql_only(api: Api) -> None:
    """``HOOKD_BATCH_WAIT_MS`` by default: 3 ms on PostgreSQL, none on SQLite (whose one
    writer already commits a round's writes together); set, it applies on either."""
    async with worker_for(api) as default:
        assert default.config.batch_wait == (0.003 if api.store.dialect != "sqlite" else 0.0)
    async with worker_for(api, batch_wait_ms=7) as chosen:
        assert chosen.config.batch_wait == 0.007
    async with worker_for(api, batch_wait_ms=0) as off:
        assert off.config.batch_wait == 0.0


async def test_a_worker_whose_outcomes_trickle_in_claims_at_once(
    api: Api, receiver: Receiver
) -> None:
    """``batch_wait_ms`` holds a round back only while outcomes pour in: a worker whose
    attempts are slow (twenty held by their receiver), whose outcomes came in one burst
    (twenty attempts answered together) and then come one at a time, sends each new event's
    delivery at once, not after the wait."""
    held, burst = asyncio.Event(), asyncio.Event()
    receiver.behave("/held", hold=held)
    receiver.behave("/burst", hold=burst)
    await webhook(api, receiver, "/held", topics=["post.updated"])
    bursting = await webhook(api, receiver, "/burst", topics=["post.deleted"])
    await webhook(api, receiver, "/fast")
    for _ in range(20):
        await api.publish("post.updated")
        await api.publish("post.deleted")
    try:
        async with worker_for(api, batch_wait_ms=5000, max_in_flight_per_webhook=20):
            await receiver.wait_for(20, "/held", timeout=10)
            await receiver.wait_for(20, "/burst", timeout=10)
            burst.set()
            await eventually(lambda: _count_succeeded(api, bursting["id"], 20), timeout=10)
            loop = asyncio.get_running_loop()
            for n in range(1, 6):
                started = loop.time()
                await api.publish()
                await receiver.wait_for(n, "/fast", timeout=10)
                assert loop.time() - started < 2.5, f"delivery {n} waited for the batch"
            held.set()
    finally:
        held.set()
        burst.set()


async def test_a_busy_worker_lets_outcomes_gather_before_it_writes_them(
    api: Api, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While outcomes pour in (the last two rounds wrote at least 16 each) and attempts are
    under way, each round first waits ``batch_wait_ms``, so that it writes more outcomes at
    once."""
    wait = 0.4
    gaps, _ = await _busy_rounds(api, receiver, monkeypatch, batch_wait_ms=wait * 1000)
    assert all(gap >= wait * 0.95 for gap in gaps), gaps


async def _busy_rounds(
    api: Api, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, busy: int = 8, **overrides: Any
) -> tuple[list[float], float]:
    """Run a busy worker (settings ``overrides``) and return, for each round that should
    have waited, how long it did (the time since the round before it ended), and how long
    the worker would wait after its last round.

    One webhook's receiver answers in 50 ms (outcomes pour in, 40 at a time), another's
    in 2 s (its attempts stay under way). A round should have waited when it followed two
    that wrote at least ``busy`` outcomes each, with attempts still under way when it began
    (none start during the wait, so they were under way before it too). ``busy`` is lower
    than the default 16, so that a slow machine's rounds (14 outcomes each, seen in CI)
    still count as busy; the rule tested is the same."""
    receiver.behave("/quick", delay=0.05)
    receiver.behave("/slow", delay=2.0)
    quick = await webhook(api, receiver, "/quick")
    slow = await webhook(api, receiver, "/slow", topics=["post.updated"])
    for _ in range(200):
        await api.publish()
    for _ in range(40):
        await api.publish("post.updated")
    monkeypatch.setattr("hookd.delivery.worker._BATCH_WAIT_AFTER", busy)
    rounds: list[tuple[float, float, int, int]] = []  # start, end, last batch, in flight
    async with worker_for(api, max_in_flight_per_webhook=40, **overrides) as w:
        loop = asyncio.get_running_loop()
        turn = w._settle_and_claim

        async def recorded(room: int) -> Any:
            start, last, in_flight = loop.time(), w._steady_batch, len(w._in_flight)
            try:
                return await turn(room)
            finally:
                rounds.append((start, loop.time(), last, in_flight))

        w._settle_and_claim = recorded  # type: ignore[method-assign]
        for hook, count in ((quick, 200), (slow, 40)):
            await eventually(lambda h=hook, n=count: _count_succeeded(api, h["id"], n), timeout=60)
        wait_after = w._batch_wait()
    gaps = [
        start - previous_end
        for (_s, previous_end, _l, _i), (start, _e, last, in_flight) in itertools.pairwise(rounds)
        if last >= busy and in_flight > 0
    ]
    assert gaps, f"no round followed two that wrote {busy} outcomes each: {rounds}"
    return gaps, wait_after


async def test_a_worker_stops_at_once_in_the_middle_of_a_batch_wait(
    api: Api, receiver: Receiver
) -> None:
    """A stop ends a batch wait at once, however long ``batch_wait_ms`` is."""
    held = asyncio.Event()
    receiver.behave("/held", hold=held)
    await webhook(api, receiver, "/held", topics=["post.updated"])
    await webhook(api, receiver, "/quick")
    for _ in range(10):
        await api.publish("post.updated")
    for _ in range(120):
        await api.publish()
    settings = settings_for(api, batch_wait_ms=10_000, max_in_flight_per_webhook=40)
    worker = build_worker(settings, api.store)
    await worker.start()
    try:
        await receiver.wait_for(10, "/held", timeout=10)
        # Waves of 40 quick outcomes while the held attempts stay under way: the worker
        # starts waiting 10 s before its next round.
        await eventually(lambda: worker._batching(), timeout=10)
    finally:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await worker.stop(grace=0.5)
        stopped_in = loop.time() - started
        held.set()
    assert stopped_in < 5, f"stop took {stopped_in:.1f} s"


async def _count_succeeded(api: Api, webhook_id: str, count: int) -> bool:
    [(succeeded,)] = await run_sql(
        api.store,
        f"SELECT count(*) FROM deliveries WHERE webhook_id = '{webhook_id}' AND status = 'succeeded'",
    )
    return int(succeeded) >= count


async def test_only_an_idle_worker_asks_when_the_next_delivery_falls_due(
    api: Api, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next-due question walks the queue head of every webhook with work, so only an
    idle worker asks it. With an attempt under way (here one held by its receiver) the
    worker sleeps until an outcome or ``poll_interval``: another webhook's retry that falls
    due meanwhile is still sent while the held attempt waits, within the poll interval."""
    held = asyncio.Event()
    receiver.behave("/held", hold=held)
    receiver.behave("/flaky", status=500)
    slow = await webhook(api, receiver, "/held", topics=["post.updated"])
    await webhook(api, receiver, "/flaky")
    asked: list[int] = []
    next_due = api.store.next_due

    async def counted() -> int | None:
        asked.append(len(receiver.on("/flaky")))
        return await next_due()

    monkeypatch.setattr(api.store, "next_due", counted)
    try:
        async with worker_for(api, poll_interval=1.0, retry_schedule="0.2,0.4,0.8"):
            await api.publish("post.updated")
            await receiver.wait_for(1, "/held", timeout=10)
            asked.clear()  # the idle worker asked before the attempt started
            await api.publish("post.created")
            await receiver.wait_for(1, "/flaky", timeout=10)
            receiver.behave("/flaky", status=204)
            # The retry, due 0.2 s after the failure, goes out within the poll interval.
            await receiver.wait_for(2, "/flaky", timeout=5)
            assert not held.is_set() and len(receiver.on("/held")) == 1
            assert asked == [], "a worker with an attempt under way asked when work falls due"
            held.set()
            await eventually(lambda: _count_succeeded(api, slow["id"], 1), timeout=10)
            # Idle again: it asks, to sleep until the next delivery falls due.
            await eventually(lambda: asked, timeout=5)
    finally:
        held.set()


async def test_a_busy_worker_whose_claims_are_slow_waits_longer_between_rounds(
    api: Api, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim's cost is partly per call, and with many webhooks with work that part grows
    (the claim walks each one's queue head): a busy worker waits half as long as its last
    claim took, when that is longer than ``batch_wait_ms`` (here 1 ms), so that each claim
    carries more. The claims are made 80 ms slower here (a sleep before each real claim)."""
    claim = api.store.claim

    async def slow_claim(request: ClaimRequest) -> Any:
        await asyncio.sleep(0.08)
        return await claim(request)

    monkeypatch.setattr(api.store, "claim", slow_claim)
    # With claims this slow, rounds alternate between many outcomes and few: the fewer of
    # two was 6 in CI, so a lower bar than 8 marks them busy. The rule tested is the same.
    gaps, wait_after = await _busy_rounds(api, receiver, monkeypatch, busy=2, batch_wait_ms=1)
    assert 0.04 <= wait_after <= 0.05, wait_after  # half of a claim of at least 80 ms, capped
    assert all(gap >= 0.04 * 0.95 for gap in gaps), gaps
