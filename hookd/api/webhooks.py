"""The six webhook endpoints of Featurebase's v2 API (SPEC §3)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import MISSING, WithJsonSchema
from starlette.responses import Response

from hookd.api.auth import Principal, authenticate
from hookd.api.pagination import Cursor, ListScope, cursors_for, page
from hookd.api.render import JSONResponse, webhook_json
from hookd.api.routing import HookdRoute
from hookd.api.schemas import (
    SecretRefresh,
    WebhookCreate,
    WebhookDeleted,
    WebhookList,
    WebhookOut,
    WebhookUpdate,
    component,
)
from hookd.api.spec import operation, webhook_id_param
from hookd.api.validation import parse_body, read_body
from hookd.errors import ApiError
from hookd.ids import new_secret
from hookd.logs import get_logger
from hookd.settings import Settings
from hookd.store import Store, Webhook

__all__ = ["router"]

router = APIRouter(prefix="/v2/webhooks", tags=["Webhooks"], route_class=HookdRoute)
log = get_logger("hookd.api")

Auth = Annotated[Principal, Depends(authenticate)]
DEFAULT_TIMEOUT_MS = 5000
# Where a new webhook's id leads (OpenAPI links: clients and stateful tests follow them).
WEBHOOK_LINKS = {
    target: {"id": "$response.body#/id"}
    for target in (
        "getWebhook",
        "updateWebhook",
        "deleteWebhook",
        "refreshWebhookSecret",
        "listDeliveries",
        "sendTestEvent",
        "recoverEvents",
    )
}


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def missing(kind: str = "webhook") -> ApiError:
    return ApiError(404, "resource_missing", f"No {kind} has this id.", "id")


async def load_webhook(request: Request, principal: Principal, webhook_id: str) -> Webhook:
    """The organization's webhook, or a ``404`` exactly like for an id that never existed."""
    found = await _store(request).get_webhook(
        principal.organization.id, webhook_id_param(webhook_id)
    )
    if found is None:
        raise missing()
    return found


def _context(request: Request) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    return {"allow_http": settings.allow_http}


@router.get(
    "",
    **operation(
        "listWebhooks", "List webhooks", ok=(200, WebhookList, "A page of webhooks, newest first")
    ),
)
async def list_webhooks(
    request: Request,
    principal: Auth,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    cursor: Cursor = None,
    status: Annotated[
        Literal["active", "paused", "suspended"] | None, WithJsonSchema(component("WebhookStatus"))
    ] = None,
) -> Response:
    scope = ListScope.of("webhooks", principal.organization.id, status=status)
    cursors = await cursors_for(request)
    before = cursors.decode_id(scope, cursor)
    found = await _store(request).list_webhooks(
        principal.organization.id, status, before, limit + 1
    )
    return JSONResponse(page(cursors, scope, found, limit, webhook_json, lambda w: (w.id,)))


@router.post(
    "",
    **operation(
        "createWebhook",
        "Create a webhook",
        ok=(200, WebhookOut, "The new webhook, active, with its secret"),
        body=WebhookCreate,
        links=WEBHOOK_LINKS,
    ),
)
async def create_webhook(request: Request, principal: Auth) -> Response:
    body = parse_body(await read_body(request), WebhookCreate, _context(request))
    config = body.requestConfig
    timeout_ms = DEFAULT_TIMEOUT_MS
    headers: dict[str, str] = {}
    if config is not MISSING:
        if config.timeoutMs is not MISSING:
            timeout_ms = config.timeoutMs
        if config.headers is not MISSING:
            headers = config.headers
    webhook = await _store(request).create_webhook(
        principal.organization.id,
        name=body.name,
        url=body.url,
        description=None if body.description is MISSING else body.description,
        topics=list(dict.fromkeys(body.topics)),
        timeout_ms=timeout_ms,
        headers=headers,
        secret=new_secret(),
    )
    return JSONResponse(webhook_json(webhook))


@router.get(
    "/{id}", **operation("getWebhook", "Get a webhook", ok=(200, WebhookOut, "The webhook"))
)
async def get_webhook(request: Request, principal: Auth, id: str) -> Response:
    return JSONResponse(webhook_json(await load_webhook(request, principal, id)))


@router.patch(
    "/{id}",
    **operation(
        "updateWebhook",
        "Update a webhook (only the fields given change)",
        ok=(200, WebhookOut, "The updated webhook"),
        body=WebhookUpdate,
        body_required=False,
    ),
)
async def update_webhook(request: Request, principal: Auth, id: str) -> Response:
    webhook_id = webhook_id_param(id)
    body = parse_body(await read_body(request), WebhookUpdate, _context(request))
    changes: dict[str, Any] = {}
    for field in ("name", "url", "description", "status"):
        value = getattr(body, field)
        if value is not MISSING:
            changes[field] = value
    if body.topics is not MISSING:
        changes["topics"] = list(dict.fromkeys(body.topics))
    config = body.requestConfig
    if config is not MISSING:
        if config.timeoutMs is not MISSING:
            changes["timeout_ms"] = config.timeoutMs
        if config.headers is not MISSING:
            changes["headers"] = config.headers
    # A reactivation is logged (SPEC §8): it needs the status before (read only then).
    before = None
    if changes.get("status") == "active":
        before = await _store(request).get_webhook(principal.organization.id, webhook_id)
    updated = await _store(request).update_webhook(principal.organization.id, webhook_id, changes)
    if updated is None:
        raise missing()
    if before is not None and before.status != "active" and updated.status == "active":
        log.info(
            "webhook.reactivated",
            organization=principal.organization.id,
            webhook=webhook_id,
            previous_status=before.status,
            consecutive_failures=before.consecutive_failures,
        )
    return JSONResponse(webhook_json(updated))


@router.delete(
    "/{id}",
    **operation(
        "deleteWebhook",
        "Delete a webhook",
        ok=(200, WebhookDeleted, "Deleted; its pending deliveries are cancelled"),
    ),
)
async def delete_webhook(request: Request, principal: Auth, id: str) -> Response:
    webhook_id = webhook_id_param(id)
    if not await _store(request).delete_webhook(principal.organization.id, webhook_id):
        raise missing()
    return JSONResponse({"id": webhook_id, "object": "webhook", "deleted": True})


@router.post(
    "/{id}/secret",
    **operation(
        "refreshWebhookSecret",
        "Refresh a webhook's signing secret",
        ok=(200, WebhookOut, "The webhook with its new secret"),
        body=SecretRefresh,
        body_required=False,
    ),
)
async def refresh_secret(request: Request, principal: Auth, id: str) -> Response:
    webhook_id = webhook_id_param(id)
    body = parse_body(await read_body(request), SecretRefresh)
    grace = 0 if body.gracePeriodSeconds is MISSING else body.gracePeriodSeconds
    updated = await _store(request).rotate_secret(
        principal.organization.id, webhook_id, new_secret(), grace * 1000
    )
    if updated is None:
        raise missing()
    log.info(
        "secret.refreshed",
        organization=principal.organization.id,
        webhook=webhook_id,
        grace_period_seconds=grace,
        previous_secrets_live=len(updated.previous_secrets),
    )
    return JSONResponse(webhook_json(updated))
