"""List cursors (SPEC §2): tamper-proof, bound to their list, its filters and the
organization; URL-safe and at most 512 characters; the same for every API process of an
installation. On SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx
import pytest

from hookd.api import create_app
from hookd.api.pagination import Cursors, ListScope
from hookd.settings import Settings
from tests.conftest import Api

WEBHOOKS = "/v2/webhooks"


def _page(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _assert_refused(response: httpx.Response, why: str) -> None:
    assert response.status_code == 400, f"{why}: {response.status_code} {response.text}"
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("cursor_invalid", "cursor"), f"{why}: {error}"


async def _webhooks_cursor(api: Api, key: str | None = None, **params: Any) -> str:
    body = _page(await api.get(WEBHOOKS, params={"limit": 1, **params}, key=key))
    cursor: str = body["nextCursor"]
    assert cursor, body
    return cursor


async def _deliveries_cursor(api: Api, webhook_id: str, **params: Any) -> str:
    path = f"{WEBHOOKS}/{webhook_id}/deliveries"
    body = _page(await api.get(path, params={"limit": 1, **params}))
    cursor: str = body["nextCursor"]
    assert cursor, body
    return cursor


@pytest.fixture
async def populated(api: Api) -> dict[str, Any]:
    """Three webhooks (two paused) with three deliveries each, and another organization's."""
    hooks = [await api.create_webhook() for _ in range(3)]
    for _ in range(3):
        await api.publish()
    for hook in hooks[1:]:
        response = await api.patch(f"{WEBHOOKS}/{hook['id']}", json={"status": "paused"})
        assert response.status_code == 200, response.text
    other_key = await api.new_org_key("other")
    for _ in range(3):
        await api.create_webhook(key=other_key)
    return {"hooks": hooks, "other_key": other_key}


async def test_cursors_page_through_and_are_url_safe_and_short(
    api: Api, populated: dict[str, Any]
) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1} | ({"cursor": cursor} if cursor else {})
        body = _page(await api.get(WEBHOOKS, params=params))
        seen += [w["id"] for w in body["data"]]
        cursor = body["nextCursor"]
        if cursor is None:
            break
        assert len(cursor) <= 512 and re.fullmatch(r"[A-Za-z0-9_.-]+", cursor), cursor
    assert seen == sorted((h["id"] for h in populated["hooks"]), reverse=True)


async def test_an_altered_cursor_is_refused(api: Api, populated: dict[str, Any]) -> None:
    cursor = await _webhooks_cursor(api)
    payload, _, tag = cursor.partition(".")
    # A well-formed cursor pointing elsewhere, with the old tag: the position is forged.
    forged = base64.urlsafe_b64encode(b'["ffffffffffffffffffffffff"]').rstrip(b"=").decode()
    # One character changed at the start and one at the end (whose low bits base64 leaves
    # unused: another spelling of the same bytes is an alteration too).
    flipped = ("A" if tag[0] != "A" else "B") + tag[1:]
    respelled = tag[:-1] + ("A" if tag[-1] != "A" else "B")
    for bad, why in [
        (f"{forged}.{tag}", "a forged position"),
        (f"{payload}.{flipped}", "an altered tag"),
        (f"{payload}.{respelled}", "a respelled tag"),
        (payload, "no tag"),
        (f"{payload}.", "an empty tag"),
        (f"{payload}={tag}", "a stray character"),
        (cursor + "A", "one character more"),
    ]:
        _assert_refused(await api.get(WEBHOOKS, params={"cursor": bad}), why)


async def test_a_cursor_of_another_list_is_refused(api: Api, populated: dict[str, Any]) -> None:
    first, second, _third = populated["hooks"]
    webhooks_cursor = await _webhooks_cursor(api)
    paused_cursor = await _webhooks_cursor(api, status="paused")
    deliveries_cursor = await _deliveries_cursor(api, first["id"])
    failed_path = f"{WEBHOOKS}/{first['id']}/deliveries"
    cases = [
        (WEBHOOKS, {"cursor": deliveries_cursor}, "a deliveries cursor on the webhooks list"),
        (failed_path, {"cursor": webhooks_cursor}, "a webhooks cursor on a deliveries list"),
        (
            f"{WEBHOOKS}/{second['id']}/deliveries",
            {"cursor": deliveries_cursor},
            "another webhook's deliveries cursor",
        ),
        (WEBHOOKS, {"cursor": paused_cursor}, "a status=paused cursor without the filter"),
        (
            WEBHOOKS,
            {"cursor": paused_cursor, "status": "active"},
            "a status=paused cursor with status=active",
        ),
        (WEBHOOKS, {"cursor": webhooks_cursor, "status": "paused"}, "an unfiltered cursor"),
        (
            failed_path,
            {"cursor": deliveries_cursor, "status": "pending"},
            "an unfiltered deliveries cursor with status=pending",
        ),
    ]
    for path, params, why in cases:
        _assert_refused(await api.get(path, params=params), why)
    # The same list and filters take it.
    _page(await api.get(WEBHOOKS, params={"cursor": paused_cursor, "status": "paused"}))
    _page(await api.get(failed_path, params={"cursor": deliveries_cursor}))


async def test_another_organizations_cursor_is_refused(api: Api, populated: dict[str, Any]) -> None:
    theirs = await _webhooks_cursor(api, key=populated["other_key"])
    _assert_refused(
        await api.get(WEBHOOKS, params={"cursor": theirs}), "another organization's cursor"
    )
    ours = await _webhooks_cursor(api)
    _assert_refused(
        await api.get(WEBHOOKS, params={"cursor": ours}, key=populated["other_key"]),
        "this organization's cursor used by another",
    )


async def test_every_api_process_of_an_installation_accepts_the_others_cursors(
    api: Api, settings: Settings, populated: dict[str, Any]
) -> None:
    cursor = await _webhooks_cursor(api)
    second = create_app(settings, api.store)  # another process's app, same database
    transport = httpx.ASGITransport(app=second)
    async with httpx.AsyncClient(transport=transport, base_url="http://hookd.test") as client:
        response = await client.get(WEBHOOKS, params={"cursor": cursor}, headers=api.auth())
    assert _page(response)["data"], "the key is the database's, not the process's"


def test_a_cursor_made_with_another_key_is_refused() -> None:
    scope = ListScope.of("webhooks", "6b04432dbafc271f8fbe01fb", status=None)
    cursor = Cursors(b"k" * 32).encode(scope, ("6b04432dbafc271f8fbe01fb",))
    assert Cursors(b"k" * 32).decode_id(scope, cursor) == "6b04432dbafc271f8fbe01fb"
    with pytest.raises(Exception, match="not a cursor of this list"):
        Cursors(b"j" * 32).decode_id(scope, cursor)
