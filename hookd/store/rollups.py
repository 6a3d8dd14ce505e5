"""Hourly rollups of each webhook's attempts: what the dashboard's counts, success rates,
charts and p95 response times read (SPEC §9), so that no page scans the attempts table.

A rollup row holds one webhook's attempts of one hour: how many, how many succeeded and
failed, the sum of their response times, and a sketch of those times in :data:`BUCKETS`
fixed log-spaced buckets. Bucket ``i`` holds times from ``2^(2i/3)`` ms (bucket 0 from 0)
up to the next bucket's start, the last one everything above; a percentile read from the
sketch is the geometric middle of its bucket, within about 26 % of the true value, and
sketches of several hours or webhooks add up exactly.

The settle of each batch of attempts (:func:`hookd.store.queue.settle`) writes the batch's
rollups with it: one row per webhook and hour, folded here (:func:`rollup_rows`). On
PostgreSQL they are one more part of the settle's single statement; on SQLite,
:func:`record` writes them in the settle's transaction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hookd.store.queries import Op, many, rows
from hookd.store.schema import SKETCH_BUCKETS

__all__ = [
    "BUCKETS",
    "HOUR_MS",
    "Rollup",
    "bucket_of",
    "percentile",
    "record",
    "rollup_rows",
    "series",
    "totals",
]

BUCKETS = SKETCH_BUCKETS
HOUR_MS = 3_600_000
_STEP = 2 / 3  # log2 of the ratio between consecutive bucket starts
_COLUMNS = tuple(f"b{i:02d}" for i in range(BUCKETS))


def bucket_of(response_time_ms: int) -> int:
    """The sketch bucket of a response time."""
    if response_time_ms < 2:
        return 0
    return min(BUCKETS - 1, int(math.log2(response_time_ms) / _STEP))


def _bucket_bounds(i: int) -> tuple[float, float]:
    low = 0.0 if i == 0 else 2 ** (i * _STEP)
    return low, 2 ** ((i + 1) * _STEP)


def percentile(sketch: Sequence[int], q: float) -> int | None:
    """The ``q`` quantile (0 to 1) of the times counted in ``sketch``, in ms; ``None`` if empty."""
    total = sum(sketch)
    if total == 0:
        return None
    rank = math.ceil(q * total)
    seen = 0
    for i, count in enumerate(sketch):
        seen += count
        if seen >= rank:
            low, high = _bucket_bounds(i)
            return round(math.sqrt(max(low, 1.0) * high))
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class Rollup:
    """Attempts of one webhook over one hour (a series point) or a window (an overview)."""

    webhook_id: str
    hour: int | None
    attempts: int
    successes: int
    failures: int
    time_sum: int
    sketch: tuple[int, ...]

    @classmethod
    def from_row(cls, row: Mapping[str, Any], hourly: bool) -> Rollup:
        return cls(
            webhook_id=row["webhook_id"],
            hour=int(row["hour"]) if hourly else None,
            attempts=int(row["attempts"]),
            successes=int(row["successes"]),
            failures=int(row["failures"]),
            time_sum=int(row["time_sum"]),
            sketch=tuple(int(row[c]) for c in _COLUMNS),
        )

    @property
    def success_rate(self) -> float | None:
        return None if self.attempts == 0 else self.successes / self.attempts

    @property
    def p95(self) -> int | None:
        return percentile(self.sketch, 0.95)


def rollup_rows(attempts: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rollup rows of a batch of attempt rows (as the settle writes them), one per
    webhook and hour, sorted by both (the order their rows are locked in)."""
    if not attempts:
        return []
    first = str(attempts[0]["id"])
    folded: dict[tuple[str, int], dict[str, Any]] = {}
    for a in attempts:
        hour = int(a["attempted_at"]) - int(a["attempted_at"]) % HOUR_MS
        key = (str(a["webhook_id"]), hour)
        row = folded.get(key)
        if row is None:
            row = folded[key] = {
                "webhook_id": key[0],
                "hour": hour,
                "attempts": 0,
                "successes": 0,
                "failures": 0,
                "time_sum": 0,
                **dict.fromkeys(_COLUMNS, 0),
                "first_attempt": first,
            }
        rt = int(a["response_time_ms"])
        row["attempts"] += 1
        row["successes" if a["succeeded"] else "failures"] += 1
        row["time_sum"] += rt
        row[_COLUMNS[bucket_of(rt)]] += 1
    return [folded[key] for key in sorted(folded)]


def record(attempts: Sequence[Mapping[str, Any]]) -> Op[None]:
    """Add a batch of attempts to the rollups (SQLite; PostgreSQL's settle statement does it
    itself). Run it in the settle's transaction before the attempts are inserted: a batch
    already recorded is skipped."""
    found = rollup_rows(attempts)
    if found:
        yield many("rollup_add", found)


def totals(webhook_ids: Sequence[str], since: int) -> Op[dict[str, Rollup]]:
    """Each of these webhooks' attempts since ``since`` (ms; counted by whole hours from the
    hour it falls in), by webhook id; webhooks without any are left out."""
    if not webhook_ids:
        return {}
    found = yield rows("rollup_totals", ids=list(webhook_ids), since=since - since % HOUR_MS)
    return {r["webhook_id"]: Rollup.from_row(r, False) for r in found}


def series(webhook_id: str, since: int) -> Op[list[Rollup]]:
    """The webhook's hourly rollups from the hour of ``since`` on, oldest first; hours
    without attempts are left out."""
    found = yield rows("rollup_series", webhook_id=webhook_id, since=since - since % HOUR_MS)
    return [Rollup.from_row(r, True) for r in found]
