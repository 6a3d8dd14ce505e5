"""Schemathesis hooks for the run in ``tests/test_openapi.py`` (loaded through
``SCHEMATHESIS_HOOKS=tests.schemathesis_hooks``).

Two inputs are valid by every rule a schema can state and still refused, by design, and only
those are adjusted, in positive cases only (negative cases are sent as generated):

- ``cursor``: only a ``nextCursor`` that the server handed out is a cursor (SPEC §2,
  tamper-proof); a made-up one answers ``400 cursor_invalid``. Positive cases page from the
  start instead.
- the ``recover`` window: ``since`` must lie within the retention and before ``until`` and
  now, relations between two values and the clock that JSON Schema cannot express. Positive
  cases recover the last hour.

Everything else (ids, URLs, names, headers, topics...) is sent exactly as generated.
"""

from __future__ import annotations

from typing import Any

import schemathesis

from hookd.clock import iso_ms, system_clock

_HOUR_MS = 3_600_000


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return
    if isinstance(case.query, dict):
        case.query.pop("cursor", None)
    if case.operation.path.endswith("/recover") and isinstance(case.body, dict):
        now = system_clock()
        case.body["since"] = iso_ms(now - _HOUR_MS)
        if "until" in case.body:
            case.body["until"] = iso_ms(now)
