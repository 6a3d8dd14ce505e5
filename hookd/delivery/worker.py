"""The delivery worker: claims due deliveries in batches, sends them, records outcomes.

One loop owns the database side. Each turn it writes the outcomes that finished since the
last turn, then claims as much new work as there is room for, and starts an attempt per
claimed delivery at once. No transaction is open while a request is in flight. The loop
sleeps until an attempt finishes, new work is signalled (PostgreSQL LISTEN/NOTIFY, or
in-process on SQLite), the next delivery falls due, or the poll interval passes (the
safety net).

The per-webhook cap ``HOOKD_MAX_IN_FLIGHT_PER_WEBHOOK`` holds across workers: a claimed
delivery is leased until its outcome is written, so attempts running never outnumber
leases, and the claim counts every worker's leases. The live workers (known by their
heartbeats) also split the cap between them, so that each gets a fair share of every
webhook instead of the fastest taking it all; a worker that joins waits one heartbeat
interval before claiming, so that the others have shrunk their shares first. Workers are
named ``host/pid/random``, so a worker restarted after ``kill -9`` drops its dead
predecessor on the same host instead of waiting for that heartbeat to go stale.

Beside it, a heartbeat task keeps the worker counted until it has stopped, and a
maintenance task returns expired leases to the queue and purges rows older than the
retention, in bounded batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from dataclasses import dataclass

from hookd.clock import Clock, system_clock
from hookd.delivery.outcomes import build_settlement
from hookd.delivery.sender import AttemptResult, Sender
from hookd.errors import DatabaseUnavailable
from hookd.logs import get_logger
from hookd.metrics import ATTEMPT_SECONDS, ATTEMPTS, IN_FLIGHT
from hookd.store import ClaimedDelivery, ClaimRequest, Settlement, Store

__all__ = ["Worker", "WorkerConfig"]

log = get_logger("hookd.delivery")
_stdlog = logging.getLogger("hookd.delivery")

_PURGE_BATCH = 1000
_SUCCEEDED = ATTEMPTS.labels("succeeded")
_FAILED = ATTEMPTS.labels("failed")
_DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    retry_schedule: tuple[float, ...] = (60.0, 3600.0, 21600.0)
    suspend_after: int = 10
    max_in_flight_per_webhook: int = 10
    concurrency: int = 256
    poll_interval: float = 1.0
    lease_margin_ms: int = 30_000
    retention_days: int = 30
    maintenance_interval: float = 5.0
    purge_interval: float = 60.0


_HOST = socket.gethostname()[:64]


def new_worker_id() -> str:
    """``host/pid/random``: unique, and telling a restarted worker on the same host whether
    a worker that still looks alive (a recent heartbeat) is a process that no longer runs."""
    return f"{_HOST}/{os.getpid()}/{os.urandom(6).hex()}"


def ran_here_and_died(worker_id: str) -> bool:
    """Whether ``worker_id`` was a worker process on this host that no longer runs (killed
    with SIGKILL, so it could not retire). Unknown forms, other hosts and processes that
    exist (or whose pid was reused) count as alive."""
    host, _, rest = worker_id.partition("/")
    pid_text, _, _ = rest.partition("/")
    if host != _HOST or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists, as another user's process
    return False


class Worker:
    """Drives deliveries for one process. ``start`` it once, ``stop`` it on shutdown."""

    def __init__(
        self,
        store: Store,
        sender: Sender,
        config: WorkerConfig,
        *,
        clock: Clock = system_clock,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.sender = sender
        self.config = config
        self.clock = clock
        self.rng = rng or random.Random()
        self.worker_id = new_worker_id()
        self._claims = 0
        self._in_flight: dict[str, tuple[ClaimedDelivery, asyncio.Task[None]]] = {}
        self._done: list[tuple[ClaimedDelivery, AttemptResult]] = []
        # Outcomes built but not yet written (the database was away): written first, as
        # they are, so that writing them again after a lost answer changes nothing twice.
        self._unsettled: list[Settlement] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._share = config.max_in_flight_per_webhook
        self._live: list[str] = [self.worker_id]
        self._joining = False

    # Life cycle.

    async def start(self) -> None:
        live = await self._beat()
        dead = [w for w in live if w != self.worker_id and ran_here_and_died(w)]
        if dead:
            # A predecessor killed with SIGKILL on this host: its heartbeat is recent, but
            # it holds nothing any more (its leases expire on their own), so it takes no
            # share and this worker need not wait for it to go stale.
            for worker in dead:
                await self.store.retire(worker)
            live = await self._beat()
        if len(live) > 1:
            # The others shrink their shares at their next heartbeat; until then this worker's
            # share would push the sum over the cap, so it starts delivering after that.
            self._joining = True
            self._share = 0
            asyncio.get_running_loop().call_later(
                self.config.maintenance_interval * 1.2, self._take_share
            )
        await self.sender.start()
        self._heartbeat = asyncio.create_task(self._beat_forever(), name="hookd-heartbeat")
        self._tasks = [
            asyncio.create_task(self._run(), name="hookd-dispatch"),
            asyncio.create_task(self._listen(), name="hookd-listen"),
            asyncio.create_task(self._maintain(), name="hookd-maintain"),
        ]

    async def stop(self, grace: float = 35.0) -> None:
        """Stop claiming, let attempts under way finish (up to ``grace`` seconds), record
        them, and give back any delivery that could not finish, due at once. The worker
        keeps its heartbeat (and so its share of the cap) until its last attempt is over."""
        self._stopping = True
        self._wake.set()
        dispatcher, helpers = self._tasks[:1], self._tasks[1:]
        for task in helpers:
            task.cancel()
        # The dispatcher ends after its current turn, so nothing it claimed is lost.
        for task in dispatcher:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._in_flight:
            await asyncio.wait([task for _c, task in self._in_flight.values()], timeout=grace)
        unfinished = [claimed for claimed, _task in self._in_flight.values()]
        for _claimed, task in list(self._in_flight.values()):
            task.cancel()
        for task in helpers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            await self._settle()
            await self.store.release(unfinished)
        except Exception as exc:
            log.warning(
                "could not record the last outcomes at shutdown; their leases will expire",
                error=str(exc),
                deliveries=len(unfinished),
            )
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._heartbeat
        with contextlib.suppress(Exception):
            await self.store.retire(self.worker_id)
        await self.sender.close()

    # The dispatch loop.

    def _token(self) -> str:
        self._claims += 1
        return f"{self.worker_id}-{self._claims}"

    async def _settle(self) -> None:
        """Write every outcome not yet written (raises DatabaseUnavailable, keeping them)."""
        if self._done:
            done, self._done = self._done, []
            self._unsettled.append(
                build_settlement(
                    done, self.config.retry_schedule, self.config.suspend_after, self.rng
                )
            )
        while self._unsettled:
            try:
                await self.store.settle(self._unsettled[0])
            except DatabaseUnavailable:
                raise
            except Exception:
                # Not the database being away: this batch cannot be written. Drop it rather
                # than stop all delivery; its deliveries are sent again once their leases end.
                log.exception("could not record a batch of outcomes; it will be retried")
            self._unsettled.pop(0)

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            self._wake.clear()
            room = self.config.concurrency - len(self._in_flight)
            try:
                await self._settle()
                claimed = await self.store.claim(self._claim_request(room)) if room > 0 else []
            except DatabaseUnavailable as exc:
                log.warning(
                    "database unavailable; delivery paused", error=exc.detail, retry_in=backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except Exception:
                log.exception("delivery loop failed; retrying")
                await asyncio.sleep(1.0)
                continue
            backoff = 0.1
            for item in claimed:
                self._in_flight[item.id] = (item, asyncio.create_task(self._attempt(item)))
            IN_FLIGHT.set(len(self._in_flight))
            if claimed and len(claimed) == room:
                continue  # more may be waiting
            if self._done:
                continue
            await self._sleep()

    def _claim_request(self, room: int) -> ClaimRequest:
        return ClaimRequest(
            now=self.clock(),
            capacity=room,
            per_webhook=self.config.max_in_flight_per_webhook,
            margin_ms=self.config.lease_margin_ms,
            token=self._token(),
            worker=self.worker_id,
            share=self._share,
        )

    async def _sleep(self) -> None:
        timeout = self.config.poll_interval
        if self._share and len(self._in_flight) < self.config.concurrency:
            with contextlib.suppress(DatabaseUnavailable):
                due = await self.store.next_due()
                if due is not None:
                    timeout = min(timeout, max(0.0, (due - self.clock()) / 1000))
        if timeout <= 0 and not self._done:
            # Due now but not claimable (its webhook's slots are full): an outcome will wake us.
            timeout = self.config.poll_interval if self._in_flight else 0.05
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _listen(self) -> None:
        while not self._stopping:
            if await self.store.wait_for_work(60.0):
                self._wake.set()

    def _take_share(self) -> None:
        self._joining = False
        self._share = self._share_of(self._live)
        self._wake.set()

    def _share_of(self, live: list[str]) -> int:
        # The cap split between the live workers, the remainder to the first ones: the
        # shares add up to the cap exactly. Past the cap's worth of workers, some get none.
        cap = self.config.max_in_flight_per_webhook
        rank = live.index(self.worker_id) if self.worker_id in live else len(live)
        count = max(1, len(live))
        return cap // count + (1 if rank < cap % count else 0)

    async def _attempt(self, claimed: ClaimedDelivery) -> None:
        try:
            result = await self.sender.send(claimed)
        finally:
            self._in_flight.pop(claimed.id, None)
        self._done.append((claimed, result))
        self._wake.set()
        (_SUCCEEDED if result.succeeded else _FAILED).inc()
        ATTEMPT_SECONDS.observe(result.response_time_ms / 1000)
        if result.succeeded and not _stdlog.isEnabledFor(logging.DEBUG):
            return
        fields = {
            "webhook": claimed.webhook_id,
            "delivery": claimed.id,
            "attempt": claimed.attempt_count + 1,
            "status": result.code,
            "duration_ms": result.response_time_ms,
        }
        if result.succeeded:
            log.debug("attempt succeeded", **fields)
        else:
            log.info("attempt failed", reason=result.message, **fields)

    # Heartbeat and maintenance.

    async def _beat(self) -> list[str]:
        # A worker whose heartbeat is three intervals old no longer counts.
        stale_before = self.clock() - round(3 * self.config.maintenance_interval * 1000)
        self._live = await self.store.beat(self.worker_id, stale_before)
        if not self._joining:
            self._share = self._share_of(self._live)
        return self._live

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.maintenance_interval)
            try:
                await self._beat()
            except DatabaseUnavailable:
                pass
            except Exception:
                log.exception("heartbeat failed")

    async def _maintain(self) -> None:
        last_purge = 0.0
        while not self._stopping:
            try:
                released = await self.store.release_expired()
                if released:
                    log.info("expired leases returned to the queue", deliveries=released)
                    self._wake.set()
                if time.monotonic() - last_purge >= self.config.purge_interval:
                    last_purge = time.monotonic()
                    await self.purge()
            except DatabaseUnavailable:
                pass
            except Exception:
                log.exception("maintenance failed")
            await asyncio.sleep(self.config.maintenance_interval)

    async def purge(self) -> int:
        """Delete events, deliveries and attempts older than the retention, a batch at a time."""
        now = self.clock()
        cutoff = now - self.config.retention_days * _DAY_MS
        before_id = f"{max(0, cutoff // 1000):08x}" + "0" * 16
        total = 0
        try:
            while not self._stopping:
                removed = await self.store.purge(
                    cutoff, before_id, _PURGE_BATCH, now - _DAY_MS, now - 120_000
                )
                total += removed
                if removed < _PURGE_BATCH:
                    break
                # Let deliveries and the API at the database between batches.
                await asyncio.sleep(0.01)
        finally:
            # Also when shutdown cancels the purge part way: what went is logged.
            if total:
                log.info("purged old rows", rows=total, older_than_days=self.config.retention_days)
        return total
