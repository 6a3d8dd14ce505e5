"""List cursors (SPEC §2): opaque, URL-safe, at most 512 characters, and tamper-proof.

A cursor holds the position a page ended at (for the keyset lists of hookd, the last id
shown; newest first, a page starts strictly below it, so creating or deleting objects never
shows an item twice nor skips one that existed throughout) and an HMAC-SHA256 tag over that
position *and the list it belongs to*: the resource, the organization, and every filter and
parent id that shapes the list. The list is not written into the cursor; the server
recomputes the tag from the request it gets. So a cursor that was altered, made up, or made
for another list (another resource, another webhook's deliveries, other filters, another
organization) fails the check and is answered ``400 cursor_invalid``. The key lives in the
database (``instance_state``, created by the first process that needs it), so every API
process of an installation accepts the others' cursors and they survive restarts.

Format: ``base64url(JSON array of the position) "." base64url(first 16 bytes of the tag)``.

A list names its scope and filters, and the position its items are ordered by::

    scope = ListScope.of("events", principal.organization.id, topic=topic, since=since)
    cursors = await cursors_for(request)
    position = cursors.decode(scope, cursor)          # None on the first page
    ...
    return JSONResponse(page(cursors, scope, found, limit, render, lambda e: (e.created_at, e.id)))

Lists ordered by id alone use :meth:`Cursors.decode_id`, which also checks the id's form
and gives the first page's bound when there is no cursor.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Query
from pydantic import WithJsonSchema
from starlette.requests import Request

from hookd.errors import ApiError
from hookd.ids import is_object_id
from hookd.store import Store
from hookd.store.webhooks import FIRST_PAGE

__all__ = [
    "CURSOR_PATTERN",
    "MAX_CURSOR",
    "Cursor",
    "Cursors",
    "ListScope",
    "Position",
    "cursors_for",
    "page",
]

T = TypeVar("T")
MAX_CURSOR = 512
_TAG_BYTES = 16
# Bumped if the format changes, so that an old cursor fails the check instead of being misread.
_FORMAT = 1
# URL-safe characters only (SPEC §2): a cursor never needs escaping in a query string.
CURSOR_PATTERN = f"^[A-Za-z0-9_.-]{{1,{MAX_CURSOR}}}$"
_CURSOR = re.compile(CURSOR_PATTERN.removesuffix("$") + r"\Z")

Position = tuple[str | int, ...]

#: The ``cursor`` query parameter of every list.
Cursor = Annotated[
    str | None,
    Query(max_length=MAX_CURSOR),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": CURSOR_PATTERN,
            "description": "The nextCursor of the previous page, unchanged; any other value "
            "answers 400 cursor_invalid.",
        }
    ),
]


@dataclass(frozen=True, slots=True)
class ListScope:
    """What a list is: its name, its organization, and the filters (parent ids included)
    that shape it. Two requests page the same list exactly when their scopes are equal."""

    name: str
    organization: str
    filters: tuple[tuple[str, str | int | None], ...] = ()

    @classmethod
    def of(cls, name: str, organization: str, **filters: str | int | None) -> ListScope:
        """A scope; a filter not given by the request is passed as ``None``."""
        return cls(name, organization, tuple(sorted(filters.items())))

    def signed_bytes(self) -> bytes:
        return orjson.dumps([_FORMAT, self.name, self.organization, self.filters])


def _invalid() -> ApiError:
    return ApiError(
        400,
        "cursor_invalid",
        "cursor is not a cursor of this list; pass the nextCursor of the previous page unchanged, "
        "with the same filters.",
        "cursor",
    )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or "=" in text:
        raise ValueError("not unpadded base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    # The last character may carry unused bits: only the one spelling this code makes is
    # accepted, so that no altered cursor decodes to the same bytes.
    if _b64(raw) != text:
        raise ValueError("not canonical base64url")
    return raw


class Cursors:
    """Makes and checks the cursors of every list with one key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _tag(self, scope: ListScope, payload: bytes) -> bytes:
        message = scope.signed_bytes() + b"\x00" + payload
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_TAG_BYTES]

    def encode(self, scope: ListScope, position: Position) -> str:
        payload = orjson.dumps(list(position))
        return f"{_b64(payload)}.{_b64(self._tag(scope, payload))}"

    def decode(self, scope: ListScope, cursor: str | None) -> Position | None:
        """The position ``cursor`` holds for ``scope``; ``None`` without a cursor. Raises
        ``400 cursor_invalid`` unless this key made it for this very list."""
        if cursor is None:
            return None
        if not _CURSOR.match(cursor):
            raise _invalid()
        encoded, dot, tag_text = cursor.partition(".")
        try:
            payload, tag = _unb64(encoded), _unb64(tag_text)
        except (binascii.Error, ValueError):
            raise _invalid() from None
        if not dot or not hmac.compare_digest(tag, self._tag(scope, payload)):
            raise _invalid()
        position = orjson.loads(payload)
        if not isinstance(position, list) or not all(
            isinstance(v, str | int) and not isinstance(v, bool) for v in position
        ):
            raise _invalid()
        return tuple(position)

    def decode_id(self, scope: ListScope, cursor: str | None) -> str:
        """For lists ordered by ObjectId: the id to list below, or the first page's bound."""
        return self.decode_key(scope, cursor)

    def decode_key(
        self,
        scope: ListScope,
        cursor: str | None,
        *,
        is_key: Callable[[str], bool] = is_object_id,
        first: str = FIRST_PAGE,
    ) -> str:
        """For lists ordered by one string key (``is_key`` says what it looks like): the key
        to list below, or ``first``, the first page's bound, without a cursor."""
        position = self.decode(scope, cursor)
        if position is None:
            return first
        if len(position) != 1 or not isinstance(position[0], str) or not is_key(position[0]):
            raise _invalid()
        return position[0]


async def cursors_for(request: Request) -> Cursors:
    """The app's :class:`Cursors`, its key read from the database on first use."""
    state = request.app.state
    cursors: Cursors | None = getattr(state, "cursors", None)
    if cursors is None:
        store: Store = state.store
        cursors = Cursors(await store.cursor_key())
        state.cursors = cursors
    return cursors


def page(
    cursors: Cursors,
    scope: ListScope,
    items: Sequence[T],
    limit: int,
    render: Callable[[T], dict[str, Any]],
    position: Callable[[T], Position],
) -> dict[str, Any]:
    """A list object from up to ``limit + 1`` items (the extra one says another page exists)."""
    shown = items[:limit]
    more = len(items) > limit
    return {
        "object": "list",
        "data": [render(item) for item in shown],
        "nextCursor": cursors.encode(scope, position(shown[-1])) if more and shown else None,
    }
