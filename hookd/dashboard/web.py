"""The dashboard's pages (SPEC §9): webhooks, a webhook with its charts and live deliveries,
a delivery, events; and the forms and buttons that change them. HTML rendered on the server,
with htmx for the live delivery list and nothing else of JavaScript.

Who may see and do what is settled by :mod:`hookd.dashboard.auth` (sessions, CSRF, read-only);
a session limited to some webhooks finds any other as if it did not exist (``404``). Pages
read and write through the same store functions as the API; this module has no SQL.
"""

from __future__ import annotations

import functools
import json
import secrets
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import MISSING
from starlette.responses import Response

from hookd.api.events import encode_data
from hookd.api.schemas import WebhookCreate, WebhookUpdate
from hookd.api.validation import parse_body
from hookd.dashboard import auth
from hookd.dashboard.auth import checked_change, current_session, form_value, read_only
from hookd.dashboard.charts import attempts_chart, hourly_points, p95_chart
from hookd.dashboard.render import app_settings, app_store, html_errors, redirect, render
from hookd.delivery.envelope import event_body
from hookd.errors import ApiError
from hookd.ids import is_event_id, is_object_id, new_secret
from hookd.store import DashboardSession, EventDraft, Store, Webhook
from hookd.store.records import DELIVERY_STATUSES
from hookd.store.rollups import HOUR_MS, Rollup
from hookd.store.webhooks import FIRST_PAGE
from hookd.topics import TOPICS

__all__ = ["router"]

router = APIRouter(prefix="/dashboard", include_in_schema=False)

PAGE_SIZE = 20
WEBHOOKS_PAGE_SIZE = 100
EVENTS_PAGE_SIZE = 25
DEFAULT_TIMEOUT_MS = 5000
GRACE_PERIODS = {"0": "none (the old secret stops now)", "3600": "1 hour", "86400": "24 hours"}
_DAY_MS = 24 * HOUR_MS
_STATIC = Path(__file__).with_name("static")
_ASSETS = {
    "htmx.min.js": "text/javascript; charset=utf-8",
    "htmx.LICENSE": "text/plain; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# Fixed notices a redirect may name (never text from the request).
NOTICES = {
    "created": "Webhook created. Its secret is below: use it to verify signatures.",
    "saved": "Changes saved.",
    "paused": "Webhook paused: deliveries are held until it is reactivated.",
    "active": "Webhook reactivated: held deliveries are sent now.",
    "tested": "Test event queued.",
    "rotated": "Secret refreshed. The new secret is shown below.",
    "retried": "Delivery queued for an attempt now.",
    "recovered": "Recovery queued.",
}


def _missing(kind: str = "webhook") -> ApiError:
    return ApiError(404, "resource_missing", f"No {kind} has this id.", "id")


async def _webhook(request: Request, session: DashboardSession, webhook_id: str) -> Webhook:
    if not is_object_id(webhook_id) or not session.sees(webhook_id):
        raise _missing()
    found = await app_store(request).get_webhook(session.organization_id, webhook_id)
    if found is None:
        raise _missing()
    return found


async def _webhooks(store: Store, session: DashboardSession) -> list[Webhook]:
    """Every webhook the session sees, newest first."""
    if session.webhook_ids is not None:
        found = [await store.get_webhook(session.organization_id, w) for w in session.webhook_ids]
        return sorted((w for w in found if w is not None), key=lambda w: w.id, reverse=True)
    webhooks: list[Webhook] = []
    before = FIRST_PAGE
    while True:
        page = await store.list_webhooks(session.organization_id, None, before, 500)
        webhooks += page
        if len(page) < 500:
            return webhooks
        before = page[-1].id


@router.get("/static/{name}")
async def static_asset(request: Request, name: str) -> Response:
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise ApiError(404, "route_not_found", f"There is no file {name} in /dashboard/static.")
    return Response(
        _asset(name),
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


@functools.cache
def _asset(name: str) -> bytes:
    return (_STATIC / name).read_bytes()


# The webhooks page.


def _failing(w: Webhook) -> bool:
    return (
        w.status == "suspended"
        or w.consecutive_failures > 0
        or (w.last_status_code is not None and not 200 <= w.last_status_code < 300)
    )


def _order(w: Webhook) -> tuple[int, str, str]:
    """Suspended first, then failing, then the rest; by name within each."""
    rank = 0 if w.status == "suspended" else 1 if _failing(w) else 2
    return rank, w.name.lower(), w.id


@dataclass(frozen=True, slots=True)
class Row:
    """A webhook as the webhooks page lists it, with its last 24 hours."""

    webhook: Webhook
    stats: Rollup | None

    @property
    def failing(self) -> bool:
        return _failing(self.webhook)


@router.get("")
@html_errors
async def overview(request: Request, page: str = "1") -> Response:
    session = await current_session(request)
    store = app_store(request)
    webhooks = sorted(await _webhooks(store, session), key=_order)
    pages = max(1, -(-len(webhooks) // WEBHOOKS_PAGE_SIZE))
    number = int(page) if page.isdigit() and len(page) < 7 else 0
    if not 1 <= number <= pages:
        raise ApiError(400, "parameter_invalid", f"page must be from 1 to {pages}.", "page")
    shown = webhooks[(number - 1) * WEBHOOKS_PAGE_SIZE : number * WEBHOOKS_PAGE_SIZE]
    stats = await store.rollup_totals([w.id for w in shown], store.clock() - _DAY_MS)
    return render(
        request,
        "webhooks.html",
        session=session,
        rows=[Row(w, stats.get(w.id)) for w in shown],
        total=len(webhooks),
        first=(number - 1) * WEBHOOKS_PAGE_SIZE + 1,
        page=number,
        pages=pages,
        can_create=not session.read_only and session.webhook_ids is None,
    )


# Create and edit.


def _form_body(form: dict[str, list[str]], errors: dict[str, str]) -> dict[str, Any]:
    """The API request body a webhook form stands for (its own format errors in ``errors``)."""
    body: dict[str, Any] = {
        "name": form_value(form, "name"),
        "url": form_value(form, "url").strip(),
        "topics": form.get("topics", []),
    }
    description = form_value(form, "description")
    body["description"] = description or None
    config: dict[str, Any] = {}
    timeout = form_value(form, "timeoutMs").strip()
    if timeout:
        if timeout.isdigit() and len(timeout) < 10:
            config["timeoutMs"] = int(timeout)
        else:
            errors["timeoutMs"] = "Give a whole number of milliseconds, from 1000 to 30000."
    headers: dict[str, str] = {}
    for line in form_value(form, "headers").splitlines():
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            errors["headers"] = f"Write one header a line as Name: value ({line.strip()[:40]!r})."
            break
        headers[name.strip()] = value.strip()
    config["headers"] = headers
    body["requestConfig"] = config
    return body


def _errorform_value(param: str | None) -> str:
    """The form field an API error's ``param`` is about."""
    if param is None:
        return "form"
    head, _, rest = param.partition(".")
    if head == "requestConfig":
        return rest.partition(".")[0] or "form"
    return head if head in ("name", "url", "description", "topics") else "form"


def _form_values(form: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "name": form_value(form, "name"),
        "url": form_value(form, "url"),
        "description": form_value(form, "description"),
        "topics": form.get("topics", []),
        "timeoutMs": form_value(form, "timeoutMs"),
        "headers": form_value(form, "headers"),
    }


def _webhook_values(w: Webhook) -> dict[str, Any]:
    return {
        "name": w.name,
        "url": w.url,
        "description": w.description or "",
        "topics": list(w.topics),
        "timeoutMs": str(w.timeout_ms),
        "headers": "\n".join(f"{k}: {v}" for k, v in w.headers),
    }


def _validated(
    request: Request, form: dict[str, list[str]], model: type[WebhookCreate] | type[WebhookUpdate]
) -> tuple[Any, dict[str, str]]:
    errors: dict[str, str] = {}
    body = _form_body(form, errors)
    if errors:
        return None, errors
    try:
        parsed = parse_body(
            orjson.dumps(body), model, {"allow_http": app_settings(request).allow_http}
        )
    except ApiError as error:
        return None, {_errorform_value(error.param): error.message}
    return parsed, {}


@router.get("/webhooks/new")
@html_errors
async def new_webhook_page(request: Request) -> Response:
    session = await current_session(request)
    _may_create(session)
    values = {"topics": [], "timeoutMs": str(DEFAULT_TIMEOUT_MS)}
    return _webhook_form(request, session, None, values, {}, 200)


def _may_create(session: DashboardSession) -> None:
    if session.read_only:
        raise read_only()
    if session.webhook_ids is not None:
        raise ApiError(
            403,
            "outside_session_scope",
            "This session is limited to some webhooks and cannot create others.",
        )


def _webhook_form(
    request: Request,
    session: DashboardSession,
    webhook: Webhook | None,
    values: dict[str, Any],
    errors: dict[str, str],
    status: int,
) -> Response:
    return render(
        request,
        "webhook_form.html",
        status,
        session=session,
        webhook=webhook,
        values=values,
        errors=errors,
        topics=TOPICS,
        allow_http=app_settings(request).allow_http,
    )


@router.post("/webhooks")
@html_errors
async def create_webhook(request: Request) -> Response:
    session, form = await checked_change(request)
    _may_create(session)
    parsed, errors = _validated(request, form, WebhookCreate)
    if parsed is None:
        return _webhook_form(request, session, None, _form_values(form), errors, 400)
    config = parsed.requestConfig
    try:
        webhook = await app_store(request).create_webhook(
            session.organization_id,
            name=parsed.name,
            url=parsed.url,
            description=None if parsed.description is MISSING else parsed.description,
            topics=list(dict.fromkeys(parsed.topics)),
            timeout_ms=config.timeoutMs if config.timeoutMs is not MISSING else DEFAULT_TIMEOUT_MS,
            headers=config.headers if config.headers is not MISSING else {},
            secret=new_secret(),
        )
    except ApiError as error:
        errors = {_errorform_value(error.param): error.message}
        return _webhook_form(request, session, None, _form_values(form), errors, error.status)
    return redirect(request, f"/dashboard/webhooks/{webhook.id}?notice=created&reveal=secret")


@router.get("/webhooks/{webhook_id}/edit")
@html_errors
async def edit_webhook_page(request: Request, webhook_id: str) -> Response:
    session = await current_session(request)
    webhook = await _webhook(request, session, webhook_id)
    if session.read_only:
        raise read_only()
    return _webhook_form(request, session, webhook, _webhook_values(webhook), {}, 200)


@router.post("/webhooks/{webhook_id}")
@html_errors
async def update_webhook(request: Request, webhook_id: str) -> Response:
    session, form = await checked_change(request)
    webhook = await _webhook(request, session, webhook_id)
    parsed, errors = _validated(request, form, WebhookUpdate)
    if parsed is None:
        return _webhook_form(request, session, webhook, _form_values(form), errors, 400)
    changes: dict[str, Any] = {
        "name": parsed.name,
        "url": parsed.url,
        "description": parsed.description,
        "topics": list(dict.fromkeys(parsed.topics)),
        "headers": parsed.requestConfig.headers,
    }
    if parsed.requestConfig.timeoutMs is not MISSING:
        changes["timeout_ms"] = parsed.requestConfig.timeoutMs
    await app_store(request).update_webhook(session.organization_id, webhook.id, changes)
    return redirect(request, f"/dashboard/webhooks/{webhook.id}?notice=saved")


# The webhook page and its actions.


def _deliveries_query(status: str | None, before: str | None) -> tuple[str | None, str]:
    if status is not None and status not in DELIVERY_STATUSES:
        raise ApiError(
            400,
            "parameter_invalid",
            f"status must be one of {', '.join(DELIVERY_STATUSES)}.",
            "status",
        )
    if before is not None and not is_object_id(before):
        raise ApiError(400, "parameter_invalid", "before must be a delivery id.", "before")
    return status, before or FIRST_PAGE


async def _deliveries_context(
    request: Request, webhook: Webhook, status: str | None, before: str | None
) -> dict[str, Any]:
    status, start = _deliveries_query(status, before)
    found = await app_store(request).list_deliveries(webhook.id, status, start, PAGE_SIZE + 1)
    older = found[PAGE_SIZE - 1].id if len(found) > PAGE_SIZE else None
    query = {"status": status} if status else {}
    return {
        "webhook": webhook,
        "deliveries": found[:PAGE_SIZE],
        "status_filter": status,
        "statuses": DELIVERY_STATUSES,
        "older": None if older is None else urllib.parse.urlencode({**query, "before": older}),
        "live": before is None,
        "live_query": urllib.parse.urlencode(query),
        "active": webhook.status == "active",
    }


@router.get("/webhooks/{webhook_id}")
@html_errors
async def webhook_page(
    request: Request,
    webhook_id: str,
    status: str | None = None,
    before: str | None = None,
    range: str = "24h",
    reveal: str | None = None,
    notice: str | None = None,
    queued: str | None = None,
) -> Response:
    session = await current_session(request)
    webhook = await _webhook(request, session, webhook_id)
    message = NOTICES.get(notice or "")
    if notice == "recovered" and queued is not None and queued.isdigit() and len(queued) < 10:
        message = f"Recovery queued: {int(queued)} event(s) without a succeeded delivery."
    store = app_store(request)
    now = store.clock()
    hours = 168 if range == "7d" else 24
    series = await store.rollup_series(webhook.id, now - (hours - 1) * HOUR_MS)
    points = hourly_points(series, now, hours)
    day = [r for r in series if r.hour is not None and r.hour > now - _DAY_MS]
    totals = _sum(day)
    window = "7 days" if hours == 168 else "24 hours"
    return render(
        request,
        "webhook.html",
        session=session,
        notice=message,
        reveal=reveal == "secret",
        range=hours,
        totals=totals,
        attempts_svg=attempts_chart(points, f"Attempts per hour over {window}"),
        p95_svg=p95_chart(points, f"p95 response time per hour over {window}"),
        points=points,
        topics=TOPICS,
        grace_periods=GRACE_PERIODS,
        recover_since=_local(now - HOUR_MS),
        recover_until=_local(now),
        errors={},
        **await _deliveries_context(request, webhook, status, before),
    )


def _sum(rollups: list[Rollup]) -> Rollup | None:
    if not rollups:
        return None
    return Rollup(
        rollups[0].webhook_id,
        None,
        sum(r.attempts for r in rollups),
        sum(r.successes for r in rollups),
        sum(r.failures for r in rollups),
        sum(r.time_sum for r in rollups),
        tuple(map(sum, zip(*(r.sketch for r in rollups), strict=True))),
    )


@router.get("/webhooks/{webhook_id}/deliveries")
@html_errors
async def deliveries_fragment(
    request: Request, webhook_id: str, status: str | None = None, before: str | None = None
) -> Response:
    """The delivery table alone: what htmx polls to keep the page live."""
    session = await current_session(request)
    webhook = await _webhook(request, session, webhook_id)
    context = await _deliveries_context(request, webhook, status, before)
    return render(request, "_deliveries.html", session=session, **context)


@router.post("/webhooks/{webhook_id}/status")
@html_errors
async def set_status(request: Request, webhook_id: str) -> Response:
    session, form = await checked_change(request)
    webhook = await _webhook(request, session, webhook_id)
    wanted = form_value(form, "status")
    if wanted not in ("active", "paused"):
        raise ApiError(400, "parameter_invalid", "status must be active or paused.", "status")
    await app_store(request).update_webhook(session.organization_id, webhook.id, {"status": wanted})
    return redirect(request, f"/dashboard/webhooks/{webhook.id}?notice={wanted}")


@router.post("/webhooks/{webhook_id}/test")
@html_errors
async def send_test(request: Request, webhook_id: str) -> Response:
    session, form = await checked_change(request)
    webhook = await _webhook(request, session, webhook_id)
    topic = form_value(form, "topic") or webhook.topics[0]
    if topic not in TOPICS:
        raise ApiError(400, "topic_unknown", "Choose one of the topics listed.", "topic")
    item = {
        "object": "test",
        "id": f"test_{secrets.token_hex(8)}",
        "message": "A test event sent by hookd.",
    }
    await app_store(request).create_test_delivery(
        session.organization_id, webhook.id, EventDraft(topic, encode_data(item, []))
    )
    return redirect(request, f"/dashboard/webhooks/{webhook.id}?notice=tested")


@router.post("/webhooks/{webhook_id}/secret")
@html_errors
async def refresh_secret(request: Request, webhook_id: str) -> Response:
    session, form = await checked_change(request)
    webhook = await _webhook(request, session, webhook_id)
    grace = form_value(form, "gracePeriodSeconds")
    if form_value(form, "confirm") != "yes" or grace not in GRACE_PERIODS:
        raise ApiError(
            400,
            "parameter_invalid",
            "Tick the confirmation and choose a grace period to refresh the secret.",
            "confirm",
        )
    await app_store(request).rotate_secret(
        session.organization_id, webhook.id, new_secret(), int(grace) * 1000
    )
    return redirect(request, f"/dashboard/webhooks/{webhook.id}?notice=rotated&reveal=secret")


def _local(ms: int) -> str:
    """A ``datetime-local`` input's value (UTC, to the minute)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M")


def _parse_local(value: str, field: str) -> int:
    try:
        moment = datetime.strptime(value.strip(), "%Y-%m-%dT%H:%M").replace(tzinfo=UTC)
    except ValueError:
        raise ApiError(
            400, "parameter_invalid", "Give a date and time (UTC) like 2026-01-15T10:30.", field
        ) from None
    return round(moment.timestamp() * 1000)


@router.post("/webhooks/{webhook_id}/recover")
@html_errors
async def recover(request: Request, webhook_id: str) -> Response:
    session, form = await checked_change(request)
    webhook = await _webhook(request, session, webhook_id)
    store = app_store(request)
    now = store.clock()
    since = _parse_local(form_value(form, "since"), "since")
    until = _parse_local(form_value(form, "until"), "until") if form_value(form, "until") else now
    retention_ms = app_settings(request).retention_days * _DAY_MS
    if since > now or until <= since:
        raise ApiError(
            400,
            "window_invalid",
            "The window must start in the past and end after it starts.",
            "since",
        )
    if since < now - retention_ms or until - since > retention_ms:
        raise ApiError(
            400,
            "window_outside_retention",
            "Events older than the retention are purged; recover a window within it.",
            "since",
        )
    queued = await store.recover(
        session.organization_id, webhook.id, list(webhook.topics), since, until
    )
    return redirect(request, f"/dashboard/webhooks/{webhook.id}?notice=recovered&queued={queued}")


# Deliveries.


@router.get("/webhooks/{webhook_id}/deliveries/{delivery_id}")
@html_errors
async def delivery_page(
    request: Request, webhook_id: str, delivery_id: str, notice: str | None = None
) -> Response:
    session = await current_session(request)
    webhook = await _webhook(request, session, webhook_id)
    found = None
    if is_object_id(delivery_id):
        found = await app_store(request).get_delivery(webhook.id, delivery_id)
    if found is None:
        raise _missing("delivery of this webhook")
    delivery, event, attempts = found
    payload = json.dumps(
        orjson.loads(event_body(event, webhook.id, max(1, delivery.attempt_count))),
        indent=2,
        ensure_ascii=False,
    )
    return render(
        request,
        "delivery.html",
        session=session,
        notice=NOTICES.get(notice or ""),
        webhook=webhook,
        delivery=delivery,
        event=event,
        payload=payload,
        attempts=[
            (a, None if a.response_body is None else a.response_body.decode("utf-8", "replace"))
            for a in attempts
        ],
    )


@router.post("/webhooks/{webhook_id}/deliveries/{delivery_id}/retry")
@html_errors
async def retry_delivery(request: Request, webhook_id: str, delivery_id: str) -> Response:
    session, _form_data = await checked_change(request)
    webhook = await _webhook(request, session, webhook_id)
    delivery = None
    if is_object_id(delivery_id):
        delivery = await app_store(request).retry_delivery(webhook.id, delivery_id)
    if delivery is None:
        raise _missing("delivery of this webhook")
    if delivery.status == "cancelled":
        raise ApiError(
            400,
            "delivery_cancelled",
            "This delivery was cancelled (its webhook was deleted) and cannot be retried.",
        )
    return redirect(
        request, f"/dashboard/webhooks/{webhook.id}/deliveries/{delivery.id}?notice=retried"
    )


# Events.


@router.get("/events")
@html_errors
async def events_page(
    request: Request, id: str | None = None, before: str | None = None
) -> Response:
    session = await current_session(request)
    store = app_store(request)
    detail = None
    lookup_error = None
    if id:
        wanted = id.strip()
        found = (
            await store.get_event(session.organization_id, wanted) if is_event_id(wanted) else None
        )
        if found is not None:
            deliveries = [d for d in found.deliveries if session.sees(d.webhook_id)]
            if deliveries or session.webhook_ids is None:
                detail = (found.event, deliveries)
        if detail is None:
            lookup_error = "No event of this organization has this id (notif_ followed by a UUID)."
    recent: list[Any] = []
    older = None
    # A session limited to some webhooks looks events up by id only: the organization's
    # list would show events of webhooks it does not see.
    if session.webhook_ids is None and detail is None:
        if before is not None and not is_event_id(before):
            raise ApiError(400, "parameter_invalid", "before must be an event id.", "before")
        recent = await store.list_events(
            session.organization_id, before=before, limit=EVENTS_PAGE_SIZE + 1
        )
        if len(recent) > EVENTS_PAGE_SIZE:
            recent = recent[:EVENTS_PAGE_SIZE]
            older = recent[-1].id
    names = {w.id: w.name for w in await _webhooks(store, session)} if detail else {}
    return render(
        request,
        "events.html",
        400 if lookup_error else 200,
        session=session,
        lookup=id or "",
        lookup_error=lookup_error,
        detail=detail,
        names=names,
        recent=recent,
        older=older,
        scoped=session.webhook_ids is not None,
    )


router.include_router(auth.router)
