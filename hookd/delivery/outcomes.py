"""From attempt results to database rows: the delivery's next state and the webhook's health.

Retries (SPEC §5): after failed attempt ``n`` the delivery waits ``schedule[n-1]`` seconds,
±10 % jitter; after the last delay is used up it is ``failed``. Test deliveries and manual
retries past the schedule get no automatic retry. A ``429`` or ``503`` answer's
``Retry-After`` (seconds, or an HTTP date) moves a scheduled retry to no earlier than that
moment, counted from when the answer arrived, without jitter and at most 24 h ahead; it never
schedules a retry the schedule did not have.

Health: ``avgResponseTime`` is an exponential moving average of every attempt's response
time, ``avg += ALPHA * (rt - avg)``, starting at the first attempt's time (ALPHA = 0.2: the
last ~10 attempts carry ~90 % of the weight). ``errorsSinceLastSuccess`` counts failed
attempts, ``consecutiveFailures`` counts deliveries that ended ``failed`` (test deliveries
excluded), a success clears both, and an active webhook whose ``consecutiveFailures``
reaches ``HOOKD_SUSPEND_AFTER`` becomes ``suspended``.

A batch of attempts to one webhook is folded here into parameters of one UPDATE whose
expressions build on the row's current values, so workers never overwrite each other.
"""

from __future__ import annotations

import email.utils
import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from hookd.delivery.sender import AttemptResult
from hookd.ids import new_object_id
from hookd.store.queue import Settlement
from hookd.store.records import ClaimedDelivery

__all__ = [
    "ALPHA",
    "JITTER",
    "MAX_RETRY_AFTER_MS",
    "build_settlement",
    "retry_after_ms",
    "retry_delay_ms",
]

ALPHA = 0.2
JITTER = 0.1
MAX_RETRY_AFTER_MS = 86_400_000


def retry_delay_ms(
    schedule: Sequence[float], attempt_number: int, rng: random.Random
) -> int | None:
    """Milliseconds to wait after failed attempt ``attempt_number``, or None if it was the last."""
    if attempt_number > len(schedule):
        return None
    base = schedule[attempt_number - 1] * 1000
    return max(1, round(base * rng.uniform(1 - JITTER, 1 + JITTER)))


def retry_after_ms(value: str | None, received_at: int) -> int | None:
    """How long a ``Retry-After`` header asks to wait, in milliseconds from ``received_at``
    (when its answer arrived), capped at 24 h; ``None`` if there is none or it does not parse."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        wait = int(text) * 1000
    else:
        try:
            moment = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:
            return None  # RFC 9110 dates are GMT; one without a zone is not an HTTP date
        wait = round(moment.timestamp() * 1000) - received_at
    return max(0, min(wait, MAX_RETRY_AFTER_MS))


def _webhook_row(
    webhook_id: str, batch: list[tuple[ClaimedDelivery, AttemptResult, str]], suspend_after: int
) -> dict[str, Any]:
    batch.sort(key=lambda item: item[1].attempted_at)
    last = batch[-1][1]
    # The moving average over the batch, as avg * decay + contribution, and from scratch.
    decay = 1.0
    contribution = 0.0
    fresh = float(batch[0][1].response_time_ms)
    for i, (_c, result, _s) in enumerate(batch):
        rt = float(result.response_time_ms)
        decay *= 1 - ALPHA
        contribution = contribution * (1 - ALPHA) + ALPHA * rt
        if i:
            fresh += ALPHA * (rt - fresh)
    attempt_succeeded = False
    errors_after = 0
    delivery_succeeded = False
    failures_after = 0
    success_at = -1
    for claimed, result, status in batch:
        if result.succeeded:
            attempt_succeeded = True
            errors_after = 0
            success_at = result.attempted_at
        else:
            errors_after += 1
        if claimed.is_test:
            continue
        if status == "succeeded":
            delivery_succeeded = True
            failures_after = 0
        elif status == "failed":
            failures_after += 1
    return {
        "id": webhook_id,
        "last_at": last.attempted_at,
        "last_code": last.code,
        "last_message": last.message,
        "last_response_time": last.response_time_ms,
        "fresh_avg": fresh,
        "decay": decay,
        "contribution": contribution,
        "samples": len(batch),
        "attempt_succeeded": attempt_succeeded,
        "errors_after": errors_after,
        "delivery_succeeded": delivery_succeeded,
        "failures_after": failures_after,
        "success_at": success_at,
        "suspend_after": suspend_after,
    }


def build_settlement(
    results: Sequence[tuple[ClaimedDelivery, AttemptResult]],
    schedule: Sequence[float],
    suspend_after: int,
    rng: random.Random,
) -> Settlement:
    """The rows that record ``results``: attempts, delivery states, webhook health."""
    settlement = Settlement()
    per_webhook: dict[str, list[tuple[ClaimedDelivery, AttemptResult, str]]] = defaultdict(list)
    for claimed, result in results:
        number = claimed.attempt_count + 1
        next_at: int | None = None
        if result.succeeded:
            status = "succeeded"
        else:
            delay = None if claimed.is_test else retry_delay_ms(schedule, number, rng)
            status = "failed" if delay is None else "pending"
            if delay is not None:
                next_at = result.attempted_at + delay
                received_at = result.attempted_at + result.response_time_ms
                wait = retry_after_ms(result.retry_after, received_at)
                if wait is not None:
                    next_at = max(next_at, received_at + wait)
        settlement.attempts.append(
            {
                "id": new_object_id(result.attempted_at),
                "delivery_id": claimed.id,
                "webhook_id": claimed.webhook_id,
                "attempt_number": number,
                "attempted_at": result.attempted_at,
                "succeeded": result.succeeded,
                "status_code": result.status_code,
                "response_time_ms": result.response_time_ms,
                "response_body": result.response_body,
                "error": result.error,
            }
        )
        settlement.deliveries.append(
            {
                "id": claimed.id,
                "token": claimed.lease_token,
                "status": status,
                "attempt_count": number,
                "next_attempt_at": next_at,
                "attempted_at": result.attempted_at,
                "status_code": result.code,
                "status_message": result.message,
            }
        )
        per_webhook[claimed.webhook_id].append((claimed, result, status))
    settlement.webhooks = [
        _webhook_row(w, batch, suspend_after) for w, batch in per_webhook.items()
    ]
    return settlement
