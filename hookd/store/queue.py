"""Store operations of the delivery queue: claim, settle, release, purge.

Deliveries are rows. A waiting delivery has ``status = 'pending'`` and a due time
``next_attempt_at``. A claim leases it to one worker (``lease_until``, ``lease_token``) for
longer than the webhook's timeout; settling the attempt's outcome ends the lease. If the
worker dies, the lease runs out and :func:`release_expired` puts the delivery back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hookd.store.queries import Op, many, rows, run, value
from hookd.store.records import ClaimedDelivery

__all__ = [
    "ClaimRequest",
    "Settlement",
    "beat",
    "claim",
    "next_due",
    "purge",
    "release",
    "release_expired",
    "retire",
    "settle",
]


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """Lease at most ``capacity`` due deliveries for the worker named ``worker`` (the prefix
    of its lease tokens), ``token`` naming this claim; per webhook at most ``per_webhook``
    leased across all workers and at most ``share`` of them to this worker. A lease lasts
    the webhook's timeout plus ``margin_ms``."""

    now: int
    capacity: int
    per_webhook: int
    margin_ms: int
    token: str
    worker: str = ""
    share: int | None = None

    @property
    def my_leased(self) -> int:
        """Leases per webhook for this worker."""
        return self.per_webhook if self.share is None else min(self.share, self.per_webhook)

    @property
    def mine(self) -> str:
        """A LIKE pattern matching this worker's lease tokens."""
        return f"{self.worker or self.token}-%"


@dataclass(slots=True)
class Settlement:
    """The outcome of a batch of attempts, as rows for the ``outcome_*`` queries."""

    attempts: list[Mapping[str, Any]] = field(default_factory=list)
    deliveries: list[Mapping[str, Any]] = field(default_factory=list)
    webhooks: list[Mapping[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.attempts)


def settle(dialect: str, settlement: Settlement) -> Op[None]:
    """Write a batch of outcomes. Lock order, everywhere: webhook rows (in id order) before
    delivery rows; the API's writes (delete, which cancels deliveries) take them in the
    same order, so there is no deadlock. Writing a batch twice changes nothing twice."""
    if not settlement:
        return
    webhooks = sorted(settlement.webhooks, key=lambda r: str(r["id"]))
    if dialect == "postgresql":
        # One statement, atomic by itself, with each table's rows as arrays.
        yield run(
            "settle",
            suspend_after=webhooks[0]["suspend_after"],
            **_columns("w_", webhooks, exclude=("suspend_after",)),
            **_columns("d_", settlement.deliveries),
            **_columns("a_", settlement.attempts),
        )
        return
    yield many("outcome_webhook", webhooks)
    yield many("outcome_delivery", settlement.deliveries)
    yield many("outcome_attempt", settlement.attempts)


def _columns(
    prefix: str, batch: Sequence[Mapping[str, Any]], exclude: tuple[str, ...] = ()
) -> dict[str, list[Any]]:
    return {prefix + key: [row[key] for row in batch] for key in batch[0] if key not in exclude}


def _claim_postgres(req: ClaimRequest) -> Op[list[Any]]:
    found: list[Any] = yield rows(
        "claim",
        now=req.now,
        capacity=req.capacity,
        max_leased=req.per_webhook,
        my_leased=req.my_leased,
        mine=req.mine,
        margin=req.margin_ms,
        token=req.token,
    )
    return found


def _claim_sqlite(req: ClaimRequest) -> Op[list[Any]]:
    # The same plan as PostgreSQL's single statement, step by step: SQLite has no LATERAL,
    # and its one writer makes the steps atomic.
    inflight = {
        r["webhook_id"]: (r["n"], r["m"]) for r in (yield rows("queue_inflight", mine=req.mine))
    }
    heads = sorted(
        (h for h in (yield rows("queue_heads")) if h["head"] is not None and h["head"] <= req.now),
        key=lambda h: h["head"],
    )
    ids: list[str] = []
    for head in heads:
        everyone, mine = inflight.get(head["webhook_id"], (0, 0))
        free = min(req.per_webhook - everyone, req.my_leased - mine, req.capacity - len(ids))
        if free <= 0:
            continue
        taken = yield rows(
            "queue_take",
            webhook_id=head["webhook_id"],
            now=req.now,
            n=free,
            lease_until=req.now + head["timeout_ms"] + req.margin_ms,
            token=req.token,
        )
        ids += [r["id"] for r in taken]
        if len(ids) >= req.capacity:
            break
    if len(ids) < req.capacity:
        tests = yield rows("queue_take_tests", now=req.now, n=req.capacity - len(ids))
        if tests:
            leases = [
                {
                    "id": t["id"],
                    "lease_until": req.now + t["timeout_ms"] + req.margin_ms,
                    "token": req.token,
                }
                for t in tests
            ]
            yield many("queue_lease", leases)
            ids += [t["id"] for t in tests]
    if not ids:
        return []
    return list((yield rows("claim_details", ids=ids)))


def claim(dialect: str, req: ClaimRequest) -> Op[list[ClaimedDelivery]]:
    """Lease new work (PostgreSQL: one statement; SQLite: step by step, its writer being one)."""
    if req.capacity <= 0:
        return []
    found = yield from (_claim_postgres(req) if dialect == "postgresql" else _claim_sqlite(req))
    return [ClaimedDelivery.from_row(r, req.token) for r in found]


def next_due() -> Op[int | None]:
    """When the next waiting delivery falls due (may be in the past), or ``None``."""
    due = yield value("queue_next_due")
    return None if due is None else int(due)


def release(claimed: Sequence[ClaimedDelivery]) -> Op[None]:
    """Give back leased deliveries unattempted, due at once (graceful shutdown)."""
    yield many("queue_release", [{"id": c.id, "token": c.lease_token} for c in claimed])


def beat(worker: str, now: int, stale_before: int) -> Op[list[str]]:
    """Record that ``worker`` is alive; returns the ids of the live workers, in order."""
    yield run("worker_beat", id=worker, now=now)
    yield run("workers_purge", before=stale_before - 86_400_000)
    live = [r["id"] for r in (yield rows("workers_live", since=stale_before))]
    return live if worker in live else sorted([*live, worker])


def retire(worker: str) -> Op[None]:
    yield run("worker_remove", id=worker)


def release_expired(now: int) -> Op[int]:
    released: int = yield run("queue_release_expired", now=now)
    return released


def purge(
    before_ms: int, before_id: str, batch: int, idempotency_before: int, rate_before: int
) -> Op[int]:
    """Delete one bounded batch of deliveries (with their attempts) and events older than the
    retention; returns how many rows of deliveries and events went. Each batch is one
    transaction, so an interrupted purge leaves a consistent database."""
    old = [
        r["id"] for r in (yield rows("purge_deliveries_batch", before_id=before_id, limit=batch))
    ]
    if old:
        yield run("purge_attempts", ids=old)
        yield run("purge_deliveries", ids=old)
    events = [r["id"] for r in (yield rows("purge_events_batch", before=before_ms, limit=batch))]
    if events:
        yield run("purge_events", ids=events)
    yield run("idempotency_purge", before=idempotency_before)
    yield run("rate_purge", before=rate_before)
    return len(old) + len(events)
