"""Sending one attempt: the signed POST over hookd's pooled HTTP/1.1 client (SPEC §5).

Connections are kept alive and shared by every attempt (:mod:`hookd.delivery.transport`).
Redirects are not followed, at most 4 KiB of a response body is kept, and every connection
goes through the address guard.

An attempt runs under one deadline, ``timeoutMs`` after it starts, that covers DNS,
connect, TLS, the request and the whole response (the client's ``deadline``). The deadline
reaches the resolver through :data:`~hookd.delivery.resolver.attempt_budget`, so that a
lookup never outlives its attempt and an attempt that ran out of time while resolving says
so.
"""

from __future__ import annotations

import asyncio
import functools
import http
import math
import re
import socket
import ssl
import time

import yarl

from hookd.clock import Clock, system_clock
from hookd.delivery.envelope import USER_AGENT, build_body, request_headers
from hookd.delivery.guard import AddressGuard, refusal_from
from hookd.delivery.resolver import AttemptBudget, LookupFailed, attempt_budget
from hookd.delivery.transport import BadResponse, ConnectFailed, HttpTransport, ServerDisconnected
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


def _failure_kind(exc: BaseException) -> str:
    """The ``outcome`` of an attempt that got no response (see :attr:`AttemptResult.outcome`)."""
    if refusal_from(exc) is not None:
        return "refused"
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, LookupFailed | socket.gaierror):
        return "dns"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return "tls"
    return "connect"


def _dns_retry_after(exc: BaseException) -> str | None:
    """For a name whose failure the resolver has cached, the seconds until that expires, as a
    ``Retry-After`` value: the next attempt waits at least that long, since one before would
    fail the same way without asking (a black-holed name's deliveries then cost one attempt
    per cached failure, not one per retry of a short schedule)."""
    if isinstance(exc, LookupFailed) and exc.retry_in is not None:
        return str(max(1, math.ceil(exc.retry_in)))
    return None


def _failure_message(exc: BaseException, timeout_ms: int) -> str:
    refused = refusal_from(exc)
    if refused is not None:
        return str(refused)
    if isinstance(exc, asyncio.TimeoutError):
        return f"Timed out after {timeout_ms} ms"
    if isinstance(exc, LookupFailed):
        return str(exc)
    if isinstance(exc, socket.gaierror):
        return exc.strerror or str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate error: {exc.verify_message or exc.reason or exc}"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return f"TLS error: {exc}"
    if isinstance(exc, ConnectFailed):
        return f"Connection failed: {exc.strerror or exc.os_error}"
    if isinstance(exc, ServerDisconnected):
        return "The server closed the connection without answering"
    if isinstance(exc, BadResponse):
        return f"Request failed: {exc}"
    if isinstance(exc, ValueError):
        return f"Invalid request: {exc}"
    if isinstance(exc, OSError):
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
        self._transport: HttpTransport | None = None

    async def start(self) -> None:
        self._transport = HttpTransport(
            self.guard,
            limit=self.max_connections,
            keepalive=30.0,
            max_body=MAX_RESPONSE_BODY,
            ssl_context=self.ssl_context,
        )

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()
            self._transport = None
        await self.guard.close()

    async def send(self, claimed: ClaimedDelivery) -> AttemptResult:
        """Make the next attempt of ``claimed``; never raises for the receiver's faults."""
        transport = self._transport
        assert transport is not None, "sender not started"
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
            response = await transport.post(_url(claimed.url), headers, body, budget.deadline)
            status = response.status
            reason = response.reason
            kept = response.body
            retry_after = response.retry_after if status in _THROTTLED else None
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
