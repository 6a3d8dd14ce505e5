"""The delivery worker: claims due deliveries in batches, sends them, records outcomes.

One loop owns the database side. Each turn it writes the outcomes that finished since the
last turn, then claims as much new work as there is room for, and starts an attempt per
claimed delivery at once. No transaction is open while a request is in flight. The loop
sleeps until an attempt finishes, new work is signalled (PostgreSQL LISTEN/NOTIFY, or
in-process on SQLite), the next delivery falls due (asked only when no attempt is under
way: each outcome wakes the loop anyway), or the poll interval passes (the
safety net). While outcomes pour in, a turn first waits ``HOOKD_BATCH_WAIT_MS`` for more
to finish, so that each write carries a bigger batch (see ``Worker._batching``).

Caps. ``HOOKD_MAX_IN_FLIGHT_PER_WEBHOOK`` and ``HOOKD_MAX_IN_FLIGHT_PER_ORG`` hold across
workers: a claimed delivery is leased until its outcome is written, so attempts running
never outnumber leases, and a claim counts every worker's leases. Two claims at the same
moment do not see each other, so each worker also claims within its *share* of each cap.
Shares are published in the worker's heartbeat row and changed one worker at a time (a
lock), each taking at most what the others' shares leave of a cap, so that they never add
up to more than the cap. A worker that starts takes at once whatever is free (after a
crash, all of its dead predecessor's share), and its fair share once the others have shrunk
theirs at their next heartbeat.

Liveness. Each worker records a heartbeat every ``HOOKD_WORKER_TIMEOUT`` / 10 seconds. A
worker is dead when its process is gone (told at once for the processes of the same host:
worker ids are ``host/pid/space+random``, the space naming the host's boot and pid
namespace), or when its heartbeat is older than ``HOOKD_WORKER_TIMEOUT``; the first worker
to notice returns the dead one's leases to the queue and removes it. A worker that has not
got a heartbeat through for half the timeout stops its attempts under way and claims
nothing until it is back in touch: by the time the others take it for dead, nothing of it
is running. Beside the heartbeat, a maintenance task returns leases that outlived their
timeout by the lease margin (a backstop) and purges rows older than the retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import socket
import time
from dataclasses import dataclass

from hookd import tracing
from hookd.clock import Clock, system_clock
from hookd.delivery.outcomes import build_settlement
from hookd.delivery.sender import AttemptResult, Sender
from hookd.errors import DatabaseUnavailable
from hookd.logs import get_logger
from hookd.metrics import METRICS
from hookd.store import ClaimedDelivery, ClaimRequest, Peer, Settlement, Store
from hookd.store.operational import log_changes

__all__ = ["Worker", "WorkerConfig", "fair_share", "new_worker_id", "ran_here_and_died"]

log = get_logger("hookd.delivery")
_stdlog = logging.getLogger("hookd.delivery")

_PURGE_BATCH = 1000
# Two rounds in a row that each wrote at least this many outcomes mean that they arrive
# faster than rounds go round: the next one waits WorkerConfig.batch_wait for more (see
# Worker._batching). One such round alone may be a burst (attempts that timed out
# together), after which nothing more comes soon.
_BATCH_WAIT_AFTER = 16
# A busy worker whose claims take long (many webhooks with work: the claim walks each
# one's queue head) waits half as long as its last claim took, up to this many seconds.
_BATCH_WAIT_MAX = 0.05
_DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    retry_schedule: tuple[float, ...] = (60.0, 3600.0, 21600.0)
    suspend_after: int = 10
    max_in_flight_per_webhook: int = 10
    max_in_flight_per_org: int = 100
    concurrency: int = 256
    poll_interval: float = 1.0
    lease_margin_ms: int = 30_000
    worker_timeout: float = 10.0
    retention_days: int = 30
    maintenance_interval: float = 5.0
    purge_interval: float = 60.0
    # Seconds a busy worker lets outcomes gather before it writes them and claims more (see
    # Worker._batching; hookd.server.batch_wait gives the engine's default); 0: write each
    # round's outcomes at once.
    batch_wait: float = 0.0

    @property
    def heartbeat_interval(self) -> float:
        return self.worker_timeout / 10

    @property
    def out_of_touch_after(self) -> float:
        """Seconds without a heartbeat that got through after which a worker stops its
        attempts: half the time after which the others take it for dead."""
        return self.worker_timeout / 2


def _pid_space() -> str:
    """A name for this host's boot and pid namespace: a pid names the same process only
    within both (containers on one host share the boot, not the pid namespace, and two
    hosts may have the same name)."""
    parts = []
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as boot:
        parts.append(boot.read().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


_HOST = socket.gethostname()[:64]
_SPACE = _pid_space()


def new_worker_id(pid: int | None = None) -> str:
    """``host/pid/space+random``: unique, and telling a worker on the same host whether a
    worker that still looks alive (a recent heartbeat) is a process that no longer runs."""
    return f"{_HOST}/{os.getpid() if pid is None else pid}/{_SPACE}{os.urandom(6).hex()}"


def ran_here_and_died(worker_id: str) -> bool:
    """Whether ``worker_id`` was a worker process of this host (and pid namespace) that no
    longer runs (killed with SIGKILL, so it could not retire). Unknown forms, other hosts
    and processes that exist (or whose pid was reused) count as alive."""
    host, _, rest = worker_id.partition("/")
    pid_text, _, nonce = rest.partition("/")
    if host != _HOST or not nonce.startswith(_SPACE) or not pid_text.isdigit():
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


def fair_share(cap: int, rank: int, count: int) -> int:
    """The share of ``cap`` of the worker ranked ``rank`` among ``count`` live workers: the
    cap split evenly, the remainder to the first ones, so that the shares add up to the cap
    exactly. Past the cap's worth of workers, some get none."""
    return cap // count + (1 if rank < cap % count else 0)


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
        # Outcomes the last two rounds wrote: the last round's, and the fewer of the two.
        self._last_batch = 0
        self._steady_batch = 0
        # Seconds the last claim took to answer (see _batch_wait).
        self._claim_seconds = 0.0
        self._wake = asyncio.Event()
        # Set by stop(); a batch wait (see _batching) ends as soon as it is.
        self._stop_requested = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._keeper: asyncio.Task[None] | None = None
        self._beating: asyncio.Task[None] | None = None
        # This worker's row as last written: its shares are what it claims with.
        self.me = Peer(self.worker_id, 0, 0, False)
        # Below its fair share (waiting for the others to shrink theirs): beat more often.
        self._wanting = False
        # When the last heartbeat that got through was sent (time.monotonic()).
        self._in_touch_at = time.monotonic()
        self._out_of_touch = False
        # Deliveries whose attempts were stopped out of touch: given back once in touch.
        self._abandoned: list[ClaimedDelivery] = []

    @property
    def in_touch(self) -> bool:
        """Whether heartbeats get through: a worker out of touch claims nothing."""
        return not self._out_of_touch

    # Life cycle.

    async def start(self) -> None:
        """Join: the first heartbeat removes dead predecessors of this host (their leases go
        back to the queue) and takes whatever share of the caps is free; then claim."""
        await self._heartbeat()
        await self.sender.start()
        self._keeper = asyncio.create_task(self._keep_alive(), name="hookd-heartbeat")
        self._tasks = [
            asyncio.create_task(self._run(), name="hookd-dispatch"),
            asyncio.create_task(self._listen(), name="hookd-listen"),
            asyncio.create_task(self._maintain(), name="hookd-maintain"),
        ]

    async def stop(self, grace: float = 35.0) -> None:
        """Stop claiming, give this worker's shares of the caps back at once (the other
        workers take them at their next heartbeat), let attempts under way finish (up to
        ``grace`` seconds), record them, and give back any delivery that could not finish,
        due at once. The heartbeat goes on until the last attempt is over, so that nobody
        takes this worker for dead meanwhile."""
        self._stop_requested.set()
        self._wake.set()
        dispatcher, helpers = self._tasks[:1], self._tasks[1:]
        for task in helpers:
            task.cancel()
        # The dispatcher ends after its current turn, so nothing it claimed is lost.
        for task in dispatcher:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self._heartbeat()  # publishes "stopping", with no shares
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
            await self.store.release([*unfinished, *self._abandoned])
        except Exception as exc:
            log.warning(
                "could not record the last outcomes at shutdown; their leases will expire",
                error=str(exc),
                deliveries=len(unfinished),
            )
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._keeper
        if self._beating is not None:
            # Let a heartbeat under way end first: written after the retirement, it would
            # register this worker again.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._beating
        with contextlib.suppress(Exception):
            await self.store.retire(self.worker_id)
        await self.sender.close()

    @property
    def _stopping(self) -> bool:
        return self._stop_requested.is_set()

    # The dispatch loop.

    def _token(self) -> str:
        self._claims += 1
        return f"{self.worker_id}-{self._claims}"

    async def _settle(self) -> None:
        """Write every outcome not yet written (raises DatabaseUnavailable, keeping them)."""
        self._steady_batch = min(self._last_batch, len(self._done))
        self._last_batch = len(self._done)
        if self._done:
            done, self._done = self._done, []
            self._unsettled.append(
                build_settlement(
                    done, self.config.retry_schedule, self.config.suspend_after, self.rng
                )
            )
        while self._unsettled:
            try:
                changes = await self.store.settle(self._unsettled[0])
                METRICS.settled(
                    sum(c.topic == "delivery.failed" for c in changes),
                    sum(c.topic == "webhook.suspended" for c in changes),
                )
                log_changes(changes)
            except DatabaseUnavailable:
                raise
            except Exception:
                # Not the database being away: this batch cannot be written. Drop it rather
                # than stop all delivery; its deliveries are sent again once their leases end.
                log.exception("could not record a batch of outcomes; it will be retried")
            self._unsettled.pop(0)

    def _may_claim(self) -> bool:
        return (
            not self._stopping
            and not self._out_of_touch
            and self.me.webhook_share > 0
            and self.me.org_share > 0
            and time.monotonic() - self._in_touch_at < self.config.out_of_touch_after
        )

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            if self._batching():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), self._batch_wait())
            self._wake.clear()
            room = self.config.concurrency - len(self._in_flight)
            try:
                claimed = await self._settle_and_claim(room)
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
            self._start(claimed)
            if claimed and len(claimed) == room:
                continue  # more may be waiting
            if self._done:
                continue
            await self._sleep()

    def _batching(self) -> bool:
        """Whether the next round should first let outcomes gather for a moment.

        A round's statements cost the database about as much per call as for 25 of their
        rows (on PostgreSQL a settle and a claim of 25 deliveries each spend about half
        their time on work that does not grow with the rows: the queue heads and caps, the
        webhooks' health and rollups), so while outcomes pour in (the last two rounds wrote at least
        _BATCH_WAIT_AFTER each) and more are under way, waiting batch_wait lets one round
        carry what two or three would have. A worker whose outcomes trickle in (an idle
        one, or one whose attempts are slow, even if some time out together) never waits:
        its next claim goes out at once."""
        return (
            self.config.batch_wait > 0
            and self._steady_batch >= _BATCH_WAIT_AFTER
            and bool(self._in_flight)
            and not self._stopping
        )

    def _batch_wait(self) -> float:
        """How long a round that should gather outcomes (see ``_batching``) waits:
        ``batch_wait``, or half of what the last claim took if that is longer (that half
        at most ``_BATCH_WAIT_MAX``). A claim costs the database a part that does not grow with its
        rows, and with 1,000 webhooks with work that part is most of its 40 ms: a worker
        that claimed again at each outcome would claim half as many deliveries each time,
        twice as often, for more of the database's CPU per delivery."""
        return max(self.config.batch_wait, min(_BATCH_WAIT_MAX, self._claim_seconds / 2))

    async def _settle_and_claim(self, room: int) -> list[ClaimedDelivery]:
        """Write the outcomes, then claim up to ``room`` deliveries (if this worker may).

        Where writes issued together commit together (SQLite: its one writer commits every
        write waiting at the time, see ``Driver.writes_commit_together``), the claim's write
        is queued right behind the settle's, in the same transaction, so it sees the leases
        the settle ended. A turn then commits once instead of twice, and the pages both
        dirty (the index pages of the webhooks' deliveries) go to the WAL once. Elsewhere
        (PostgreSQL) the claim waits for the settle's commit: on another connection, it
        would not see the settle's work before that.
        """
        claiming = room > 0 and self._may_claim()
        if not claiming:
            await self._settle()
            return []
        if not self.store.writes_commit_together or not (self._done or self._unsettled):
            await self._settle()
            started = time.monotonic()
            claimed_alone = await self.store.claim(self._claim_request(room))
            self._claim_seconds = time.monotonic() - started
            return claimed_alone
        started = time.monotonic()
        settling = asyncio.ensure_future(self._settle())
        claim = asyncio.ensure_future(self.store.claim(self._claim_request(room)))
        settled, claimed = await asyncio.gather(settling, claim, return_exceptions=True)
        self._claim_seconds = time.monotonic() - started  # the two commit together
        if isinstance(claimed, BaseException):
            if isinstance(settled, BaseException):
                raise settled
            raise claimed
        if isinstance(settled, BaseException):
            # Claimed, though the outcomes could not be written (not in the same transaction:
            # the settle wrote an earlier batch first): send them, then report the failure.
            self._start(claimed)
            raise settled
        return claimed

    def _start(self, claimed: list[ClaimedDelivery]) -> None:
        for item in claimed:
            self._in_flight[item.id] = (item, asyncio.create_task(self._attempt(item)))

    def _claim_request(self, room: int) -> ClaimRequest:
        return ClaimRequest(
            now=self.clock(),
            capacity=room,
            per_webhook=self.config.max_in_flight_per_webhook,
            margin_ms=self.config.lease_margin_ms,
            token=self._token(),
            worker=self.worker_id,
            share=self.me.webhook_share,
            per_org=self.config.max_in_flight_per_org,
            org_share=self.me.org_share,
        )

    async def _sleep(self) -> None:
        timeout = self.config.poll_interval
        # Only an idle worker asks when the next delivery falls due. With attempts under
        # way, each outcome wakes it to claim again (within poll_interval at the latest),
        # and the answer would mostly be "due now, but the caps are full": the question
        # walks the queue head of every webhook with work, 19 ms a call at 1,000 of them.
        if self._may_claim() and not self._in_flight:
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

    async def _attempt(self, claimed: ClaimedDelivery) -> None:
        try:
            if tracing.enabled():
                with tracing.attempt_span(claimed) as span:
                    result = await self.sender.send(claimed)
                    tracing.end_attempt(span, result)
            else:
                # No span to open: not even a context manager's generator per attempt.
                result = await self.sender.send(claimed)
        finally:
            self._in_flight.pop(claimed.id, None)
        self._done.append((claimed, result))
        self._wake.set()
        METRICS.attempt(
            result.outcome,
            result.response_time_ms / 1000,
            claimed.organization_id,
            claimed.webhook_id,
        )
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

    def _decide(self, peers: list[Peer]) -> Peer:
        """This worker's shares, from the other live workers' rows (see the module doc).

        Runs inside the heartbeat's transaction, before its row is written: a share that
        shrinks does so at once, before another worker can read it and grow into it; one
        that grows does so once written (in :meth:`_heartbeat`)."""
        if self._stopping:
            self._wanting = False
            self.me = Peer(self.worker_id, 0, 0, True)
            return self.me
        active = sorted([p.id for p in peers if not p.stopping] + [self.worker_id])
        rank, count = active.index(self.worker_id), len(active)
        shares = []
        for cap, taken in (
            (self.config.max_in_flight_per_webhook, sum(p.webhook_share for p in peers)),
            (self.config.max_in_flight_per_org, sum(p.org_share for p in peers)),
        ):
            fair = fair_share(cap, rank, count)
            shares.append((fair, max(0, min(fair, cap - taken))))
        self._wanting = any(share < fair for fair, share in shares)
        decided = Peer(self.worker_id, shares[0][1], shares[1][1], False)
        self.me = Peer(
            self.worker_id,
            min(self.me.webhook_share, decided.webhook_share),
            min(self.me.org_share, decided.org_share),
            False,
        )
        return decided

    async def _heartbeat(self) -> None:
        sent = time.monotonic()
        beat = await self.store.beat(
            self.worker_id,
            round(self.config.worker_timeout * 1000),
            self._decide,
            ran_here_and_died,
        )
        self._in_touch_at = sent
        if beat.reaped:
            log.warning(
                "dead workers removed; their deliveries went back to the queue",
                workers=list(beat.reaped),
                deliveries=beat.released,
            )
        if beat.me != self.me:
            self.me = beat.me
            self._wake.set()
        if self._out_of_touch:
            await self._back_in_touch()

    def _lose_touch(self) -> None:
        """No heartbeat got through for half the worker timeout: the others will take this
        worker for dead at the full timeout and send its deliveries again. Stop its attempts
        under way now, so that none is still running then, and claim nothing until a
        heartbeat gets through."""
        self._out_of_touch = True
        for claimed, task in self._in_flight.values():
            task.cancel()
            self._abandoned.append(claimed)
        log.warning(
            "no heartbeat recorded for a while; attempts under way stopped, their deliveries "
            "will be sent again",
            seconds=round(time.monotonic() - self._in_touch_at, 1),
            deliveries=len(self._abandoned),
        )

    async def _back_in_touch(self) -> None:
        # Give back the stopped attempts' deliveries (unless another worker has them now).
        await self.store.release(self._abandoned)
        log.info("heartbeat recorded again; claiming again", returned=len(self._abandoned))
        self._abandoned = []
        self._out_of_touch = False
        self._wake.set()

    async def _keep_alive(self) -> None:
        while True:
            interval = self.config.heartbeat_interval
            await asyncio.sleep(interval / 5 if self._wanting else interval)
            if self._beating is None or self._beating.done():
                self._beating = asyncio.create_task(self._beat_once())
            in_touch_for = time.monotonic() - self._in_touch_at
            if not self._out_of_touch and in_touch_for >= self.config.out_of_touch_after:
                self._lose_touch()

    async def _beat_once(self) -> None:
        try:
            await self._heartbeat()
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
            forgotten = await self.store.purge_expired_secrets()
            if forgotten:
                log.info("expired previous secrets forgotten", webhooks=forgotten)
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
