"""``GET /openapi.json`` (SPEC §7): an OpenAPI 3.1 description of every endpoint, checked
statically against the app's routes, then by schemathesis against a real ``hookd serve``.

The schemathesis run loads the schema from the server's URL, authenticates every case with
the key ``serve`` printed on first start, generates positive and negative data for every
operation and applies the checks in :data:`CHECKS`. Cases on ``/v2/webhooks/{id}...`` in
positive mode are pointed at a webhook (and delivery) that exists, so that the success
responses are exercised and checked against their schemas, not only ``404``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import BaseRoute, Mount

from hookd.api import create_app
from hookd.api.routing import V2Routes
from hookd.clock import iso_ms, system_clock
from hookd.store import Store, open_driver
from tests.conftest import make_settings
from tests.processes import HookdProcess, HookdProcesses

MAX_EXAMPLES = 50
NOVA = "2026-01-01.nova"
CLOVER = "2025-12-12.clover"
# A webhook URL the delivery worker refuses before connecting (loopback is not allowed in
# this server's HOOKD_ALLOWED_NETWORKS), so the run sends nothing anywhere.
QUIET_URL = "https://127.0.0.1:9/hook"

SPEC_OPERATIONS = {
    ("GET", "/v2/webhooks"),
    ("POST", "/v2/webhooks"),
    ("GET", "/v2/webhooks/{id}"),
    ("PATCH", "/v2/webhooks/{id}"),
    ("DELETE", "/v2/webhooks/{id}"),
    ("POST", "/v2/webhooks/{id}/secret"),
    ("POST", "/v2/events"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
}
# Operations whose request body SPEC §3, §4 and §6 define (when the route exists).
BODY_OPERATIONS = {
    ("POST", "/v2/webhooks"): True,
    ("PATCH", "/v2/webhooks/{id}"): True,
    ("POST", "/v2/events"): True,
    ("POST", "/v2/webhooks/{id}/recover"): True,
    ("POST", "/v2/webhooks/{id}/test"): False,  # optional {"topic": T}
}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


# The server.


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HookdProcess]:
    """``hookd serve`` on a fresh SQLite file: no rate limit, http:// URLs allowed."""
    directory = tmp_path_factory.mktemp("openapi")
    with HookdProcesses(directory) as procs:
        yield procs.start(
            "serve",
            database_url=f"sqlite:///{directory / 'hookd.db'}",
            env={
                "HOOKD_RATE_LIMIT": "0",
                "HOOKD_ALLOW_HTTP": "true",
                "HOOKD_WEBHOOK_LIMIT": "1000000",
                "HOOKD_LOG_LEVEL": "warning",
            },
        )


@pytest.fixture(scope="module")
def api_key(server: HookdProcess) -> str:
    return server.api_key()


@pytest.fixture(scope="module")
def document(server: HookdProcess) -> dict[str, Any]:
    response = httpx.get(server.url("/openapi.json"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    return body


def routed_operations(routes: Iterable[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every FastAPI route, through included routers and mounts."""
    for route in routes:
        if isinstance(route, APIRoute):
            for method in (route.methods or set()) - {"HEAD"}:
                yield method, prefix + route.path
        elif isinstance(route, Mount):
            yield from routed_operations(route.routes, prefix + route.path)
        elif isinstance(route, V2Routes):
            yield from routed_operations(route.routes, prefix)
        elif hasattr(route, "original_router"):
            # FastAPI >= 0.16x keeps an included router as one lazy route that wraps it.
            context = getattr(route, "include_context", None)
            inner = str(getattr(context, "prefix", "") or "")
            yield from routed_operations(route.original_router.routes, prefix + inner)


@pytest.fixture(scope="module")
def app_operations(tmp_path_factory: pytest.TempPathFactory) -> set[tuple[str, str]]:
    """Every (method, path) the application routes, from an app built in this process."""
    path = tmp_path_factory.mktemp("routes") / "unused.db"
    url = f"sqlite:///{path}"
    app = create_app(make_settings(url), Store(open_driver(url)))
    return set(routed_operations(app.routes))


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with a top-level ``$ref`` followed (its siblings kept beside the target)."""
    seen = 0
    while "$ref" in schema and seen < 10:
        ref = schema["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = document
        for part in ref[2:].split("/"):
            target = target[part]
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**target, **{f"sibling:{k}": v for k, v in siblings.items()}}
        seen += 1
    return schema


# The document.


def test_openapi_is_version_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1."), document["openapi"]
    assert document["info"]["title"]
    assert document["info"]["version"]


def test_every_route_is_described(
    document: dict[str, Any], app_operations: set[tuple[str, str]]
) -> None:
    described = set(operations(document))
    assert app_operations >= SPEC_OPERATIONS, SPEC_OPERATIONS - app_operations
    assert described == app_operations, {
        "undocumented": sorted(app_operations - described),
        "documented but not routed": sorted(described - app_operations),
    }


def test_request_bodies_are_described(
    document: dict[str, Any], app_operations: set[tuple[str, str]]
) -> None:
    for key, required in BODY_OPERATIONS.items():
        if key not in app_operations:
            continue
        operation = operations(document)[key]
        assert "requestBody" in operation, key
        body = operation["requestBody"]
        assert body.get("required", False) is required, key
        schema = resolve(document, body["content"]["application/json"]["schema"])
        assert schema.get("type") == "object", (key, schema)
        assert schema.get("properties"), (key, schema)
        # Unknown fields are refused (SPEC §2), and the schema says so.
        assert schema.get("additionalProperties") is False, (key, schema)
    webhook_create = resolve(
        document,
        operations(document)[("POST", "/v2/webhooks")]["requestBody"]["content"][
            "application/json"
        ]["schema"],
    )
    assert set(webhook_create["required"]) == {"name", "url", "topics"}


def test_success_responses_have_schemas(document: dict[str, Any]) -> None:
    problems: list[tuple[Any, ...]] = []
    for key, operation in operations(document).items():
        successes = {s: r for s, r in operation["responses"].items() if s.startswith("2")}
        if not successes:
            problems.append((key, "no success response"))
        for status, response in successes.items():
            content = response.get("content")
            if not content:
                problems.append((key, status, "no content"))
                continue
            for media_type, media in content.items():
                schema = media.get("schema")
                if not schema:
                    problems.append((key, status, media_type, "no schema"))
                elif media_type == "application/json":
                    # hookd answers JSON objects: a schema of another type (as a sibling
                    # of a $ref, too) contradicts every response.
                    resolved = resolve(document, schema)
                    types = {resolved.get("type"), resolved.get("sibling:type")} - {None}
                    if not types <= {"object"}:
                        problems.append((key, status, schema))
    assert problems == [], "\n".join(map(str, problems))


def test_error_responses_are_the_error_object(document: dict[str, Any]) -> None:
    # SPEC §2 lists every status hookd answers; 422 is not one (invalid input is a 400).
    allowed = {"400", "401", "404", "405", "413", "415", "429", "500", "503"}
    problems: list[tuple[Any, ...]] = []
    for key, operation in operations(document).items():
        for status, response in operation["responses"].items():
            if status.startswith("2"):
                continue
            schema = response.get("content", {}).get("application/json", {}).get("schema")
            if status not in allowed or schema != {"$ref": "#/components/schemas/ErrorOut"}:
                problems.append((*key, status, schema))
    assert problems == [], "\n".join(map(str, problems))


def test_v2_operations_require_the_bearer_key(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    for key, operation in operations(document).items():
        if key[1].startswith("/v2/"):
            assert operation.get("security") == [{"bearer": []}], key
            (scheme_name,) = operation["security"][0]
            assert schemes[scheme_name] == {
                **schemes[scheme_name],
                "type": "http",
                "scheme": "bearer",
            }
            assert "401" in operation["responses"], key
        else:
            assert not operation.get("security"), key


# schemathesis against the running server.

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def _document() -> dict[str, Any]:
    """The OpenAPI document of an app built in this process, at collection time (the server
    runs the same code; a mismatch fails the test of that operation)."""
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{directory}/unused.db"
        app = create_app(make_settings(url), Store(open_driver(url)))
        return app.openapi()


def _operation_labels() -> list[str]:
    return sorted(f"{method} {path}" for method, path in operations(_document()))


def _schemathesis_cases() -> list[Any]:
    """Every operation with positive data, and with negative data where it takes any input
    (``/healthz`` and the like have nothing to get wrong)."""
    document = _document()
    cases = []
    for method, path in sorted(operations(document)):
        operation = document["paths"][path][method.lower()]
        label = f"{method} {path}"
        cases.append(pytest.param(label, GenerationMode.POSITIVE, id=f"{label}-positive"))
        if operation.get("parameters") or operation.get("requestBody"):
            cases.append(pytest.param(label, GenerationMode.NEGATIVE, id=f"{label}-negative"))
    return cases


@pytest.fixture(scope="module")
def hookd_schema(server: HookdProcess, api_key: str) -> Any:
    schema = schemathesis.openapi.from_url(server.url("/openapi.json"), timeout=10)
    schema.config.update(base_url=server.base_url, headers={"Authorization": f"Bearer {api_key}"})
    return schema


class Objects:
    """Creates the webhooks and deliveries that positive cases are pointed at."""

    def __init__(self, server: HookdProcess, key: str) -> None:
        self.client = httpx.Client(
            base_url=server.base_url,
            headers={"Authorization": f"Bearer {key}", "Featurebase-Version": NOVA},
            timeout=10,
        )

    def webhook(self) -> str:
        body = {"name": "schemathesis", "url": QUIET_URL, "topics": ["post.created"]}
        response = self.client.post("/v2/webhooks", json=body)
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    def delivery(self, webhook_id: str) -> str:
        response = self.client.post(f"/v2/webhooks/{webhook_id}/test", json={})
        assert response.status_code == 202, response.text
        return str(response.json()["id"])


@pytest.fixture(scope="module")
def objects(server: HookdProcess, api_key: str) -> Iterator[Objects]:
    made = Objects(server, api_key)
    yield made
    made.client.close()


def _make_reachable(case: Any, objects: Objects) -> None:
    """Steer a positive case to hookd's success paths, so that success responses are
    produced and checked against their schemas, not only 400s and 404s:

    - a webhook's paths use a webhook (and delivery) that exists;
    - a webhook ``url`` becomes a valid https URL (the schema cannot say what hookd accepts:
      an absolute https URL with a host), one the worker will never connect to;
    - a recovery window becomes the last hour (within HOOKD_RETENTION_DAYS);
    - ``Featurebase-Version: 2025-12-12.clover`` is dropped: a valid value that refuses every
      /v2 request (SPEC §2); the organization's default version, nova, applies instead.
    """
    parameters = case.path_parameters or {}
    if "id" in parameters:
        parameters["id"] = objects.webhook()
        if "deliveryId" in parameters:
            parameters["deliveryId"] = objects.delivery(parameters["id"])
    body = case.body if isinstance(case.body, dict) else {}
    if "url" in body and case.path.startswith("/v2/webhooks"):
        body["url"] = QUIET_URL
    now = system_clock()
    if "since" in body:
        body["since"] = iso_ms(now - 3_600_000)
    if "until" in body:
        body["until"] = iso_ms(now)
    if case.headers and case.headers.get("Featurebase-Version") == CLOVER:
        del case.headers["Featurebase-Version"]


# Headers that frame the HTTP message itself. A garbage value makes the request unparseable,
# and uvicorn's HTTP parser answers "400 Invalid HTTP request received." as text/plain
# before hookd sees anything; that is not an answer of the API, so cases do not send them.
FRAMING_HEADERS = {"content-length", "transfer-encoding"}


def _has_inputs(operation: Any) -> bool:
    return any(
        len(parameters)
        for parameters in (
            operation.path_parameters,
            operation.query,
            operation.headers,
            operation.cookies,
            operation.body,
        )
    )


@pytest.mark.parametrize(("label", "mode"), _schemathesis_cases())
def test_schemathesis(
    label: str, mode: GenerationMode, hookd_schema: Any, objects: Objects, api_key: str
) -> None:
    operation = hookd_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the served /openapi.json"
    assert mode is GenerationMode.POSITIVE or _has_inputs(operation)
    authorization = {"Authorization": f"Bearer {api_key}"}
    strategy = operation.as_strategy(generation_mode=mode)

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
    )
    def run(case: Any) -> None:
        if mode.is_positive:
            _make_reachable(case, objects)
        if case.headers:
            for name in [n for n in case.headers if n.lower() in FRAMING_HEADERS]:
                del case.headers[name]
        case.call_and_validate(headers=authorization, checks=CHECKS, timeout=30)

    run()


def test_server_logged_no_error(server: HookdProcess) -> None:
    """After everything above: the server is still up and logged no unhandled error."""
    assert httpx.get(server.url("/healthz")).status_code == 200
    assert "Traceback" not in server.stderr(), server.describe()
    assert "unhandled error" not in server.stderr(), server.describe()
