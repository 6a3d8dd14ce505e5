"""Customer portal links (SPEC §9): ``POST /v2/portal/sessions`` makes a one-time link to
hookd's dashboard for an application's customer, limited to the organization (and to some
of its webhooks when given), read-only if asked, for at most a day.

The link is ``{HOOKD_PUBLIC_URL or the request's origin}/dashboard/portal/{token}``; opening
it (:mod:`hookd.dashboard.web`) uses it up and starts a session that ends at ``expiresAt``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import MISSING, AfterValidator, BaseModel, BeforeValidator, Field, WithJsonSchema
from starlette.responses import Response

from hookd.api.auth import Principal, authenticate
from hookd.api.render import JSONResponse
from hookd.api.routing import HookdRoute
from hookd.api.schemas import Timestamp, component
from hookd.api.spec import operation
from hookd.api.validation import custom_error, integral, parse_body, read_body
from hookd.clock import iso_ms
from hookd.errors import ApiError
from hookd.ids import is_object_id
from hookd.settings import Settings
from hookd.store import Store

__all__ = ["DEFAULT_EXPIRES_IN_SECONDS", "router"]

router = APIRouter(prefix="/v2/portal", tags=["Portal"], route_class=HookdRoute)

DEFAULT_EXPIRES_IN_SECONDS = 3600
MAX_WEBHOOK_IDS = 100


def _webhook_id(value: str) -> str:
    if not is_object_id(value):
        raise custom_error("parameter_invalid", "must be a webhook id (24 lowercase hex digits)")
    return value


WebhookIdIn = Annotated[str, AfterValidator(_webhook_id), WithJsonSchema(component("ObjectId"))]
ExpiresInSeconds = Annotated[
    int,
    BeforeValidator(integral),
    Field(ge=60, le=86_400),
    WithJsonSchema(
        {
            "type": "integer",
            "minimum": 60,
            "maximum": 86_400,
            "description": "How long the session opened by the link lasts (default 3600).",
        }
    ),
]


class PortalSessionIn(BaseModel):
    """What the portal session may see and do. Without ``webhookIds`` it sees every webhook
    of the organization, and may create new ones unless read-only."""

    model_config = {"extra": "forbid", "strict": True}
    webhookIds: (
        Annotated[list[WebhookIdIn], Field(min_length=1, max_length=MAX_WEBHOOK_IDS)] | MISSING
    ) = MISSING
    readOnly: bool | MISSING = MISSING
    expiresInSeconds: ExpiresInSeconds | MISSING = MISSING


class PortalSessionOut(BaseModel):
    object: Literal["portal_session"]
    url: Annotated[str, WithJsonSchema({"type": "string", "format": "uri"})]
    expiresAt: Timestamp


def public_origin(request: Request) -> str:
    """Where browsers reach hookd: ``HOOKD_PUBLIC_URL``, else the request's own origin."""
    settings: Settings = request.app.state.settings
    if settings.public_url:
        return settings.public_url
    return str(request.base_url).rstrip("/")


@router.post(
    "/sessions",
    **operation(
        "createPortalSession",
        "Create a one-time link to the dashboard for a customer",
        ok=(201, PortalSessionOut, "The link (it works once) and when its session ends"),
        body=PortalSessionIn,
        body_required=False,
        errors=(404,),
        description="Hand `url` to your customer: it opens hookd's dashboard once, in a "
        "session limited to your organization (and to `webhookIds` when given) that lasts "
        "until `expiresAt`. A `webhookIds` entry that is not a webhook of your organization "
        "answers 404 `resource_missing`.",
    ),
)
async def create_portal_session(
    request: Request, principal: Annotated[Principal, Depends(authenticate)]
) -> Response:
    settings: Settings = request.app.state.settings
    body = parse_body(await read_body(request), PortalSessionIn)
    if not settings.dashboard:
        raise ApiError(
            404,
            "dashboard_disabled",
            "The dashboard is turned off on this server (HOOKD_DASHBOARD=false).",
        )
    store: Store = request.app.state.store
    org_id = principal.organization.id
    webhook_ids: list[str] | None = None
    if body.webhookIds is not MISSING:
        webhook_ids = list(dict.fromkeys(body.webhookIds))
        for i, webhook_id in enumerate(body.webhookIds):
            if await store.get_webhook(org_id, webhook_id) is None:
                raise ApiError(
                    404, "resource_missing", "No webhook has this id.", f"webhookIds.{i}"
                )
    seconds = (
        DEFAULT_EXPIRES_IN_SECONDS if body.expiresInSeconds is MISSING else body.expiresInSeconds
    )
    expires_at = store.clock() + seconds * 1000
    token = await store.create_portal_link(
        org_id,
        principal.key_id,
        webhook_ids,
        body.readOnly is not MISSING and body.readOnly,
        expires_at,
    )
    return JSONResponse(
        {
            "object": "portal_session",
            "url": f"{public_origin(request)}/dashboard/portal/{token}",
            "expiresAt": iso_ms(expires_at),
        },
        status_code=201,
    )
