"""The SQLite driver: a real file in WAL mode, one writer thread, reads on the event loop.

Every write runs on one thread that owns the write connection. Writes that arrive while
another batch commits are grouped into the next transaction (group commit), each in its
own savepoint, so one failing operation never undoes another and a burst of publishes
costs one fsync. Reads are short indexed lookups on a second connection; WAL lets them
run beside the writer, and running them inline avoids a thread hop per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import orjson

from hookd.errors import DatabaseUnavailable
from hookd.store.queries import Op, Query, Statement, load_queries, value
from hookd.store.records import Conflict

__all__ = ["SqliteDriver"]

T = TypeVar("T")

_BATCH_MAX = 256
_UNAVAILABLE = (
    "unable to open",
    "disk i/o error",
    "database is locked",
    "database or disk is full",
    "readonly database",
    "file is not a database",
    "no such table",
)


def _is_unavailable(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and any(
        t in text for t in _UNAVAILABLE
    )


def _adapt(params: Mapping[str, Any]) -> dict[str, Any]:
    # Lists travel as JSON text and are read back with json_each in SQLite's SQL.
    return {
        k: orjson.dumps(v).decode() if isinstance(v, list | tuple) else v for k, v in params.items()
    }


class _Session:
    """Runs one operation's statements on one connection."""

    def __init__(self, conn: sqlite3.Connection, queries: dict[str, Query]) -> None:
        self.conn = conn
        self.queries = queries
        self.notify = False

    def execute(self, st: Statement) -> Any:
        if st.mode == "notify":
            self.notify = True
            return None
        sql = self.queries[st.name].sql
        if st.mode == "many":
            self.conn.executemany(sql, [_adapt(p) for p in st.batch])
            return None
        cursor = self.conn.execute(sql, _adapt(st.params))
        if st.mode == "rows":
            return cursor.fetchall()
        if st.mode == "one":
            return cursor.fetchone()
        if st.mode == "value":
            row = cursor.fetchone()
            return None if row is None else row[0]
        return cursor.rowcount

    def drive(self, op: Op[T]) -> T:
        try:
            statement = next(op)
            while True:
                try:
                    result = self.execute(statement)
                except sqlite3.IntegrityError as exc:
                    statement = op.throw(Conflict(str(exc)))
                    continue
                statement = op.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]


def _connect(path: str, *, writer: bool) -> sqlite3.Connection:
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=rw"
    conn = sqlite3.connect(
        uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5.0
    )
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA foreign_keys=ON")
    # FULL: a commit is on disk before hookd answers 202 (the batch shares the fsync).
    conn.execute("PRAGMA synchronous=FULL" if writer else "PRAGMA query_only=ON")
    return conn


_Job = tuple[Callable[[_Session], Any], "asyncio.Future[Any]"]


class SqliteDriver:
    """Runs store operations against one SQLite file."""

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._queries = load_queries("sqlite")
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._work = asyncio.Event()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            # mode=rw: never create an empty database here; migrations create the file.
            self._writer = _connect(self.path, writer=True)
            self._reader = _connect(self.path, writer=False)
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(str(exc)) from exc
        self._thread = threading.Thread(
            target=self._write_loop, name="hookd-sqlite-writer", daemon=True
        )
        self._thread.start()

    async def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        for conn in (self._reader, self._writer):
            if conn is not None:
                conn.close()
        self._reader = self._writer = None

    async def read(self, op: Op[T]) -> T:
        """Run a read-only operation in one snapshot."""
        assert self._reader is not None, "driver not started"
        session = _Session(self._reader, self._queries)
        try:
            self._reader.execute("BEGIN")
            try:
                return session.drive(op)
            finally:
                self._reader.execute("COMMIT")
        except sqlite3.Error as exc:
            if _is_unavailable(exc):
                raise DatabaseUnavailable(str(exc)) from exc
            raise

    async def write(self, op: Op[T]) -> T:
        """Run an operation in a write transaction; returns after it is committed."""
        assert self._loop is not None, "driver not started"
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((lambda session: session.drive(op), future))
        return await future

    def notify_work(self) -> None:
        self._work.set()

    async def wait_for_work(self, timeout: float) -> bool:
        """Wait until new work is signalled or ``timeout`` seconds pass; True if signalled."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), timeout)
        signalled = self._work.is_set()
        self._work.clear()
        return signalled

    async def ping(self) -> None:
        await self.read(_ping())

    # The writer thread.

    def _write_loop(self) -> None:
        assert self._writer is not None
        conn = self._writer
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch = [job]
            stop = False
            while len(batch) < _BATCH_MAX:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._run_batch(conn, batch)
            if stop:
                return

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        session = _Session(conn, self._queries)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, future in batch:
                conn.execute("SAVEPOINT job")
                notify_before = session.notify
                try:
                    value = fn(session)
                except BaseException as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    session.notify = notify_before
                    results.append((future, None, self._translate(exc)))
                else:
                    conn.execute("RELEASE job")
                    results.append((future, value, None))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            error = self._translate(exc)
            results = [(future, None, error) for _, future in batch]
            session.notify = False
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._resolve, results, session.notify)

    @staticmethod
    def _translate(exc: BaseException) -> BaseException:
        if isinstance(exc, sqlite3.Error) and _is_unavailable(exc):
            return DatabaseUnavailable(str(exc))
        return exc

    def _resolve(
        self, results: list[tuple[asyncio.Future[Any], Any, BaseException | None]], notify: bool
    ) -> None:
        for future, result, error in results:
            if future.done():
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
        if notify:
            self._work.set()


def _ping() -> Op[None]:
    yield value("org_any")
    return None
