"""Store operations on the installation's own state (``instance_state``)."""

from __future__ import annotations

from hookd.store.queries import Op, run, value

__all__ = ["named_secret", "named_value", "touch_readiness"]


def named_value(name: str) -> Op[str | None]:
    """The value stored under ``name``, if any."""
    stored = yield value("state_get", name=name)
    return None if stored is None else str(stored)


def named_secret(name: str, candidate: str, now: int) -> Op[str]:
    """The value stored under ``name``; ``candidate`` becomes it if there is none yet."""
    yield run("state_insert_missing", name=name, value=candidate, now=now)
    stored = yield value("state_get", name=name)
    assert isinstance(stored, str)
    return stored


def touch_readiness(now: int) -> Op[None]:
    """Rewrite one row: the cheapest write that proves the database accepts writes."""
    yield run("state_touch", name="readyz", now=now)
    return None
