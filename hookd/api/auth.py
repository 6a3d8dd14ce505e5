"""Authentication, per-key rate limits and API-version resolution (SPEC §2).

Runs as a FastAPI dependency of every ``/v2`` route, before the request's body or
parameters are looked at, in this order: API key (401), rate limit (429), version (400).
"""

from __future__ import annotations

import math
import threading

from fastapi import Request

from hookd.errors import ApiError
from hookd.ids import API_KEY_PREFIX, api_key_hash
from hookd.settings import API_VERSIONS, DEFAULT_API_VERSION, WEBHOOKS_SINCE
from hookd.store import KeyCheck, Store
from hookd.store.records import AuthContext, Organization, record

__all__ = [
    "WEBHOOKS_SINCE",
    "KnownKeys",
    "Principal",
    "RateLimiter",
    "authenticate",
    "authenticate_in_write",
    "confirm_key",
    "count_request",
]

_WINDOW_MS = 60_000
_MAX_KEY_LENGTH = 256


@record
class Principal:
    """The organization a request acts for, and the API version it speaks."""

    organization: Organization
    key_id: str
    version: str


class RateLimiter:
    """Fixed one-minute windows of requests per API key, counted in this process.

    On PostgreSQL the store counts instead (shared by every API process) and this class only
    turns the count into a decision.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._windows: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def window_start(now_ms: int) -> int:
        return now_ms - now_ms % _WINDOW_MS

    def count(self, key_id: str, now_ms: int) -> int:
        start = self.window_start(now_ms)
        with self._lock:
            window, used = self._windows.get(key_id, (start, 0))
            if window != start:
                if len(self._windows) > 100_000:
                    self._windows = {k: v for k, v in self._windows.items() if v[0] == start}
                used = 0
            used += 1
            self._windows[key_id] = (start, used)
        return used

    def headers(self, used: int, now_ms: int) -> dict[str, str]:
        reset = (self.window_start(now_ms) + _WINDOW_MS) // 1000
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.limit - used)),
            "X-RateLimit-Reset": str(reset),
        }


class KnownKeys:
    """The API keys this process has authenticated, by hash, with what their look-up
    found. A publish by one of them skips the look-up: its write checks the key instead
    (:func:`authenticate_in_write`). On PostgreSQL the publish's one statement also counts
    the request, so a publish is one round trip, not two; on SQLite the write checks the
    key in its transaction, and the request is counted in this process as any other.
    Nothing is trusted that the write does not check again: a key revoked since, or an
    organization whose default version changed, is looked up afresh."""

    _MAX = 10_000

    def __init__(self) -> None:
        self._by_hash: dict[str, AuthContext] = {}

    def get(self, key_hash: str) -> AuthContext | None:
        return self._by_hash.get(key_hash)

    def remember(self, key_hash: str, context: AuthContext) -> None:
        if len(self._by_hash) >= self._MAX and key_hash not in self._by_hash:
            self._by_hash.clear()
        self._by_hash[key_hash] = context

    def forget(self, key_hash: str) -> None:
        self._by_hash.pop(key_hash, None)


def _credentials(request: Request) -> str:
    header = request.headers.get("authorization")
    if header is None:
        raise ApiError(
            401, "api_key_missing", "Send your API key in the header Authorization: Bearer sk_..."
        )
    scheme, _, key = header.strip().partition(" ")
    key = key.strip()
    if (
        scheme.lower() != "bearer"
        or not key.startswith(API_KEY_PREFIX)
        or len(key) > _MAX_KEY_LENGTH
    ):
        raise ApiError(
            401,
            "api_key_invalid",
            "The Authorization header must be 'Bearer ' followed by an API key (sk_...).",
        )
    return key


def _resolve_version(request: Request, default: str, asked: str | None) -> str:
    """``asked``: the Featurebase-Version header without surrounding blanks, if sent."""
    if asked is None:
        version = default
    elif asked in API_VERSIONS:
        version = asked
    else:
        raise ApiError(
            400,
            "api_version_invalid",
            f"Featurebase-Version must be one of {', '.join(API_VERSIONS)}.",
            "Featurebase-Version",
        )
    if version < WEBHOOKS_SINCE:
        request.state.version = version
        raise ApiError(
            400,
            "api_version_unsupported",
            f"This endpoint needs API version {WEBHOOKS_SINCE} or newer; send Featurebase-Version: {WEBHOOKS_SINCE}.",
            "Featurebase-Version",
        )
    return version


def _asked_version(request: Request, org: Organization) -> str | None:
    """The Featurebase-Version header without surrounding blanks, if sent; the request
    answers with it if it is a version, else with the organization's default (a 429 too)."""
    header = request.headers.get("featurebase-version")
    asked = None if header is None else header.strip()
    request.state.version = asked if asked in API_VERSIONS else org.default_version
    return asked


def count_request(request: Request, used: int, now: int) -> None:
    """The rate-limit headers for the request, the ``used``-th of its key's window; a 429
    if that is over the limit (SPEC §2)."""
    limiter: RateLimiter = request.app.state.limiter
    headers = limiter.headers(used, now)
    request.state.rate_headers = headers
    if used > limiter.limit:
        retry_after = max(1, math.ceil((int(headers["X-RateLimit-Reset"]) * 1000 - now) / 1000))
        raise ApiError(
            429,
            "rate_limited",
            f"This API key made more than {limiter.limit} requests this minute; retry after {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
        )


def _counted_by_store(store: Store, limiter: RateLimiter) -> bool:
    """Whether the store counts requests (PostgreSQL, shared by every API process) rather
    than this process's :class:`RateLimiter` (SQLite), with the limit on."""
    return limiter.limit > 0 and store.dialect == "postgresql"


async def authenticate(request: Request) -> Principal:
    """The dependency that guards every ``/v2`` route (its parameters are what
    ``/openapi.json`` describes: the request only)."""
    return await _look_up(request, None)


async def _look_up(request: Request, counted: int | None) -> Principal:
    """:func:`authenticate`. ``counted``: the request's number in its key's window on
    SQLite, when :func:`authenticate_in_write` counted it already, so that it is not
    counted twice."""
    state = request.app.state
    store: Store = state.store
    limiter: RateLimiter = state.limiter
    key = _credentials(request)
    key_hash = api_key_hash(key)
    now = store.clock()
    shared_count = _counted_by_store(store, limiter)
    context = await store.authenticate(
        key_hash, limiter.window_start(now) if shared_count else None
    )
    if context is None:
        raise ApiError(
            401,
            "api_key_invalid",
            "This API key does not exist; check it or create one with hookd keys create.",
        )
    if context.revoked:
        raise ApiError(401, "api_key_revoked", "This API key has been revoked; use another key.")
    org = context.organization
    asked = _asked_version(request, org)
    state.known_keys.remember(key_hash, context)
    if limiter.limit > 0:
        if context.request_count is not None:
            used = context.request_count
        elif counted is not None:
            used = counted
        else:
            used = limiter.count(context.key_id, now)
        count_request(request, used, now)
    version = _resolve_version(request, org.default_version or DEFAULT_API_VERSION, asked)
    request.state.version = version
    return Principal(org, context.key_id, version)


async def authenticate_in_write(request: Request) -> Principal:
    """:func:`authenticate` for a route whose one write can check the key itself (a
    publish): a key this process knows (:class:`KnownKeys`) is taken on trust here, and
    ``request.state.key_check`` holds what the route's write must check; the route calls
    :func:`confirm_key` before answering anything else (SPEC §2's order: key, rate limit,
    version, then the request). Any other key is looked up as usual.

    On SQLite the request is counted here, in this process's windows, as :func:`authenticate`
    would count it; over the limit, the key is looked up first (a revoked key's request
    answers 401, not 429), without counting the request again."""
    state = request.app.state
    store: Store = state.store
    key = _credentials(request)
    key_hash = api_key_hash(key)
    known = state.known_keys.get(key_hash)
    if known is None:
        return await authenticate(request)
    org = known.organization
    asked = _asked_version(request, org)
    try:
        version = _resolve_version(request, org.default_version or DEFAULT_API_VERSION, asked)
    except ApiError:
        # A 401 or 429 would come first: the whole look-up, which raises the right one.
        return await authenticate(request)
    request.state.version = version
    limiter: RateLimiter = state.limiter
    now = store.clock()
    counted_in_write = _counted_by_store(store, limiter)
    used: int | None = None
    if limiter.limit > 0 and not counted_in_write:
        used = limiter.count(known.key_id, now)
        if used > limiter.limit:
            return await _look_up(request, used)  # the 401 due, else the 429
        count_request(request, used, now)
    request.state.key_check = KeyCheck(
        key_hash,
        org.default_version,
        limiter.window_start(now) if counted_in_write else None,
        limiter.limit,
        now,
        used,
    )
    return Principal(org, known.key_id, version)


async def confirm_key(request: Request, *, stale: bool) -> Principal:
    """The look-up that :func:`authenticate_in_write` skipped, for a request that must
    answer before its write has checked the key (an invalid body), or whose write found
    the key no longer as it was (``stale``: forgotten first). Raises the 401 or 429 due;
    else the request's principal, now confirmed (and counted)."""
    check: KeyCheck = request.state.key_check
    request.state.key_check = None
    if stale:
        request.app.state.known_keys.forget(check.key_hash)
    return await _look_up(request, check.counted)
