"""How the dashboard answers: its templates (autoescaped), the security headers of every
page, redirects, and :func:`html_errors`, which turns an endpoint's :class:`ApiError` into a
page (or, to htmx, a fragment) with the error's status, code and message."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ParamSpec

from fastapi import Request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse, RedirectResponse, Response

from hookd.clock import iso_ms
from hookd.errors import ApiError
from hookd.settings import Settings
from hookd.store import DashboardSession, Store

__all__ = [
    "app_settings",
    "app_store",
    "html_errors",
    "redirect",
    "render",
    "secure",
    "security_headers",
]

SIGN_IN_PATH = "/dashboard/sign-in"

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)

P = ParamSpec("P")


def _time(ms: int | None) -> str:
    return "—" if ms is None else iso_ms(ms)[:19].replace("T", " ") + " UTC"


def _percent(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f} %"


_templates.filters["time"] = _time
_templates.filters["percent"] = _percent


def security_headers(settings: Settings) -> dict[str, str]:
    """Headers of every dashboard response: a CSP without inline scripts, no framing but
    by ``HOOKD_PORTAL_FRAME_ANCESTORS``, no referrer (a portal link carries a token)."""
    ancestors = settings.portal_frame_ancestors or "'none'"
    return {
        "Content-Security-Policy": (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors {ancestors}"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def app_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def render(
    request: Request,
    template: str,
    http_status: int = 200,
    session: DashboardSession | None = None,
    **context: Any,
) -> HTMLResponse:
    html = _templates.get_template(template).render(
        session=session,
        can_change=session is not None and not session.read_only,
        path=request.url.path,
        **context,
    )
    return HTMLResponse(
        html, status_code=http_status, headers=security_headers(app_settings(request))
    )


def redirect(request: Request, url: str) -> Response:
    return RedirectResponse(url, status_code=303, headers=security_headers(app_settings(request)))


def secure(request: Request) -> bool:
    public = app_settings(request).public_url or ""
    return request.url.scheme == "https" or public.startswith("https://")


def html_errors(
    endpoint: Callable[P, Awaitable[Response]],
) -> Callable[P, Awaitable[Response]]:
    """Answer an endpoint's :class:`ApiError` as a page (or, to htmx, a fragment) with the
    error's status, code and message; a request without a session is sent to sign in."""

    @functools.wraps(endpoint)
    async def wrapped(*args: P.args, **kwargs: P.kwargs) -> Response:
        request = kwargs["request"]
        assert isinstance(request, Request)
        try:
            return await endpoint(*args, **kwargs)
        except ApiError as error:
            htmx = request.headers.get("hx-request") == "true"
            if error.code == "session_missing":
                if htmx:
                    return Response(
                        status_code=401,
                        headers={
                            "HX-Redirect": SIGN_IN_PATH,
                            **security_headers(app_settings(request)),
                        },
                    )
                if request.method == "GET":
                    return redirect(request, SIGN_IN_PATH)
            return render(
                request,
                "_error.html" if htmx else "error.html",
                error.status,
                status=error.status,
                code=error.code,
                message=error.message,
            )

    return wrapped
