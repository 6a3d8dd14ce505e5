"""How hookd's endpoints describe themselves in ``/openapi.json`` (SPEC §7).

The document must be faithful: every rule the server enforces is stated, and nothing is
declared that the server refuses (a schemathesis run with every check proves it, see
``tests/test_openapi.py``). FastAPI lays out the paths and parameters from the endpoints'
signatures; :func:`build_openapi` then writes every operation's request body, responses,
headers, links and security from the operation's declaration and the tables below, so that
a rule lives in one place.

How a new endpoint declares itself
----------------------------------
Pass :func:`operation` to the route decorator::

    @router.post(
        "/{id}/things",
        **operation(
            "createThing",                  # operationId: short, stable, camelCase, unique
            "Create a thing",               # summary
            ok=(201, ThingOut, "Created"),  # success status, response model, description
            body=ThingIn,                   # request body model (parsed by the endpoint)
            body_required=False,            # when the body may be left out
            errors=(409,),                  # statuses beyond the derived ones (below)
            headers=("Idempotent-Replayed",),  # success-response headers, from RESPONSE_HEADERS
            links={"getThing": {"thingId": "$response.body#/id"}},  # follow ids (stateful tests)
        ),
    )

- Error statuses are derived: every ``/v2`` operation (``secured``) answers 400, 401, 429 and
  503; one with path parameters 404; one that reads a body (POST, PATCH, PUT) 413 and 415.
  Add the others with ``errors``; every error response is the ``ErrorOut`` schema, and a
  ``default`` response covers what no operation declares (405 with ``Allow``, 500).
- Error codes come from :data:`hookd.errors.ERROR_CODES` (the ``ErrorCode`` enum): add a new
  code there first (a test finds every code raised in hookd's source and checks the table).
- Response headers come from :data:`RESPONSE_HEADERS` and the rules in :func:`_headers_for`:
  ``Featurebase-Version`` on every response, the rate-limit headers on every answer of a
  secured operation but 401, ``Retry-After`` on 429; an operation names extra ones for its
  success response.
- Parameters: declare their schemas in the endpoint's signature; a shared enum or pattern is
  a component of :data:`hookd.api.schemas.COMPONENTS`, used as
  ``Annotated[..., WithJsonSchema(ref("Name"))]``. ``Featurebase-Version`` is added here.
- Request and response models are pydantic models (see :mod:`hookd.api.schemas` for how an
  optional field avoids a ``null`` it does not take); they become components by class name.
- Public endpoints (no API key) pass ``secured=False``: they get ``security: []``. One that
  takes another credential passes ``security=[{"scheme": []}]`` (``{}`` in the list when the
  credential is optional) with the scheme added to :data:`SECURITY_SCHEMES`, and its own
  ``errors`` (e.g. ``401``).
- HTML pages (the dashboard) are not API operations: declare them with
  ``include_in_schema=False`` and they are neither documented nor required to be.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute

from hookd.api.schemas import (
    COMPONENTS,
    ErrorOut,
    NotificationEvent,
    ref,
    resolve_components,
    url_component,
)
from hookd.api.validation import IDEMPOTENCY_KEY_PATTERN, anchored
from hookd.errors import ERROR_CODES, ApiError
from hookd.ids import is_object_id

__all__ = [
    "RESPONSE_HEADERS",
    "SECURITY_SCHEMES",
    "Operation",
    "build_openapi",
    "operation",
    "webhook_id_param",
]

_STATUS_TEXT = {
    400: "Invalid input",
    401: "Missing, malformed, unknown or revoked API key",
    403: "Forbidden",
    404: "No such object (or another organization's)",
    405: "Method not allowed",
    408: "Request headers not received within 10 s",
    413: "Body over 256 KiB",
    415: "Body not sent as application/json",
    429: "Rate limit reached",
    431: "Request headers too large",
    500: "A fault of hookd",
    503: "Database unavailable",
}

#: Every response header hookd documents, by name.
RESPONSE_HEADERS: dict[str, dict[str, Any]] = {
    "Featurebase-Version": {
        "description": "The API version the request was answered in.",
        "schema": ref("ResolvedApiVersion"),
    },
    "X-RateLimit-Limit": {
        "description": "Requests a minute this API key may make (absent when the server "
        "has no rate limit, HOOKD_RATE_LIMIT=0).",
        "schema": {"type": "integer", "minimum": 1},
    },
    "X-RateLimit-Remaining": {
        "description": "Requests left in this minute.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "X-RateLimit-Reset": {
        "description": "When the minute ends, in Unix seconds.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "Retry-After": {
        "description": "Seconds to wait before the next request.",
        "schema": {"type": "integer", "minimum": 1},
    },
    "Idempotent-Replayed": {
        "description": "`true` when this is the answer to an earlier request with the same "
        "Idempotency-Key (nothing new was created).",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Allow": {
        "description": "On 405: the methods the path takes.",
        "schema": {"type": "string"},
    },
}
_RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")

#: Every way of authenticating a request, by name.
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key of the organization, sk_... (hookd keys create).",
    },
    "metricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The server's HOOKD_METRICS_TOKEN (only when it is set).",
    },
}

# A signature header of the delivery request (SPEC §5), for the top-level ``webhooks``.
_DELIVERY_HEADERS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "X-Webhook-Timestamp",
        "Unix seconds at sending.",
        {"type": "string", "pattern": "^[0-9]+$"},
    ),
    (
        "X-Webhook-Signature",
        "Lowercase hex HMAC-SHA256 of `{X-Webhook-Timestamp}.{raw body}`, keyed with the "
        "whole secret (`whsec_...`) as UTF-8 (Featurebase's scheme).",
        {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    ),
    ("webhook-id", "The event id, the same on every attempt.", ref("EventId")),
    ("webhook-timestamp", "Unix seconds at sending.", {"type": "string", "pattern": "^[0-9]+$"}),
    (
        "webhook-signature",
        "`v1,` and the base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{raw body}`, "
        "keyed with the base64-decoded part of the secret after `whsec_` (Standard Webhooks); "
        "during a secret's grace period one such signature per live secret, space-separated.",
        {"type": "string", "pattern": "^v1,[A-Za-z0-9+/=]+( v1,[A-Za-z0-9+/=]+)*$"},
    ),
    ("X-Webhook-Topic", "The event's topic.", ref("Topic")),
    (
        "X-Webhook-Attempt",
        "The attempt's number, from 1.",
        {"type": "string", "pattern": "^[1-9][0-9]*$"},
    ),
]

_TAGS = [
    {"name": "Webhooks", "description": "Featurebase's v2 webhook endpoints (SPEC §3)."},
    {"name": "Events", "description": "Publishing events to every subscribed webhook."},
    {"name": "Delivery log", "description": "Deliveries and attempts; retry, test, recover."},
    {"name": "Operations", "description": "Liveness, readiness and metrics; no API key."},
]


@dataclass(frozen=True, slots=True)
class Operation:
    """What an endpoint says about itself beyond its signature (see :func:`operation`)."""

    operation_id: str
    summary: str
    ok_status: int
    ok_model: type[BaseModel] | None
    ok_description: str
    ok_media_type: str = "application/json"
    body: type[BaseModel] | None = None
    body_required: bool = True
    errors: tuple[int, ...] = ()
    headers: tuple[str, ...] = ()
    links: dict[str, dict[str, str]] = field(default_factory=dict)
    secured: bool = True
    description: str | None = None
    security: tuple[dict[str, list[str]], ...] | None = None


_OPERATIONS: dict[str, Operation] = {}


def operation(
    operation_id: str,
    summary: str,
    *,
    ok: tuple[int, type[BaseModel] | None, str],
    body: type[BaseModel] | None = None,
    body_required: bool = True,
    errors: Iterable[int] = (),
    headers: Iterable[str] = (),
    links: dict[str, dict[str, str]] | None = None,
    secured: bool = True,
    media_type: str = "application/json",
    description: str | None = None,
    security: list[dict[str, list[str]]] | None = None,
) -> dict[str, Any]:
    """Declare an endpoint's contract; the result is keyword arguments for the route
    decorator (see the module docstring)."""
    status, model, ok_description = ok
    declared = Operation(
        operation_id,
        summary,
        status,
        model,
        ok_description,
        media_type,
        body,
        body_required,
        tuple(errors),
        tuple(headers),
        dict(links or {}),
        secured,
        description,
        None if security is None else tuple(security),
    )
    unknown = [h for h in declared.headers if h not in RESPONSE_HEADERS]
    unknown += [name for req in security or () for name in req if name not in SECURITY_SCHEMES]
    if unknown:
        raise ValueError(f"{operation_id}: add {unknown} to RESPONSE_HEADERS/SECURITY_SCHEMES")
    if _OPERATIONS.get(operation_id, declared) != declared:
        raise ValueError(f"operationId {operation_id!r} is declared twice")
    _OPERATIONS[operation_id] = declared
    return {
        "operation_id": operation_id,
        "summary": summary,
        "description": description,
        "status_code": status,
    }


def webhook_id_param(value: str, kind: str = "webhook") -> str:
    """A path id; a malformed one answers like an unknown one."""
    if not is_object_id(value):
        raise ApiError(404, "resource_missing", f"No {kind} has this id.", "id")
    return value


def _error_statuses(op: Operation, method: str, path: str) -> list[int]:
    # Any request can be too slow or too large in its headers (hookd/limits.py answers
    # before routing), so every operation lists both.
    statuses = set(op.errors) | {408, 431}
    if op.secured:
        statuses |= {400, 401, 429, 503}
    if "{" in path:
        statuses.add(404)
    if method in ("post", "patch", "put"):
        statuses |= {413, 415}
    return sorted(statuses)


def _header_ref(name: str, *, required: bool) -> dict[str, Any]:
    # A header's `required` belongs to the response that carries it, so it is a sibling of
    # the reference (allowed in OpenAPI 3.1) rather than part of the shared component.
    return (
        {"$ref": f"#/components/headers/{name}", "required": required}
        if required
        else {"$ref": f"#/components/headers/{name}"}
    )


def _headers_for(op: Operation, status: int | str) -> dict[str, Any]:
    headers = {"Featurebase-Version": _header_ref("Featurebase-Version", required=True)}
    # 401s and the protocol's own 408/431 answers come before any key is counted.
    if op.secured and status not in (401, 408, 431):
        headers.update({name: _header_ref(name, required=False) for name in _RATE_HEADERS})
    if status == 429:
        headers["Retry-After"] = _header_ref("Retry-After", required=True)
    if status == op.ok_status:
        headers.update({name: _header_ref(name, required=False) for name in op.headers})
    if status == "default":
        headers["Allow"] = _header_ref("Allow", required=False)
    return headers


def _error_response(op: Operation, status: int) -> dict[str, Any]:
    codes = [f"`{code}`" for code, (s, _) in ERROR_CODES.items() if s == status]
    return {
        "description": f"{_STATUS_TEXT.get(status, 'Error')}: code {', '.join(codes)}."
        if codes
        else _STATUS_TEXT.get(status, "Error"),
        "headers": _headers_for(op, status),
        "content": {"application/json": {"schema": ref("ErrorOut")}},
    }


def _success_media(op: Operation) -> dict[str, Any]:
    """A JSON success names its model; a stream (``text/event-stream``) is text, with the model
    of one message as ``x-itemSchema`` (OpenAPI 3.2's ``itemSchema``), so that client
    generators hand over the text instead of parsing it as one JSON object."""
    if op.ok_model is None:
        return {"schema": {"type": "string"}}
    if op.ok_media_type == "application/json":
        return {"schema": ref(op.ok_model.__name__)}
    return {"schema": {"type": "string"}, "x-itemSchema": ref(op.ok_model.__name__)}


def _responses(op: Operation, method: str, path: str) -> dict[str, Any]:
    success: dict[str, Any] = {
        "description": op.ok_description,
        "headers": _headers_for(op, op.ok_status),
        "content": {op.ok_media_type: _success_media(op)},
    }
    if op.links:
        success["links"] = {
            target[0].upper() + target[1:]: {"operationId": target, "parameters": parameters}
            for target, parameters in op.links.items()
        }
    responses: dict[str, Any] = {str(op.ok_status): success}
    for status in _error_statuses(op, method, path):
        responses[str(status)] = _error_response(op, status)
    responses["default"] = {
        "description": "Any other error, e.g. 405 `method_not_allowed` (with `Allow`) or "
        "500 `internal_error`.",
        "headers": _headers_for(op, "default"),
        "content": {"application/json": {"schema": ref("ErrorOut")}},
    }
    return responses


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without the ``null`` that an optional Python parameter adds (a
    query string or header cannot be null)."""
    schema = {k: v for k, v in schema.items() if not (k == "default" and v is None)}
    branches = schema.get("anyOf")
    if isinstance(branches, list):
        kept = [b for b in branches if b != {"type": "null"}]
        if len(kept) == 1:
            del schema["anyOf"]
            schema = {**kept[0], **schema}
    return schema


def _drop_null_defaults(schema: Any) -> Any:
    """Request schemas without ``"default": null``: an optional field left out is not null."""
    if isinstance(schema, dict):
        return {
            k: _drop_null_defaults(v)
            for k, v in schema.items()
            if not (k == "default" and v is None)
        }
    if isinstance(schema, list):
        return [_drop_null_defaults(v) for v in schema]
    return schema


def _parameters(op: Operation, generated: list[dict[str, Any]]) -> list[dict[str, Any]]:
    parameters = []
    for parameter in generated:
        parameter = {**parameter, "schema": _without_null(parameter.get("schema", {}))}
        if parameter["in"] == "path":
            parameter["schema"] = ref("ObjectId")
            parameter["description"] = "A 24-character hex id; a malformed one answers 404."
        parameter.pop("title", None)
        parameters.append(parameter)
    if op.secured:
        parameters.append(
            {
                "name": "Featurebase-Version",
                "in": "header",
                "required": False,
                "description": "The API version; left out, the organization's default.",
                "schema": ref("ApiVersion"),
            }
        )
    return parameters


def _model_schemas(
    requests: set[type[BaseModel]], responses: set[type[BaseModel]]
) -> dict[str, Any]:
    template = "#/components/schemas/{model}"
    modes: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (m, "validation") for m in requests
    ]
    modes += [(m, "serialization") for m in responses]
    _, schemas = models_json_schema(
        sorted(modes, key=lambda pair: pair[0].__name__), ref_template=template
    )
    defs: dict[str, Any] = schemas.get("$defs", {})
    # An optional field left out is not null: no "default": null anywhere.
    return {name: _drop_null_defaults(schema) for name, schema in defs.items()}


def _delivery_webhook() -> dict[str, Any]:
    return {
        "post": {
            "operationId": "receiveNotificationEvent",
            "summary": "A delivery: what hookd POSTs to a webhook's url",
            "description": "Sent for every event of a subscribed topic, signed both ways. "
            "Any 2xx answer within the webhook's timeoutMs is a success; anything else "
            "(another status, a redirect, a timeout) fails the attempt, which is retried "
            "on the schedule. Deduplicate on webhook-id: delivery is at least once.",
            "parameters": [
                {"name": name, "in": "header", "required": True, "description": text, "schema": s}
                for name, text, s in _DELIVERY_HEADERS
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ref("NotificationEvent")}},
            },
            "responses": {
                "2XX": {"description": "Received; the delivery succeeded."},
                "default": {"description": "The attempt failed and will be retried."},
            },
        }
    }


def build_openapi(
    routes: list[BaseRoute],
    *,
    title: str,
    version: str,
    summary: str,
    allow_http: bool,
    disabled_schemes: Iterable[str] = (),
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` on a server configured with ``allow_http``.
    ``disabled_schemes`` are security schemes this server does not ask for (a credential
    that is not configured): operations secured only by them take none, and answer no 401."""
    disabled = set(disabled_schemes)
    document = get_openapi(
        title=title, version=version, summary=summary, routes=routes, openapi_version="3.1.0"
    )
    requests: set[type[BaseModel]] = set()
    responses: set[type[BaseModel]] = {ErrorOut, NotificationEvent}
    for path, item in document["paths"].items():
        for method, generated in item.items():
            op_id = generated.get("operationId")
            op = _OPERATIONS.get(op_id) if isinstance(op_id, str) else None
            if op is None:
                raise ValueError(
                    f"{method.upper()} {path} has no operation() declaration (hookd.api.spec); "
                    "HTML routes take include_in_schema=False"
                )
            built: dict[str, Any] = {
                "tags": generated.get("tags", []),
                "summary": op.summary,
                "operationId": op.operation_id,
            }
            if op.description:
                built["description"] = op.description
            parameters = _parameters(op, generated.get("parameters", []))
            if parameters:
                built["parameters"] = parameters
            if op.body is not None:
                requests.add(op.body)
                built["requestBody"] = {
                    "required": op.body_required,
                    "content": {"application/json": {"schema": ref(op.body.__name__)}},
                }
            if op.ok_model is not None:
                responses.add(op.ok_model)
            built["responses"] = _responses(op, method, path)
            if op.security is not None and all(name in disabled for r in op.security for name in r):
                built["security"] = []
                built["responses"].pop("401", None)
            elif op.security is not None:
                built["security"] = list(op.security)
            else:
                built["security"] = [{"bearer": []}] if op.secured else []
            item[method] = built
    schemas = _model_schemas(requests, responses)
    document["components"] = {
        "schemas": {
            **COMPONENTS,
            "WebhookUrl": url_component(allow_http=allow_http),
            **dict(sorted(schemas.items())),
        },
        "headers": RESPONSE_HEADERS,
        "securitySchemes": SECURITY_SCHEMES,
    }
    document["paths"] = resolve_components(document["paths"])
    document["components"]["schemas"] = resolve_components(document["components"]["schemas"])
    document["servers"] = [{"url": "/", "description": "This hookd server"}]
    document["tags"] = _TAGS
    document["webhooks"] = {"notificationEvent": _delivery_webhook()}
    document["info"]["description"] = (
        "Featurebase's v2 Webhooks API, self-hosted, with real delivery. Every error is the "
        "`ErrorOut` object; `Idempotency-Key` is a header of publishing (pattern "
        f"`{anchored(IDEMPOTENCY_KEY_PATTERN)}`)."
    )
    return document
