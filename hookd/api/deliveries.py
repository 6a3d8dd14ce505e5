"""The delivery log (SPEC §6): list, inspect, retry, test and recover deliveries."""

from __future__ import annotations

import secrets
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import MISSING, BaseModel, ConfigDict, WithJsonSchema
from starlette.responses import Response

from hookd.api.auth import Principal, authenticate
from hookd.api.events import encode_data
from hookd.api.pagination import Cursor, ListScope, cursors_for, page
from hookd.api.render import JSONResponse, attempt_json, delivery_json
from hookd.api.routing import HookdRoute
from hookd.api.schemas import (
    DeliveryDetailOut,
    DeliveryList,
    DeliveryOut,
    RecoveryOut,
    TopicIn,
    component,
)
from hookd.api.spec import operation, webhook_id_param
from hookd.api.validation import parse_body, parse_time, read_body
from hookd.api.webhooks import load_webhook
from hookd.delivery.envelope import event_body
from hookd.errors import ApiError
from hookd.ids import is_event_id
from hookd.settings import Settings
from hookd.store import EventDraft, Store
from hookd.store.records import DeliveryStatus

__all__ = ["router"]

router = APIRouter(prefix="/v2/webhooks/{id}", tags=["Delivery log"], route_class=HookdRoute)

Auth = Annotated[Principal, Depends(authenticate)]
_DAY_MS = 86_400_000


class TestIn(BaseModel):
    """A test event; `topic` defaults to the webhook's first topic."""

    model_config = ConfigDict(extra="forbid", strict=True)
    topic: TopicIn | MISSING = MISSING


DateTime = Annotated[str, WithJsonSchema(component("DateTime"))]


class RecoverIn(BaseModel):
    """The window whose events to queue again: `since` inclusive, `until` exclusive
    (default now), within the retention."""

    model_config = ConfigDict(extra="forbid", strict=True)
    since: DateTime
    until: DateTime | MISSING = MISSING


# Where a delivery's ids lead (OpenAPI links).
DELIVERY_LINKS = {
    target: {"id": "$response.body#/webhookId", "deliveryId": "$response.body#/id"}
    for target in ("getDelivery", "retryDelivery")
}


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _delivery_missing() -> ApiError:
    return ApiError(
        404, "resource_missing", "No delivery of this webhook has this id.", "deliveryId"
    )


def _delivery_id(value: str) -> str:
    try:
        return webhook_id_param(value, "delivery")
    except ApiError:
        raise _delivery_missing() from None


@router.get(
    "/deliveries",
    **operation(
        "listDeliveries",
        "List a webhook's deliveries",
        ok=(200, DeliveryList, "A page of deliveries, newest first"),
    ),
)
async def list_deliveries(
    request: Request,
    principal: Auth,
    id: str,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    cursor: Cursor = None,
    status: Annotated[DeliveryStatus | None, WithJsonSchema(component("DeliveryStatus"))] = None,
    eventId: Annotated[
        str | None,
        Query(max_length=64, description="Only the deliveries of this event"),
        WithJsonSchema(component("EventId")),
    ] = None,
) -> Response:
    webhook = await load_webhook(request, principal, id)
    if eventId is not None and not is_event_id(eventId):
        raise ApiError(
            400,
            "parameter_invalid",
            "eventId must be an event id: notif_ followed by a UUID, as POST /v2/events answers.",
            "eventId",
        )
    scope = ListScope.of(
        "deliveries", principal.organization.id, webhook=webhook.id, status=status, event=eventId
    )
    cursors = await cursors_for(request)
    before = cursors.decode_id(scope, cursor)
    found = await _store(request).list_deliveries(webhook.id, status, before, limit + 1, eventId)
    active = webhook.status == "active"
    return JSONResponse(
        page(cursors, scope, found, limit, lambda d: delivery_json(d, active), lambda d: (d.id,))
    )


@router.get(
    "/deliveries/{deliveryId}",
    **operation(
        "getDelivery",
        "Get a delivery with its payload and attempts",
        ok=(200, DeliveryDetailOut, "The delivery, its payload and its attempts, oldest first"),
    ),
)
async def get_delivery(request: Request, principal: Auth, id: str, deliveryId: str) -> Response:
    webhook = await load_webhook(request, principal, id)
    found = await _store(request).get_delivery(webhook.id, _delivery_id(deliveryId))
    if found is None:
        raise _delivery_missing()
    delivery, event, attempts = found
    body = delivery_json(delivery, webhook.status == "active")
    # The payload of the latest attempt (or of the first one, before any was made).
    body["payload"] = orjson.loads(event_body(event, webhook.id, max(1, delivery.attempt_count)))
    body["attempts"] = [attempt_json(a) for a in attempts]
    return JSONResponse(body)


@router.post(
    "/deliveries/{deliveryId}/retry",
    **operation(
        "retryDelivery",
        "Retry a delivery now",
        ok=(202, DeliveryOut, "Queued for an attempt now"),
        links=DELIVERY_LINKS,
    ),
)
async def retry_delivery(request: Request, principal: Auth, id: str, deliveryId: str) -> Response:
    await read_body(request)
    webhook = await load_webhook(request, principal, id)
    delivery = await _store(request).retry_delivery(webhook.id, _delivery_id(deliveryId))
    if delivery is None:
        raise _delivery_missing()
    if delivery.status == "cancelled":
        raise ApiError(
            400,
            "delivery_cancelled",
            "This delivery was cancelled (its webhook was deleted) and cannot be retried.",
            "deliveryId",
        )
    return JSONResponse(delivery_json(delivery, webhook.status == "active"), status_code=202)


@router.post(
    "/test",
    **operation(
        "sendTestEvent",
        "Send a test event to a webhook",
        ok=(202, DeliveryOut, "A test delivery, queued"),
        body=TestIn,
        body_required=False,
        links=DELIVERY_LINKS,
    ),
)
async def send_test(request: Request, principal: Auth, id: str) -> Response:
    webhook = await load_webhook(request, principal, id)
    body = parse_body(await read_body(request), TestIn)
    topic = webhook.topics[0] if body.topic is MISSING else body.topic
    item = {
        "object": "test",
        "id": f"test_{secrets.token_hex(8)}",
        "message": "A test event sent by hookd.",
    }
    draft = EventDraft(topic, encode_data(item, []))
    delivery = await _store(request).create_test_delivery(
        principal.organization.id, webhook.id, draft
    )
    return JSONResponse(delivery_json(delivery), status_code=202)


@router.post(
    "/recover",
    **operation(
        "recoverEvents",
        "Queue again a webhook's events of a time window (after an outage)",
        ok=(202, RecoveryOut, "The events of the window without a succeeded delivery, queued"),
        body=RecoverIn,
    ),
)
async def recover(request: Request, principal: Auth, id: str) -> Response:
    webhook = await load_webhook(request, principal, id)
    body = parse_body(await read_body(request), RecoverIn)
    store = _store(request)
    settings: Settings = request.app.state.settings
    now = store.clock()
    since = parse_time(body.since, "since")
    until = now if body.until is MISSING else parse_time(body.until, "until")
    retention_ms = settings.retention_days * _DAY_MS
    if since > now:
        raise ApiError(
            400,
            "window_invalid",
            "since is in the future; give the start of a window that has begun.",
            "since",
        )
    if until <= since:
        raise ApiError(400, "window_invalid", "until must be later than since.", "until")
    if since < now - retention_ms:
        raise ApiError(
            400,
            "window_outside_retention",
            f"since is more than {settings.retention_days} days ago and older events have been "
            f"purged; give a since within the last {settings.retention_days} days.",
            "since",
        )
    if until - since > retention_ms:
        raise ApiError(
            400,
            "window_too_long",
            f"The window is longer than the retention of {settings.retention_days} days; "
            "recover it in parts.",
            "until",
        )
    queued = await store.recover(
        principal.organization.id, webhook.id, list(webhook.topics), since, until
    )
    return JSONResponse({"object": "recovery", "queued": queued}, status_code=202)
