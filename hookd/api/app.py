"""The ASGI application: routes, the SPEC §2 conventions that apply to every response,
``/openapi.json`` (built by :mod:`hookd.api.spec`) and ``/docs`` (Swagger UI, vendored)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hookd import __version__, tracing
from hookd.api import deliveries, events, portal, webhooks
from hookd.api.auth import KnownKeys, RateLimiter
from hookd.api.feed import Feed
from hookd.api.render import JSONResponse
from hookd.api.routing import V2Routes
from hookd.api.schemas import StatusOut
from hookd.api.spec import build_openapi, operation
from hookd.api.validation import MAX_BODY_BYTES
from hookd.errors import ApiError, DatabaseUnavailable
from hookd.metrics import CONTENT_TYPE, METRICS, UNMATCHED_ROUTE, Metrics, QueueGauges, check_token
from hookd.settings import DEFAULT_API_VERSION, Settings
from hookd.store import Store

__all__ = ["create_app"]

log = logging.getLogger("hookd.api")

Lifespan = Callable[[FastAPI], Awaitable[None]]


class ConventionsMiddleware:
    """Adds ``Featurebase-Version`` and the rate-limit headers to every response, and holds
    request bodies to 256 KiB (``413``) whether or not they declare a length."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Featurebase-Version"] = state.get("version", DEFAULT_API_VERSION)
                for name, value in state.get("rate_headers", {}).items():
                    headers[name] = value
            await send(message)

        length = _content_length(scope)
        if length is not None and length > MAX_BODY_BYTES:
            error = _too_large()
            response = JSONResponse(error.body(), status_code=error.status)
            await response(scope, receive, send_with_headers)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise _too_large()
            return message

        await self.app(scope, limited_receive, send_with_headers)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetricsMiddleware:
    """Counts and times every request by method, route template (``scope["route"]``, set
    by the router; never the raw path, so ids do not become label values) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before it responds

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            method = scope["method"]
            self.metrics.http_request(
                method if method in _METHODS else "other",
                getattr(route, "path", UNMATCHED_ROUTE),
                status,
                time.perf_counter() - started,
            )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large() -> ApiError:
    return ApiError(
        413, "body_too_large", f"The request body is over {MAX_BODY_BYTES // 1024} KiB."
    )


def _error_response(request: Request, error: ApiError) -> Response:
    response = JSONResponse(error.body(), status_code=error.status, headers=error.headers)
    response.headers["Featurebase-Version"] = getattr(request.state, "version", DEFAULT_API_VERSION)
    return response


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if isinstance(exc, DatabaseUnavailable):
        log.warning("database unavailable: %s", exc.detail)
    return _error_response(request, exc)


async def _query_error(request: Request, exc: Exception) -> Response:
    # hookd's routes parse their own parameters (hookd.api.routing); this answers for any
    # route FastAPI would validate itself, in the same words.
    assert isinstance(exc, RequestValidationError)
    where = [str(p) for p in exc.errors()[0].get("loc", ())]
    param = where[-1] if where else None
    error = ApiError(
        400, "parameter_invalid", f"{param} is not valid; see /openapi.json for its rule.", param
    )
    return _error_response(request, error)


def _allowed_methods(request: Request) -> list[str]:
    # Starlette names only the first route whose path matched; a resource has several.
    path = request.url.path
    table: list[tuple[re.Pattern[str], set[str]]] = request.app.state.methods_by_path
    methods = {m for pattern, allowed in table if pattern.match(path) for m in allowed}
    return sorted(methods - {"HEAD"}) or ["GET"]


def _methods_by_path(
    routers: list[APIRouter], app: FastAPI
) -> list[tuple[re.Pattern[str], set[str]]]:
    table: dict[str, set[str]] = {}
    for route in [*app.routes, *(r for router in routers for r in router.routes)]:
        if isinstance(route, APIRoute | Route) and route.methods:
            table.setdefault(route.path, set()).update(route.methods)
    return [(compile_path(path)[0], methods) for path, methods in table.items()]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        error = ApiError(
            404, "route_not_found", f"There is no endpoint {request.url.path}; see /openapi.json."
        )
    elif exc.status_code == 405:
        allowed = _allowed_methods(request)
        error = ApiError(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed on {request.url.path}; use {', '.join(allowed)}.",
            headers={"Allow": ", ".join(allowed)},
        )
    else:
        error = ApiError(exc.status_code, "http_error", f"{exc.detail}.")
    return _error_response(request, error)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error_response(
        request,
        ApiError(500, "internal_error", "hookd failed to handle this request; it was logged."),
    )


_STATIC = Path(__file__).with_name("static") / "swagger-ui"
_ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "init.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "LICENSE": "text/plain; charset=utf-8",
    "NOTICE": "text/plain; charset=utf-8",
    "swagger-ui-bundle.js.LICENSE.txt": "text/plain; charset=utf-8",
}
_DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hookd API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/init.js"></script>
</body>
</html>
"""


@cache
def _docs_asset(name: str) -> tuple[bytes, str] | None:
    """A file of the vendored Swagger UI (see static/swagger-ui/VENDORED.md), read once."""
    media_type = _ASSET_TYPES.get(name)
    if media_type is None:
        return None
    return (_STATIC / name).read_bytes(), media_type


def create_app(
    settings: Settings,
    store: Store,
    *,
    on_startup: Lifespan | None = None,
    on_shutdown: Lifespan | None = None,
) -> FastAPI:
    """The API over ``store``. ``on_startup``/``on_shutdown`` run in the app's lifespan (the
    delivery worker of ``hookd serve`` hooks in there)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if on_startup is not None:
            await on_startup(app)
        gauges: QueueGauges | None = getattr(app.state, "gauges", None)
        if gauges is not None:
            gauges.prime()
        try:
            yield
        finally:
            await feed.stop()
            if on_shutdown is not None:
                await on_shutdown(app)

    app = FastAPI(
        title="hookd",
        version=__version__,
        summary="Featurebase's v2 Webhooks API, self-hosted, with real delivery.",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        default_response_class=JSONResponse,
        # hookd exports Prometheus metrics itself; FastAPI's OpenTelemetry hooks would cost
        # a provider lookup on every request for nothing.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.router.redirect_slashes = False
    app.state.settings = settings
    app.state.store = store
    app.state.limiter = RateLimiter(settings.rate_limit)
    app.state.known_keys = KnownKeys()
    # The event streams' feed; a server closes it as it begins to shut down (hookd.server).
    feed = app.state.feed = Feed(store)
    app.add_middleware(ConventionsMiddleware)
    if settings.metrics:
        app.add_middleware(HttpMetricsMiddleware, metrics=METRICS)
    if tracing.enabled():
        app.add_middleware(tracing.TracingMiddleware)  # outermost: spans the whole request
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _query_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)

    @app.get(
        "/healthz",
        tags=["Operations"],
        **operation(
            "getHealth", "The process is alive", ok=(200, StatusOut, "Alive"), secured=False
        ),
    )
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get(
        "/readyz",
        tags=["Operations"],
        **operation(
            "getReadiness",
            "The database accepts a write",
            ok=(200, StatusOut, "Ready"),
            errors=(503,),
            secured=False,
        ),
    )
    async def readyz() -> Response:
        # A real write, not a read: a full disk or a read-only database still answers
        # reads, and a load balancer must stop sending traffic that would get 503s.
        await store.check_ready()
        return JSONResponse({"status": "ready"})

    if settings.metrics:
        gauges = app.state.gauges = QueueGauges(store.queue_snapshot)

        @app.get(
            "/metrics",
            tags=["Operations"],
            **operation(
                "getMetrics",
                "Prometheus metrics",
                ok=(200, None, "The metrics in Prometheus' text format (SPEC §8)"),
                media_type="text/plain",
                secured=False,
                security=[{"metricsToken": []}],
                errors=(401, 503),
                description="This process's counters and histograms, and the gauges read "
                "from the database (at most once per 5 s). With HOOKD_METRICS_TOKEN set, "
                "it needs `Authorization: Bearer <token>`.",
            ),
        )
        async def metrics(request: Request) -> Response:
            refused = check_token(settings.metrics_token, request.headers.get("authorization"))
            if refused is not None:
                raise refused
            body = METRICS.render() + await gauges.render()
            return Response(body, headers={"Content-Type": CONTENT_TYPE})

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return HTMLResponse(_DOCS_PAGE)

    @app.get("/docs/assets/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        found = _docs_asset(name)
        if found is None:
            raise ApiError(404, "route_not_found", f"There is no file {name} in /docs/assets.")
        content, media_type = found
        return Response(
            content, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"}
        )

    # Publishing is the hottest route: first in line.
    routers = [events.router, webhooks.router, deliveries.router, events.lookup_router]
    routers.append(portal.router)  # the dashboard's portal links (SPEC §9)
    documented = list(app.routes)
    v2 = V2Routes(
        [route for router in routers for route in router.routes if isinstance(route, APIRoute)]
    )
    app.router.routes.insert(0, v2)
    documented += v2.routes
    if settings.dashboard:
        # The dashboard's HTML pages (SPEC §9), not API operations: outside the document.
        from hookd.dashboard.web import router as dashboard_router

        app.include_router(dashboard_router)
    app.state.methods_by_path = _methods_by_path(routers, app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(
                documented,
                title=app.title,
                version=app.version,
                summary=app.summary or "",
                allow_http=settings.allow_http,
                # Without a token /metrics takes no credential (security: [], no 401).
                disabled_schemes=() if settings.metrics_token else ("metricsToken",),
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
