"""``GET /openapi.json`` and ``GET /docs`` (SPEC §7): the document is faithful.

Three layers of proof:

- The document's shape, read statically: every routed operation is described with a short
  operationId, shared components instead of copied enums, the error object and every error
  status, the response headers, links, ``security: []`` where no key is needed, and the typed
  delivery envelope under ``webhooks``.
- The rules: every pattern the document states is the very check the server runs, compared
  on tricky values with the validator schemathesis uses.
- schemathesis (the ``st run`` command, every check, positive and negative data, the
  examples, coverage, fuzzing and stateful phases) against a real ``hookd api`` on SQLite and
  on PostgreSQL, with a fixed seed and bounded examples; it must report no failure. Its hooks
  (``tests/schemathesis_hooks.py``) adjust only the two inputs no schema can make valid.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match, Mount

from hookd.api import create_app
from hookd.api.routing import V2Routes
from hookd.api.validation import (
    HEADER_NAME_PATTERN,
    NAME_PATTERN,
    anchored,
    check_header_map,
    check_name,
    check_url,
    url_pattern,
)
from hookd.errors import ERROR_CODES
from hookd.store import Store, open_driver
from tests.conftest import make_settings
from tests.processes import HookdProcess, HookdProcesses, api_keys_in, run_hookd

ROOT = Path(__file__).resolve().parent.parent
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
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
# (operation, body required) for the bodies SPEC §3, §4 and §6 define.
BODY_OPERATIONS = {
    ("POST", "/v2/webhooks"): True,
    ("PATCH", "/v2/webhooks/{id}"): False,  # {} or no body changes nothing
    ("POST", "/v2/events"): True,
    ("POST", "/v2/webhooks/{id}/recover"): True,
    ("POST", "/v2/webhooks/{id}/test"): False,  # optional {"topic": T}
    ("POST", "/v2/webhooks/{id}/secret"): False,
}
SHARED_ENUMS = ("Topic", "WebhookStatus", "DeliveryStatus", "ApiVersion", "ErrorType", "ErrorCode")


def build_document(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    url = f"sqlite:///{tmp_path / 'unused.db'}"
    app = create_app(make_settings(url, **overrides), Store(open_driver(url)))
    return app.openapi()


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_document(tmp_path_factory.mktemp("openapi"))


def routed_operations(routes: Iterable[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every API route (HTML pages excluded), through routers and mounts."""
    for route in routes:
        if isinstance(route, APIRoute):
            if route.include_in_schema:
                for method in (route.methods or set()) - {"HEAD"}:
                    yield method, prefix + route.path
        elif isinstance(route, Mount):
            yield from routed_operations(route.routes, prefix + route.path)
        elif isinstance(route, V2Routes):
            yield from routed_operations(route.routes, prefix)


@pytest.fixture(scope="module")
def app_operations(tmp_path_factory: pytest.TempPathFactory) -> set[tuple[str, str]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('routes') / 'unused.db'}"
    app = create_app(make_settings(url), Store(open_driver(url)))
    return set(routed_operations(app.routes))


def test_v2_routes_find_the_route_that_trying_each_in_turn_finds(tmp_path: Path) -> None:
    """V2Routes looks routes without path parameters up by method and path: for every
    route's path (its parameters filled in) and every method, it must find what trying the
    routes in order finds, a 405's partial match included."""
    url = f"sqlite:///{tmp_path / 'unused.db'}"
    app = create_app(make_settings(url), Store(open_driver(url)))
    (v2,) = [route for route in app.routes if isinstance(route, V2Routes)]

    def in_turn(scope: dict[str, Any]) -> tuple[Match, BaseRoute | None]:
        partial: tuple[Match, BaseRoute | None] | None = None
        for route in v2.routes:
            match, child = route.matches(scope)
            if match == Match.FULL:
                return match, child["route"]
            if match == Match.PARTIAL and partial is None:
                partial = (match, child["route"])
        return partial or (Match.NONE, None)

    paths = {re.sub(r"\{[^}]+\}", "x1", route.path) for route in v2.routes}
    paths |= {route.path for route in v2.routes} | {"/v2/events/stream/x", "/v2/nothing"}
    looked_up = 0
    for path in sorted(paths):
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            scope = {"type": "http", "path": path, "method": method, "root_path": ""}
            match, child = v2.matches(scope)
            assert (match, child.get("route")) == in_turn(scope), (method, path)
            looked_up += "{" not in path and match == Match.FULL
    assert looked_up >= 6  # POST and GET /v2/events, /v2/webhooks, the stream, the portal


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def walk(node: Any, where: str = "#") -> Iterator[tuple[str, Any]]:
    """Every (JSON pointer, value) in ``node``."""
    yield where, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{where}/{i}")


def deref(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        target: Any = document
        for part in schema["$ref"][2:].split("/"):
            target = target[part]
        schema = target
    return schema


# The document's shape.


def test_document_is_openapi_3_1_with_a_server(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1."), document["openapi"]
    assert document["info"]["title"] and document["info"]["version"]
    assert document["servers"], "expected a non-empty servers list (generators need a base)"


def test_every_api_route_is_described(
    document: dict[str, Any], app_operations: set[tuple[str, str]]
) -> None:
    described = set(operations(document))
    assert app_operations >= SPEC_OPERATIONS, SPEC_OPERATIONS - app_operations
    assert described == app_operations, {
        "undocumented": sorted(app_operations - described),
        "documented but not routed": sorted(described - app_operations),
    }
    assert "/docs" not in document["paths"], "HTML pages are not API operations"


def test_operation_ids_are_short_stable_and_unique(document: dict[str, Any]) -> None:
    ids = [op.get("operationId") for op in operations(document).values()]
    assert len(set(ids)) == len(ids), ids
    for op_id in ids:
        assert isinstance(op_id, str) and re.fullmatch(r"[a-z][A-Za-z]{2,30}", op_id), op_id
    assert {"listWebhooks", "createWebhook", "getWebhook", "updateWebhook", "getDelivery"} <= set(
        ids
    )


def test_security_is_stated_for_every_operation(document: dict[str, Any]) -> None:
    for (method, path), op in operations(document).items():
        if path.startswith("/v2/"):
            assert op.get("security") == [{"bearer": []}], (method, path)
            assert "401" in op["responses"], (method, path)
        else:
            assert op.get("security") == [], f"{method} {path} needs no key: security: []"
            assert "401" not in op["responses"], (method, path)
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_request_bodies(document: dict[str, Any], app_operations: set[tuple[str, str]]) -> None:
    for key, required in BODY_OPERATIONS.items():
        if key not in app_operations:
            continue
        body = operations(document)[key]["requestBody"]
        assert body["required"] is required, key
        schema = deref(document, body["content"]["application/json"]["schema"])
        assert schema["type"] == "object" and "properties" in schema, (key, schema)
        assert schema.get("additionalProperties") is False, (key, "unknown fields are refused")
    create = deref(document, {"$ref": "#/components/schemas/WebhookCreate"})
    assert set(create["required"]) == {"name", "url", "topics"}


def test_optional_request_fields_carry_no_null(document: dict[str, Any]) -> None:
    """Optional request fields have no ``"default": null`` and no null branch, except
    ``description``, where null clears it (SPEC §3)."""
    schemas = document["components"]["schemas"]
    request_models = [
        n
        for n in schemas
        if n.endswith("In") or n in ("WebhookCreate", "WebhookUpdate", "EventData", "Change")
    ]
    problems = []
    for name in request_models:
        for where, value in walk(schemas[name], f"#/components/schemas/{name}"):
            if isinstance(value, dict) and value.get("default", "absent") is None:
                problems.append((where, "default: null"))
            if value == {"type": "null"} and "/description/" not in where:
                problems.append((where, "nullable"))
    assert problems == [], problems
    config = schemas["RequestConfigIn"]["properties"]
    assert "anyOf" not in config["headers"], "requestConfig.headers: null is refused"


def test_enums_are_shared_components(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for name in SHARED_ENUMS:
        assert "enum" in schemas[name], name
    assert schemas["ErrorCode"]["enum"] == list(ERROR_CODES)
    assert schemas["ApiVersion"]["enum"] == ["2026-01-01.nova"], (
        "2025-12-12.clover is refused by every endpoint: not a value to send"
    )
    shared = {tuple(schemas[name]["enum"]) for name in schemas if "enum" in schemas[name]}
    copies = [
        where
        for where, value in walk(document)
        if isinstance(value, dict)
        and tuple(value.get("enum", ())) in shared
        and not re.fullmatch(r"#/components/schemas/\w+", where)
    ]
    assert copies == [], f"expected $refs to the shared enums, found copies at {copies}"
    for (method, path), op in operations(document).items():
        for parameter in op.get("parameters", []):
            if parameter["name"] in ("status", "Featurebase-Version"):
                assert "$ref" in parameter["schema"], (method, path, parameter)


def test_every_error_response_is_the_error_object(document: dict[str, Any]) -> None:
    statuses = {str(status) for status, _ in ERROR_CODES.values()}
    for (method, path), op in operations(document).items():
        responses = op["responses"]
        assert "default" in responses, (method, path, "a default error response")
        for status, response in responses.items():
            if status.startswith("2"):
                continue
            assert status in statuses | {"default"}, (method, path, status)
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (method, path, status)
        if path.startswith("/v2/"):
            assert {"400", "429", "503"} <= set(responses), (method, path)
        if method in ("POST", "PATCH"):
            assert {"413", "415"} <= set(responses), (method, path)
        if "{" in path:
            assert "404" in responses, (method, path)
    error = document["components"]["schemas"]["ErrorDetail"]["properties"]
    assert error["code"] == {"$ref": "#/components/schemas/ErrorCode"}
    assert error["type"] == {"$ref": "#/components/schemas/ErrorType"}


def test_response_headers(document: dict[str, Any]) -> None:
    headers = document["components"]["headers"]
    for (method, path), op in operations(document).items():
        for status, response in op["responses"].items():
            named = response.get("headers", {})
            version = named.get("Featurebase-Version", {})
            assert version.get("required") is True, (method, path, status)
            if path.startswith("/v2/") and status not in ("401", "408", "431"):
                assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(
                    named
                ), (method, path, status)
            if status == "429":
                assert named["Retry-After"]["required"] is True, (method, path)
            for header in named.values():
                assert header["$ref"].removeprefix("#/components/headers/") in headers
    publish = operations(document)[("POST", "/v2/events")]["responses"]["202"]["headers"]
    assert "Idempotent-Replayed" in publish


def test_timestamps_are_date_times(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["Timestamp"]["format"] == "date-time"
    webhook = schemas["WebhookOut"]["properties"]
    for field in ("createdAt", "updatedAt"):
        assert webhook[field] == {"$ref": "#/components/schemas/Timestamp"}, field
    recover = schemas["RecoverIn"]["properties"]
    assert deref(document, recover["since"])["format"] == "date-time"


def test_links_lead_to_operations_with_those_parameters(document: dict[str, Any]) -> None:
    by_id = {op["operationId"]: op for op in operations(document).values()}
    seen = 0
    for op in by_id.values():
        for response in op["responses"].values():
            for link in response.get("links", {}).values():
                target = by_id[link["operationId"]]
                names = {p["name"] for p in target.get("parameters", []) if p["in"] == "path"}
                assert set(link["parameters"]) == names, (op["operationId"], link)
                seen += 1
    assert seen >= 5, "expected links from created webhooks and deliveries"


def test_delivery_envelope_is_typed_under_webhooks(document: dict[str, Any]) -> None:
    post = document["webhooks"]["notificationEvent"]["post"]
    names = {p["name"] for p in post["parameters"]}
    assert {"X-Webhook-Signature", "X-Webhook-Timestamp", "webhook-signature"} <= names
    envelope = deref(document, post["requestBody"]["content"]["application/json"]["schema"])
    assert envelope["properties"]["data"] == {"$ref": "#/components/schemas/NotificationEventData"}
    detail = document["components"]["schemas"]["DeliveryDetailOut"]["properties"]
    assert detail["payload"] == {"$ref": "#/components/schemas/NotificationEvent"}


def test_url_rule_follows_the_servers_setting(tmp_path: Path) -> None:
    strict = build_document(tmp_path / "strict", allow_http=False)["components"]["schemas"][
        "WebhookUrl"
    ]
    lenient = build_document(tmp_path / "lenient", allow_http=True)["components"]["schemas"][
        "WebhookUrl"
    ]
    assert strict["pattern"] == anchored(url_pattern(allow_http=False))
    assert lenient["pattern"] == anchored(url_pattern(allow_http=True))


# The rules: the stated pattern is the server's own check.

URLS = [
    "https://example.com",
    "https://example.com./x",
    "HTTPS://EXAMPLE.COM:443/Hook?x=1#f",
    "https://[2001:db8::1]:8443/",
    "https://[::ffff:1.2.3.4]/",
    "https://[::]/",
    "https://[1:2:3:4:5:6:7:8]/",
    "https://[1:2:3:4:5:6:7:8:9]/",
    "https://[1::2::3]/",
    "https://[v1.x]/",
    "https://example.com:65535",
    "https://example.com:65536",
    "https://example.com:0",
    "https://example.com:080",
    "https://example.com:",
    "https://user@example.com/",
    "https://example.com/ü?ä=ö",
    "https://bücher.example/",
    "https://xn--bcher-kva.example/",
    "https://exa mple.com/",
    "https://example.com/\u3000",
    "https://example.com/\x85",
    "https://example.com\\@evil/",
    "https://.example.com/",
    "https://a..b/",
    "https://",
    "http://example.com/",
    "ftp://example.com/",
    "https://example.com" + "/a" * 1100,
]
NAMES = [
    "x",
    " x ",
    "\tx\n",
    "a b",
    "a\tb",
    "\u3000x\u3000",
    "x\x85",
    "",
    "  ",
    "a" * 100,
    "a" * 101,
]
HEADER_NAMES = ["X-A", "x-webhook-id", "X-Webhook", "Webhooks-Id", "Content-Type", "a b", "H" * 257]


def _accepted(check: Any, value: Any) -> bool:
    try:
        check(value)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("allow_http", [False, True])
def test_url_pattern_is_the_url_check(allow_http: bool) -> None:
    schema = {
        "type": "string",
        "maxLength": 2048,
        "pattern": anchored(url_pattern(allow_http=allow_http)),
    }
    validator = jsonschema_rs.validator_for(schema)
    for url in URLS:
        server = _accepted(lambda v: check_url(v, allow_http=allow_http), url)
        assert validator.is_valid(url) == server, f"{url!r}: server accepts: {server}"


def test_name_and_header_patterns_are_the_checks() -> None:
    names = jsonschema_rs.validator_for({"type": "string", "pattern": anchored(NAME_PATTERN)})
    for name in NAMES:
        assert names.is_valid(name) == _accepted(check_name, name), repr(name)
    headers = jsonschema_rs.validator_for(
        {"type": "string", "pattern": anchored(HEADER_NAME_PATTERN)}
    )
    for name in HEADER_NAMES:
        server = _accepted(lambda v: check_header_map({v: "x"}), name)
        assert headers.is_valid(name) == server, repr(name)


def _raised_codes() -> Iterator[tuple[str, int, str]]:
    """(code, status, where) of every ``ApiError(status, "code", ...)`` and every ``_fail``
    or ``custom_error`` (400) in hookd's source."""
    for path in (ROOT / "hookd").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            args = node.args
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if name == "ApiError" and len(args) >= 2:
                status, code = args[0], args[1]
                if isinstance(status, ast.Constant) and isinstance(code, ast.Constant):
                    yield str(code.value), int(status.value), where
            elif (
                name in ("_fail", "custom_error")
                and "api" in path.parts
                and isinstance(args[0], ast.Constant)
            ):
                yield str(args[0].value), 400, where


def test_every_error_code_raised_is_in_the_table() -> None:
    raised = list(_raised_codes())
    assert len(raised) > 30
    problems = [
        f"{where}: {code} ({status}) is not ERROR_CODES' {ERROR_CODES.get(code)}"
        for code, status, where in raised
        if ERROR_CODES.get(code, (None,))[0] != status
    ]
    assert problems == [], "add new codes to hookd.errors.ERROR_CODES:\n" + "\n".join(problems)


def test_readme_error_table_lists_every_code() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^ *\| (\d{3}) \| `\w+` \| (.+) \|$", readme, re.MULTILINE)
    documented = {
        code: int(status)
        for status, codes in rows
        for code in re.findall(r"`([a-z]+(?:_[a-z]+)+)`", codes)
    }
    expected = {code: status for code, (status, _) in ERROR_CODES.items()}
    assert documented == expected, "the README's error table and hookd.errors.ERROR_CODES differ"


# /docs


async def test_docs_page_uses_only_assets_hookd_serves(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'docs.db'}"
    app = create_app(make_settings(url), Store(open_driver(url)))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hookd.test") as c:
        page = await c.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert not re.search(r"(src|href)=\"(https?:)?//", page.text), "no outside asset"
        assets = re.findall(r"(?:src|href)=\"(/docs/assets/[^\"]+)\"", page.text)
        assert len(assets) == 4, assets
        for asset in [*assets, "/docs/assets/LICENSE", "/docs/assets/NOTICE"]:
            response = await c.get(asset)
            assert response.status_code == 200 and response.content, asset
        init = (await c.get("/docs/assets/init.js")).text
        assert "/openapi.json" in init and "validatorUrl: null" in init
        assert (await c.get("/docs/assets/nope.js")).status_code == 404
        assert (await c.get("/docs/assets/VENDORED.md")).status_code == 404


# schemathesis against a running server.

SEED = 20260101
MAX_EXAMPLES = 15
PHASES = "examples,coverage,fuzzing,stateful"
STREAM = "streamEvents"


def served_operations(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m, p) for p, item in document["paths"].items() for m in item if m != "parameters"]


@pytest.fixture
def api_server(
    engine: str, database_url: str, tmp_path: Path
) -> Iterator[tuple[HookdProcess, str]]:
    """``hookd api`` (no delivery worker: generated webhook URLs are never contacted), with a
    key made by the CLI. The two runs differ so that both versions of the rules are checked:
    http:// URLs allowed on SQLite only; the rate-limit headers on PostgreSQL only (a limit
    too high to reach; 0 turns the limit and its headers off)."""
    sqlite = engine == "sqlite"
    env = {
        "HOOKD_ALLOW_HTTP": "true" if sqlite else "false",
        "HOOKD_RATE_LIMIT": "0" if sqlite else "100000000",
    }
    assert run_hookd("migrate", database_url=database_url).returncode == 0
    created = run_hookd(
        "orgs", "create", "schemathesis", "--webhook-limit", "1000000", database_url=database_url
    )
    assert created.returncode == 0, created.stderr
    made = run_hookd("keys", "create", "schemathesis", database_url=database_url)
    [key] = api_keys_in(made.stdout)
    with HookdProcesses(tmp_path, env={"HOOKD_LOG_LEVEL": "warning", **env}) as procs:
        yield procs.start("api", database_url=database_url), key


def test_schemathesis_finds_nothing(api_server: tuple[HookdProcess, str], tmp_path: Path) -> None:
    server, key = api_server
    served = httpx.get(server.url("/openapi.json")).json()
    assert served["paths"].keys() == build_document(tmp_path).get("paths", {}).keys()
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
    common = [
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--no-color",
        "-H",
        f"Authorization: Bearer {key}",
    ]
    st = [
        str(Path(sys.executable).parent / "st"),
        "--config-file",
        str(ROOT / "tests" / "schemathesis.toml"),
        "run",
        server.url("/openapi.json"),
    ]
    # The event stream's success never ends (Server-Sent Events until the client leaves), so
    # its valid requests would each wait out the request timeout: only its refusals are
    # fuzzed here, and tests/test_stream.py reads its streams (events, heartbeats, resume).
    runs = [
        [*st, "--exclude-operation-id", STREAM, "--mode", "all", "--phases", PHASES, *common],
        [
            *st,
            "--include-operation-id",
            STREAM,
            "--mode",
            "negative",
            "--phases",
            "coverage,fuzzing",
            *common,
        ],
    ]
    tested = 0
    for command in runs:
        result = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"schemathesis found failures:\n{output[:3000]}\n...\n{output[-3000:]}"
        found = re.search(r"Tested: (\d+)", output)
        assert found, output[-3000:]
        tested += int(found.group(1))
    assert tested == len(served_operations(served)), (tested, output[-3000:])
    assert "Traceback" not in server.stderr(), server.describe()
    assert "unhandled error" not in server.stderr(), server.describe()
