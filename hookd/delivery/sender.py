"""Sending one attempt: the signed POST over a shared aiohttp session (SPEC §5).

One session with keep-alive serves every attempt. Redirects are not followed, at most
4 KiB of a response body is read, and every connection goes through the address guard.

An attempt runs under one deadline, ``timeoutMs`` after it starts, that covers DNS,
connect, TLS, the request and the whole response: ``asyncio.timeout_at`` rather than
aiohttp's ``ClientTimeout(total)``, which rounds timeouts above 5 s up to the next second
(``timeoutMs: 5500`` fired at 6 s). The deadline reaches the resolver through
:data:`~hookd.delivery.resolver.attempt_budget`, so that a lookup never outlives its attempt
and an attempt that ran out of time while resolving says so.

TLS connections are closed without waiting for the receiver's TLS shutdown (its
``close_notify``): the event loop's graceful close waits up to 30 s for it, and a receiver
that never sends it kept a socket open that long after every attempt, so one tenant could
run hookd out of file descriptors. A TLS connection that is closed is aborted instead,
as aiohttp itself does when its connector closes.
"""

from __future__ import annotations

import asyncio
import functools
import http
import math
import re
import ssl
import time
from typing import cast

import aiohttp
import yarl
from aiohttp.client_proto import ResponseHandler

from hookd.clock import Clock, system_clock
from hookd.delivery.envelope import USER_AGENT, build_body, request_headers
from hookd.delivery.guard import AddressGuard, make_connector, refusal_from
from hookd.delivery.resolver import AttemptBudget, LookupFailed, attempt_budget
from hookd.store.records import ClaimedDelivery, live_secrets, record

__all__ = ["MAX_RESPONSE_BODY", "USER_AGENT", "AttemptResult", "Sender"]

MAX_RESPONSE_BODY = 4096


@record
class AttemptResult:
    """What one HTTP attempt came to."""

    attempted_at: int
    succeeded: bool
    status_code: int | None  # None when no response arrived
    message: str  # lastStatus.message: "Success", a reason phrase, or what went wrong
    response_time_ms: int
    response_body: bytes | None
    error: str | None  # set when there was no response
    # The Retry-After header of a 429 or 503 answer, as sent (seconds or an HTTP date); for
    # a failed DNS lookup, the seconds until the resolver forgets the failure.
    retry_after: str | None = None
    # Why no response arrived: "timeout", "dns", "connect", "tls" or "refused" (the guard).
    failure: str | None = None

    @property
    def code(self) -> int:
        """lastStatus.code: the HTTP status, or 0 when there was no response."""
        return self.status_code or 0

    @property
    def outcome(self) -> str:
        """The ``outcome`` label of ``hookd_delivery_attempts_total`` (SPEC §8). A status
        that is neither 2xx, 3xx nor 4xx (1xx, 5xx, or a non-standard 6xx) is ``http_5xx``."""
        status = self.status_code
        if status is None:
            return self.failure or "connect"
        if 200 <= status < 300:
            return "success"
        if 300 <= status < 400:
            return "http_3xx"
        if 400 <= status < 500:
            return "http_4xx"
        return "http_5xx"


# Webhooks are few and their URLs and timeouts rarely change: parse and build each once.
@functools.lru_cache(maxsize=4096)
def _url(url: str) -> yarl.URL:
    return yarl.URL(url)


class _TlsAbortingHandler(ResponseHandler):
    """aiohttp's protocol, except that closing a TLS connection aborts it: no waiting for
    the peer's ``close_notify`` (see the module docstring). Plain TCP closes as usual."""

    def close(self) -> None:
        transport = self.transport
        if transport is not None and transport.get_extra_info("ssl_object") is not None:
            self.abort()
            return
        super().close()


_THROTTLED = frozenset({429, 503})


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]+")
MAX_MESSAGE = 300


def clean_text(text: str) -> str:
    """Text from the outside world (a reason phrase, an error) made safe to store and show:
    valid UTF-8 (aiohttp keeps undecodable bytes as surrogates), no control characters (no
    NUL for PostgreSQL), and bounded in length."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = _UNPRINTABLE.sub(" ", text).strip()
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


# A failing endpoint answers the same status and phrase attempt after attempt.
@functools.lru_cache(maxsize=256)
def _reason(status: int, reason: str | None) -> str:
    if reason and (cleaned := clean_text(reason)):
        return cleaned
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


async def _read_capped(content: aiohttp.StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _failure_kind(exc: BaseException) -> str:
    """The ``outcome`` of an attempt that got no response (see :attr:`AttemptResult.outcome`)."""
    if refusal_from(exc) is not None:
        return "refused"
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorDNSError | LookupFailed):
        return "dns"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return "tls"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    return "connect"


def _dns_retry_after(exc: BaseException) -> str | None:
    """For a name whose failure the resolver has cached, the seconds until that expires, as a
    ``Retry-After`` value: the next attempt waits at least that long, since one before would
    fail the same way without asking (a black-holed name's deliveries then cost one attempt
    per cached failure, not one per retry of a short schedule)."""
    lookup = exc.os_error if isinstance(exc, aiohttp.ClientConnectorDNSError) else exc
    if isinstance(lookup, LookupFailed) and lookup.retry_in is not None:
        return str(max(1, math.ceil(lookup.retry_in)))
    return None


def _failure_message(exc: BaseException, timeout_ms: int) -> str:
    refused = refusal_from(exc)
    if refused is not None:
        return str(refused)
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return f"Timed out after {timeout_ms} ms"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        if isinstance(exc.os_error, LookupFailed):
            return str(exc.os_error)
        return f"Could not resolve host {exc.host}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate error: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return f"TLS error: {exc}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"Connection failed: {exc.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "The server closed the connection without answering"
    if isinstance(exc, aiohttp.InvalidURL):
        return f"Invalid URL: {exc}"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return f"Request failed: {type(exc).__name__}: {exc}".rstrip(": ")
    return f"Request failed: {type(exc).__name__}"


class Sender:
    """Makes attempts. ``start`` opens the shared session, ``close`` ends it."""

    def __init__(
        self,
        guard: AddressGuard,
        *,
        max_connections: int = 256,
        clock: Clock = system_clock,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.guard = guard
        self.max_connections = max_connections
        self.clock = clock
        # None: the system's certificate authorities (tests pass one trusting their own).
        self.ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = make_connector(
            self.guard,
            limit=self.max_connections,
            limit_per_host=0,
            # The guard's resolver caches answers itself, per TTL (hookd/delivery/resolver.py).
            use_dns_cache=False,
            keepalive_timeout=30,
            enable_cleanup_closed=False,
            ssl=self.ssl_context if self.ssl_context is not None else True,
        )
        # aiohttp has no public hook for the protocol class; its connectors build every
        # connection's protocol with this factory.
        connector._factory = cast(
            "functools.partial[ResponseHandler]",
            functools.partial(_TlsAbortingHandler, loop=asyncio.get_running_loop()),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            # hookd sends exactly the headers of SPEC §5 (plus the webhook's own).
            skip_auto_headers=("Accept", "Accept-Encoding"),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.guard.close()

    async def send(self, claimed: ClaimedDelivery) -> AttemptResult:
        """Make the next attempt of ``claimed``; never raises for the receiver's faults."""
        assert self._session is not None, "sender not started"
        body = build_body(claimed)
        now = self.clock()
        headers = request_headers(
            live_secrets(claimed.secret, claimed.previous_secrets, now),
            claimed.event_id,
            claimed.topic,
            claimed.attempt_count + 1,
            body,
            now // 1000,
            claimed.headers,
        )
        attempted_at = self.clock()
        started = time.perf_counter()
        timeout_ms = claimed.timeout_ms
        budget = AttemptBudget(asyncio.get_running_loop().time() + timeout_ms / 1000)
        context = attempt_budget.set(budget)
        try:
            async with (
                asyncio.timeout_at(budget.deadline),
                self._session.post(
                    _url(claimed.url), data=body, headers=headers, allow_redirects=False
                ) as response,
            ):
                kept = await _read_capped(response.content, MAX_RESPONSE_BODY)
                status = response.status
                reason = response.reason
                retry_after = response.headers.get("Retry-After") if status in _THROTTLED else None
        except TimeoutError:
            failure = "timeout"
            if budget.resolving is not None:
                message = f"DNS lookup of {budget.resolving} timed out after {timeout_ms} ms"
                failure = "dns"
            else:
                message = f"Timed out after {timeout_ms} ms"
            message = clean_text(message)
            return AttemptResult(
                attempted_at, False, None, message, timeout_ms, None, message, failure=failure
            )
        except Exception as exc:
            elapsed = round((time.perf_counter() - started) * 1000)
            message = clean_text(_failure_message(exc, timeout_ms))
            return AttemptResult(
                attempted_at,
                False,
                None,
                message,
                elapsed,
                None,
                message,
                _dns_retry_after(exc),
                failure=_failure_kind(exc),
            )
        finally:
            attempt_budget.reset(context)
        elapsed = round((time.perf_counter() - started) * 1000)
        if 200 <= status < 300:
            return AttemptResult(attempted_at, True, status, "Success", elapsed, kept, None)
        message = _reason(status, reason)
        if 300 <= status < 400:
            message = f"{message} (redirects are not followed)"
        return AttemptResult(attempted_at, False, status, message, elapsed, kept, None, retry_after)
