"""The database-read gauges of SPEC §8, as one store operation (``metrics_*`` queries).

A waiting delivery (``pending``, not leased) is *held* when its webhook is paused or
suspended (unless it is a test delivery, which such a webhook still sends), else *due* when
its time has come and *scheduled* when it is a retry in the future; a leased one is
*in_flight*. The lag is the age of the oldest due delivery.
"""

from __future__ import annotations

from hookd.metrics import QueueSnapshot
from hookd.store.queries import Op, rows, value

__all__ = ["queue_snapshot"]


def queue_snapshot(now: int) -> Op[QueueSnapshot]:
    """The gauges at ``now`` (ms)."""
    per_webhook = yield rows("metrics_queue", now=now)
    tests = {r["webhook_id"]: r for r in (yield rows("metrics_queue_tests", now=now))}
    in_flight = yield value("metrics_in_flight")
    webhooks = {r["status"]: int(r["n"]) for r in (yield rows("metrics_webhooks"))}
    due = scheduled = held = 0
    earliest: int | None = None
    for row in per_webhook:
        waiting, due_now, first = int(row["waiting"]), int(row["due"] or 0), row["earliest"]
        if row["status"] != "active":
            test = tests.get(row["webhook_id"])
            test_waiting = int(test["waiting"]) if test else 0
            held += waiting - test_waiting
            if test is None:
                continue
            waiting, due_now, first = test_waiting, int(test["due"] or 0), test["earliest"]
        due += due_now
        scheduled += waiting - due_now
        if due_now and (earliest is None or first < earliest):
            earliest = int(first)
    lag = 0.0 if earliest is None else max(0.0, (now - earliest) / 1000)
    return QueueSnapshot(
        deliveries={
            "due": due,
            "scheduled": scheduled,
            "held": held,
            "in_flight": int(in_flight or 0),
        },
        lag_seconds=lag,
        webhooks=webhooks,
    )
