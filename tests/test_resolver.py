"""hookd.delivery.resolver: DNS answered by a real DNS server on 127.0.0.1 (bench/dns_server.py)
through c-ares, the way HOOKD_DNS_SERVERS points hookd at one; caches, negative caches,
deadlines, /etc/hosts, and concurrent lookups that do not wait for each other."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from bench.dns_server import DnsServer
from hookd.delivery.resolver import (
    MAX_TTL,
    NEGATIVE_TTL,
    AttemptBudget,
    LookupFailed,
    Resolver,
    attempt_budget,
)


class FakeClock:
    """The resolver's cache clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    server = await DnsServer.start(
        {
            "hooks.test": ["127.0.0.1"],
            "dual.test": ["127.0.0.2", "::1"],
            "long.test": ["127.0.0.3"],
        },
        blackholed={"dead.test"},
        ttl=60,
    )
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def resolver(dns: DnsServer) -> AsyncIterator[tuple[Resolver, FakeClock]]:
    clock = FakeClock()
    resolver = Resolver([dns.address], clock=clock)
    try:
        yield resolver, clock
    finally:
        await resolver.close()


async def test_answers_come_from_the_configured_server(
    dns: DnsServer, resolver: tuple[Resolver, FakeClock]
) -> None:
    r, _ = resolver
    assert await r.lookup("hooks.test", 443) == ["127.0.0.1"]
    assert sorted(await r.lookup("dual.test", 443)) == ["127.0.0.2", "::1"], (
        "both the A and the AAAA answers are returned"
    )
    assert dns.questions["hooks.test"] >= 1, "HOOKD_DNS_SERVERS' server was asked"


async def test_answers_are_cached_for_their_ttl(dns: DnsServer) -> None:
    # The real clock: c-ares keeps answers for their TTL too, so only real time can show it.
    dns.ttl = 1
    r = Resolver([dns.address])
    try:
        await r.lookup("hooks.test", 443)
        asked = dns.questions["hooks.test"]
        for _ in range(5):
            assert await r.lookup("HOOKS.test.", 443) == ["127.0.0.1"]
        assert dns.questions["hooks.test"] == asked, "within its TTL the answer is reused"
        await asyncio.sleep(1.2)
        await r.lookup("hooks.test", 443)
        assert dns.questions["hooks.test"] > asked, "after its TTL (1 s) the name is asked again"
    finally:
        await r.close()


async def test_no_answer_is_kept_longer_than_five_minutes(
    dns: DnsServer, resolver: tuple[Resolver, FakeClock]
) -> None:
    r, clock = resolver
    dns.ttl = 86_400
    await r.lookup("long.test", 443)
    asked = dns.questions["long.test"]
    clock.now += MAX_TTL - 1
    await r.lookup("long.test", 443)
    assert dns.questions["long.test"] == asked, "a day's TTL is kept for 5 minutes"
    clock.now += 2
    await r.lookup("long.test", 443)
    # c-ares would answer from its own cache for up to an hour: the channel is new.
    assert dns.questions["long.test"] > asked, (
        "after 5 minutes the name server is asked again, whatever the TTL said"
    )


async def test_no_such_host_is_said_and_remembered_for_30_seconds(
    dns: DnsServer, resolver: tuple[Resolver, FakeClock]
) -> None:
    r, clock = resolver
    with pytest.raises(LookupFailed, match=r"^no such host nowhere\.test$"):
        await r.lookup("nowhere.test", 443)
    asked = dns.questions["nowhere.test"]
    clock.now += NEGATIVE_TTL - 1
    with pytest.raises(LookupFailed, match=r"^no such host nowhere\.test$"):
        await r.lookup("nowhere.test", 443)
    assert dns.questions["nowhere.test"] == asked, "a failure is cached for 30 s"
    clock.now += 2
    with pytest.raises(LookupFailed):
        await r.lookup("nowhere.test", 443)
    assert dns.questions["nowhere.test"] > asked, "after 30 s the name is asked again"


async def test_a_failure_says_how_long_it_stays_cached(
    dns: DnsServer, resolver: tuple[Resolver, FakeClock]
) -> None:
    """The sender defers the next attempt to a failed name by this much (``Retry-After``)."""
    r, clock = resolver
    with pytest.raises(LookupFailed) as fresh:
        await r.lookup("nowhere.test", 443)
    assert fresh.value.retry_in == NEGATIVE_TTL
    clock.now += 12.5
    with pytest.raises(LookupFailed) as cached:
        await r.lookup("nowhere.test", 443)
    assert cached.value.retry_in == pytest.approx(NEGATIVE_TTL - 12.5)
    assert LookupFailed(0, "made elsewhere").retry_in is None


async def test_a_lookup_ends_at_its_attempts_deadline_and_the_timeout_is_cached(
    dns: DnsServer, resolver: tuple[Resolver, FakeClock]
) -> None:
    r, _ = resolver
    loop = asyncio.get_running_loop()
    budget = AttemptBudget(loop.time() + 0.4)
    token = attempt_budget.set(budget)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout_at(budget.deadline):
                await r.lookup("dead.test", 443)
        assert budget.resolving == "dead.test", "the attempt knows it ran out of time in DNS"
    finally:
        attempt_budget.reset(token)
    # The query itself ends at the same deadline, and its failure is remembered: the next
    # attempt fails at once instead of waiting again.
    await asyncio.sleep(0.2)
    started = time.monotonic()
    with pytest.raises(LookupFailed, match=r"^DNS lookup of dead\.test timed out after \d+ ms$"):
        await r.lookup("dead.test", 443)
    assert time.monotonic() - started < 0.1, "a cached failure answers without waiting"


async def test_lookups_of_one_name_share_one_query(
    dns: DnsServer, resolver: tuple[Resolver, FakeClock]
) -> None:
    r, _ = resolver
    answers = await asyncio.gather(*(r.lookup("hooks.test", 443) for _ in range(50)))
    assert all(a == ["127.0.0.1"] for a in answers)
    assert dns.questions["hooks.test"] <= 2, (
        f"50 simultaneous lookups asked {dns.questions['hooks.test']} questions (A and AAAA once)"
    )


async def test_a_black_holed_name_does_not_hold_up_other_lookups(
    dns: DnsServer, resolver: tuple[Resolver, FakeClock]
) -> None:
    r, _ = resolver
    dns.blackholed |= {f"dead{i}.test" for i in range(40)}
    dns.records |= {f"ok{i}.test": ["127.0.0.1"] for i in range(40)}
    stuck = [asyncio.ensure_future(r.lookup(f"dead{i}.test", 443)) for i in range(40)]
    try:
        answers = await asyncio.wait_for(
            asyncio.gather(*(r.lookup(f"ok{i}.test", 443) for i in range(40))), 5
        )
        assert answers == [["127.0.0.1"]] * 40
        assert not any(task.done() for task in stuck), "the black-holed lookups still wait"
    finally:
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)


async def test_etc_hosts_is_honoured_with_configured_servers(
    dns: DnsServer, resolver: tuple[Resolver, FakeClock]
) -> None:
    r, _ = resolver
    addresses = await r.lookup("localhost", 443)
    assert "127.0.0.1" in addresses, addresses
    assert dns.questions["localhost"] == 0, "/etc/hosts answers before any name server"
