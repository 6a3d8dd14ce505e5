"""Opaque list cursors: base64url JSON naming the list and the last id of a page.

Lists are ordered by id, newest first, and a page starts strictly below the cursor's id
(keyset pagination): creating or deleting objects never shows an item twice nor skips
one that existed throughout.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Query
from pydantic import WithJsonSchema

from hookd.errors import ApiError
from hookd.ids import is_object_id
from hookd.store.webhooks import FIRST_PAGE

__all__ = ["CURSOR_PATTERN", "MAX_CURSOR", "Cursor", "decode_cursor", "encode_cursor", "page"]

T = TypeVar("T")
MAX_CURSOR = 512
# URL-safe characters only (SPEC §2): a cursor never needs escaping in a query string.
CURSOR_PATTERN = f"^[A-Za-z0-9_-]{{1,{MAX_CURSOR}}}$"
_CURSOR = re.compile(CURSOR_PATTERN.removesuffix("$") + r"\Z")

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


def encode_cursor(list_name: str, last_id: str) -> str:
    raw = orjson.dumps({"list": list_name, "after": last_id})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _invalid() -> ApiError:
    return ApiError(
        400,
        "cursor_invalid",
        "cursor is not a cursor of this list; pass the nextCursor of a previous page unchanged.",
        "cursor",
    )


def decode_cursor(list_name: str, cursor: str | None) -> str:
    """The id to list below; the first page's bound when there is no cursor."""
    if cursor is None:
        return FIRST_PAGE
    if not _CURSOR.match(cursor):
        raise _invalid()
    try:
        data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise _invalid() from None
    if not isinstance(data, dict) or data.get("list") != list_name:
        raise _invalid()
    after = data.get("after")
    if not isinstance(after, str) or not is_object_id(after):
        raise _invalid()
    return after


def page(
    list_name: str,
    items: Sequence[T],
    limit: int,
    render: Callable[[T], dict[str, Any]],
    key: Callable[[T], str],
) -> dict[str, Any]:
    """A list object from up to ``limit + 1`` items (the extra one says another page exists)."""
    shown = items[:limit]
    more = len(items) > limit
    return {
        "object": "list",
        "data": [render(item) for item in shown],
        "nextCursor": encode_cursor(list_name, key(shown[-1])) if more and shown else None,
    }
