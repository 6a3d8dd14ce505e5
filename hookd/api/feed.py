"""The live feed of published events behind ``GET /v2/events/stream``, one per API process.

The store tells the feed which events were committed (``(organization, event id)`` pairs:
in-process on SQLite, by LISTEN/NOTIFY from every API process on PostgreSQL). The feed reads
those of organizations that have a listener here from the database, a batch at a time, and
offers each to the matching listeners' queues. Nothing ever waits for a listener: a queue
that would pass its bounds (events or bytes) drops its listener with a reason instead, and
the listener resumes from its last event with ``Last-Event-ID``, read back from the database.
So a slow listener costs bounded memory and never holds up another.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Sequence

from hookd.errors import ApiError
from hookd.store import Event, Store
from hookd.store.queries import Published

__all__ = ["DROP_REASONS", "Feed", "Listener"]

log = logging.getLogger("hookd.api")

# Why a listener was dropped: the error code a stream ends with, and its message.
DROP_REASONS = {
    "listener_too_slow": "This listener fell too far behind (its receiver is slower than the "
    "events); hookd dropped it. Reconnect with Last-Event-ID to resume where it stopped.",
    "events_missed": "hookd lost its database notifications for a moment. Reconnect with "
    "Last-Event-ID to resume where it stopped.",
    "server_closing": "This hookd server is shutting down. Reconnect with Last-Event-ID to "
    "resume where it stopped.",
    "database_unavailable": "hookd's database is unavailable. Reconnect with Last-Event-ID "
    "shortly to resume where it stopped.",
}

_FETCH_BATCH = 500
# Announced events waiting to be read: past this the feed is behind the database itself,
# and every listener resumes from the database instead.
_MAX_PENDING = 20_000


class Listener:
    """One stream's subscription: its organization, topics (``None``: all) and queue."""

    def __init__(
        self,
        organization_id: str,
        topics: frozenset[str] | None,
        max_events: int,
        max_bytes: int,
    ) -> None:
        self.organization_id = organization_id
        self.topics = topics
        self.dropped: str | None = None
        self._queue: collections.deque[Event] = collections.deque()
        self._bytes = 0
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._ready = asyncio.Event()

    def wants(self, event: Event) -> bool:
        return self.topics is None or event.topic in self.topics

    def offer(self, event: Event) -> None:
        """Queue ``event``, or drop the listener if the queue would pass its bounds."""
        if self.dropped is not None:
            return
        size = len(event.data)
        if len(self._queue) >= self._max_events or self._bytes + size > self._max_bytes:
            self.drop("listener_too_slow")
            return
        self._queue.append(event)
        self._bytes += size
        self._ready.set()

    def drop(self, reason: str) -> None:
        if self.dropped is None:
            self.dropped = reason
            self._queue.clear()
            self._bytes = 0
        self._ready.set()

    async def next(self, timeout: float) -> Event | None:
        """The next queued event, or ``None`` after ``timeout`` seconds without one or once
        the listener is dropped (see :attr:`dropped`)."""
        if not self._queue and self.dropped is None:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        if self.dropped is not None or not self._queue:
            return None
        event = self._queue.popleft()
        self._bytes -= len(event.data)
        return event


class Feed:
    """The listeners of this process and the events they get (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        heartbeat: float = 15.0,
        max_events: int = 1000,
        max_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.store = store
        self.heartbeat = heartbeat
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._listeners: dict[str, set[Listener]] = {}
        self._pending: list[tuple[str, str]] = []
        self._wake = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def listeners(self) -> int:
        return sum(len(group) for group in self._listeners.values())

    async def subscribe(self, organization_id: str, topics: frozenset[str] | None) -> Listener:
        """A new listener, hearing every event published from the moment this returns.

        Raises:
            DatabaseUnavailable: the store cannot listen for published events.
            ApiError: ``503``, the server is shutting down.
        """
        if self._closing:
            raise ApiError(
                503,
                "server_closing",
                "This hookd server is shutting down; open the stream again in a moment.",
            )
        await self.store.listen_events(self)
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read_forever())
        listener = Listener(organization_id, topics, self.max_events, self.max_bytes)
        self._listeners.setdefault(organization_id, set()).add(listener)
        return listener

    def unsubscribe(self, listener: Listener) -> None:
        group = self._listeners.get(listener.organization_id)
        if group is not None:
            group.discard(listener)
            if not group:
                del self._listeners[listener.organization_id]

    def close(self) -> None:
        """End every stream (a server shutting down): each tells its client to resume."""
        self._closing = True
        self._drop_all("server_closing")

    async def stop(self) -> None:
        self.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None

    # EventSink: called by the store.

    def events_published(self, published: Published) -> None:
        wanted = [pair for pair in published if pair[0] in self._listeners]
        if not wanted:
            return
        if len(self._pending) + len(wanted) > _MAX_PENDING:
            log.warning("event feed behind the database; every listener resumes from it")
            self._pending.clear()
            self._drop_all("listener_too_slow")
            return
        self._pending.extend(wanted)
        self._wake.set()

    def events_missed(self) -> None:
        self._drop_all("events_missed")

    # Reading announced events and handing them out.

    def _drop_all(self, reason: str) -> None:
        for group in self._listeners.values():
            for listener in group:
                listener.drop(reason)

    async def _read_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[:_FETCH_BATCH], self._pending[_FETCH_BATCH:]
                try:
                    await self._hand_out(batch)
                except Exception:
                    # Never stop handing out: these listeners resume from the database.
                    log.exception("handing out published events failed")
                    self._drop_all("events_missed")

    async def _hand_out(self, batch: Sequence[tuple[str, str]]) -> None:
        try:
            found = await self.store.events_by_ids([event_id for _org, event_id in batch])
        except Exception as exc:
            # These listeners would miss the batch: they resume from the database instead.
            log.warning("could not read published events (%s)", exc)
            for organization_id in {org for org, _id in batch}:
                for listener in self._listeners.get(organization_id, ()):
                    listener.drop("events_missed")
            return
        for event in sorted(found, key=lambda e: e.id):
            if event.is_test:
                continue
            for listener in self._listeners.get(event.organization_id, ()):
                if listener.wants(event):
                    listener.offer(event)
