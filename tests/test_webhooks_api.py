"""SPEC §3: the six webhook endpoints as an API client sees them, on SQLite and PostgreSQL.

Every test here runs against one database per engine for the whole module (``shared``):
a fresh PostgreSQL database per test costs 0.5-1 s, which for some 450 cases per engine
would take minutes. Isolation comes from organizations instead: this module's ``api``
fixture (overriding conftest's) is a fresh organization with the default webhook limit, so
its lists start empty exactly as on a fresh database. The validation tables work in one
organization of their own: every row is either refused, and then checks that nothing
changed, or creates what it needs and deletes it again.
"""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import pytest_asyncio

from hookd.api import create_app
from hookd.errors import ERROR_CODES
from hookd.settings import DEFAULT_API_VERSION
from hookd.store import Store, open_driver
from tests.conftest import ENGINES, Api, admin_sql, dsn_for, make_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

# --------------------------------------------------------------------------------------
# The contract's constants
# --------------------------------------------------------------------------------------

WEBHOOKS = "/v2/webhooks"

WEBHOOK_FIELDS = {
    "object",
    "id",
    "name",
    "url",
    "description",
    "topics",
    "status",
    "requestConfig",
    "lastStatus",
    "health",
    "secret",
    "createdAt",
    "updatedAt",
    "version",
}
NEW_HEALTH = {
    "avgResponseTime": 0,
    "consecutiveFailures": 0,
    "errorsSinceLastSuccess": 0,
    "lastResponseTime": 0,
    "lastSuccessAt": None,
}
# The 27 topics of the Featurebase reference, in its order.
ALL_TOPICS = [
    "post.created",
    "post.updated",
    "post.deleted",
    "post.voted",
    "ticket.created",
    "ticket.updated",
    "ticket.deleted",
    "changelog.published",
    "comment.created",
    "comment.updated",
    "comment.deleted",
    "conversation.user.created",
    "conversation.user.replied",
    "conversation.admin.replied",
    "conversation.admin.closed",
    "conversation.handover_requested",
    "conversation.admin.assigned",
    "conversation.admin.noted",
    "conversation.admin.snoozed",
    "conversation.admin.unsnoozed",
    "conversation.admin.opened",
    "conversation.priority.updated",
    "conversation.deleted",
    "conversation.contact.attached",
    "conversation.contact.detached",
    "conversation.read",
    "conversation_part.redacted",
]

OBJECT_ID = re.compile(r"[0-9a-f]{24}\Z")
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
UNKNOWN_ID = "0123456789abcdef01234567"  # well formed, never created

VALID = {"name": "Test hook", "url": "https://example.com/hook", "topics": ["post.created"]}
FULL = {
    "name": "Full hook",
    "url": "https://example.com/full",
    "description": "Every field set",
    "topics": ["post.created", "post.updated"],
    "requestConfig": {"timeoutMs": 7000, "headers": {"X-One": "1", "X-Two": "2"}},
}
MISSING = object()  # a table value meaning "leave this field out"
TYPE = "parameter_invalid_type"
# pydantic's own wording, which must not reach a client.
RAW_PYDANTIC = re.compile(
    r"Input should|should have|after validation|Value error|valid dictionary|is invalid:"
)

# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def path(webhook_id: str, suffix: str = "") -> str:
    return f"{WEBHOOKS}/{webhook_id}{suffix}"


def body_with(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    body = {**base, **override}
    return {k: v for k, v in body.items() if v is not MISSING}


def field(obj: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj[part]
    return obj


def ms_of(iso: str) -> int:
    parsed = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def iso_of(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    )


def cursor_of(data: Any) -> str:
    """A cursor in the documented format (base64url JSON), for cursors that must be refused."""
    return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (
        f"expected HTTP {status}, got {response.status_code}: {response.text}"
    )
    return response.json()


_ANY = object()


def assert_error(
    response: httpx.Response, status: int, code: str | None = None, param: Any = _ANY
) -> dict[str, Any]:
    """The Featurebase error object of SPEC §2 with this status, and code/param when given."""
    assert response.status_code == status, (
        f"expected HTTP {status}, got {response.status_code}: {response.text}"
    )
    body = response.json()
    assert set(body) == {"object", "error"} and body["object"] == "error", (
        f"expected an error object, got {body}"
    )
    error = body["error"]
    assert set(error) == {"type", "code", "message", "param", "status"}, (
        f"expected the five error fields, got {error}"
    )
    assert error["status"] == status, f"expected error.status {status}, got {error}"
    if status in (400, 404):
        assert error["type"] == "invalid_request_error", f"expected invalid_request_error: {error}"
    assert isinstance(error["message"], str) and error["message"], f"expected a message: {error}"
    message = error["message"]
    assert message.endswith(".") and not RAW_PYDANTIC.search(message), (
        f"expected one sentence in hookd's words (what was wrong, how to fix it): {error}"
    )
    assert ERROR_CODES.get(error["code"], (None,))[0] == status, (
        f"expected a code of hookd.errors.ERROR_CODES for {status}: {error}"
    )
    if code is not None:
        assert error["code"] == code, f"expected code {code!r}, got {error}"
    if param is not _ANY:
        assert error["param"] == param, f"expected param {param!r}, got {error}"
    return error


def assert_webhook_shape(w: dict[str, Any]) -> None:
    """Exactly the fields of the reference's webhook object, each of the right form."""
    assert set(w) == WEBHOOK_FIELDS, f"expected exactly {sorted(WEBHOOK_FIELDS)}, got {sorted(w)}"
    assert w["object"] == "webhook", f"expected object 'webhook': {w}"
    assert OBJECT_ID.match(w["id"]), f"expected a 24-char lowercase hex id, got {w['id']!r}"
    assert w["status"] in ("active", "paused", "suspended"), f"unexpected status: {w}"
    assert set(w["requestConfig"]) == {"timeoutMs", "headers"}, f"requestConfig: {w}"
    assert set(w["health"]) == set(NEW_HEALTH), f"health fields: {w['health']}"
    assert w["version"] == "1.0", f"expected payload version '1.0', got {w['version']!r}"
    for stamp in ("createdAt", "updatedAt"):
        assert ISO_MS.match(w[stamp]), f"expected ISO 8601 with ms and Z for {stamp}: {w[stamp]!r}"
    assert w["secret"].startswith("whsec_"), f"expected a whsec_ secret, got {w['secret']!r}"
    raw = base64.b64decode(w["secret"][len("whsec_") :], validate=True)
    assert len(raw) == 32, f"expected base64 of 32 bytes after whsec_, got {len(raw)} bytes"


async def list_all(api: Api, key: str | None = None, **query: Any) -> list[dict[str, Any]]:
    """Every webhook of the key's organization, walking the pages."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100, **query}
    while True:
        page = ok(await api.get(WEBHOOKS, params=params, key=key))
        found.extend(page["data"])
        if page["nextCursor"] is None:
            return found
        params["cursor"] = page["nextCursor"]


async def get(api: Api, webhook_id: str, key: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = ok(await api.get(path(webhook_id), key=key))
    return found


async def force_columns(database_url: str, webhook_id: str, **columns: Any) -> None:
    """Set webhook columns behind the API's back (health is otherwise only moved by deliveries)."""
    names = list(columns)
    if database_url.startswith("sqlite:///"):
        sets = ", ".join(f"{n} = ?" for n in names)
        conn = sqlite3.connect(database_url[len("sqlite:///") :], timeout=5)
        try:
            with conn:
                changed = conn.execute(
                    f"UPDATE webhooks SET {sets} WHERE id = ?", [*columns.values(), webhook_id]
                ).rowcount
        finally:
            conn.close()
        assert changed == 1, f"expected to update webhook {webhook_id}"
        return
    sets = ", ".join(f"{n} = ${i}" for i, n in enumerate(names, 1))
    pg = await asyncpg.connect(database_url, timeout=5)
    try:
        status = await pg.execute(
            f"UPDATE webhooks SET {sets} WHERE id = ${len(names) + 1}",
            *columns.values(),
            webhook_id,
        )
    finally:
        await pg.close()
    assert status == "UPDATE 1", f"expected to update webhook {webhook_id}, got {status}"


async def new_org(api: Api, webhook_limit: int = 10) -> str:
    """The API key of a new organization (names are unique within the shared database)."""
    return await api.new_org_key(f"org-{uuid.uuid4().hex[:12]}", webhook_limit)


def unhealthy(now_ms: int) -> dict[str, Any]:
    """Column values of a webhook whose deliveries have been failing."""
    return {
        "avg_response_time": 321.0,
        "response_samples": 7,
        "last_response_time": 450,
        "errors_since_last_success": 4,
        "consecutive_failures": 3,
        "last_success_at": now_ms - 60_000,
        "last_status_code": 500,
        "last_status_message": "Internal Server Error",
        "last_status_at": now_ms,
    }


# --------------------------------------------------------------------------------------
# The shared database of the validation tables
# --------------------------------------------------------------------------------------


@dataclass
class Shared:
    api: Api  # an organization with room for many webhooks, on an app allowing http://
    strict: Api  # the same organization on an app with HOOKD_ALLOW_HTTP off
    database_url: str
    target: str  # a webhook that refused PATCHes must leave unchanged

    async def create(self, **fields: Any) -> dict[str, Any]:
        return await self.api.create_webhook(**fields)

    async def delete(self, webhook_id: str) -> None:
        ok(await self.api.delete(path(webhook_id)))


@pytest.fixture(scope="module", params=ENGINES)
def shared_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A fresh, migrated database of the engine, for the whole module (as conftest's
    ``database_url`` makes one per test)."""
    if request.param == "sqlite":
        db = tmp_path_factory.mktemp("shared") / "hookd.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), db)
        yield f"sqlite:///{db}"
        return
    template = request.getfixturevalue("postgres_template")
    name = f"hookd_s_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield dsn_for(name)
    finally:
        asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(shared_database_url: str) -> AsyncIterator[Shared]:
    database_url = shared_database_url
    store = Store(open_driver(database_url, pool_size=4))
    await store.start()
    try:
        org = await store.create_organization("validation", 1000, DEFAULT_API_VERSION)
        _, key = await store.create_api_key(org.id, None)
        apps = [
            create_app(make_settings(database_url), store),
            create_app(make_settings(database_url, allow_http=False), store),
        ]
        async with (
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=apps[0]), base_url="http://hookd.test"
            ) as client,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=apps[1]), base_url="http://hookd.test"
            ) as strict_client,
        ):
            api = Api(client, key, store)
            target = await api.create_webhook(**FULL)
            yield Shared(api, Api(strict_client, key, store), database_url, target["id"])
    finally:
        await store.close()


@pytest_asyncio.fixture(loop_scope="module")
async def api(shared: Shared) -> Api:
    """Overrides conftest's ``api``: the same client, for a fresh organization (webhook limit
    10, like ``default``) on the module's database rather than on a fresh database."""
    return Api(shared.api.client, await new_org(shared.api), shared.api.store)


# --------------------------------------------------------------------------------------
# 1. Create and get
# --------------------------------------------------------------------------------------


async def test_create_returns_the_full_webhook_object(api: Api) -> None:
    before_ms = api.store.clock()
    response = await api.post(
        WEBHOOKS,
        json={
            "name": "  Production Webhook  ",
            "url": "https://example.com/webhooks",
            "topics": ["post.created", "post.updated", "post.created", "comment.created"],
        },
    )
    w = ok(response)
    assert response.headers["content-type"].startswith("application/json"), "expected JSON"
    assert_webhook_shape(w)
    assert w["name"] == "Production Webhook", "expected the name trimmed"
    assert w["url"] == "https://example.com/webhooks"
    assert w["description"] is None, "expected description null by default"
    assert w["topics"] == ["post.created", "post.updated", "comment.created"], (
        "expected topics deduplicated, first occurrence order kept"
    )
    assert w["status"] == "active", "expected a new webhook to be active"
    assert w["requestConfig"] == {"timeoutMs": 5000, "headers": {}}, "expected default config"
    assert w["lastStatus"] is None, "expected lastStatus null before any attempt"
    assert w["health"] == NEW_HEALTH, "expected zero health for a new webhook"
    assert w["createdAt"] == w["updatedAt"], "expected updatedAt == createdAt on creation"
    created = ms_of(w["createdAt"])
    assert before_ms - 1000 <= created <= api.store.clock() + 1000, "expected createdAt ~ now"
    assert int(w["id"][:8], 16) == created // 1000, (
        "expected the id's first 4 bytes to be the creation time in seconds"
    )


async def test_create_keeps_every_given_field(api: Api) -> None:
    w = await api.create_webhook(**FULL)
    assert_webhook_shape(w)
    assert {k: w[k] for k in FULL} == FULL, "expected every given field back unchanged"


async def test_get_and_list_return_the_same_object_as_create(api: Api) -> None:
    created = await api.create_webhook(**FULL)
    assert await get(api, created["id"]) == created, "expected GET to return the created object"
    assert await list_all(api) == [created], "expected the list to hold the created object"


async def test_each_webhook_gets_its_own_id_and_secret(api: Api) -> None:
    a = await api.create_webhook()
    b = await api.create_webhook()
    assert a["id"] != b["id"], "expected distinct ids"
    assert a["secret"] != b["secret"], "expected distinct secrets"


async def test_ids_sort_by_creation(api: Api) -> None:
    ids = [(await api.create_webhook(name=f"hook {i}"))["id"] for i in range(6)]
    assert ids == sorted(ids), f"expected ids in creation order to sort ascending: {ids}"
    assert len(set(ids)) == len(ids), "expected distinct ids"
    listed = [w["id"] for w in await list_all(api)]
    assert listed == ids[::-1], "expected the list newest first"


# --------------------------------------------------------------------------------------
# 2. Validation: create and PATCH
# --------------------------------------------------------------------------------------


def _headers(n: int) -> dict[str, str]:
    return {f"X-Custom-{i}": "v" for i in range(n)}


def _config(**config: Any) -> dict[str, Any]:
    return {"requestConfig": config}


RESERVED_HEADERS = [
    "Content-Type",
    "CONTENT-TYPE",
    "content-length",
    "Host",
    "host",
    "User-Agent",
    "Transfer-Encoding",
    "Connection",
    "X-Webhook-Anything",
    "x-webhook-signature",
    "X-WEBHOOK-TIMESTAMP",
    "webhook-anything",
    "Webhook-Id",
    "WEBHOOK-SIGNATURE",
]
BAD_HEADER_NAMES = ["Bad Name", "X-Colon:", "X-Ünicode", "(paren)", "X-Slash/"]
BAD_HEADER_VALUES = {
    "cr": "a\rb",
    "lf": "a\nb",
    "crlf-injection": "a\r\nInjected: yes",
    "nul": "a\x00b",
}

# (body fields, expected param, expected code or None): refused alike by create and PATCH.
FIELD_REJECTIONS = [
    # name
    pytest.param({"name": "a" * 101}, "name", None, id="name-101-chars"),
    pytest.param({"name": "   "}, "name", None, id="name-spaces-only"),
    pytest.param({"name": ""}, "name", None, id="name-empty"),
    pytest.param({"name": "\t \n"}, "name", None, id="name-whitespace-only"),
    pytest.param({"name": " " + "é" * 101 + " "}, "name", None, id="name-101-after-trim"),
    pytest.param({"name": "bad\x00name"}, "name", None, id="name-nul"),
    pytest.param({"name": "bell\x07"}, "name", None, id="name-control-char"),
    pytest.param({"name": "two\nlines"}, "name", None, id="name-newline"),
    pytest.param({"name": "del\x7fete"}, "name", None, id="name-del"),
    pytest.param({"name": "c1\x9bcontrol"}, "name", None, id="name-c1-control"),
    pytest.param({"name": 5}, "name", TYPE, id="name-number"),
    pytest.param({"name": True}, "name", TYPE, id="name-bool"),
    pytest.param({"name": ["n"]}, "name", TYPE, id="name-array"),
    pytest.param({"name": {"n": 1}}, "name", TYPE, id="name-object"),
    # url
    pytest.param({"url": "https://"}, "url", None, id="url-no-host"),
    pytest.param({"url": "https:///hook"}, "url", None, id="url-empty-host"),
    pytest.param({"url": "https://:443/hook"}, "url", None, id="url-port-no-host"),
    pytest.param({"url": "https:example.com/hook"}, "url", None, id="url-no-slashes"),
    pytest.param({"url": "https://user@example.com/hook"}, "url", None, id="url-user"),
    pytest.param({"url": "https://user:pw@example.com/hook"}, "url", None, id="url-user-pw"),
    pytest.param({"url": "https://@example.com/hook"}, "url", None, id="url-empty-userinfo"),
    pytest.param({"url": "https://example.com/" + "a" * 2029}, "url", None, id="url-2049"),
    pytest.param({"url": "https://exa mple.com/hook"}, "url", None, id="url-space-host"),
    pytest.param({"url": "https://example.com/a b"}, "url", None, id="url-space-path"),
    pytest.param({"url": " https://example.com/hook"}, "url", None, id="url-leading-space"),
    pytest.param({"url": "https://example.com/\nhook"}, "url", None, id="url-newline"),
    pytest.param({"url": "ftp://example.com/hook"}, "url", None, id="url-ftp"),
    pytest.param({"url": "file:///etc/passwd"}, "url", None, id="url-file"),
    pytest.param({"url": "mailto:ops@example.com"}, "url", None, id="url-mailto"),
    pytest.param({"url": "javascript:alert(1)"}, "url", None, id="url-javascript"),
    pytest.param({"url": "/hook"}, "url", None, id="url-relative-path"),
    pytest.param({"url": "example.com/hook"}, "url", None, id="url-no-scheme"),
    pytest.param({"url": "//example.com/hook"}, "url", None, id="url-scheme-relative"),
    pytest.param({"url": "https://example.com:99999/"}, "url", None, id="url-bad-port"),
    pytest.param({"url": "https://example.com:0/"}, "url", None, id="url-port-0"),
    pytest.param({"url": "https://example.com:/"}, "url", None, id="url-empty-port"),
    pytest.param({"url": "https://bücher.example/hook"}, "url", None, id="url-idn-not-punycode"),
    pytest.param({"url": "https://exa..mple.com/"}, "url", None, id="url-empty-label"),
    pytest.param({"url": "https://[2001:db8::zz]/"}, "url", None, id="url-bad-ipv6"),
    pytest.param({"url": "https://example.com\\@evil/"}, "url", None, id="url-backslash"),
    pytest.param({"url": ""}, "url", None, id="url-empty"),
    pytest.param({"url": 5}, "url", TYPE, id="url-number"),
    pytest.param({"url": ["https://example.com"]}, "url", TYPE, id="url-array"),
    # description
    pytest.param({"description": "d" * 501}, "description", None, id="description-501"),
    pytest.param({"description": "nul\x00"}, "description", None, id="description-nul"),
    pytest.param({"description": 5}, "description", TYPE, id="description-number"),
    pytest.param({"description": False}, "description", TYPE, id="description-bool"),
    pytest.param({"description": ["d"]}, "description", TYPE, id="description-array"),
    # topics
    pytest.param({"topics": []}, "topics", None, id="topics-empty"),
    pytest.param(
        {"topics": ["post.created", "post.nope"]},
        "topics.1",
        "topic_unknown",
        id="topics-unknown-2nd",
    ),
    pytest.param({"topics": ["nope"]}, "topics.0", "topic_unknown", id="topics-unknown"),
    pytest.param({"topics": ["POST.CREATED"]}, "topics.0", "topic_unknown", id="topics-case"),
    pytest.param(
        {"topics": ["post.created", "post.updated", "post.created "]},
        "topics.2",
        "topic_unknown",
        id="topics-trailing-space",
    ),
    pytest.param({"topics": ["post.*"]}, "topics.0", "topic_unknown", id="topics-wildcard"),
    pytest.param({"topics": "post.created"}, "topics", TYPE, id="topics-string"),
    pytest.param({"topics": {"post.created": True}}, "topics", TYPE, id="topics-object"),
    pytest.param({"topics": [5]}, "topics.0", TYPE, id="topics-number-item"),
    pytest.param({"topics": ["post.created", None]}, "topics.1", TYPE, id="topics-null-item"),
    pytest.param({"topics": [["post.created"]]}, "topics.0", TYPE, id="topics-nested-array"),
    # requestConfig
    pytest.param({"requestConfig": []}, "requestConfig", TYPE, id="config-array"),
    pytest.param({"requestConfig": "x"}, "requestConfig", TYPE, id="config-string"),
    pytest.param({"requestConfig": 5}, "requestConfig", TYPE, id="config-number"),
    # requestConfig.timeoutMs
    *[
        pytest.param(_config(timeoutMs=v), "requestConfig.timeoutMs", code, id=f"timeout-{name}")
        for name, v, code in [
            ("999", 999, None),
            ("30001", 30001, None),
            ("0", 0, None),
            ("negative", -1000, None),
            ("fraction", 1000.5, TYPE),
            ("string", "5000", TYPE),
            ("true", True, TYPE),
            ("huge", 10**30, None),
            ("huge-negative", -(10**30), None),
            ("null", None, None),
            ("array", [5000], TYPE),
            ("object", {"ms": 5000}, TYPE),
        ]
    ],
    # requestConfig.headers
    pytest.param(_config(headers=_headers(11)), "requestConfig.headers", None, id="headers-11"),
    pytest.param(_config(headers=None), "requestConfig.headers", TYPE, id="headers-null"),
    pytest.param(_config(timeoutMs=1000.000001), "requestConfig.timeoutMs", TYPE, id="timeout-1000.000001"),
    pytest.param(_config(headers="X-A: b"), "requestConfig.headers", TYPE, id="headers-string"),
    pytest.param(_config(headers=["X-A"]), "requestConfig.headers", TYPE, id="headers-array"),
    *[
        pytest.param(
            _config(headers={"X-Fine": "ok", name: "v"}),
            f"requestConfig.headers.{name}",
            "header_reserved",
            id=f"headers-reserved-{name}",
        )
        for name in RESERVED_HEADERS
    ],
    *[
        pytest.param(
            _config(headers={name: "v"}),
            f"requestConfig.headers.{name}",
            None,
            id=f"headers-bad-name-{name}",
        )
        for name in BAD_HEADER_NAMES
    ],
    pytest.param(
        _config(headers={"": "v"}), "requestConfig.headers", None, id="headers-empty-name"
    ),
    *[
        pytest.param(
            _config(headers={"X-Custom": value}),
            "requestConfig.headers.X-Custom",
            None,
            id=f"headers-value-{name}",
        )
        for name, value in BAD_HEADER_VALUES.items()
    ],
    pytest.param(
        _config(headers={"X-Custom": "v" * 1025}),
        "requestConfig.headers.X-Custom",
        None,
        id="headers-value-1025",
    ),
    *[
        pytest.param(
            _config(headers={"X-Custom": value}),
            "requestConfig.headers.X-Custom",
            TYPE,
            id=f"headers-value-{name}",
        )
        for name, value in [
            ("number", 5),
            ("bool", True),
            ("null", None),
            ("array", ["v"]),
            ("object", {"v": 1}),
        ]
    ],
    # unknown fields
    pytest.param({"foo": 1}, "foo", "parameter_unknown", id="unknown-top-level"),
    pytest.param({"Name": "x"}, "Name", "parameter_unknown", id="unknown-case-variant"),
    pytest.param({"secret": "whsec_x"}, "secret", "parameter_unknown", id="unknown-secret"),
    pytest.param({"id": UNKNOWN_ID}, "id", "parameter_unknown", id="unknown-id"),
    pytest.param({"health": {}}, "health", "parameter_unknown", id="unknown-health"),
    pytest.param({"createdAt": "x"}, "createdAt", "parameter_unknown", id="unknown-createdAt"),
    pytest.param(
        {"function-hook": 1}, "function-hook", "parameter_unknown", id="unknown-function-"
    ),
    pytest.param(
        _config(foo=1), "requestConfig.foo", "parameter_unknown", id="unknown-in-requestConfig"
    ),
    pytest.param(
        _config(timeout=5000), "requestConfig.timeout", "parameter_unknown", id="unknown-timeout"
    ),
    pytest.param(
        _config(Headers={}), "requestConfig.Headers", "parameter_unknown", id="unknown-Headers"
    ),
]

# Bodies that are not a JSON object at all: refused before any field is looked at.
BAD_BODIES = [
    pytest.param(b"[]", id="array"),
    pytest.param(b'"webhook"', id="string"),
    pytest.param(b"1", id="number"),
    pytest.param(b"null", id="null"),
    pytest.param(b"{", id="truncated"),
    pytest.param(b"{'name': 'x'}", id="single-quotes"),
    pytest.param(b'{"name": NaN}', id="nan"),
    pytest.param(b"\xff\xfe", id="not-utf8"),
]

# (body fields, dotted response field, expected value): accepted alike by create and PATCH.
FIELD_ACCEPTANCES = [
    pytest.param({"name": "a" * 100}, "name", "a" * 100, id="name-100-chars"),
    pytest.param({"name": "x"}, "name", "x", id="name-1-char"),
    pytest.param({"name": "  padded name \t"}, "name", "padded name", id="name-trimmed"),
    pytest.param({"name": " " + "b" * 100 + " "}, "name", "b" * 100, id="name-100-after-trim"),
    pytest.param({"name": "a" * 100 + " " * 150}, "name", "a" * 100, id="name-100-long-padding"),
    pytest.param({"name": "😀" * 100}, "name", "😀" * 100, id="name-100-emoji"),
    pytest.param({"name": "Ünïcødé 名前 ✓"}, "name", "Ünïcødé 名前 ✓", id="name-unicode"),
    pytest.param({"url": "https://example.com"}, "url", "https://example.com", id="url-bare"),
    *[
        pytest.param({"url": url}, "url", url, id=f"url-{name}")
        for name, url in [
            ("port-query-fragment", "https://example.com:8443/p?q=1&r=2#frag"),
            ("ipv6", "https://[2001:db8::1]:8443/hook"),
            ("idn-punycode", "https://xn--bcher-kva.example/hook"),
            ("trailing-dot", "https://example.com./hook"),
            ("ipv4-mapped-ipv6", "https://[::ffff:192.0.2.1]/hook"),
            ("port-65535", "https://example.com:65535/"),
            ("integral-float-timeout-is-not-here", "https://example.com/?timeout=1.0"),
            ("uppercase-scheme", "HTTPS://EXAMPLE.COM/Hook"),
            ("2048-chars", "https://example.com/" + "a" * 2028),
            ("http-when-allowed", "http://example.com/hook"),
        ]
    ],
    pytest.param({"description": "d" * 500}, "description", "d" * 500, id="description-500"),
    pytest.param({"description": ""}, "description", "", id="description-empty"),
    pytest.param(
        {"description": "multi\nline\ttext"},
        "description",
        "multi\nline\ttext",
        id="description-multiline",
    ),
    pytest.param({"description": None}, "description", None, id="description-null"),
    pytest.param({"topics": ALL_TOPICS}, "topics", ALL_TOPICS, id="topics-all-27"),
    pytest.param(
        {"topics": ["post.updated", "post.created", "post.updated", "post.created"]},
        "topics",
        ["post.updated", "post.created"],
        id="topics-deduplicated-in-order",
    ),
    pytest.param(
        {"topics": ["conversation_part.redacted"]},
        "topics",
        ["conversation_part.redacted"],
        id="topics-last",
    ),
    *[
        pytest.param(_config(timeoutMs=v), "requestConfig.timeoutMs", v, id=f"timeout-{v}")
        for v in (1000, 5000, 30000)
    ],
    # JSON Schema calls 3607.0 an integer, and so does hookd.
    *[
        pytest.param(
            _config(timeoutMs=v), "requestConfig.timeoutMs", int(v), id=f"timeout-float-{v}"
        )
        for v in (3607.0, 1000.0, 3e4)
    ],
    *[
        pytest.param(_config(headers=h), "requestConfig.headers", h, id=f"headers-{name}")
        for name, h in [
            ("10-entries", _headers(10)),
            ("reference-example", {"X-Custom-Header": "value"}),
            ("authorization", {"Authorization": "Bearer abc"}),
            ("x-webhook-without-dash", {"X-Webhook": "v"}),
            ("webhooks-prefix", {"Webhooks-Id": "v"}),
            ("lower-case-kept", {"x-lower-case": "v"}),
            ("token-chars", {"!#$%&'*+-.^_`|~09AZaz": "v"}),
            ("value-1024", {"X-Long": "v" * 1024}),
            ("value-empty", {"X-Empty": ""}),
            ("value-punctuation", {"X-Text": 'a "quoted", ;=/ value'}),
            ("empty", {}),
        ]
    ],
]


async def _assert_create_refused(
    s: Shared, api: Api, body: Any, param: Any = _ANY, code: str | None = None
) -> None:
    before = await list_all(s.api)
    if isinstance(body, bytes):
        response = await api.post(
            WEBHOOKS, content=body, headers={"Content-Type": "application/json"}
        )
    else:
        response = await api.post(WEBHOOKS, json=body)
    assert_error(response, 400, code, param)
    assert await list_all(s.api) == before, "expected a refused create to create nothing"


async def _assert_patch_refused(
    s: Shared, api: Api, body: Any, param: Any = _ANY, code: str | None = None
) -> None:
    before = await get(s.api, s.target)
    if isinstance(body, bytes):
        response = await api.patch(
            path(s.target), content=body, headers={"Content-Type": "application/json"}
        )
    else:
        response = await api.patch(path(s.target), json=body)
    assert_error(response, 400, code, param)
    assert await get(s.api, s.target) == before, (
        "expected a refused PATCH to leave the webhook unchanged, updatedAt included"
    )


@pytest.mark.parametrize(("fields", "param", "code"), FIELD_REJECTIONS)
async def test_create_refuses(
    shared: Shared, fields: dict[str, Any], param: str, code: str | None
) -> None:
    await _assert_create_refused(shared, shared.api, body_with(VALID, fields), param, code)


@pytest.mark.parametrize(("fields", "param", "code"), FIELD_REJECTIONS)
async def test_patch_refuses(
    shared: Shared, fields: dict[str, Any], param: str, code: str | None
) -> None:
    await _assert_patch_refused(shared, shared.api, fields, param, code)


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        pytest.param({"name": MISSING}, "name", None, id="name-missing"),
        pytest.param({"url": MISSING}, "url", None, id="url-missing"),
        pytest.param({"topics": MISSING}, "topics", None, id="topics-missing"),
        pytest.param({"name": None}, "name", None, id="name-null"),
        pytest.param({"url": None}, "url", None, id="url-null"),
        pytest.param({"topics": None}, "topics", None, id="topics-null"),
        pytest.param(
            {"status": "active"}, "status", "parameter_unknown", id="status-not-on-create"
        ),
    ],
)
async def test_create_refuses_missing_and_null_required_fields(
    shared: Shared, fields: dict[str, Any], param: str, code: str | None
) -> None:
    await _assert_create_refused(shared, shared.api, body_with(VALID, fields), param, code)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        pytest.param({"status": "suspended"}, "status", id="status-suspended"),
        pytest.param({"status": "ACTIVE"}, "status", id="status-uppercase"),
        pytest.param({"status": "deleted"}, "status", id="status-unknown"),
        pytest.param({"status": ""}, "status", id="status-empty"),
        pytest.param({"status": None}, "status", id="status-null"),
        pytest.param({"status": 1}, "status", id="status-number"),
        pytest.param({"status": True}, "status", id="status-bool"),
        pytest.param({"name": None}, "name", id="name-null"),
        pytest.param({"url": None}, "url", id="url-null"),
        pytest.param({"topics": None}, "topics", id="topics-null"),
        pytest.param({"requestConfig": None}, "requestConfig", id="requestConfig-null"),
    ],
)
async def test_patch_refuses_status_and_nulls(
    shared: Shared, fields: dict[str, Any], param: str
) -> None:
    await _assert_patch_refused(shared, shared.api, fields, param)


@pytest.mark.parametrize("raw", BAD_BODIES)
async def test_create_refuses_a_body_that_is_not_a_json_object(shared: Shared, raw: bytes) -> None:
    await _assert_create_refused(shared, shared.api, raw, param=None)


@pytest.mark.parametrize("raw", BAD_BODIES)
async def test_patch_refuses_a_body_that_is_not_a_json_object(shared: Shared, raw: bytes) -> None:
    await _assert_patch_refused(shared, shared.api, raw, param=None)


async def test_create_refuses_an_empty_body(shared: Shared) -> None:
    await _assert_create_refused(shared, shared.api, b"")


@pytest.mark.parametrize(("fields", "where", "expected"), FIELD_ACCEPTANCES)
async def test_create_accepts(
    shared: Shared, fields: dict[str, Any], where: str, expected: Any
) -> None:
    w = ok(await shared.api.post(WEBHOOKS, json=body_with(VALID, fields)))
    try:
        assert_webhook_shape(w)
        assert field(w, where) == expected, f"expected {where} == {expected!r}, got {w}"
        assert await get(shared.api, w["id"]) == w, "expected GET to return the created object"
    finally:
        await shared.delete(w["id"])


@pytest.mark.parametrize(("fields", "where", "expected"), FIELD_ACCEPTANCES)
async def test_patch_accepts(
    shared: Shared, fields: dict[str, Any], where: str, expected: Any
) -> None:
    created = await shared.create(**FULL)
    try:
        w = ok(await shared.api.patch(path(created["id"]), json=fields))
        assert_webhook_shape(w)
        assert field(w, where) == expected, f"expected {where} == {expected!r}, got {w}"
        assert await get(shared.api, w["id"]) == w, "expected GET to return the patched object"
    finally:
        await shared.delete(created["id"])


HTTP_URLS = ["http://example.com/hook", "HTTP://EXAMPLE.COM/hook", "http://127.0.0.1:8080/"]


@pytest.mark.parametrize("url", HTTP_URLS)
async def test_create_refuses_http_unless_allowed(shared: Shared, url: str) -> None:
    await _assert_create_refused(shared, shared.strict, body_with(VALID, {"url": url}), "url")


@pytest.mark.parametrize("url", HTTP_URLS)
async def test_patch_refuses_http_unless_allowed(shared: Shared, url: str) -> None:
    await _assert_patch_refused(shared, shared.strict, {"url": url}, "url")


async def test_https_is_accepted_when_http_is_not(shared: Shared) -> None:
    w = ok(await shared.strict.post(WEBHOOKS, json=VALID))
    try:
        patched = ok(await shared.strict.patch(path(w["id"]), json={"url": "https://example.org/"}))
        assert patched["url"] == "https://example.org/", "expected an https:// URL accepted"
    finally:
        await shared.delete(w["id"])


# --------------------------------------------------------------------------------------
# 3. PATCH semantics
# --------------------------------------------------------------------------------------

CONFIG = FULL["requestConfig"]


@pytest.mark.parametrize(
    ("patch", "changed"),
    [
        pytest.param({"name": " Renamed "}, {"name": "Renamed"}, id="name"),
        pytest.param(
            {"url": "https://example.org/new"}, {"url": "https://example.org/new"}, id="url"
        ),
        pytest.param({"description": "New words"}, {"description": "New words"}, id="description"),
        pytest.param({"description": None}, {"description": None}, id="description-null-clears"),
        pytest.param(
            {"topics": ["ticket.created", "ticket.created", "post.voted"]},
            {"topics": ["ticket.created", "post.voted"]},
            id="topics",
        ),
        pytest.param({"status": "paused"}, {"status": "paused"}, id="status-paused"),
        pytest.param(
            _config(timeoutMs=12000),
            {"requestConfig": {**CONFIG, "timeoutMs": 12000}},
            id="timeout-alone-keeps-headers",
        ),
        pytest.param(
            _config(headers={"X-New": "1"}),
            {"requestConfig": {**CONFIG, "headers": {"X-New": "1"}}},
            id="headers-replace-the-map",
        ),
        pytest.param(
            _config(headers={}),
            {"requestConfig": {**CONFIG, "headers": {}}},
            id="headers-empty-clears",
        ),
        pytest.param(
            _config(headers={"X-One": "changed"}),
            {"requestConfig": {**CONFIG, "headers": {"X-One": "changed"}}},
            id="headers-subset-drops-the-rest",
        ),
        pytest.param(
            _config(timeoutMs=2000, headers={"X-New": "1"}),
            {"requestConfig": {"timeoutMs": 2000, "headers": {"X-New": "1"}}},
            id="timeout-and-headers",
        ),
        pytest.param(
            {"name": "Both", "topics": ["post.voted"], "status": "paused"},
            {"name": "Both", "topics": ["post.voted"], "status": "paused"},
            id="several-fields",
        ),
    ],
)
async def test_patch_changes_only_the_given_fields(
    shared: Shared, patch: dict[str, Any], changed: dict[str, Any]
) -> None:
    before = await shared.create(**FULL)
    try:
        after = ok(await shared.api.patch(path(before["id"]), json=patch))
        expected = {**before, **changed, "updatedAt": after["updatedAt"]}
        assert after == expected, f"expected only {sorted(changed)} to change: {after}"
        assert after["updatedAt"] > before["updatedAt"], "expected updatedAt to move forward"
        assert after["createdAt"] == before["createdAt"], "expected createdAt unchanged"
        assert await get(shared.api, before["id"]) == after, "expected GET to show the update"
    finally:
        await shared.delete(before["id"])


@pytest.mark.parametrize(
    "patch",
    [
        pytest.param({}, id="empty-object"),
        pytest.param({"name": FULL["name"]}, id="same-name"),
        pytest.param({"name": f"  {FULL['name']}  "}, id="same-name-after-trim"),
        pytest.param({"url": FULL["url"]}, id="same-url"),
        pytest.param({"description": FULL["description"]}, id="same-description"),
        pytest.param({"topics": FULL["topics"]}, id="same-topics"),
        pytest.param({"topics": [*FULL["topics"], *FULL["topics"]]}, id="same-topics-duplicated"),
        pytest.param({"status": "active"}, id="active-when-active"),
        pytest.param(_config(), id="empty-requestConfig"),
        pytest.param(_config(timeoutMs=CONFIG["timeoutMs"]), id="same-timeout"),
        pytest.param(_config(headers=CONFIG["headers"]), id="same-headers"),
        pytest.param(
            _config(headers=dict(reversed(CONFIG["headers"].items()))),
            id="same-headers-other-order",
        ),
        pytest.param({**FULL}, id="everything-the-same"),
    ],
)
async def test_patch_that_changes_nothing_is_a_no_op(shared: Shared, patch: dict[str, Any]) -> None:
    before = await shared.create(**FULL)
    try:
        after = ok(await shared.api.patch(path(before["id"]), json=patch))
        assert after == before, (
            "expected a PATCH that changes nothing to return the webhook unchanged, "
            f"updatedAt included: {before} -> {after}"
        )
        assert await get(shared.api, before["id"]) == before, "expected the webhook unchanged"
    finally:
        await shared.delete(before["id"])


async def test_patch_without_a_body_is_a_no_op(shared: Shared) -> None:
    """/openapi.json says the PATCH body is optional: no body at all changes nothing."""
    before = await shared.create(**FULL)
    try:
        after = ok(await shared.api.patch(path(before["id"])))
        assert after == before, f"expected a PATCH without a body to change nothing: {after}"
    finally:
        await shared.delete(before["id"])


async def test_updated_at_moves_on_every_effective_update(api: Api) -> None:
    w = await api.create_webhook()
    stamps = [w["updatedAt"]]
    for patch in (
        {"name": "one"},
        {"name": "two"},
        {"status": "paused"},
        {"status": "active"},
        _config(timeoutMs=1000),
    ):
        stamps.append(ok(await api.patch(path(w["id"]), json=patch))["updatedAt"])
    assert stamps == sorted(set(stamps)), f"expected strictly increasing updatedAt: {stamps}"


async def test_pause_then_resume(api: Api) -> None:
    w = await api.create_webhook()
    paused = ok(await api.patch(path(w["id"]), json={"status": "paused"}))
    assert paused["status"] == "paused", "expected the webhook paused"
    assert (await get(api, w["id"]))["status"] == "paused", "expected GET to show it paused"
    resumed = ok(await api.patch(path(w["id"]), json={"status": "active"}))
    assert resumed["status"] == "active", "expected the webhook active again"
    assert resumed["health"] == NEW_HEALTH, "expected new-webhook health after resuming"


@pytest.mark.parametrize("from_status", ["paused", "suspended"])
async def test_reactivating_resets_health(api: Api, shared: Shared, from_status: str) -> None:
    w = await api.create_webhook()
    now = api.store.clock()
    await force_columns(shared.database_url, w["id"], status=from_status, **unhealthy(now))
    stale = await get(api, w["id"])
    assert stale["status"] == from_status
    forced = {
        "avgResponseTime": 321,
        "consecutiveFailures": 3,
        "errorsSinceLastSuccess": 4,
        "lastResponseTime": 450,
        "lastSuccessAt": iso_of(now - 60_000),
    }
    assert stale["health"] == forced, f"expected the forced health to show: {stale}"

    active = ok(await api.patch(path(w["id"]), json={"status": "active"}))
    assert active["status"] == "active", f"expected {from_status} -> active"
    assert active["health"] == NEW_HEALTH, f"expected health reset on reactivation: {active}"
    assert active["updatedAt"] > stale["updatedAt"], "expected updatedAt to move"
    assert await get(api, w["id"]) == active, "expected GET to show the reset"


async def test_pausing_and_other_updates_keep_health(api: Api, shared: Shared) -> None:
    w = await api.create_webhook()
    await force_columns(shared.database_url, w["id"], **unhealthy(api.store.clock()))
    stale = await get(api, w["id"])
    for patch in ({"name": "renamed"}, {"status": "active"}, {"status": "paused"}):
        after = ok(await api.patch(path(w["id"]), json=patch))
        assert after["health"] == stale["health"], f"expected {patch} to keep health: {after}"
        assert after["lastStatus"] == stale["lastStatus"], f"expected {patch} to keep lastStatus"


async def test_suspended_webhooks_are_listed_and_filtered(api: Api, shared: Shared) -> None:
    active = await api.create_webhook(name="active")
    paused = await api.create_webhook(name="paused")
    suspended = await api.create_webhook(name="suspended")
    ok(await api.patch(path(paused["id"]), json={"status": "paused"}))
    await force_columns(shared.database_url, suspended["id"], status="suspended")
    for status, expected in (
        ("active", active),
        ("paused", paused),
        ("suspended", suspended),
    ):
        listed = [w["id"] for w in await list_all(api, status=status)]
        assert listed == [expected["id"]], (
            f"expected ?status={status} to list only {expected['name']}"
        )
    assert len(await list_all(api)) == 3, "expected no filter to list all three"


async def test_patch_to_suspended_is_refused_even_when_suspended(api: Api, shared: Shared) -> None:
    w = await api.create_webhook()
    await force_columns(shared.database_url, w["id"], status="suspended")
    before = await get(api, w["id"])
    assert_error(await api.patch(path(w["id"]), json={"status": "suspended"}), 400, param="status")
    assert await get(api, w["id"]) == before, "expected the webhook unchanged"


# --------------------------------------------------------------------------------------
# 4. Delete
# --------------------------------------------------------------------------------------


async def _dead_ends(api: Api, webhook_id: str, key: str | None = None) -> list[httpx.Response]:
    """GET, PATCH, DELETE and secret refresh of one id."""
    return [
        await api.get(path(webhook_id), key=key),
        await api.patch(path(webhook_id), json={"name": "x"}, key=key),
        await api.delete(path(webhook_id), key=key),
        await api.post(path(webhook_id, "/secret"), key=key),
    ]


async def test_delete(api: Api) -> None:
    keep = await api.create_webhook(name="keep")
    gone = await api.create_webhook(name="gone")
    response = await api.delete(path(gone["id"]))
    assert ok(response) == {"id": gone["id"], "object": "webhook", "deleted": True}, (
        "expected the deletion object of the reference"
    )
    unknown = [r.json() for r in await _dead_ends(api, UNKNOWN_ID)]
    for i, r in enumerate(await _dead_ends(api, gone["id"])):
        assert_error(r, 404, "resource_missing")
        assert r.json() == unknown[i], "expected a deleted id to answer like an unknown one"
    assert [w["id"] for w in await list_all(api)] == [keep["id"]], (
        "expected the list to no longer show the deleted webhook"
    )
    assert await get(api, keep["id"]) == keep, "expected the other webhook untouched"


async def test_delete_frees_a_place_under_the_limit(api: Api) -> None:
    key = await new_org(api, webhook_limit=2)
    first = await api.create_webhook(key=key)
    await api.create_webhook(key=key)
    assert_error(await api.post(WEBHOOKS, json=VALID, key=key), 400, "webhook_limit_reached")
    ok(await api.delete(path(first["id"]), key=key))
    ok(await api.post(WEBHOOKS, json=VALID, key=key))
    assert len(await list_all(api, key=key)) == 2


async def test_a_webhook_deleted_twice_frees_one_place(api: Api) -> None:
    """The organization keeps its count of webhooks (migration 0009): a second delete of
    the same webhook (404) must not count it out again."""
    key = await new_org(api, webhook_limit=2)
    first = await api.create_webhook(key=key)
    await api.create_webhook(key=key)
    ok(await api.delete(path(first["id"]), key=key))
    assert (await api.delete(path(first["id"]), key=key)).status_code == 404
    ok(await api.post(WEBHOOKS, json=VALID, key=key))
    assert_error(await api.post(WEBHOOKS, json=VALID, key=key), 400, "webhook_limit_reached")
    deletes = await asyncio.gather(
        *(api.delete(path(w["id"]), key=key) for w in await list_all(api, key=key) for _ in "ab")
    )
    assert sorted(r.status_code for r in deletes) == [200, 200, 404, 404]
    for _ in range(2):
        ok(await api.post(WEBHOOKS, json=VALID, key=key))
    assert_error(await api.post(WEBHOOKS, json=VALID, key=key), 400, "webhook_limit_reached")


# --------------------------------------------------------------------------------------
# 5. Secret refresh
# --------------------------------------------------------------------------------------


async def test_secret_refresh(api: Api) -> None:
    before = await api.create_webhook(**FULL)
    first = ok(await api.post(path(before["id"], "/secret")))
    assert_webhook_shape(first)
    assert first["secret"] != before["secret"], "expected a new secret"
    assert first["updatedAt"] > before["updatedAt"], "expected updatedAt to move"
    assert first == {**before, "secret": first["secret"], "updatedAt": first["updatedAt"]}, (
        "expected only secret and updatedAt to change"
    )
    assert await get(api, before["id"]) == first, "expected GET to show only the new secret"
    assert (await list_all(api))[0]["secret"] == first["secret"], "expected the list to agree"

    second = ok(await api.post(path(before["id"], "/secret")))
    assert second["secret"] not in (before["secret"], first["secret"]), (
        "expected every refresh to make a new secret"
    )
    assert second["updatedAt"] > first["updatedAt"], "expected updatedAt to move again"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param({"secret": "whsec_chosen"}, "secret", id="secret"),
        pytest.param({"foo": 1}, "foo", id="unknown"),
    ],
)
async def test_secret_refresh_refuses_body_fields(
    api: Api, body: dict[str, Any], param: str
) -> None:
    before = await api.create_webhook()
    response = await api.post(path(before["id"], "/secret"), json=body)
    assert_error(response, 400, "parameter_unknown", param)
    assert await get(api, before["id"]) == before, (
        "expected a refused secret refresh to keep the secret (the endpoint takes no fields)"
    )


async def test_secret_refresh_accepts_an_empty_object(api: Api) -> None:
    before = await api.create_webhook()
    after = ok(await api.post(path(before["id"], "/secret"), json={}))
    assert after["secret"] != before["secret"], "expected a new secret"


# --------------------------------------------------------------------------------------
# 6. Tenancy and ids
# --------------------------------------------------------------------------------------


async def test_another_organizations_webhook_is_unknown(api: Api) -> None:
    other_key = await new_org(api)
    theirs = await api.create_webhook(key=other_key, name="theirs")
    ours = await api.create_webhook(name="ours")
    unknown = await _dead_ends(api, UNKNOWN_ID)
    foreign = await _dead_ends(api, theirs["id"])
    for u, f in zip(unknown, foreign, strict=True):
        assert_error(f, 404, "resource_missing")
        assert (f.status_code, f.json()) == (u.status_code, u.json()), (
            f"expected {f.request.method} {f.request.url.path} on another organization's webhook "
            "to answer exactly like an unknown id"
        )
    assert await get(api, theirs["id"], key=other_key) == theirs, (
        "expected the other organization's webhook untouched by our PATCH/DELETE/secret"
    )
    assert [w["id"] for w in await list_all(api)] == [ours["id"]], "expected only our webhook"
    assert [w["id"] for w in await list_all(api, key=other_key)] == [theirs["id"]], (
        "expected the other organization to see only its own webhook"
    )
    for status in ("active", "paused", "suspended"):
        listed = [w["id"] for w in await list_all(api, status=status)]
        assert theirs["id"] not in listed, f"expected ?status={status} to hide other orgs"


async def test_another_organizations_cursor_is_refused(api: Api) -> None:
    await api.create_webhook()
    other_key = await new_org(api)
    for _ in range(3):
        await api.create_webhook(key=other_key)
    page = ok(await api.get(WEBHOOKS, params={"limit": 1}, key=other_key))
    mine = await api.get(WEBHOOKS, params={"cursor": page["nextCursor"]})
    assert mine.status_code == 400, mine.text
    assert mine.json()["error"]["code"] == "cursor_invalid", (
        "expected another organization's cursor to be refused (SPEC §2)"
    )


MALFORMED_IDS = [
    pytest.param("507f1f77bcf86cd79943901", id="23-chars"),
    pytest.param("507f1f77bcf86cd7994390111", id="25-chars"),
    pytest.param("507F1F77BCF86CD799439011", id="uppercase"),
    pytest.param("507f1f77bcf86cd79943901g", id="non-hex"),
    pytest.param("abc", id="short"),
    pytest.param("507f1f77-bcf8-6cd7-9943-9011", id="dashes"),
]


@pytest.mark.parametrize("webhook_id", MALFORMED_IDS)
@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        pytest.param("GET", "", None, id="get"),
        pytest.param("PATCH", "", {"name": "x"}, id="patch"),
        pytest.param("DELETE", "", None, id="delete"),
        pytest.param("POST", "/secret", None, id="secret"),
    ],
)
async def test_malformed_ids_are_missing(
    shared: Shared, webhook_id: str, method: str, suffix: str, body: Any
) -> None:
    response = await shared.api.request(method, path(webhook_id, suffix), json=body)
    assert_error(response, 404, "resource_missing")


async def test_an_uppercase_id_does_not_find_the_webhook(shared: Shared) -> None:
    response = await shared.api.get(path(shared.target.upper()))
    assert_error(response, 404, "resource_missing")


# --------------------------------------------------------------------------------------
# 7. Listing
# --------------------------------------------------------------------------------------


async def _create_many(api: Api, n: int, key: str | None = None) -> list[str]:
    return [(await api.create_webhook(key=key, name=f"hook {i}"))["id"] for i in range(n)]


async def test_list_is_newest_first_with_a_default_limit_of_10(api: Api) -> None:
    key = await new_org(api, webhook_limit=50)
    ids = await _create_many(api, 12, key)
    first = ok(await api.get(WEBHOOKS, key=key))
    assert set(first) == {"object", "data", "nextCursor"} and first["object"] == "list"
    assert [w["id"] for w in first["data"]] == ids[::-1][:10], (
        "expected the 10 newest webhooks, newest first, by default"
    )
    for w in first["data"]:
        assert_webhook_shape(w)
    assert isinstance(first["nextCursor"], str) and len(first["nextCursor"]) <= 512
    second = ok(await api.get(WEBHOOKS, params={"cursor": first["nextCursor"]}, key=key))
    assert [w["id"] for w in second["data"]] == ids[::-1][10:], "expected the 2 oldest next"
    assert second["nextCursor"] is None, "expected nextCursor null on the last page"


@pytest.mark.parametrize("limit", [1, 3, 4, 7, 100])
async def test_walking_pages_returns_every_webhook_once(api: Api, limit: int) -> None:
    ids = await _create_many(api, 7)
    seen: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    pages = 0
    while True:
        page = ok(await api.get(WEBHOOKS, params=params))
        pages += 1
        assert len(page["data"]) <= limit, f"expected at most {limit} webhooks a page"
        seen.extend(w["id"] for w in page["data"])
        if page["nextCursor"] is None:
            break
        assert len(page["data"]) == limit, "expected only the last page to be short"
        params["cursor"] = page["nextCursor"]
    assert seen == ids[::-1], f"expected every webhook once, newest first, with limit={limit}"
    assert pages == max(1, -(-len(ids) // limit)), (
        "expected no empty trailing page (nextCursor null on the last full page)"
    )


async def test_walking_a_status_filter(api: Api) -> None:
    ids = await _create_many(api, 6)
    paused = ids[1::2]
    for webhook_id in paused:
        ok(await api.patch(path(webhook_id), json={"status": "paused"}))
    seen = [w["id"] for w in await list_all(api, limit=2, status="paused")]
    assert seen == paused[::-1], "expected every paused webhook once, newest first"
    seen = [w["id"] for w in await list_all(api, limit=2, status="active")]
    assert seen == ids[0::2][::-1], "expected every active webhook once, newest first"


async def test_empty_list_and_exact_fit(api: Api) -> None:
    assert ok(await api.get(WEBHOOKS)) == {"object": "list", "data": [], "nextCursor": None}
    await _create_many(api, 3)
    page = ok(await api.get(WEBHOOKS, params={"limit": 3}))
    assert len(page["data"]) == 3 and page["nextCursor"] is None, (
        "expected nextCursor null when the page holds exactly the rest"
    )


async def test_paging_is_stable_while_webhooks_come_and_go(api: Api) -> None:
    key = await new_org(api, webhook_limit=50)
    initial = await _create_many(api, 12, key)  # oldest first
    deleted: set[str] = set()
    deleted_unseen: set[str] = set()
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 3}
    while True:
        page = ok(await api.get(WEBHOOKS, params=params, key=key))
        seen.extend(w["id"] for w in page["data"])
        if page["nextCursor"] is None:
            break
        params["cursor"] = page["nextCursor"]
        # Between pages: two new webhooks, one seen and one not yet seen deleted.
        await _create_many(api, 2, key)
        unseen = [i for i in initial if i not in seen and i not in deleted]
        victims = [v for v in seen if v not in deleted][:1] + unseen[len(unseen) // 2 :][:1]
        for victim in victims:
            ok(await api.delete(path(victim), key=key))
            deleted.add(victim)
            if victim not in seen:
                deleted_unseen.add(victim)
    assert len(seen) == len(set(seen)), f"expected no webhook twice: {seen}"
    throughout = [i for i in initial if i not in deleted]
    missing = [i for i in throughout if i not in seen]
    assert not missing, f"expected every webhook that existed throughout, missing {missing}"
    ghosts = deleted_unseen & set(seen)
    assert not ghosts, f"expected webhooks deleted before their page not to be listed: {ghosts}"
    assert deleted_unseen, "expected the test to delete webhooks ahead of the cursor"
    assert seen == sorted(seen, reverse=True), "expected newest first across pages"


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "1.5", "10.0", "1_0", "1e1", ""])
async def test_list_refuses_a_bad_limit(shared: Shared, limit: str) -> None:
    response = await shared.api.get(WEBHOOKS, params={"limit": limit})
    assert_error(response, 400, param="limit")


@pytest.mark.parametrize("limit", ["1", "100"])
async def test_list_accepts_limit_bounds(shared: Shared, limit: str) -> None:
    page = ok(await shared.api.get(WEBHOOKS, params={"limit": limit}))
    assert 1 <= len(page["data"]) <= int(limit), f"expected at most {limit} webhooks"


@pytest.mark.parametrize("status", ["ACTIVE", "deleted", "", "active,paused"])
async def test_list_refuses_a_bad_status(shared: Shared, status: str) -> None:
    response = await shared.api.get(WEBHOOKS, params={"status": status})
    assert_error(response, 400, param="status")


def _garbage_cursors() -> list[Any]:
    webhook_id = "507f1f77bcf86cd799439011"
    return [
        pytest.param("not base64!", id="not-base64"),
        pytest.param("%%%%", id="punctuation"),
        pytest.param("a", id="one-char"),
        pytest.param(base64.urlsafe_b64encode(b"not json").decode(), id="base64-not-json"),
        pytest.param(base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(), id="base64-binary"),
        pytest.param(cursor_of([webhook_id]), id="json-array"),
        pytest.param(cursor_of(webhook_id), id="json-string"),
        pytest.param(cursor_of({}), id="json-empty-object"),
        pytest.param(cursor_of({"after": webhook_id}), id="json-no-list"),
        pytest.param(cursor_of({"list": "webhooks"}), id="json-no-position"),
        pytest.param(cursor_of({"list": "webhooks", "after": 5}), id="json-number-position"),
        pytest.param(cursor_of({"list": "webhooks", "after": "zzz"}), id="json-bad-id"),
        pytest.param(cursor_of({"list": "deliveries", "after": webhook_id}), id="other-list"),
        pytest.param(cursor_of({"list": "events", "after": webhook_id}), id="events-list"),
        pytest.param("a" * 513, id="513-chars"),
        pytest.param(
            cursor_of({"list": "webhooks", "after": webhook_id, "pad": "x" * 400}), id="long-json"
        ),
        pytest.param("", id="empty"),
        pytest.param("é", id="non-ascii"),
    ]


@pytest.mark.parametrize("cursor", _garbage_cursors())
async def test_list_refuses_a_garbage_cursor(shared: Shared, cursor: str) -> None:
    response = await shared.api.get(WEBHOOKS, params={"cursor": cursor})
    assert_error(response, 400, "cursor_invalid", "cursor")


async def test_list_refuses_unknown_and_repeated_query_parameters(shared: Shared) -> None:
    assert_error(await shared.api.get(WEBHOOKS, params={"foo": "1"}), 400, param="foo")
    response = await shared.api.get(WEBHOOKS, params=[("limit", "1"), ("limit", "2")])
    assert_error(response, 400, param="limit")


# --------------------------------------------------------------------------------------
# 8. The webhook limit
# --------------------------------------------------------------------------------------


async def test_create_beyond_the_limit_is_refused(api: Api) -> None:
    await _create_many(api, 10)  # the default limit of an organization
    before = await list_all(api)
    assert_error(await api.post(WEBHOOKS, json=VALID), 400, "webhook_limit_reached")
    assert await list_all(api) == before, "expected nothing created beyond the limit"
    other_key = await new_org(api, webhook_limit=1)
    ok(await api.post(WEBHOOKS, json=VALID, key=other_key))
    assert_error(await api.post(WEBHOOKS, json=VALID, key=other_key), 400, "webhook_limit_reached")
    assert await list_all(api) == before, "expected each organization to have its own limit"


async def test_concurrent_creates_respect_the_limit(api: Api) -> None:
    key = await new_org(api, webhook_limit=10)
    responses = await asyncio.gather(
        *(api.post(WEBHOOKS, json={**VALID, "name": f"hook {i}"}, key=key) for i in range(20))
    )
    created = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(created) == 10, (
        f"expected exactly 10 of 20 concurrent creates to succeed, got {len(created)}"
    )
    for r in refused:
        assert_error(r, 400, "webhook_limit_reached")
    listed = await list_all(api, key=key)
    assert sorted(w["id"] for w in listed) == sorted(r.json()["id"] for r in created), (
        "expected the list to hold exactly the 10 created webhooks"
    )
