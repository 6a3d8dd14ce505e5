"""Time as hookd sees it: integer milliseconds since the epoch, and ISO 8601 text.

Components take a :data:`Clock` so tests can move time without patching.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["Clock", "iso_ms", "iso_or_none", "parse_iso", "parse_rfc3339", "system_clock"]

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


_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))\Z"
)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (any year, 0 included)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def parse_rfc3339(text: str) -> int:
    """Milliseconds for an RFC 3339 ``date-time`` (JSON Schema's ``format: date-time``):
    ``2025-01-15T10:30:00Z``, any offset, any number of fraction digits (cut to milliseconds),
    ``t``/``z`` in either case, a leap second (23:59:60 UTC) as the second after. ``ValueError`` otherwise."""
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError("not an RFC 3339 date-time")
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    fraction, sign, offset_hour, offset_minute = match.group(7, 8, 9, 10)
    if not (1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)):
        raise ValueError("no such date")
    if hour > 23 or minute > 59 or second > 60:
        raise ValueError("no such time")
    offset = 0
    if sign is not None:
        if int(offset_hour) > 23 or int(offset_minute) > 59:
            raise ValueError("no such offset")
        offset = (int(offset_hour) * 60 + int(offset_minute)) * (1 if sign == "+" else -1)
    if second == 60 and (hour * 60 + minute - offset) % 1440 != 23 * 60 + 59:
        raise ValueError("a leap second is 23:59:60 UTC")
    seconds = _days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
    millis = int((fraction or "0")[:3].ljust(3, "0"))
    return (seconds - offset * 60) * 1000 + millis
