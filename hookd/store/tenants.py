"""Store operations for organizations and API keys."""

from __future__ import annotations

from hookd.errors import ApiError
from hookd.ids import api_key_hash, new_api_key, new_object_id
from hookd.store.queries import Op, one, rows, run, value
from hookd.store.records import ApiKey, AuthContext, Conflict, Organization

__all__ = [
    "any_organization",
    "authenticate",
    "bootstrap",
    "create_api_key",
    "create_organization",
    "find_organization",
    "list_api_keys",
    "list_organizations",
    "revoke_api_key",
]


def create_organization(
    name: str, webhook_limit: int, default_version: str, now: int
) -> Op[Organization]:
    org = Organization(new_object_id(now), name, webhook_limit, default_version, now)
    try:
        yield run(
            "org_insert",
            id=org.id,
            name=org.name,
            webhook_limit=org.webhook_limit,
            default_version=org.default_version,
            created_at=now,
        )
    except Conflict:
        raise ApiError(
            400, "organization_exists", f"An organization named {name!r} already exists.", "name"
        ) from None
    return org


def list_organizations() -> Op[list[Organization]]:
    return [Organization.from_row(r) for r in (yield rows("org_list"))]


def find_organization(ref: str) -> Op[Organization | None]:
    """An organization by id, or else by name."""
    row = yield one("org_by_id", id=ref)
    if row is None:
        row = yield one("org_by_name", name=ref)
    return None if row is None else Organization.from_row(row)


def create_api_key(organization_id: str, label: str | None, now: int) -> Op[tuple[ApiKey, str]]:
    """A new key for the organization: the record, and the key itself (shown once)."""
    secret = new_api_key()
    key = ApiKey(new_object_id(now), organization_id, label, now, None)
    yield run(
        "key_insert",
        id=key.id,
        organization_id=organization_id,
        label=label,
        key_hash=api_key_hash(secret),
        created_at=now,
    )
    return key, secret


def list_api_keys(organization_id: str) -> Op[list[ApiKey]]:
    return [ApiKey.from_row(r) for r in (yield rows("key_list", organization_id=organization_id))]


def revoke_api_key(key_id: str, now: int) -> Op[ApiKey | None]:
    """Revoke a key; ``None`` if there is no such key. Revoking twice keeps the first time."""
    yield run("key_revoke", id=key_id, now=now)
    row = yield one("key_by_id", id=key_id)
    return None if row is None else ApiKey.from_row(row)


def authenticate(key_hash: str, window_start: int | None) -> Op[AuthContext | None]:
    """The key's organization; with ``window_start``, also count the request (PostgreSQL)."""
    if window_start is None:
        row = yield one("auth", key_hash=key_hash)
    else:
        row = yield one("auth_counted", key_hash=key_hash, window_start=window_start)
    return None if row is None else AuthContext.from_row(row)


def any_organization() -> Op[str | None]:
    """The id of some organization (a cheap read of a real table)."""
    found = yield value("org_any")
    return None if found is None else str(found)


def bootstrap(webhook_limit: int, default_version: str, now: int) -> Op[str | None]:
    """On an empty database, create the organization ``default`` and return a key for it."""
    if (yield value("org_any")) is not None:
        return None
    org = yield from create_organization("default", webhook_limit, default_version, now)
    _key, secret = yield from create_api_key(org.id, "default", now)
    return secret
