"""Claims (hookd/store/queue.py, SPEC §5 Isolation): what one claim takes, on SQLite and
PostgreSQL. Fair across organizations and across a busy organization's webhooks, within the
per-organization and per-webhook caps (test deliveries included), and due retries are not
held back by a backlog of first attempts. Deliveries are published through the API with no
worker running and claimed directly, as a worker would.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import asyncpg
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from hookd.store import ClaimedDelivery, ClaimRequest
from hookd.store.postgres import WORKER_SETTINGS
from hookd.store.queries import load_queries
from hookd.store.queue import allot
from tests.conftest import Api, run_sql

_tokens = itertools.count(1)


async def claim(
    api: Api,
    capacity: int,
    *,
    worker: str = "host/1/worker-a",
    per_webhook: int = 10,
    share: int | None = None,
    per_org: int | None = 100,
    org_share: int | None = None,
) -> list[ClaimedDelivery]:
    request = ClaimRequest(
        now=api.store.clock(),
        capacity=capacity,
        per_webhook=per_webhook,
        margin_ms=600_000,
        token=f"{worker}-{next(_tokens)}",
        worker=worker,
        share=share,
        per_org=per_org,
        org_share=org_share,
    )
    return await api.store.claim(request)


async def hooks(api: Api, count: int, key: str | None = None, name: str = "h") -> list[str]:
    """``count`` webhooks of the key's organization, all on ``post.created``."""
    made = [
        await api.create_webhook(key=key, url=f"https://example.com/{name}{i}")
        for i in range(count)
    ]
    return [h["id"] for h in made]


async def publish(api: Api, events: int, key: str | None = None) -> None:
    for _ in range(events):
        await api.publish(key=key)


def by(field: str, claimed: list[ClaimedDelivery]) -> Counter[str]:
    return Counter(getattr(c, field) for c in claimed)


async def test_a_claim_takes_fairly_from_organizations_and_webhooks(api: Api) -> None:
    busy = await hooks(api, 3)
    await publish(api, 20)  # 60 deliveries of the default organization
    first = await claim(api, 8)
    assert len(first) == 8
    spread = by("webhook_id", first)
    assert set(spread) == set(busy) and max(spread.values()) - min(spread.values()) <= 1, (
        f"a claim takes round robin from an organization's webhooks: {spread}"
    )

    quiet_key = await api.new_org_key("quiet")
    [quiet] = await hooks(api, 1, quiet_key, "quiet")
    await publish(api, 3, quiet_key)
    [next_one] = await claim(api, 1)
    assert next_one.webhook_id == quiet, (
        "the organization with nothing under way gets the next free slot, although the busy "
        "one's deliveries are older"
    )
    more = await claim(api, 4)
    assert by("webhook_id", more)[quiet] == 2, (
        "the quiet organization's last two deliveries come before the busy one's 9th and "
        f"10th attempt under way: {by('webhook_id', more)}"
    )


async def test_an_organization_is_held_to_its_cap_across_workers(api: Api) -> None:
    await hooks(api, 3)
    await publish(api, 10)
    mine = await claim(api, 50, worker="host/1/a", per_org=5, org_share=3)
    assert len(mine) == 3, "a worker takes its share of the organization's cap"
    theirs = await claim(api, 50, worker="host/2/b", per_org=5, org_share=3)
    assert len(theirs) == 2, "the other worker takes what is left of the cap"
    assert await claim(api, 50, worker="host/3/c", per_org=5) == [], "the cap is reached"

    other_key = await api.new_org_key("other")
    await hooks(api, 1, other_key, "other")
    await publish(api, 2, other_key)
    assert len(await claim(api, 50, worker="host/3/c", per_org=5)) == 2, (
        "one organization at its cap holds nobody else back"
    )


async def test_test_deliveries_count_against_the_webhook_cap(api: Api) -> None:
    [paused] = await hooks(api, 1, name="paused")
    response = await api.patch(f"/v2/webhooks/{paused}", json={"status": "paused"})
    assert response.status_code == 200, response.text
    for _ in range(6):
        assert (await api.post(f"/v2/webhooks/{paused}/test")).status_code == 202
    taken = await claim(api, 50, per_webhook=2)
    assert [c.is_test for c in taken] == [True, True], "a paused webhook's tests, within the cap"
    assert await claim(api, 50, worker="host/2/b", per_webhook=2) == [], (
        "two test deliveries under way fill the paused webhook's cap for every worker"
    )

    [active] = await hooks(api, 1, name="active")
    await publish(api, 3)
    for _ in range(3):
        assert (await api.post(f"/v2/webhooks/{active}/test")).status_code == 202
    taken = await claim(api, 50, per_webhook=4)
    to_active = [c for c in taken if c.webhook_id == active]
    assert len(to_active) == 4, "tests and events together within the cap of 4"
    assert sum(c.is_test for c in to_active) == 2, "test deliveries get up to half the slots"


async def _make_retries(api: Api, webhook_id: str, count: int) -> None:
    """Turn the ``count`` newest deliveries of the webhook into retries that fell due just
    after every other delivery of it (as after a failed attempt)."""
    await run_sql(
        api.store,
        "UPDATE deliveries SET attempt_count = 1, next_attempt_at = next_attempt_at + 60000"
        f" WHERE id IN (SELECT id FROM deliveries WHERE webhook_id = '{webhook_id}'"
        f" ORDER BY next_attempt_at DESC, id DESC LIMIT {count})",
    )
    await run_sql(
        api.store,
        f"UPDATE deliveries SET next_attempt_at = next_attempt_at - 60000 - 1000"
        f" WHERE webhook_id = '{webhook_id}'",
    )


async def test_due_retries_get_up_to_half_a_webhooks_slots(api: Api) -> None:
    [hook] = await hooks(api, 1)
    await publish(api, 10)
    await _make_retries(api, hook, 4)
    taken = await claim(api, 50, per_webhook=4)
    assert sorted(c.attempt_count for c in taken) == [0, 0, 1, 1], (
        "two retries, due after the whole backlog, and the two oldest first attempts"
    )
    oldest: list[Any] = await run_sql(
        api.store,
        f"SELECT id FROM deliveries WHERE webhook_id = '{hook}' AND attempt_count = 0"
        " ORDER BY next_attempt_at, id LIMIT 2",
    )
    assert {c.id for c in taken if c.attempt_count == 0} == {r[0] for r in oldest}

    [only_retries] = await hooks(api, 1, name="retrying")
    await run_sql(api.store, f"DELETE FROM deliveries WHERE webhook_id = '{hook}'")
    await publish(api, 4)
    await _make_retries(api, only_retries, 4)
    taken = await claim(api, 50, per_webhook=4)
    assert [c.attempt_count for c in taken if c.webhook_id == only_retries] == [1] * 4, (
        "with no first attempt due, retries take every slot"
    )


def test_allot_matches_the_rule_of_the_postgresql_claim() -> None:
    """SQLite's claim splits the slots in Python: by attempts under way after each slot."""
    heads = [
        {"webhook_id": "a1", "organization_id": "A", "head": 1},
        {"webhook_id": "a2", "organization_id": "A", "head": 2},
        {"webhook_id": "b1", "organization_id": "B", "head": 9},
    ]
    leased = [{"webhook_id": "a1", "organization_id": "A", "n": 3, "m": 3}]
    request = ClaimRequest(0, 6, 5, 0, "w-1", worker="w", per_org=6)
    takes = {head["webhook_id"]: n for head, n in allot(heads, leased, request)}
    # A has 3 under way (all on a1) and room for 3 more, which go to a2 (the webhook with
    # fewer under way): A would then have 4, 5, 6. B has none: 1, 2, 3, 4, 5. Six slots
    # in that order (ties: the older work first) end with A at 5 and B at 4.
    assert takes == {"b1": 4, "a2": 2}, takes


def _allot_by_the_rule(
    heads: list[dict[str, Any]], leased: list[dict[str, Any]], req: ClaimRequest
) -> dict[str, int]:
    """The claim's rule spelled out slot by slot, with no shortcut: every free slot of every
    webhook numbered within its organization, each organization's turns beyond its room
    dropped, then the slots taken by the organization's count after each, to capacity."""
    under = {r["webhook_id"]: (r["n"], r["m"]) for r in leased}
    org_under: dict[str, list[int]] = {}
    for r in leased:
        counts = org_under.setdefault(r["organization_id"], [0, 0])
        counts[0] += r["n"]
        counts[1] += r["m"]
    slots = []
    for org in {h["organization_id"] for h in heads}:
        n_org, m_org = org_under.get(org, [0, 0])
        room = min(req.org_max - n_org, req.org_mine - m_org, req.capacity)
        units = []
        for h in heads:
            if h["organization_id"] != org:
                continue
            n, m = under.get(h["webhook_id"], (0, 0))
            free = min(req.per_webhook - n, req.my_leased - m, req.capacity)
            units += [(n + k, h["head"], h["webhook_id"]) for k in range(1, free + 1)]
        units.sort()
        slots += [(n_org + t, u[1], u[2]) for t, u in enumerate(units[: max(0, room)], 1)]
    slots.sort()
    return dict(Counter(webhook_id for _n, _h, webhook_id in slots[: req.capacity]))


@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5)), min_size=1, max_size=25),
    st.lists(st.tuples(st.integers(0, 24), st.integers(0, 4), st.integers(0, 4)), max_size=8),
    st.integers(1, 30),
    st.integers(1, 6),
    st.integers(1, 12),
)
@hsettings(max_examples=300, derandomize=True, deadline=None)
def test_allot_takes_what_the_slot_by_slot_rule_takes(
    shape: list[tuple[int, int]],
    leases: list[tuple[int, int, int]],
    capacity: int,
    per_webhook: int,
    per_org: int,
) -> None:
    """The shortcuts (nothing to choose when every free slot fits; only the webhooks whose
    first slot is within their organization's room numbered) change nothing."""
    heads = [
        {"webhook_id": f"w{i:02d}", "organization_id": f"o{org}", "head": due}
        for i, (org, due) in enumerate(shape)
    ]
    leased = {}
    for index, n, m in leases:
        if index < len(heads):
            head = heads[index]
            leased[head["webhook_id"]] = {
                "webhook_id": head["webhook_id"],
                "organization_id": head["organization_id"],
                "n": n + m,
                "m": m,
            }
    request = ClaimRequest(0, capacity, per_webhook, 0, "w-1", worker="w", per_org=per_org)
    got = {head["webhook_id"]: n for head, n in allot(heads, list(leased.values()), request)}
    assert got == _allot_by_the_rule(heads, list(leased.values()), request)


async def test_a_claim_over_many_webhooks_takes_what_allot_takes(api: Api) -> None:
    """PostgreSQL's claim statement and SQLite's allot, over two organizations' 40 webhooks
    of unequal backlogs with some deliveries under way: the same deliveries per webhook."""
    first = await api.new_org_key("first", webhook_limit=100)
    second = await api.new_org_key("second", webhook_limit=100)
    many = await hooks(api, 30, first, "many")
    few = await hooks(api, 10, second, "few")
    await publish(api, 3, first)
    await publish(api, 2, second)
    busy = await claim(api, 12, worker="host/9/busy", per_webhook=4)  # another worker's
    assert len(busy) == 12
    rows_heads = await run_sql(
        api.store,
        "SELECT webhook_id, organization_id, head FROM queue_heads ORDER BY webhook_id",
    )
    rows_leased = await run_sql(
        api.store,
        "SELECT d.webhook_id, w.organization_id, count(*) FROM deliveries d"
        " JOIN webhooks w ON w.id = d.webhook_id WHERE d.lease_until IS NOT NULL"
        " GROUP BY d.webhook_id, w.organization_id",
    )
    heads = [{"webhook_id": w, "organization_id": o, "head": h} for w, o, h in rows_heads]
    leased = [{"webhook_id": w, "organization_id": o, "n": n, "m": 0} for w, o, n in rows_leased]
    request = ClaimRequest(api.store.clock(), 37, 4, 0, "x", worker="host/1/a", per_org=20)
    expected = {head["webhook_id"]: n for head, n in allot(heads, leased, request)}
    taken = by("webhook_id", await claim(api, 37, worker="host/1/a", per_webhook=4, per_org=20))
    assert dict(taken) == expected
    assert set(expected) <= set(many) | set(few)
    assert 0 < sum(expected.values()) < 37, "the organizations' room binds, not the capacity"


@pytest.mark.parametrize("engine", ["postgres"])
async def test_worker_plans_reach_rows_through_indexes_whatever_the_statistics(api: Api) -> None:
    """The workers keep one generic plan per statement, made from the statistics of the
    moment. On a queue never analyzed (new, or autovacuum off) the tables look tiny, and
    with PostgreSQL's defaults the claim's plan scans every delivery and event, on every
    claim, for as long as the connection lives; the workers' settings rule that out."""
    await hooks(api, 2)
    await publish(api, 3)
    query = load_queries("postgresql")["claim"]
    driver: Any = api.store.driver
    params = {
        "now": api.store.clock(),
        "capacity": 10,
        "max_leased": 10,
        "my_leased": 10,
        "org_max": 100,
        "org_mine": 100,
        "mine": "x-",
        "margin": 1000,
        "token": "x-1",
    }
    args = ", ".join(
        f"'{params[name]}'" if isinstance(params[name], str) else str(params[name])
        for name in query.param_order
    )

    async def plan(settings: dict[str, str]) -> str:
        conn = await asyncpg.connect(driver.dsn, server_settings=settings)
        try:
            await conn.execute(f"PREPARE claim_plan AS {query.positional_sql}")
            found = await conn.fetch(f"EXPLAIN EXECUTE claim_plan({args})")
            return "\n".join(row[0] for row in found)
        finally:
            await conn.close()

    defaults = await plan({"plan_cache_mode": "force_generic_plan"})
    assert "Seq Scan on deliveries" in defaults, "the statistics no longer mislead: rewrite this"
    workers = await plan(WORKER_SETTINGS)
    assert "Seq Scan" not in workers, workers
