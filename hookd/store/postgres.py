"""The PostgreSQL driver: pooled asyncpg connections (hookd.store.pgpool), and LISTEN/NOTIFY
to wake workers and to tell every API process's event streams which events were published."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, TypeVar

import asyncpg

from hookd.errors import DatabaseUnavailable
from hookd.store.pgpool import ConnectionPool
from hookd.store.queries import EventSink, Op, Published, Query, Statement, drive, load_queries

__all__ = ["API_SETTINGS", "WORKER_SETTINGS", "PostgresDriver"]

T = TypeVar("T")
log = logging.getLogger("hookd.store")

CHANNEL = "hookd_work"
# Payload: "organization_id/event_id" pairs separated by spaces, within NOTIFY's 8000 bytes.
EVENTS_CHANNEL = "hookd_events"
_PAYLOAD_MAX = 7900
# Every notification of a batch in one statement: the channels and payloads as arrays.
_NOTIFY = "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS u(c, p)"

# The delivery workers' connections (Driver.work):
# * synchronous_commit off: see Driver.work;
# * one generic plan per statement: planning the claim afresh each time (what PostgreSQL
#   chose for it) cost about 1.3 ms per claim, more than running it;
# * no sequential or bitmap scans: every worker statement reaches the few rows it names
#   through an index. A generic plan is made once per connection, from the statistics of
#   that moment: made while the queue was new (or where autovacuum is off and nothing
#   analyzes it), they said the tables were tiny, and the claim scanned all of deliveries
#   and events on every claim for as long as the connection lived (7.4 ms for 8,764
#   deliveries, growing with the table). A plain index scan also marks the entries of dead
#   row versions (each settled lease leaves one in ix_deliveries_leased) so that later
#   scans skip them, which a bitmap scan never does (one walked 13,651 such entries to find
#   80 leases). Conditions that an index must not answer are written so that none can (the
#   settle's coalesce(status)). See bench/README.md, "PostgreSQL as users run it".
# * no JIT compilation, on any hookd connection: hookd's statements each touch a few rows,
#   and compiling one costs far more than running it. A claim on a backlog of 1,000,000
#   deliveries was estimated above jit_above_cost, and each execution spent 145 ms
#   compiling 205 functions to run for 5 ms (the backlog benchmark fell to 0.19x).
API_SETTINGS = {"jit": "off"}
WORKER_SETTINGS = {
    **API_SETTINGS,
    "synchronous_commit": "off",
    "plan_cache_mode": "force_generic_plan",
    "enable_seqscan": "off",
    "enable_bitmapscan": "off",
}

# Errors that mean "the database is not there right now", as opposed to a bug in hookd.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.ReadOnlySQLTransactionError,
    # A pooled connection whose server end was terminated can fail in odd protocol states.
    asyncpg.InternalClientError,
)


def _args(query: Query, params: Any) -> list[Any]:
    return [params[name] for name in query.param_order]


def _notifications(work: bool, published: Published) -> tuple[list[str], list[str]]:
    """The channels and payloads that announce work and ``published`` events."""
    channels, payloads = ([CHANNEL], [""]) if work else ([], [])
    chunk: list[str] = []
    size = 0
    for organization_id, event_id in published:
        pair = f"{organization_id}/{event_id}"
        if chunk and size + len(pair) + 1 > _PAYLOAD_MAX:
            channels.append(EVENTS_CHANNEL)
            payloads.append(" ".join(chunk))
            chunk, size = [], 0
        chunk.append(pair)
        size += len(pair) + 1
    if chunk:
        channels.append(EVENTS_CHANNEL)
        payloads.append(" ".join(chunk))
    return channels, payloads


def _published_in(payload: str) -> list[tuple[str, str]]:
    found = []
    for pair in payload.split(" "):
        organization_id, slash, event_id = pair.partition("/")
        if slash:
            found.append((organization_id, event_id))
    return found


class _Session:
    def __init__(self, conn: asyncpg.Connection, queries: dict[str, Query]) -> None:
        self.conn = conn
        self.queries = queries
        self.executed = 0
        self.notify = False
        self.announced: list[tuple[str, str]] = []

    async def execute(self, st: Statement) -> Any:
        result = await self._execute(st)
        self.executed += 1
        return result

    async def _execute(self, st: Statement) -> Any:
        if st.mode == "notify":
            # Sent after the commit, coalesced (see PostgresDriver._announce): a NOTIFY inside
            # the transaction would serialise every publishing commit on the notify queue.
            self.notify = True
            return None
        if st.mode == "announce":
            # Sent after the commit too, with the work notification (see _announce).
            self.announced.append((st.params["organization_id"], st.params["event_id"]))
            return None
        query = self.queries[st.name]
        sql = query.positional_sql
        if st.mode == "many":
            if not st.batch:
                return None
            if query.columnar:
                # One statement for the whole batch: each parameter as an array of its rows.
                columns = [[row[name] for row in st.batch] for name in query.param_order]
                await self.conn.execute(sql, *columns)
            else:
                await self.conn.executemany(sql, [_args(query, p) for p in st.batch])
            return None
        args = _args(query, st.params)
        if st.mode == "rows":
            return await self.conn.fetch(sql, *args)
        if st.mode == "one":
            return await self.conn.fetchrow(sql, *args)
        if st.mode == "value":
            return await self.conn.fetchval(sql, *args)
        status = await self.conn.execute(sql, *args)
        return int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0

    async def run_first(self, op: Op[T], first: Statement) -> T:
        """Run ``first`` (the statement ``op`` yielded first), then the rest of ``op``."""
        return await drive(
            op, self.execute, (asyncpg.IntegrityConstraintViolationError,), first=first
        )


class PostgresDriver:
    """Runs store operations on PostgreSQL through pools of connections (hookd.store.pgpool)."""

    dialect = "postgresql"
    writes_commit_together = False  # each write is a transaction on a pooled connection

    def __init__(self, dsn: str, *, pool_size: int = 10) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self._queries = load_queries("postgresql")
        self._pool: ConnectionPool | None = None
        self._work = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._announcing: asyncio.Task[None] | None = None
        self._notify_work = False
        self._notify_published: list[tuple[str, str]] = []
        self._sinks: list[EventSink] = []
        self._listening = asyncio.Event()
        # The delivery worker's own connections: its operations never queue behind API
        # requests for a pooled connection, and its session settings suit its statements.
        self._worker_pool: ConnectionPool | None = None

    async def start(self) -> None:
        try:
            pool = ConnectionPool(self.dsn, max_size=self.pool_size, server_settings=API_SETTINGS)
            await pool.start()
            self._pool = pool
        except _UNAVAILABLE as exc:
            raise DatabaseUnavailable(str(exc)) from exc

    async def close(self) -> None:
        if self._announcing is not None:
            with contextlib.suppress(Exception):
                await self._announcing
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listen_task
            self._listen_task = None
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None
        if self._worker_pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._worker_pool.close(), 10)
            self._worker_pool = None
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 10)
            self._pool = None

    async def _run(
        self,
        op: Op[T],
        *,
        transaction: bool,
        readonly: bool = False,
        pool: ConnectionPool | None = None,
    ) -> T:
        pool = pool or self._pool
        assert pool is not None, "driver not started"
        try:
            first = next(op)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        # A connection that died while idle in the pool (a database restart, a failover)
        # fails on first use. Nothing has run yet then, so one retry on a fresh connection
        # is safe for reads and writes alike.
        for retry in (True, False):
            session: _Session | None = None
            try:
                async with pool.acquire(timeout=10) as conn:
                    session = _Session(conn, self._queries)
                    if transaction:
                        # A read-only transaction is a snapshot read: REPEATABLE READ, so that
                        # every statement sees the state the first one saw (READ COMMITTED
                        # would give each statement a newer one).
                        isolation = "repeatable_read" if readonly else None
                        async with conn.transaction(isolation=isolation, readonly=readonly):
                            result = await session.run_first(op, first)
                    else:
                        result = await session.run_first(op, first)
                    if session.notify or session.announced:
                        self._announce(session.notify, session.announced)
                    return result
            except _UNAVAILABLE as exc:
                # Outside a transaction a write may have committed before the connection
                # broke; only a transaction (rolled back with it) or a read can be re-run.
                may_have_written = not transaction and not readonly
                if may_have_written or (session is not None and session.executed) or not retry:
                    raise DatabaseUnavailable(str(exc)) from exc
        raise AssertionError("unreachable")

    async def read(self, op: Op[T], *, snapshot: bool = False) -> T:
        """Run a read-only operation; with ``snapshot``, in one read-only transaction so that
        all its statements see one state."""
        return await self._run(op, transaction=snapshot, readonly=True)

    async def read_apart(self, op: Op[T]) -> T:
        """A read-only operation that walks much of a table (see the SQLite driver's): on
        PostgreSQL the server does the walking, so it is a snapshot read like any other."""
        return await self.read(op, snapshot=True)

    async def write(self, op: Op[T], *, atomic_statements: bool = False) -> T:
        """Run an operation in one transaction; returns after it is committed.

        With ``atomic_statements`` (for operations each of whose writes is one statement,
        atomic by itself), no transaction is opened around them: two round trips fewer.
        """
        return await self._run(op, transaction=not atomic_statements)

    async def work(self, op: Op[T]) -> T:
        """Run a delivery worker's operation, each statement of which is atomic by itself
        (no transaction around them: fewer round trips), on the worker's connections.

        Those connections do not wait for the disk at commit: if the server lost a worker's
        last statements in a crash, the deliveries they settled or leased are sent again
        (delivery is at least once), and no client was told anything about them. They also
        keep one generic plan per statement, made of index look-ups (:data:`WORKER_SETTINGS`).
        """
        if self._worker_pool is None:
            try:
                pool = ConnectionPool(self.dsn, max_size=2, server_settings=WORKER_SETTINGS)
                await pool.start()
                self._worker_pool = pool
            except _UNAVAILABLE as exc:
                raise DatabaseUnavailable(str(exc)) from exc
        return await self._run(op, transaction=False, pool=self._worker_pool)

    def notify_work(self) -> None:
        self._work.set()

    def _announce(self, work: bool, published: Sequence[tuple[str, str]]) -> None:
        """Tell every worker that work is waiting (this process's at once, others by NOTIFY)
        and every API process's event streams, this one's included, which events were
        published (by NOTIFY: a listener hears its own).

        NOTIFYs are coalesced: at most one statement is in flight, and what is asked for
        meanwhile goes in one more after it, so a burst of publishes costs two statements.
        """
        if work:
            self._work.set()
            self._notify_work = True
        self._notify_published.extend(published)
        if self._announcing is None:
            self._announcing = asyncio.get_running_loop().create_task(self._send_notifies())

    async def _send_notifies(self) -> None:
        assert self._pool is not None
        try:
            while self._notify_work or self._notify_published:
                work, self._notify_work = self._notify_work, False
                published, self._notify_published = self._notify_published, []
                try:
                    async with self._pool.acquire(timeout=10) as conn:
                        await conn.execute(_NOTIFY, *_notifications(work, published))
                except _UNAVAILABLE as exc:
                    # Other workers still find the work by their poll; streams miss these
                    # events (a listener resumes them with Last-Event-ID).
                    log.warning("NOTIFY failed (%s)", type(exc).__name__)
        finally:
            self._announcing = None

    async def listen_events(self, sink: EventSink) -> None:
        """Tell ``sink`` of every event published through any process on this database;
        returns once this process is listening (``DatabaseUnavailable`` if it cannot)."""
        if sink not in self._sinks:
            self._sinks.append(sink)
        self._start_listening()
        try:
            await asyncio.wait_for(self._listening.wait(), 10)
        except TimeoutError:
            raise DatabaseUnavailable("could not LISTEN for published events") from None

    def _start_listening(self) -> None:
        if self._listen_task is None:
            self._listen_task = asyncio.create_task(self._listen_forever())

    async def wait_for_work(self, timeout: float) -> bool:
        """Wait for a NOTIFY (or a local signal) or ``timeout`` seconds; True if signalled."""
        self._start_listening()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), timeout)
        signalled = self._work.is_set()
        self._work.clear()
        return signalled

    async def _listen_forever(self) -> None:
        # A dedicated connection: LISTEN must outlive any one pooled transaction.
        while True:
            try:
                conn = await asyncpg.connect(self.dsn)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                await conn.add_listener(EVENTS_CHANNEL, self._on_published)
                self._listener = conn
                # Anything published while we were not listening is found by this wake-up,
                # and by the streams, which read it back.
                self._work.set()
                self._listening.set()
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN connection failed (%s); retrying", type(exc).__name__)
            finally:
                if self._listening.is_set():
                    self._listening.clear()
                    for sink in self._sinks:
                        sink.events_missed()
                if self._listener is not None:
                    with contextlib.suppress(Exception):
                        await self._listener.close()
                    self._listener = None
            await asyncio.sleep(1.0)

    def _on_notify(self, *_args: Any) -> None:
        self._work.set()

    def _on_published(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        published = _published_in(payload)
        for sink in self._sinks:
            try:
                sink.events_published(published)
            except Exception:
                log.exception("an event sink failed")
