"""Hourly rollups (hookd/store/rollups.py, SPEC §9): written with the attempts by each
settle, counted once when a batch is written twice, read per organization and per webhook,
and a sketch whose p95 is close to the real one. On SQLite and PostgreSQL."""

from __future__ import annotations

import random

import pytest

from hookd.delivery.outcomes import build_settlement
from hookd.delivery.sender import AttemptResult
from hookd.store import ClaimRequest, operational, queue
from hookd.store.rollups import HOUR_MS, bucket_of, percentile, rollup_rows
from tests.conftest import Api, eventually
from tests.receiver import Receiver


def test_the_sketch_p95_is_within_a_bucket_of_the_real_one() -> None:
    rng = random.Random(7)
    times = sorted(int(rng.lognormvariate(5, 1)) for _ in range(10_000))
    sketch = [0] * 24
    for t in times:
        sketch[bucket_of(t)] += 1
    real = times[int(0.95 * len(times)) - 1]
    estimate = percentile(sketch, 0.95)
    assert estimate is not None and 0.74 * real <= estimate <= 1.35 * real, (real, estimate)
    assert percentile([0] * 24, 0.95) is None, "no attempts: no p95"
    assert bucket_of(0) == 0 and bucket_of(10**9) == 23, "out-of-range times are clamped"


def test_a_batch_folds_into_one_row_per_webhook_and_hour() -> None:
    hour = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS
    attempts = [
        {"id": "a1", "webhook_id": "w2", "attempted_at": hour + 5, "succeeded": True,
         "response_time_ms": 10},
        {"id": "a2", "webhook_id": "w1", "attempted_at": hour + 6, "succeeded": False,
         "response_time_ms": 300},
        {"id": "a3", "webhook_id": "w1", "attempted_at": hour + 7, "succeeded": True,
         "response_time_ms": 20},
        {"id": "a4", "webhook_id": "w1", "attempted_at": hour + HOUR_MS, "succeeded": True,
         "response_time_ms": 20},
    ]  # fmt: skip
    found = rollup_rows(attempts)
    assert [(r["webhook_id"], r["hour"], r["attempts"], r["failures"]) for r in found] == [
        ("w1", hour, 2, 1),
        ("w1", hour + HOUR_MS, 1, 0),
        ("w2", hour, 1, 0),
    ], "sorted by webhook and hour, one row each"
    assert all(r["first_attempt"] == "a1" for r in found)


async def test_settling_writes_rollups_once_even_when_a_batch_is_written_twice(api: Api) -> None:
    hook = await api.create_webhook()
    for _ in range(3):
        await api.publish()
    now = api.store.clock()
    claimed = await api.store.claim(
        ClaimRequest(now=now, capacity=10, per_webhook=10, margin_ms=60_000, token="w-1")
    )
    assert len(claimed) == 3
    results = [
        (c, AttemptResult(now + i, i != 2, 200 if i != 2 else 500, "x", 40 + i, b"", None))
        for i, c in enumerate(claimed)
    ]
    settlement = build_settlement(results, (60.0,), 10, random.Random(1))
    await api.store.settle(settlement)
    await api.store.settle(settlement)  # the first answer was lost: written again

    [series] = await api.store.rollup_series(hook["id"], now - 1)
    assert (series.attempts, series.successes, series.failures) == (3, 2, 1), (
        "three attempts, one failed, counted once although the batch was written twice"
    )
    assert series.time_sum == 40 + 41 + 42 and sum(series.sketch) == 3
    assert series.hour == now - now % HOUR_MS
    totals = await api.store.rollup_totals([hook["id"], "0" * 24], now - 24 * HOUR_MS)
    assert list(totals) == [hook["id"]], "webhooks without attempts are left out"
    assert totals[hook["id"]].attempts == 3
    assert totals[hook["id"]].success_rate == 2 / 3
    assert totals[hook["id"]].p95 is not None
    assert await api.store.rollup_totals([], now) == {}
    assert await api.store.rollup_series(hook["id"], now + HOUR_MS) == []


@pytest.mark.parametrize("final", [False, True], ids=["retried", "final-failure"])
async def test_a_batch_of_two_webhooks_and_hours_written_twice_counts_once(
    api: Api, final: bool
) -> None:
    # PostgreSQL writes the rollups in the settle statement itself, whose parts all see the
    # state from before it: the check for the batch's first attempt sees it only if an earlier
    # write of the batch inserted it. Both ways to settle: alone on the worker's connections
    # (one statement, no transaction) and with operational events (one durable transaction).
    hooks = [await api.create_webhook(), await api.create_webhook()]
    for _ in range(2):
        await api.publish()
    now = api.store.clock()
    claimed = await api.store.claim(
        ClaimRequest(now=now, capacity=10, per_webhook=10, margin_ms=60_000, token="w-1")
    )
    assert len(claimed) == 4
    hour = now - now % HOUR_MS
    results = [
        # one attempt of each webhook in the hour before, one in this hour; one of them failed
        (c, AttemptResult(hour - HOUR_MS + i if i % 2 else now + i, i != 3, 200 if i != 3 else 500,
                          "x", 10 * (i + 1), b"", None))
        for i, c in enumerate(sorted(claimed, key=lambda c: (c.webhook_id, c.id)))
    ]  # fmt: skip
    settlement = build_settlement(results, () if final else (60.0,), 10, random.Random(1))
    assert operational.may_publish(settlement.deliveries) is final
    if not final and api.store.dialect == "postgresql":
        op = queue.settle("postgresql", settlement, now)
        assert next(op).name == "settle"
        with pytest.raises(StopIteration):
            op.send(6)
        # one statement: the store runs it on the worker's connections, no transaction around
    await api.store.settle(settlement)
    await api.store.settle(settlement)  # the first answer was lost: written again
    await api.store.settle(settlement)  # and again

    want = {}
    for i, (c, _r) in enumerate(results):
        h = hour if i % 2 == 0 else hour - HOUR_MS
        n, ok, total = want.get((c.webhook_id, h), (0, 0, 0))
        want[(c.webhook_id, h)] = (n + 1, ok + (i != 3), total + 10 * (i + 1))
    found = {}
    for hook in hooks:
        for r in await api.store.rollup_series(hook["id"], now - 2 * HOUR_MS):
            assert r.hour is not None and sum(r.sketch) == r.attempts
            found[(r.webhook_id, r.hour)] = (r.attempts, r.successes, r.time_sum)
    assert found == want, "each webhook's hours counted once although written three times"
    assert sum(n for n, _ok, _t in found.values()) == 4


async def test_the_worker_records_rollups_of_real_deliveries(
    delivering: Api, receiver: Receiver
) -> None:
    hook = await delivering.create_webhook(url=receiver.url())
    await delivering.publish()
    await delivering.publish()

    async def two() -> bool:
        found = await delivering.store.rollup_series(hook["id"], delivering.store.clock() - HOUR_MS)
        return sum(r.successes for r in found) == 2

    await eventually(two)
