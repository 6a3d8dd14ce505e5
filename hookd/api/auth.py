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
from hookd.store import Store
from hookd.store.records import Organization, record

__all__ = ["WEBHOOKS_SINCE", "Principal", "RateLimiter", "authenticate"]

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


async def authenticate(request: Request) -> Principal:
    """The dependency that guards every ``/v2`` route."""
    state = request.app.state
    store: Store = state.store
    limiter: RateLimiter = state.limiter
    key = _credentials(request)
    now = store.clock()
    shared_count = limiter.limit > 0 and store.dialect == "postgresql"
    context = await store.authenticate(
        api_key_hash(key), limiter.window_start(now) if shared_count else None
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
    header = request.headers.get("featurebase-version")
    asked = None if header is None else header.strip()
    # The version a 429 answers with: the one asked for if it is one, else the default.
    request.state.version = asked if asked in API_VERSIONS else org.default_version
    if limiter.limit > 0:
        used = (
            context.request_count
            if context.request_count is not None
            else limiter.count(context.key_id, now)
        )
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
    version = _resolve_version(request, org.default_version or DEFAULT_API_VERSION, asked)
    request.state.version = version
    return Principal(org, context.key_id, version)
