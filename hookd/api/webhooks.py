"""The six webhook endpoints of Featurebase's v2 API (SPEC §3)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from hookd.api.auth import Principal, authenticate
from hookd.api.pagination import MAX_CURSOR, ListScope, cursors_for, page
from hookd.api.render import JSONResponse, webhook_json
from hookd.api.routing import HookdRoute
from hookd.api.schemas import (
    SecretRefresh,
    WebhookCreate,
    WebhookDeleted,
    WebhookList,
    WebhookOut,
    WebhookUpdate,
)
from hookd.api.spec import ERRORS, body_spec, webhook_id_param
from hookd.api.validation import parse_body, read_body
from hookd.errors import ApiError
from hookd.ids import new_secret
from hookd.settings import Settings
from hookd.store import Store, Webhook

__all__ = ["router"]

router = APIRouter(prefix="/v2/webhooks", tags=["Webhooks"], route_class=HookdRoute)

Auth = Annotated[Principal, Depends(authenticate)]
DEFAULT_TIMEOUT_MS = 5000


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


@router.get("", responses={200: {"model": WebhookList}, **ERRORS}, summary="List webhooks")
async def list_webhooks(
    request: Request,
    principal: Auth,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR)] = None,
    status: Literal["active", "paused", "suspended"] | None = None,
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
    responses={200: {"model": WebhookOut}, **ERRORS},
    openapi_extra=body_spec(WebhookCreate),
    summary="Create a webhook",
)
async def create_webhook(request: Request, principal: Auth) -> Response:
    body = parse_body(await read_body(request), WebhookCreate, _context(request))
    config = body.requestConfig
    webhook = await _store(request).create_webhook(
        principal.organization.id,
        name=body.name,
        url=body.url,
        description=body.description,
        topics=list(dict.fromkeys(body.topics)),
        timeout_ms=config.timeoutMs
        if config and config.timeoutMs is not None
        else DEFAULT_TIMEOUT_MS,
        headers=config.headers if config and config.headers is not None else {},
        secret=new_secret(),
    )
    return JSONResponse(webhook_json(webhook))


@router.get("/{id}", responses={200: {"model": WebhookOut}, **ERRORS}, summary="Get webhook by ID")
async def get_webhook(request: Request, principal: Auth, id: str) -> Response:
    return JSONResponse(webhook_json(await load_webhook(request, principal, id)))


@router.patch(
    "/{id}",
    responses={200: {"model": WebhookOut}, **ERRORS},
    openapi_extra=body_spec(WebhookUpdate),
    summary="Update a webhook",
)
async def update_webhook(request: Request, principal: Auth, id: str) -> Response:
    webhook_id = webhook_id_param(id)
    body = parse_body(await read_body(request), WebhookUpdate, _context(request))
    given = body.model_fields_set
    changes: dict[str, Any] = {}
    for field in ("name", "url", "description", "status"):
        if field in given:
            changes[field] = getattr(body, field)
    if "topics" in given and body.topics is not None:
        changes["topics"] = list(dict.fromkeys(body.topics))
    if body.requestConfig is not None:
        config_given = body.requestConfig.model_fields_set
        if "timeoutMs" in config_given:
            changes["timeout_ms"] = body.requestConfig.timeoutMs
        if "headers" in config_given:
            changes["headers"] = body.requestConfig.headers or {}
    updated = await _store(request).update_webhook(principal.organization.id, webhook_id, changes)
    if updated is None:
        raise missing()
    return JSONResponse(webhook_json(updated))


@router.delete(
    "/{id}", responses={200: {"model": WebhookDeleted}, **ERRORS}, summary="Delete a webhook"
)
async def delete_webhook(request: Request, principal: Auth, id: str) -> Response:
    webhook_id = webhook_id_param(id)
    if not await _store(request).delete_webhook(principal.organization.id, webhook_id):
        raise missing()
    return JSONResponse({"id": webhook_id, "object": "webhook", "deleted": True})


@router.post(
    "/{id}/secret",
    responses={200: {"model": WebhookOut}, **ERRORS},
    openapi_extra=body_spec(SecretRefresh, required=False),
    summary="Refresh webhook signing secret",
)
async def refresh_secret(request: Request, principal: Auth, id: str) -> Response:
    webhook_id = webhook_id_param(id)
    parse_body(await read_body(request), SecretRefresh)
    updated = await _store(request).rotate_secret(
        principal.organization.id, webhook_id, new_secret()
    )
    if updated is None:
        raise missing()
    return JSONResponse(webhook_json(updated))
