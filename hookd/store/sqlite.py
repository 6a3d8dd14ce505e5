"""The SQLite driver: a real file in WAL mode, one writer connection, reads on the event loop.

Writes are grouped: every write that arrives while a transaction is being written waits for
the next one, and the next transaction runs them all (group commit), each in its own
savepoint so a failing operation never undoes another. Statements run on the event loop
thread: they take microseconds, and handing one to another thread costs more (the thread
must win the GIL back from the busy loop, up to the interpreter's switch interval, and a
statement run row by row takes it back once per row). Only statements SQLite runs in one
step (a purge's batch DELETE), the wait for another process's write lock and, with
``HOOKD_SQLITE_SYNCHRONOUS=full``, the COMMIT that waits for the disk run on a helper
thread while the loop serves requests. Reads are short indexed lookups on a second
connection; WAL lets them run beside the writer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sqlite3
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson

from hookd.errors import DatabaseUnavailable
from hookd.store.queries import (
    EventSink,
    Op,
    Published,
    Query,
    Statement,
    drive,
    load_queries,
)

__all__ = ["SqliteDriver"]

log = logging.getLogger("hookd.store")

T = TypeVar("T")

_BATCH_MAX = 256
_BUSY_TIMEOUT_MS = 5000
# Statements that SQLite runs in one step of its C code (a DELETE of a whole batch), which
# it does without holding Python's lock: these run on the helper thread. Never a statement
# run row by row (executemany, or a SELECT fetching rows): each row takes the lock back,
# and while the event loop is busy every take waits up to the interpreter's switch
# interval (5 ms): bench/helper_thread.py measured a 50-row batch at 94 ms on the helper
# thread against 0.36 ms on the loop.
_HEAVY_QUERIES = frozenset({"purge_attempts", "purge_deliveries", "purge_events"})
# Checkpoints (copying the WAL into the database file) run on the helper thread too, at
# most this often, instead of inside whichever COMMIT crosses SQLite's threshold.
_CHECKPOINT_EVERY = 0.2
_UNAVAILABLE = (
    "unable to open",
    "disk i/o error",
    "database is locked",
    "database or disk is full",
    "readonly database",
    "file is not a database",
    "disk image is malformed",
    "no such table",
)


def _is_unavailable(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and any(
        t in text for t in _UNAVAILABLE
    )


_LISTS = (list, tuple)


def _adapt(params: Mapping[str, Any]) -> Mapping[str, Any]:
    # Lists travel as JSON text and are read back with json_each in SQLite's SQL; most
    # statements have none, and their parameters go through as they are.
    for v in params.values():
        if isinstance(v, _LISTS):
            break
    else:
        return params
    return {k: orjson.dumps(v).decode() if isinstance(v, _LISTS) else v for k, v in params.items()}


def _column_names(cursor: sqlite3.Cursor) -> list[str]:
    # Read from each result rather than kept per query: a migration run by another process
    # may change what ``SELECT *`` returns while hookd runs.
    return [column[0] for column in cursor.description]


class _Session:
    """Runs one operation's statements on one connection."""

    def __init__(self, conn: sqlite3.Connection, queries: dict[str, Query]) -> None:
        self.conn = conn
        self.queries = queries
        self.notify = False
        self.announced: list[tuple[str, str]] = []

    def execute(self, st: Statement) -> Any:
        if st.mode == "notify":
            self.notify = True
            return None
        if st.mode == "announce":
            self.announced.append((st.params["organization_id"], st.params["event_id"]))
            return None
        sql = self.queries[st.name].sql
        if st.mode == "many":
            batch = st.batch
            if batch and any(isinstance(v, _LISTS) for v in batch[0].values()):
                batch = [_adapt(p) for p in batch]
            self.conn.executemany(sql, batch)
            return None
        cursor = self.conn.execute(sql, _adapt(st.params))
        if st.mode == "rows":
            found = cursor.fetchall()
            if not found:
                return found
            names = _column_names(cursor)
            return [dict(zip(names, row, strict=True)) for row in found]
        if st.mode == "one":
            row = cursor.fetchone()
            return None if row is None else dict(zip(_column_names(cursor), row, strict=True))
        if st.mode == "value":
            row = cursor.fetchone()
            return None if row is None else row[0]
        return cursor.rowcount

    async def drive(
        self, op: Op[T], offload: Callable[[Statement], Awaitable[Any]] | None = None
    ) -> T:
        """Run ``op`` on this connection; with ``offload``, the statements of ``_HEAVY_QUERIES``
        run through it (on the helper thread)."""

        async def execute(statement: Statement) -> Any:
            if offload is not None and _heavy(statement):
                return await offload(statement)
            return self.execute(statement)

        return await drive(op, execute, (sqlite3.IntegrityError,))


def _heavy(st: Statement) -> bool:
    """Whether a statement runs on the helper thread (see ``_HEAVY_QUERIES``)."""
    return st.name in _HEAVY_QUERIES


def _begin_waiting(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    try:
        conn.execute("BEGIN IMMEDIATE")
    finally:
        conn.execute("PRAGMA busy_timeout=0")


def _connect(path: str, *, writer: bool, synchronous: str = "normal") -> sqlite3.Connection:
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=rw"
    conn = sqlite3.connect(
        uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5.0
    )
    # Rows come back as tuples and _Session makes them dicts: a dict's lookups by column
    # name cost a fraction of sqlite3.Row's, which compares the name with every column's.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA temp_store=MEMORY")
    # NORMAL (the default): a commit is in the WAL file before hookd answers, so it survives
    # any crash of hookd itself; FULL also waits for the disk (survives power loss).
    conn.execute(f"PRAGMA synchronous={synchronous.upper()}" if writer else "PRAGMA query_only=ON")
    return conn


def _identity(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


_Job = tuple[Op[Any], "asyncio.Future[Any]"]


class SqliteDriver:
    """Runs store operations against one SQLite file."""

    dialect = "sqlite"
    writes_commit_together = True  # one writer: every write waiting goes into its next commit

    def __init__(self, path: str, *, synchronous: str = "normal") -> None:
        self.path = path
        self.synchronous = synchronous
        self._queries = load_queries("sqlite")
        self._pending: list[_Job] = []
        self._flusher: asyncio.Task[None] | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hookd-sqlite")
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._work = asyncio.Event()
        self._identity: tuple[int, int] | None = None
        self._checkpointer: sqlite3.Connection | None = None
        # Its own thread: a long checkpoint must not hold up the writes waiting for the helper.
        self._checkpoint_executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="hookd-checkpoint"
        )
        self._checkpointing: asyncio.Future[None] | None = None
        self._last_checkpoint = 0.0
        self._sinks: list[EventSink] = []

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            # mode=rw: never create an empty database here; migrations create the file.
            self._writer = _connect(self.path, writer=True, synchronous=self.synchronous)
            self._writer.execute("PRAGMA wal_autocheckpoint=0")
            # Waits for the write lock happen off the event loop (see _begin).
            self._writer.execute("PRAGMA busy_timeout=0")
            self._reader = _connect(self.path, writer=False)
            self._checkpointer = _connect(self.path, writer=False)
            self._checkpointer.execute("PRAGMA query_only=OFF")
            self._identity = _identity(self.path)
        except (sqlite3.Error, OSError) as exc:
            raise DatabaseUnavailable(str(exc)) from exc

    async def close(self) -> None:
        while self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._checkpointing is not None:
            with contextlib.suppress(Exception):
                await self._checkpointing
        self._executor.shutdown(wait=True)
        self._checkpoint_executor.shutdown(wait=True)
        if self._checkpointer is not None:
            with contextlib.suppress(sqlite3.Error):
                self._checkpointer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        for conn in (self._reader, self._writer, self._checkpointer):
            if conn is not None:
                conn.close()
        self._reader = self._writer = self._checkpointer = None

    async def read(self, op: Op[T], *, snapshot: bool = False) -> T:
        """Run a read-only operation; with ``snapshot``, all its statements see one state."""
        assert self._reader is not None, "driver not started"
        session = _Session(self._reader, self._queries)
        try:
            if not snapshot:
                return await session.drive(op)
            self._reader.execute("BEGIN")
            try:
                return await session.drive(op)
            finally:
                self._reader.execute("COMMIT")
        except sqlite3.Error as exc:
            if _is_unavailable(exc):
                raise DatabaseUnavailable(str(exc)) from exc
            raise

    async def read_apart(self, op: Op[T]) -> T:
        """Run a read-only operation that walks much of a table (the metrics' counts of the
        whole queue) on a thread of its own, with a connection of its own, in one snapshot:
        a statement that aggregates in SQLite's C code runs there without Python's lock,
        and the event loop serves requests meanwhile."""
        queries = self._queries

        def run() -> T:
            conn = _connect(self.path, writer=False)
            try:
                session = _Session(conn, queries)
                conn.execute("BEGIN")
                try:
                    statement = next(op)
                    while True:
                        statement = op.send(session.execute(statement))
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                finally:
                    conn.execute("COMMIT")
            finally:
                conn.close()

        try:
            return await asyncio.to_thread(run)
        except sqlite3.Error as exc:
            if _is_unavailable(exc):
                raise DatabaseUnavailable(str(exc)) from exc
            raise

    async def write(self, op: Op[T], *, atomic_statements: bool = False) -> T:
        """Run an operation in a write transaction; returns after it is committed."""
        assert self._loop is not None, "driver not started"
        future: asyncio.Future[T] = self._loop.create_future()
        self._pending.append((op, future))
        if self._flusher is None:
            self._flusher = self._loop.create_task(self._flush())
        return await future

    async def work(self, op: Op[T]) -> T:
        """A delivery worker's operation: on SQLite, one more write in the group commit."""
        return await self.write(op)

    def notify_work(self) -> None:
        self._work.set()

    async def listen_events(self, sink: EventSink) -> None:
        """Tell ``sink`` of every event this process publishes, once committed (one process
        owns a SQLite database's API, so nothing is published elsewhere)."""
        if sink not in self._sinks:
            self._sinks.append(sink)

    def _published(self, published: Published) -> None:
        for sink in self._sinks:
            try:
                sink.events_published(published)
            except Exception:
                log.exception("an event sink failed")

    async def wait_for_work(self, timeout: float) -> bool:
        """Wait until new work is signalled or ``timeout`` seconds pass; True if signalled."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), timeout)
        signalled = self._work.is_set()
        self._work.clear()
        return signalled

    def _check_file(self) -> None:
        # Open connections keep using a file that was deleted or replaced; everything written
        # after that would vanish at the next start. Refuse instead.
        try:
            same = _identity(self.path) == self._identity
        except OSError:
            same = False
        if not same:
            raise DatabaseUnavailable(
                f"{self.path} was deleted or replaced while hookd was running"
            )

    # Group commit.

    async def _flush(self) -> None:
        assert self._loop is not None and self._writer is not None
        conn = self._writer
        try:
            while self._pending:
                batch, self._pending = self._pending[:_BATCH_MAX], self._pending[_BATCH_MAX:]
                results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
                notify = False
                published: list[tuple[str, str]] = []
                try:
                    self._check_file()
                    await self._begin(conn)
                    session = _Session(conn, self._queries)

                    def offload(
                        statement: Statement, session: _Session = session
                    ) -> Awaitable[Any]:
                        assert self._loop is not None
                        return self._loop.run_in_executor(
                            self._executor, session.execute, statement
                        )

                    for op, future in batch:
                        conn.execute("SAVEPOINT job")
                        announced = len(session.announced)
                        try:
                            value = await session.drive(op, offload)
                        except Exception as exc:
                            conn.execute("ROLLBACK TO job")
                            conn.execute("RELEASE job")
                            session.notify = notify
                            del session.announced[announced:]
                            results.append((future, None, self._translate(exc)))
                        else:
                            conn.execute("RELEASE job")
                            notify = session.notify
                            results.append((future, value, None))
                    if self.synchronous == "full":
                        # The fsync: let the loop serve requests meanwhile.
                        await self._loop.run_in_executor(self._executor, conn.execute, "COMMIT")
                    else:
                        conn.execute("COMMIT")
                    published = session.announced
                    self._maybe_checkpoint()
                except (sqlite3.Error, DatabaseUnavailable) as exc:
                    with contextlib.suppress(sqlite3.Error):
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                    failure = self._translate(exc)
                    results = [(future, None, failure) for _, future in batch]
                    notify = False
                    published = []
                for future, result, error in results:
                    if future.done():
                        continue
                    if error is None:
                        future.set_result(result)
                    else:
                        future.set_exception(error)
                if notify:
                    self._work.set()
                if published:
                    self._published(published)
        finally:
            self._flusher = None

    async def _begin(self, conn: sqlite3.Connection) -> None:
        # Another process (hookd keys create, a second hookd) may hold the write lock for a
        # moment: wait for it on the helper thread, never on the event loop.
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc).lower() and "busy" not in str(exc).lower():
                raise
            assert self._loop is not None
            await self._loop.run_in_executor(self._executor, _begin_waiting, conn)

    def _maybe_checkpoint(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        if self._checkpointing is not None or now - self._last_checkpoint < _CHECKPOINT_EVERY:
            return
        self._last_checkpoint = now
        self._checkpointing = self._loop.run_in_executor(
            self._checkpoint_executor, self._checkpoint
        )
        self._checkpointing.add_done_callback(self._checkpoint_done)

    def _checkpoint(self) -> None:
        # PASSIVE: copies what it can without blocking the writer or the readers.
        assert self._checkpointer is not None
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _checkpoint_done(self, future: asyncio.Future[None]) -> None:
        self._checkpointing = None
        if not future.cancelled() and future.exception() is not None:
            log.warning("WAL checkpoint failed: %s", future.exception())

    @staticmethod
    def _translate(exc: BaseException) -> BaseException:
        if isinstance(exc, sqlite3.Error) and _is_unavailable(exc):
            return DatabaseUnavailable(str(exc))
        return exc

