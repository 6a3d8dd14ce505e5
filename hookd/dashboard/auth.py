"""Dashboard sessions (SPEC §9): signing in with an API key, opening a one-time portal link,
signing out, and the checks every page and change goes through.

A session lives in the ``hookd_session`` cookie (``HttpOnly``, ``SameSite=Lax``, ``Secure``
on https); the store keeps only its hash (:mod:`hookd.store.sessions`) and ends it at its
expiry or when its API key is revoked. Every ``POST`` carries the session's CSRF token (a
form field, or the ``X-CSRF-Token`` header htmx sends); the sign-in form, made before any
session, carries a token that must match its own cookie. A read-only session may change
nothing (``403 read_only_session``).
"""

from __future__ import annotations

import hmac
import secrets
import urllib.parse

from fastapi import APIRouter, Request
from starlette.responses import Response

from hookd.dashboard.render import app_store, html_errors, redirect, render, secure
from hookd.errors import ApiError
from hookd.ids import API_KEY_PREFIX, api_key_hash
from hookd.store import DashboardSession
from hookd.store.rollups import HOUR_MS

__all__ = [
    "SESSION_COOKIE",
    "checked_change",
    "current_session",
    "form_value",
    "read_form",
    "read_only",
    "router",
]

router = APIRouter(include_in_schema=False)

SESSION_COOKIE = "hookd_session"
SIGN_IN_COOKIE = "hookd_sign_in"
SESSION_MS = 12 * HOUR_MS


def read_only() -> ApiError:
    return ApiError(
        403, "read_only_session", "This session is read-only: it can look but not change."
    )


async def current_session(request: Request) -> DashboardSession:
    token = request.cookies.get(SESSION_COOKIE)
    session = None
    if token and len(token) <= 100:
        session = await app_store(request).get_session(token)
    if session is None:
        raise ApiError(
            401,
            "session_missing",
            "Sign in to the dashboard again: this session ended, expired, or its API key was revoked.",
        )
    return session


async def read_form(request: Request) -> dict[str, list[str]]:
    body = (await request.body()).decode("utf-8", "replace")
    try:
        return urllib.parse.parse_qs(body, keep_blank_values=True, max_num_fields=200)
    except ValueError:
        raise ApiError(400, "parameter_invalid", "This form has too many fields.") from None


def form_value(form: dict[str, list[str]], name: str) -> str:
    values = form.get(name)
    return values[0] if values else ""


async def checked_change(request: Request) -> tuple[DashboardSession, dict[str, list[str]]]:
    """The session and form of a request that changes something, after checking that the
    session may change things and that the request carries its CSRF token."""
    session = await current_session(request)
    form = await read_form(request)
    sent = request.headers.get("x-csrf-token") or form_value(form, "csrf_token")
    if not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
        raise ApiError(
            403,
            "csrf_invalid",
            "This form is out of date or did not come from the dashboard; reload the page and try again.",
        )
    if session.read_only:
        raise read_only()
    return session, form


@router.get("/sign-in")
@html_errors
async def sign_in_page(request: Request) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if token and len(token) <= 100 and await app_store(request).get_session(token) is not None:
        return redirect(request, "/dashboard")
    return _sign_in_form(request, 200, {})


def _sign_in_form(request: Request, status: int, errors: dict[str, str]) -> Response:
    csrf = secrets.token_urlsafe(24)
    response = render(request, "sign_in.html", status, csrf=csrf, errors=errors)
    response.set_cookie(
        SIGN_IN_COOKIE,
        csrf,
        max_age=3600,
        path="/dashboard",
        httponly=True,
        samesite="lax",
        secure=secure(request),
    )
    return response


def _set_session_cookie(request: Request, response: Response, token: str, expires_at: int) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max(1, (expires_at - app_store(request).clock()) // 1000),
        path="/dashboard",
        httponly=True,
        samesite="lax",
        secure=secure(request),
    )


@router.post("/sign-in")
@html_errors
async def sign_in(request: Request) -> Response:
    form = await read_form(request)
    expected = request.cookies.get(SIGN_IN_COOKIE, "")
    sent = form_value(form, "csrf_token")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise ApiError(
            403,
            "csrf_invalid",
            "This sign-in form is out of date; open /dashboard/sign-in again.",
        )
    key = form_value(form, "api_key").strip()
    store = app_store(request)
    if not key.startswith(API_KEY_PREFIX) or len(key) > 256:
        return _sign_in_form(request, 401, {"api_key": "An API key starts with sk_."})
    context = await store.authenticate(api_key_hash(key))
    if context is None:
        return _sign_in_form(request, 401, {"api_key": "This API key does not exist."})
    if context.revoked:
        return _sign_in_form(request, 401, {"api_key": "This API key has been revoked."})
    expires_at = store.clock() + SESSION_MS
    token = await store.create_session(
        context.organization.id, context.key_id, None, False, expires_at
    )
    response = redirect(request, "/dashboard")
    _set_session_cookie(request, response, token, expires_at)
    response.delete_cookie(SIGN_IN_COOKIE, path="/dashboard")
    return response


@router.get("/portal/{token}")
@html_errors
async def open_portal(request: Request, token: str) -> Response:
    store = app_store(request)
    opened = await store.open_portal_link(token) if len(token) <= 100 else None
    session = None if opened is None else await store.get_session(opened)
    if opened is None or session is None:
        raise ApiError(
            404,
            "portal_link_invalid",
            "This link has been used already or has expired; ask for a new one.",
        )
    target = "/dashboard"
    if session.webhook_ids is not None and len(session.webhook_ids) == 1:
        target = f"/dashboard/webhooks/{session.webhook_ids[0]}"
    response = redirect(request, target)
    _set_session_cookie(request, response, opened, session.expires_at)
    return response


@router.post("/sign-out")
@html_errors
async def sign_out(request: Request) -> Response:
    session = await current_session(request)
    form = await read_form(request)
    if not hmac.compare_digest(
        form_value(form, "csrf_token").encode(), session.csrf_token.encode()
    ):
        raise ApiError(403, "csrf_invalid", "Reload the page and sign out again.")
    await app_store(request).end_session(session.id)
    response = redirect(request, "/dashboard/sign-in")
    response.delete_cookie(SESSION_COOKIE, path="/dashboard")
    return response
