"""How hookd's endpoints are called: FastAPI describes them, hookd runs them.

Endpoints declare their parameters the FastAPI way (``Query``, ``Header``, a dependency on
:func:`authenticate`), so that ``/openapi.json`` describes them. At run time
:class:`HookdRoute` calls them without FastAPI's general-purpose dependency solver, which
costs more than the whole of a typical request: it authenticates first (SPEC §2 order:
key, rate limit, version), then reads the few kinds of parameters hookd uses — path strings,
query integers with bounds, bounded strings, choices, and header strings — with the error
codes of SPEC §2, and refuses query parameters the endpoint does not declare.

It also answers without FastAPI's per-request wrapper (two ``AsyncExitStack`` objects for
dependencies with ``yield``, which hookd has none of, and an exception handler of its own
that does what the app's ``ExceptionMiddleware`` does one layer out): the handler's
response is sent as is, and an exception goes on to that middleware, which answers it
with the same handlers (an ``ApiError`` in SPEC §2's shape).
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import annotated_types
from fastapi import Request
from fastapi.routing import APIRoute
from pydantic_core import PydanticUndefined
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from hookd.api.auth import authenticate, authenticate_in_write
from hookd.errors import ApiError

__all__ = ["HookdRoute", "V2Routes"]

_INTEGER = re.compile(r"[0-9]{1,9}\Z")
# The dependencies that authenticate a request (hookd.api.auth): a route declares one.
_AUTHENTICATORS = (authenticate, authenticate_in_write)


@dataclass(frozen=True, slots=True)
class _QueryParam:
    name: str
    alias: str
    kind: str  # "int", "str" or "choice"
    default: Any
    minimum: int | None = None
    maximum: int | None = None
    max_length: int | None = None
    choices: tuple[str, ...] = ()

    def parse(self, raw: str) -> Any:
        if self.kind == "int":
            number = int(raw) if _INTEGER.match(raw) else None
            if (
                number is None
                or (self.minimum is not None and number < self.minimum)
                or (self.maximum is not None and number > self.maximum)
            ):
                raise ApiError(
                    400,
                    "parameter_invalid",
                    f"{self.alias} must be an integer from {self.minimum} to {self.maximum}.",
                    self.alias,
                )
            return number
        if self.kind == "choice":
            if raw not in self.choices:
                raise ApiError(
                    400,
                    "parameter_invalid",
                    f"{self.alias} must be one of {', '.join(self.choices)}.",
                    self.alias,
                )
            return raw
        if self.max_length is not None and len(raw) > self.max_length:
            if self.alias == "cursor":
                raise ApiError(
                    400,
                    "cursor_invalid",
                    "cursor is too long to be a cursor of this list.",
                    "cursor",
                )
            raise ApiError(
                400,
                "parameter_invalid",
                f"{self.alias} must be at most {self.max_length} characters.",
                self.alias,
            )
        return raw


def _query_param(field: Any) -> _QueryParam:
    annotation = field.field_info.annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    inner = args[0]
    bounds = {type(m): m for m in field.field_info.metadata}
    ge = bounds.get(annotated_types.Ge)
    le = bounds.get(annotated_types.Le)
    max_len = bounds.get(annotated_types.MaxLen)
    default = None if field.default is PydanticUndefined else field.default
    if typing.get_origin(inner) is typing.Literal:
        return _QueryParam(
            field.name, field.alias, "choice", default, choices=tuple(typing.get_args(inner))
        )
    if inner is int:
        return _QueryParam(
            field.name,
            field.alias,
            "int",
            default,
            minimum=None if ge is None else int(ge.ge),
            maximum=None if le is None else int(le.le),
        )
    return _QueryParam(
        field.name,
        field.alias,
        "str",
        default,
        max_length=None if max_len is None else int(max_len.max_length),
    )


def _respond(handler: Callable[[Request], Coroutine[Any, Any, Response]]) -> ASGIApp:
    """The route's ASGI app: the handler's response, sent (see the module docstring)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = await handler(Request(scope, receive, send))
        await response(scope, receive, send)

    return app


class HookdRoute(APIRoute):
    """An APIRoute whose endpoint hookd calls itself (see the module docstring)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.app = _respond(self.get_route_handler())

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        dependant = self.dependant
        endpoint = self.endpoint
        authenticators = [d for d in dependant.dependencies if d.call in _AUTHENTICATORS]
        principal_names = [d.name for d in authenticators if d.name]
        unsupported = [d for d in dependant.dependencies if d.call not in _AUTHENTICATORS]
        if len({d.call for d in authenticators}) > 1:
            raise TypeError(f"{self.path}: one way to authenticate per route")
        in_write = any(d.call is authenticate_in_write for d in authenticators)
        authenticator = authenticate_in_write if in_write else authenticate
        if unsupported or dependant.body_params or dependant.cookie_params:
            raise TypeError(
                f"{self.path}: HookdRoute supports only authenticate, path, query and header params"
            )
        request_name = dependant.request_param_name
        path_names = [p.name for p in dependant.path_params]
        query = [_query_param(q) for q in dependant.query_params]
        allowed = {q.alias for q in query}
        headers = [(h.name, h.alias) for h in dependant.header_params]

        async def handler(request: Request) -> Response:
            kwargs: dict[str, Any] = {}
            if principal_names:
                principal = await authenticator(request)
                for name in principal_names:
                    kwargs[name] = principal
            if request_name:
                kwargs[request_name] = request
            path_params = request.path_params
            for name in path_names:
                kwargs[name] = path_params[name]
            if request.scope["query_string"]:
                params = request.query_params
                for key in params:
                    if key not in allowed:
                        raise ApiError(
                            400,
                            "parameter_unknown",
                            f"{key!r} is not a parameter of this request; remove it.",
                            key or None,
                        )
                    if len(params.getlist(key)) > 1:
                        raise ApiError(
                            400, "parameter_invalid", f"{key} is given more than once.", key
                        )
                for q in query:
                    raw = params.get(q.alias)
                    kwargs[q.name] = q.default if raw is None else q.parse(raw)
            else:
                for q in query:
                    kwargs[q.name] = q.default
            for name, alias in headers:
                kwargs[name] = request.headers.get(alias)
            response: Response = await endpoint(**kwargs)
            return response

        return handler


class V2Routes(BaseRoute):
    """Every ``/v2`` route behind one entry of the app's route list, found by the number of
    path segments instead of trying each route's pattern in turn, and a route without path
    parameters (``POST /v2/events``) by a look-up of its method and path, where no route
    tried before it would match that method and path. A route found is run as its own ASGI
    app: the method was checked in finding it (a method it does not take goes through the
    route's ``handle``, which answers the ``405``)."""

    def __init__(self, routes: list[APIRoute]) -> None:
        self.routes = routes
        self._by_depth: dict[int, list[APIRoute]] = {}
        self._static: dict[tuple[str, str], APIRoute] = {}
        for route in routes:
            same_depth = self._by_depth.setdefault(route.path.count("/"), [])
            static = "{" not in route.path
            for method in route.methods or ():
                # Only where the walk below would find this route first for the method.
                if static and not any(
                    method in (earlier.methods or ()) and earlier.path_regex.match(route.path)
                    for earlier in same_depth
                ):
                    self._static[(method, route.path)] = route
            same_depth.append(route)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path: str = scope["path"]
        if not path.startswith("/v2/") or scope["type"] != "http":
            return Match.NONE, {}
        found = self._static.get((scope["method"], path))
        if found is not None:
            path_params = dict(scope.get("path_params", {}))
            return Match.FULL, {
                "endpoint": found.endpoint,
                "path_params": path_params,
                "route": found,
            }
        partial: tuple[Match, Scope] | None = None
        for route in self._by_depth.get(path.count("/"), ()):
            match, child = route.matches(scope)
            if match == Match.FULL:
                return match, child
            if match == Match.PARTIAL and partial is None:
                partial = (match, child)
        return partial or (Match.NONE, {})

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        route: APIRoute = scope["route"]
        if scope["method"] in (route.methods or ()):
            await route.app(scope, receive, send)
        else:
            await route.handle(scope, receive, send)
