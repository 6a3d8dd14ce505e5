"""Identifiers and secrets: ObjectIds, ``notif_`` UUIDv7s, webhook secrets, API keys.

Randomness comes from :mod:`secrets` unless a caller passes its own source, and time
from the caller's clock (milliseconds since the epoch), so tests can control both.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import re
import secrets
import threading
from collections.abc import Callable

__all__ = [
    "API_KEY_PREFIX",
    "EVENT_ID_PREFIX",
    "SECRET_PREFIX",
    "api_key_hash",
    "event_id_floor",
    "first_event_id",
    "is_event_id",
    "is_object_id",
    "new_api_key",
    "new_event_id",
    "new_object_id",
    "new_secret",
    "object_id_time_ms",
]

SECRET_PREFIX = "whsec_"
API_KEY_PREFIX = "sk_"
EVENT_ID_PREFIX = "notif_"

_OBJECT_ID = re.compile(r"[0-9a-f]{24}\Z")
_EVENT_ID = re.compile(r"notif_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")

# Like MongoDB's ObjectId: 4 bytes of seconds, 5 bytes fixed per process, 3 bytes of a
# counter that starts at a random value. Ids made in one process within one second
# therefore still sort in creation order.
_process_bytes = os.urandom(5)
_process_pid = os.getpid()
_counter = itertools.count(int.from_bytes(os.urandom(3), "big"))
_counter_lock = threading.Lock()


def _refresh_after_fork() -> None:
    global _process_bytes, _process_pid
    _process_bytes = os.urandom(5)
    _process_pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_after_fork)


def new_object_id(now_ms: int) -> str:
    """A 24-character lowercase hex ObjectId whose first 4 bytes are ``now_ms`` in seconds."""
    with _counter_lock:
        count = next(_counter) & 0xFFFFFF
    raw = (now_ms // 1000).to_bytes(4, "big") + _process_bytes + count.to_bytes(3, "big")
    return raw.hex()


def is_object_id(value: str) -> bool:
    return _OBJECT_ID.match(value) is not None


def is_event_id(value: str) -> bool:
    """``notif_`` + a UUID in lowercase hex, as :func:`new_event_id` writes it."""
    return _EVENT_ID.match(value) is not None


def event_id_floor(ms: int) -> str:
    """The text that every event id made at or after ``ms`` sorts at or above, and every one
    made before it below: event ids start with their time (UUIDv7), so a time window of
    events is a range of ids."""
    h = f"{max(0, min(ms, (1 << 48) - 1)):012x}"
    return f"{EVENT_ID_PREFIX}{h[:8]}-{h[8:]}"


def first_event_id(ms: int) -> str:
    """The lowest event id that :func:`new_event_id` can make at ``ms``: a place to resume
    a stream from when no event has been seen yet."""
    return f"{event_id_floor(ms)}-0000-0000-000000000000"


def object_id_time_ms(object_id: str) -> int:
    """The creation second of an ObjectId, in milliseconds."""
    return int(object_id[:8], 16) * 1000


def new_event_id(now_ms: int, randbytes: Callable[[int], bytes] = os.urandom) -> str:
    """``notif_`` + a UUIDv7 (RFC 9562): 48 bits of milliseconds, then random bits."""
    rand = int.from_bytes(randbytes(10), "big")
    value = (now_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= (rand >> 68) << 64 & (0xFFF << 64)  # 12 bits rand_a
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # 62 bits rand_b
    # uuid.UUID(int=value)'s text, without building the object (a publish makes one).
    h = f"{value:032x}"
    return f"{EVENT_ID_PREFIX}{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_secret(token_bytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """A webhook signing secret: ``whsec_`` + base64 of 32 random bytes (SPEC §5)."""
    return SECRET_PREFIX + base64.b64encode(token_bytes(32)).decode("ascii")


def new_api_key(token_urlsafe: Callable[[int], str] = secrets.token_urlsafe) -> str:
    """An API key: ``sk_`` + 43 URL-safe random characters (32 bytes of entropy)."""
    return API_KEY_PREFIX + token_urlsafe(32)


def api_key_hash(key: str) -> str:
    """The stored form of an API key. Keys carry 256 random bits, so a plain SHA-256 suffices."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
