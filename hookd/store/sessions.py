"""Store operations of dashboard sessions and one-time portal links (SPEC §9).

Only SHA-256 hashes of a session cookie or a link token are stored: a copy of the database
opens no session. A session belongs to the API key that opened it (directly, or through a
portal link made with it) and ends when that key is revoked, at ``expires_at``, or on sign
out.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

import orjson

from hookd.store.queries import Op, one, run
from hookd.store.records import record

__all__ = [
    "DashboardSession",
    "create_portal_link",
    "create_session",
    "end_session",
    "get_session",
    "open_portal_link",
    "purge_sessions",
    "token_hash",
]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@record
class DashboardSession:
    """A signed-in browser: whose organization, through which key, what it may see and do."""

    id: str  # the hash of the cookie's value
    organization_id: str
    organization_name: str
    key_id: str
    webhook_ids: tuple[str, ...] | None  # None: every webhook of the organization
    read_only: bool
    csrf_token: str
    expires_at: int

    def sees(self, webhook_id: str) -> bool:
        return self.webhook_ids is None or webhook_id in self.webhook_ids


def _dump_ids(webhook_ids: Sequence[str] | None) -> str | None:
    return None if webhook_ids is None else orjson.dumps(list(webhook_ids)).decode()


def _load_ids(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(orjson.loads(text))


def create_session(
    organization_id: str,
    key_id: str,
    webhook_ids: Sequence[str] | None,
    read_only: bool,
    expires_at: int,
    now: int,
) -> Op[str]:
    """A new session; returns the cookie's value (shown to this browser only)."""
    token = secrets.token_urlsafe(32)
    yield run(
        "session_insert",
        id=token_hash(token),
        organization_id=organization_id,
        key_id=key_id,
        webhook_ids=_dump_ids(webhook_ids),
        read_only=read_only,
        csrf_token=secrets.token_urlsafe(32),
        now=now,
        expires_at=expires_at,
    )
    return token


def get_session(token: str, now: int) -> Op[DashboardSession | None]:
    """The live session of a cookie's value, or ``None`` (unknown, expired, key revoked)."""
    row = yield one("session_get", id=token_hash(token), now=now)
    if row is None:
        return None
    return DashboardSession(
        id=row["id"],
        organization_id=row["organization_id"],
        organization_name=row["organization_name"],
        key_id=row["key_id"],
        webhook_ids=_load_ids(row["webhook_ids"]),
        read_only=bool(row["read_only"]),
        csrf_token=row["csrf_token"],
        expires_at=int(row["expires_at"]),
    )


def end_session(session_id: str) -> Op[None]:
    yield run("session_delete", id=session_id)


def create_portal_link(
    organization_id: str,
    key_id: str,
    webhook_ids: Sequence[str] | None,
    read_only: bool,
    expires_at: int,
    now: int,
) -> Op[str]:
    """A one-time link's token; the session it opens lasts until ``expires_at``."""
    token = secrets.token_urlsafe(32)
    yield run(
        "portal_link_insert",
        id=token_hash(token),
        organization_id=organization_id,
        key_id=key_id,
        webhook_ids=_dump_ids(webhook_ids),
        read_only=read_only,
        now=now,
        expires_at=expires_at,
    )
    return token


def open_portal_link(token: str, now: int) -> Op[str | None]:
    """Use a link: a new session's cookie value, or ``None`` if the link is unknown, used
    or expired. Of two requests with one link, only one opens a session."""
    link_id = token_hash(token)
    if not (yield run("portal_link_use", id=link_id, now=now)):
        return None
    link = yield one("portal_link_get", id=link_id)
    session: str = yield from create_session(
        link["organization_id"],
        link["key_id"],
        _load_ids(link["webhook_ids"]),
        bool(link["read_only"]),
        int(link["expires_at"]),
        now,
    )
    return session


def purge_sessions(now: int) -> Op[None]:
    """Forget expired sessions and links."""
    yield run("sessions_purge", now=now)
    yield run("portal_links_purge", now=now)
