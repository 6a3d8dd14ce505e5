"""Store operations for webhooks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from hookd.errors import ApiError
from hookd.ids import new_object_id
from hookd.store.queries import Op, many, notify, one, rows, run
from hookd.store.records import PreviousSecrets, Webhook, dump_previous_secrets, previous_secrets

__all__ = [
    "EDITABLE",
    "FIRST_PAGE",
    "create_webhook",
    "delete_webhook",
    "get_webhook",
    "list_webhooks",
    "purge_expired_secrets",
    "rotate_secret",
    "update_webhook",
]

# Sorts after every lowercase hex id, so "id < FIRST_PAGE" starts a list at the newest.
FIRST_PAGE = "g"
PAYLOAD_VERSION = "1.0"

EDITABLE = ("name", "url", "description", "topics", "status", "timeout_ms", "headers")
# Previous secrets a webhook keeps live at once during grace periods (SPEC §3).
MAX_PREVIOUS_SECRETS = 10


def _dump(value: Any) -> str:
    return orjson.dumps(value).decode()


def create_webhook(
    organization_id: str,
    *,
    name: str,
    url: str,
    description: str | None,
    topics: list[str],
    timeout_ms: int,
    headers: Mapping[str, str],
    secret: str,
    now: int,
) -> Op[Webhook]:
    """Create a webhook unless the organization is at its webhook limit."""
    org = yield one("org_lock", id=organization_id)
    count = org["webhook_count"]
    if count >= org["webhook_limit"]:
        raise ApiError(
            400,
            "webhook_limit_reached",
            f"This organization already has {count} webhooks, its limit; delete one to create another.",
        )
    webhook_id = new_object_id(now)
    yield run(
        "webhook_insert",
        id=webhook_id,
        organization_id=organization_id,
        name=name,
        url=url,
        description=description,
        topics=_dump(topics),
        status="active",
        timeout_ms=timeout_ms,
        headers=_dump(dict(headers)),
        secret=secret,
        version=PAYLOAD_VERSION,
        created_at=now,
        updated_at=now,
    )
    yield run("webhook_count_add", organization_id=organization_id, delta=1)
    row = yield one("webhook_get", id=webhook_id, organization_id=organization_id)
    return Webhook.from_row(row)


def get_webhook(organization_id: str, webhook_id: str) -> Op[Webhook | None]:
    row = yield one("webhook_get", id=webhook_id, organization_id=organization_id)
    return None if row is None else Webhook.from_row(row)


def list_webhooks(
    organization_id: str, status: str | None, before: str, limit: int
) -> Op[list[Webhook]]:
    """Up to ``limit`` webhooks with ids below ``before``, newest first."""
    if status is None:
        found = yield rows(
            "webhook_list", organization_id=organization_id, before=before, limit=limit
        )
    else:
        found = yield rows(
            "webhook_list_status",
            organization_id=organization_id,
            status=status,
            before=before,
            limit=limit,
        )
    return [Webhook.from_row(r) for r in found]


def update_webhook(
    organization_id: str, webhook_id: str, changes: Mapping[str, Any], now: int
) -> Op[Webhook | None]:
    """Apply validated ``changes`` (keys of ``EDITABLE``); ``None`` if there is no such webhook.

    Only an effective change moves ``updatedAt``. Setting ``status`` to ``active`` on a paused
    or suspended webhook resets its health and releases its held deliveries.
    """
    row = yield one("webhook_get_locked", id=webhook_id, organization_id=organization_id)
    if row is None:
        return None
    current = {key: row[key] for key in EDITABLE}
    wanted = dict(current)
    for key, new in changes.items():
        # Lists and maps are stored as JSON; a map in another key order is the same map.
        if key in ("topics", "headers"):
            if orjson.loads(current[key]) != new:
                wanted[key] = _dump(new)
        else:
            wanted[key] = new
    if changed := [k for k in EDITABLE if wanted[k] != current[k]]:
        # Strictly later than before, even within one millisecond.
        updated_at = max(now, row["updated_at"] + 1)
        yield run("webhook_update", id=webhook_id, updated_at=updated_at, **wanted)
        if "status" in changed and wanted["status"] == "active":
            yield run("webhook_reset_health", id=webhook_id)
            yield notify()
        row = yield one("webhook_get", id=webhook_id, organization_id=organization_id)
    return Webhook.from_row(row)


def delete_webhook(organization_id: str, webhook_id: str, now: int) -> Op[bool]:
    """Delete a webhook and cancel its pending deliveries; False if there is no such webhook."""
    yield one("org_lock", id=organization_id)  # the count changes under the same lock
    deleted = yield run("webhook_delete", id=webhook_id, organization_id=organization_id, now=now)
    if deleted:
        yield run("webhook_count_add", organization_id=organization_id, delta=-1)
        yield run("deliveries_cancel", webhook_id=webhook_id)
    return bool(deleted)


def rotate_secret(
    organization_id: str, webhook_id: str, secret: str, grace_ms: int, now: int
) -> Op[Webhook | None]:
    """Make ``secret`` the webhook's secret; ``None`` if there is no such webhook.

    With ``grace_ms`` > 0 the replaced secret stays live (it signs attempts too) for that
    long, ahead of the earlier ones still live, at most :data:`MAX_PREVIOUS_SECRETS` of them
    (the oldest drop first). With 0 only the new secret is live: every grace period ends.
    """
    row = yield one("webhook_get_locked", id=webhook_id, organization_id=organization_id)
    if row is None:
        return None
    kept: PreviousSecrets = ()
    if grace_ms > 0:
        live = [p for p in previous_secrets(row["previous_secrets"]) if p[1] > now]
        kept = tuple([(row["secret"], now + grace_ms), *live][:MAX_PREVIOUS_SECRETS])
    yield run(
        "webhook_rotate_secret",
        id=webhook_id,
        organization_id=organization_id,
        secret=secret,
        previous_secrets=dump_previous_secrets(kept),
        now=max(now, row["updated_at"] + 1),
    )
    row = yield one("webhook_get", id=webhook_id, organization_id=organization_id)
    return Webhook.from_row(row)


def purge_expired_secrets(now: int) -> Op[int]:
    """Forget the previous secrets whose grace period has ended; returns how many webhooks
    lost some. (Signing already ignores them; this keeps no dead secret stored.)"""
    found = yield rows("webhooks_with_previous_secrets")
    changes = []
    for row in found:
        entries = previous_secrets(row["previous_secrets"])
        live = tuple(p for p in entries if p[1] > now)
        if live != entries:
            changes.append(
                {
                    "id": row["id"],
                    "old": row["previous_secrets"],
                    "new": dump_previous_secrets(live),
                }
            )
    if changes:
        yield many("webhook_previous_secrets_set", changes)
    return len(changes)
