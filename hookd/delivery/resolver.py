"""DNS for deliveries: asynchronous, concurrent, cached, and bounded by each attempt.

SPEC §5 Isolation: one tenant's slow DNS must delay only its own deliveries. The system
resolver (``getaddrinfo``) blocks a thread per lookup, and under uvloop those threads are
libuv's few shared ones, so a handful of names whose name server never answers held every
lookup slot, and an abandoned lookup kept its thread after the attempt gave up.

:class:`Resolver` asks through c-ares (``aiodns``): every lookup is a non-blocking query on
one channel, any number of them at once, with no thread per lookup; ``/etc/hosts``,
``/etc/resolv.conf`` (servers, search domains, ``ndots``) and RFC 6724 address order are
honoured as the C library does. ``HOOKD_DNS_SERVERS`` replaces the name servers (the hosts
file still comes first). On top of it:

* **One query per name at a time.** Attempts to a name being looked up wait for that
  query instead of starting their own.
* **Bounded by the attempt.** An attempt's whole budget (``timeoutMs``) covers its lookup:
  the sender runs the attempt under one deadline and tells the resolver about it through
  :data:`attempt_budget`, so when time runs out while resolving, the attempt fails with
  "DNS lookup of X timed out after N ms". The query itself keeps asking (c-ares gives up on
  a silent server after a second or two; it is asked again) until the latest deadline of
  the attempts waiting for it, never longer than :data:`QUERY_LIMIT`.
* **Cached.** Answers for their TTL, at most :data:`MAX_TTL` (5 min); failures (no such
  host, a lookup that timed out, a server failure) for :data:`NEGATIVE_TTL` (30 s), so a
  black-holed name costs one query per 30 s, not one per attempt. c-ares keeps a query
  cache of its own (up to an hour), so the channel is replaced every :data:`MAX_TTL`
  seconds and every answer is forgotten by the time its channel is: no answer is used more
  than 5 min after it came from a name server.

Answers with TTL 0 (the hosts file's among them) are not cached: c-ares re-reads the file
only when it changes, so such a lookup costs microseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

import aiodns
import pycares

__all__ = [
    "MAX_TTL",
    "NEGATIVE_TTL",
    "QUERY_LIMIT",
    "AttemptBudget",
    "LookupFailed",
    "Resolver",
    "attempt_budget",
]

T = TypeVar("T")

MAX_TTL = 300.0
NEGATIVE_TTL = 30.0
# The longest timeoutMs (SPEC §3): no attempt waits longer for a lookup.
QUERY_LIMIT = 30.0
_CACHE_ENTRIES = 10_000
# c-ares's own per-try timeout (it adapts it to how fast each server usually answers) and
# tries per query; the query is repeated while an attempt still waits (see _query).
_TRY_TIMEOUT = 2.0
_TRIES = 3


class LookupFailed(socket.gaierror):
    """A name did not resolve; ``strerror`` says why, as ``lastStatus.message`` shows it.
    ``retry_in``: seconds until the cached failure expires (an attempt before then fails the
    same way without asking), when it is cached."""

    def __init__(self, errno: int, message: str, retry_in: float | None = None) -> None:
        super().__init__(errno, message)
        self.retry_in = retry_in

    def __str__(self) -> str:
        return str(self.strerror)


@dataclass(slots=True)
class AttemptBudget:
    """The deadline of the attempt making a lookup (event-loop time), and the name it is
    resolving at the moment, so that an attempt cut short says it was DNS that took long."""

    deadline: float
    resolving: str | None = None


attempt_budget: ContextVar[AttemptBudget | None] = ContextVar("attempt_budget", default=None)
"""Set by the sender around each attempt (see the module docstring)."""


@dataclass(slots=True)
class _Flight:
    """One query under way and the attempts waiting for it."""

    deadline: float
    task: asyncio.Task[list[str]] | None = None


@dataclass(slots=True)
class _Channel:
    resolver: aiodns.DNSResolver
    born: float
    flights: set[str] = field(default_factory=set)


def _retrieved(task: asyncio.Task[list[str]]) -> None:
    if not task.cancelled():
        task.exception()


def _no_such_host(host: str) -> str:
    return f"no such host {host}"


# c-ares statuses that mean the name has no address, as opposed to a lookup that failed.
_NOT_FOUND = frozenset({pycares.errno.ARES_ENOTFOUND, pycares.errno.ARES_ENODATA})


class Resolver:
    """hookd's DNS (see the module docstring): a :class:`~hookd.delivery.guard.DnsBackend`.

    ``servers`` are ``address:port`` strings (``HOOKD_DNS_SERVERS``, already checked);
    empty means the system's. ``clock`` gives seconds for the caches (monotonic).
    """

    def __init__(
        self,
        servers: Sequence[str] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servers = tuple(servers)
        self.clock = clock
        self._answers: dict[str, tuple[float, list[str]]] = {}
        self._failures: dict[str, tuple[float, int, str]] = {}
        self._flights: dict[str, _Flight] = {}
        self._channel: _Channel | None = None
        self._retired: list[_Channel] = []

    async def lookup(self, host: str, port: int) -> list[str]:
        """The addresses ``host`` resolves to; raises :class:`LookupFailed` saying why not."""
        name = host.lower().rstrip(".")
        now = self.clock()
        cached = self._answers.get(name)
        if cached is not None:
            if cached[0] > now:
                return cached[1]
            del self._answers[name]
        failed = self._failures.get(name)
        if failed is not None:
            if failed[0] > now:
                raise LookupFailed(failed[1], failed[2], failed[0] - now)
            del self._failures[name]
        budget = attempt_budget.get()
        loop = asyncio.get_running_loop()
        deadline = budget.deadline if budget is not None else loop.time() + QUERY_LIMIT
        deadline = min(deadline, loop.time() + QUERY_LIMIT)
        flight = self._flights.get(name)
        if flight is None:
            flight = self._flights[name] = _Flight(deadline)
            flight.task = loop.create_task(self._fly(name, flight), name=f"hookd-dns-{name}")
            # Every waiter may have given up before it ends: nobody else reads its failure.
            flight.task.add_done_callback(_retrieved)
        else:
            flight.deadline = max(flight.deadline, deadline)
        assert flight.task is not None
        if budget is not None:
            budget.resolving = host
        try:
            # Shielded: an attempt that gives up leaves the query to the others waiting.
            addresses = list(await asyncio.shield(flight.task))
        except LookupFailed:
            if budget is not None:
                budget.resolving = None
            raise
        # Left set when the attempt is cancelled here: that is how it knows DNS took its time.
        if budget is not None:
            budget.resolving = None
        return addresses

    async def _fly(self, name: str, flight: _Flight) -> list[str]:
        channel = await self._current_channel()
        channel.flights.add(name)
        started = asyncio.get_running_loop().time()
        try:
            addresses, ttl = await self._query(channel.resolver, name, flight, started)
        except LookupFailed as exc:
            entry = (self.clock() + NEGATIVE_TTL, exc.errno or socket.EAI_FAIL, str(exc))
            self._remember(self._failures, name, entry)
            exc.retry_in = NEGATIVE_TTL
            raise
        finally:
            channel.flights.discard(name)
            self._flights.pop(name, None)
        expires = min(self.clock() + min(ttl, MAX_TTL), channel.born + MAX_TTL)
        if ttl > 0 and expires > self.clock():
            self._remember(self._answers, name, (expires, addresses))
        return addresses

    async def _query(
        self, resolver: aiodns.DNSResolver, name: str, flight: _Flight, started: float
    ) -> tuple[list[str], float]:
        loop = asyncio.get_running_loop()
        while True:
            try:
                result = await asyncio.wait_for(
                    resolver.getaddrinfo(name, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM),
                    max(0.001, flight.deadline - loop.time()),
                )
            except TimeoutError:
                if loop.time() < flight.deadline:
                    continue  # an attempt with more time joined meanwhile
                break
            except aiodns.error.DNSError as exc:
                status = exc.args[0] if exc.args else None
                if status == pycares.errno.ARES_ETIMEOUT and loop.time() < flight.deadline:
                    continue  # c-ares gave up on a silent server; an attempt still waits
                if status == pycares.errno.ARES_ETIMEOUT:
                    break
                if status in _NOT_FOUND:
                    raise LookupFailed(socket.EAI_NONAME, _no_such_host(name)) from None
                reason = exc.args[1] if len(exc.args) > 1 else type(exc).__name__
                raise LookupFailed(
                    socket.EAI_FAIL, f"DNS lookup of {name} failed: {reason}"
                ) from None
            addresses: list[str] = []
            ttl = MAX_TTL
            for node in result.nodes:
                address = node.addr[0].decode("ascii")
                if node.family == socket.AF_INET6 and len(node.addr) > 3 and node.addr[3]:
                    # A link-local answer is useless without its interface.
                    address = f"{address}%{node.addr[3]}"
                if address not in addresses:
                    addresses.append(address)
                ttl = min(ttl, float(node.ttl))
            if not addresses:
                raise LookupFailed(socket.EAI_NONAME, _no_such_host(name))
            return addresses, ttl
        waited = round((loop.time() - started) * 1000)
        raise LookupFailed(socket.EAI_AGAIN, f"DNS lookup of {name} timed out after {waited} ms")

    async def _current_channel(self) -> _Channel:
        now = self.clock()
        channel = self._channel
        if channel is not None and now - channel.born < MAX_TTL:
            return channel
        if channel is not None:
            # c-ares's query cache lives in the channel: a new one forgets every answer.
            self._retired.append(channel)
        for idle in [c for c in self._retired if not c.flights]:
            self._retired.remove(idle)
            await idle.resolver.close()
        resolver = aiodns.DNSResolver(
            nameservers=list(self.servers) or None,
            loop=asyncio.get_running_loop(),
            timeout=_TRY_TIMEOUT,
            tries=_TRIES,
        )
        self._channel = _Channel(resolver, now)
        return self._channel

    @staticmethod
    def _remember(cache: dict[str, T], name: str, entry: T) -> None:
        if len(cache) >= _CACHE_ENTRIES:
            # The oldest entry goes first (dicts keep insertion order).
            del cache[next(iter(cache))]
        cache[name] = entry

    async def close(self) -> None:
        """Stop every query and release the channels."""
        for flight in list(self._flights.values()):
            if flight.task is not None:
                flight.task.cancel()
        for flight in list(self._flights.values()):
            if flight.task is not None:
                with contextlib.suppress(BaseException):
                    await flight.task
        channels = [*self._retired, *([self._channel] if self._channel else [])]
        self._retired, self._channel = [], None
        for channel in channels:
            await channel.resolver.close()
