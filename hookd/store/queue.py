"""Store operations of the delivery queue: claim, settle, release, heartbeats, purge.

Deliveries are rows. A waiting delivery has ``status = 'pending'`` and a due time
``next_attempt_at``. A claim leases it to one worker (``lease_until``, ``lease_token``, the
token beginning with the worker's id) for longer than the webhook's timeout; settling the
attempt's outcome ends the lease. A worker that dies is found out by its heartbeat row
(:func:`beat`: at once on its own host, after a lapsed heartbeat elsewhere) and its leases
go back to the queue; :func:`release_expired` is the backstop for a lease that outlived its
timeout by the lease margin whatever its worker's state.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hookd.store import operational, rollups
from hookd.store.queries import Op, many, rows, run, value
from hookd.store.records import ClaimedDelivery, Heartbeat, Peer

__all__ = [
    "ClaimRequest",
    "Settlement",
    "allot",
    "beat",
    "claim",
    "next_due",
    "purge",
    "release",
    "release_expired",
    "retire",
    "settle",
]

# A cap that no claim reaches (the per-organization cap of a request that names none).
UNBOUNDED = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """Lease at most ``capacity`` due deliveries for the worker named ``worker`` (the prefix
    of its lease tokens), ``token`` naming this claim. Per webhook at most ``per_webhook``
    leased across all workers and at most ``share`` of them to this worker; per
    organization at most ``per_org`` across all workers and ``org_share`` to this worker.
    A lease lasts the webhook's timeout plus ``margin_ms``."""

    now: int
    capacity: int
    per_webhook: int
    margin_ms: int
    token: str
    worker: str = ""
    share: int | None = None
    per_org: int | None = None
    org_share: int | None = None

    @property
    def my_leased(self) -> int:
        """Leases per webhook for this worker."""
        return self.per_webhook if self.share is None else min(self.share, self.per_webhook)

    @property
    def org_max(self) -> int:
        return UNBOUNDED if self.per_org is None else self.per_org

    @property
    def org_mine(self) -> int:
        """Leases per organization for this worker."""
        return self.org_max if self.org_share is None else min(self.org_share, self.org_max)

    @property
    def mine(self) -> str:
        """The prefix of this worker's lease tokens."""
        return f"{self.worker or self.token}-"


@dataclass(slots=True)
class Settlement:
    """The outcome of a batch of attempts, as rows for the ``outcome_*`` queries."""

    attempts: list[Mapping[str, Any]] = field(default_factory=list)
    deliveries: list[Mapping[str, Any]] = field(default_factory=list)
    webhooks: list[Mapping[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.attempts)


def settle(
    dialect: str, settlement: Settlement, now: int = 0
) -> Op[list[operational.OperationalChange]]:
    """Write a batch of outcomes and the dashboard's rollups of its attempts
    (:mod:`hookd.store.rollups`). Lock order, everywhere: webhook rows (in id order) before
    delivery rows and rollup rows (in (webhook_id, hour) order); the API's writes (delete,
    which cancels deliveries) take them in the same order, so there is no deadlock. Writing
    a batch twice changes nothing twice.

    Returns the suspensions and final failures it made, whose operational events it
    published (at ``now``) when the batch may have any (run it in a transaction then: see
    :mod:`hookd.store.operational`)."""
    if not settlement:
        return []
    webhooks = sorted(settlement.webhooks, key=lambda r: str(r["id"]))
    # --- operational events (SPEC §4): note the state before the settle --------------------
    seen = None
    if operational.may_publish(settlement.deliveries):
        failing = [d["id"] for d in settlement.deliveries if d["status"] == "failed"]
        seen = yield from operational.watch([str(w["id"]) for w in webhooks], failing)
    # ----------------------------------------------------------------------------------------
    if dialect == "postgresql":
        # One statement, atomic by itself, with each table's rows as arrays, the dashboard's
        # rollups (hookd.store.rollups) included.
        yield run(
            "settle",
            suspend_after=webhooks[0]["suspend_after"],
            **_columns("w_", webhooks, exclude=("suspend_after",)),
            **_columns("d_", settlement.deliveries),
            **_columns("a_", settlement.attempts),
            **_columns("r_", rollups.rollup_rows(settlement.attempts), exclude=("first_attempt",)),
        )
    else:
        # SQLite: in one transaction (its one writer), the rollups before the attempts,
        # whose presence marks a batch recorded.
        yield from rollups.record(settlement.attempts)
        yield many("outcome_webhook", webhooks)
        yield many("outcome_delivery", settlement.deliveries)
        yield many("outcome_attempt", settlement.attempts)
    # --- operational events (SPEC §4): publish what the settle changed ----------------------
    if seen is None:
        return []
    return (yield from operational.publish(seen, now))


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
        org_max=req.org_max,
        org_mine=req.org_mine,
        mine=req.mine,
        margin=req.margin_ms,
        token=req.token,
    )
    return found


def allot(
    heads: Sequence[Mapping[str, Any]], leased: Sequence[Mapping[str, Any]], req: ClaimRequest
) -> list[tuple[Mapping[str, Any], int]]:
    """How many deliveries to take from each webhook with due work (``heads``: rows of
    ``queue_heads``), given the leases under way (``leased``: rows of ``queue_leased``).

    The rule of PostgreSQL's ``claim`` statement: each free slot of a webhook (within the
    per-webhook cap and this worker's share of it) gets a turn within its organization,
    ordered by how many attempts the webhook would then have under way (ties: the oldest
    due work first); an organization's turns beyond its free slots (its cap, this worker's
    share of it) drop out; then the slots are taken in the order of how many attempts their
    organization would then have under way, until ``capacity`` is reached.
    """
    under_way = {r["webhook_id"]: (int(r["n"]), int(r["m"])) for r in leased}
    org_under_way: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in leased:
        counts = org_under_way[r["organization_id"]]
        counts[0] += int(r["n"])
        counts[1] += int(r["m"])
    by_org: dict[str, list[tuple[Mapping[str, Any], int, int]]] = defaultdict(list)
    for head in heads:
        everyone, mine = under_way.get(head["webhook_id"], (0, 0))
        free = min(req.per_webhook - everyone, req.my_leased - mine, req.capacity)
        if free > 0:
            by_org[head["organization_id"]].append((head, everyone, free))
    rooms = {}
    for org in by_org:
        everyone, mine = org_under_way.get(org, [0, 0])
        rooms[org] = min(req.org_max - everyone, req.org_mine - mine, req.capacity)
    wanted = {org: sum(free for _h, _n, free in hooks) for org, hooks in by_org.items()}
    if sum(wanted.values()) <= req.capacity and all(wanted[o] <= rooms[o] for o in by_org):
        # Room for every free slot (the usual case): nothing to choose between.
        return [(head, free) for hooks in by_org.values() for head, _n, free in hooks]
    slots: list[tuple[int, int, str]] = []
    chosen: dict[str, Mapping[str, Any]] = {}
    for org, hooks in by_org.items():
        room = max(0, rooms[org])
        # A webhook whose first free slot is not among the organization's first ``room``
        # turns gets none: only the others are numbered slot by slot.
        first = sorted(hooks, key=lambda h: (h[1], h[0]["head"], h[0]["webhook_id"]))[:room]
        units = sorted(
            (everyone + k, head["head"], head["webhook_id"])
            for head, everyone, free in first
            for k in range(1, min(free, room) + 1)
        )
        base = org_under_way.get(org, [0, 0])[0]
        slots += [
            (base + turn, due, webhook_id)
            for turn, (_n, due, webhook_id) in enumerate(units[:room], 1)
        ]
        chosen.update((head["webhook_id"], head) for head, _n, _free in hooks)
    slots.sort()
    takes = Counter(webhook_id for _n, _due, webhook_id in slots[: req.capacity])
    return [(chosen[webhook_id], n) for webhook_id, n in takes.items()]


def _claim_sqlite(req: ClaimRequest) -> Op[list[Any]]:
    # The same plan as PostgreSQL's single statement, step by step: SQLite has no LATERAL,
    # and its one writer makes the steps atomic.
    leased = yield rows("queue_leased", mine=req.mine)
    heads = [
        h for h in (yield rows("queue_heads")) if h["head"] is not None and h["head"] <= req.now
    ]
    taken: list[dict[str, Any]] = []
    for head, take in allot(heads, leased, req):
        lease = {
            "webhook_id": head["webhook_id"],
            "now": req.now,
            "lease_until": req.now + head["timeout_ms"] + req.margin_ms,
            "token": req.token,
        }
        if not head["active"]:
            taken += yield rows("queue_take_tests", n=take, **lease)
            continue
        mine: list[dict[str, Any]] = []
        if head["urgent"] is not None and head["urgent"] <= req.now:
            # Up to half the slots for due retries and test deliveries: a backlog of first
            # attempts does not hold them back.
            mine = yield rows("queue_take_urgent", n=(take + 1) // 2, **lease)
        if len(mine) < take:
            mine += yield rows("queue_take", n=take - len(mine), **lease)
        taken += mine
    if not taken:
        return []
    # The leased rows came back with their own columns; their events and webhooks are read
    # once each (a fan-out's deliveries share one event), not joined per delivery.
    events = {
        r["event_id"]: r
        for r in (yield rows("claim_events", ids=list({d["event_id"] for d in taken})))
    }
    hooks = {
        r["webhook_id"]: r
        for r in (yield rows("claim_webhooks", ids=list({d["webhook_id"] for d in taken})))
    }
    return [{**d, **events[d["event_id"]], **hooks[d["webhook_id"]]} for d in taken]


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


def beat(
    worker: str,
    now: int,
    timeout_ms: int,
    decide: Callable[[list[Peer]], Peer],
    died: Callable[[str], bool],
) -> Op[Heartbeat]:
    """Record that ``worker`` is alive, with the shares of the caps that ``decide`` gives it
    from the other live workers' rows; remove the dead workers first and return their leases
    to the queue. Dead: a heartbeat older than ``timeout_ms``, or ``died(id)`` (a process of
    this host that no longer runs).

    Workers take turns (``workers_lock``), so that each decides from the shares the others
    really claim with: a new share never makes the shares add up to more than a cap.
    """
    yield run("workers_lock")
    peers: list[Peer] = []
    reaped: list[str] = []
    released = 0
    for row in (yield rows("workers_all", now=now, timeout=timeout_ms)):
        if row["id"] == worker:
            continue
        if row["fresh"] and not died(row["id"]):
            peers.append(Peer.from_row(row))
            continue
        released += yield run("queue_release_worker", prefix=f"{row['id']}-")
        yield run("worker_remove", id=row["id"])
        reaped.append(row["id"])
    me = decide(peers)
    yield run(
        "worker_beat",
        id=worker,
        now=now,
        webhook_share=me.webhook_share,
        org_share=me.org_share,
        stopping=me.stopping,
    )
    return Heartbeat(me=me, peers=tuple(peers), reaped=tuple(reaped), released=released)


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
    yield run("rollup_purge", before=before_ms)  # dashboard rollups past the retention
    yield run("idempotency_purge", before=idempotency_before)
    yield run("rate_purge", before=rate_before)
    return len(old) + len(events)
