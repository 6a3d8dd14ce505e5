"""Time as hookd sees it: integer milliseconds since the epoch, and ISO 8601 text.

Components take a :data:`Clock` so tests can move time without patching.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["Clock", "iso_ms", "iso_or_none", "parse_iso", "system_clock"]

Clock = Callable[[], int]
"""A callable returning the current time in milliseconds since the epoch."""


def system_clock() -> int:
    return time.time_ns() // 1_000_000


@functools.lru_cache(maxsize=1024)
def _iso_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def iso_ms(ms: int) -> str:
    """``2025-01-15T10:30:00.000Z`` for a millisecond timestamp."""
    seconds, millis = divmod(ms, 1000)
    return f"{_iso_second(seconds)}.{millis:03d}Z"


def iso_or_none(ms: int | None) -> str | None:
    return None if ms is None else iso_ms(ms)


def parse_iso(text: str) -> int:
    """Milliseconds for an ISO 8601 timestamp with a timezone; ``ValueError`` otherwise."""
    if not isinstance(text, str) or len(text) > 64:
        raise ValueError("not an ISO 8601 timestamp")
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("timestamp has no timezone")
    return int(parsed.astimezone(UTC).timestamp() * 1000)
