"""The dashboard and customer portal over HTTP (SPEC §9; hookd/dashboard/web.py and
hookd/api/portal.py): sign-in, session cookies, CSRF, revoked keys, one-time portal links,
their scope, read-only sessions and expiry, and every page rendering real data from the
real store, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from hookd.api import create_app
from hookd.delivery.outcomes import build_settlement
from hookd.delivery.sender import AttemptResult
from hookd.settings import DEFAULT_API_VERSION
from hookd.store import ClaimRequest, Store
from tests.conftest import Api, make_settings, run_sql

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Browser:
    """A cookie-keeping client of the dashboard (no redirects followed, to check them)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.csrf = ""

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        response = await self.client.get(path, **kw)
        found = _CSRF.search(response.text)
        if found and "/sign-in" not in path:
            self.csrf = found.group(1)
        return response

    async def post(
        self, path: str, data: dict[str, Any] | None = None, **kw: Any
    ) -> httpx.Response:
        form = {"csrf_token": self.csrf, **(data or {})}
        return await self.client.post(path, data=form, **kw)

    async def sign_in(self, key: str) -> httpx.Response:
        page = await self.client.get("/dashboard/sign-in")
        csrf = _CSRF.search(page.text)
        assert csrf, page.text
        response = await self.client.post(
            "/dashboard/sign-in", data={"csrf_token": csrf.group(1), "api_key": key}
        )
        if response.status_code == 303:
            await self.get("/dashboard")
        return response


@pytest.fixture
async def browser(api: Api) -> AsyncIterator[Browser]:
    transport = httpx.ASGITransport(app=api.client._transport.app)  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=transport, base_url="http://hookd.test") as client:
        yield Browser(client)


async def settle_attempts(store: Store, outcomes: list[tuple[bool, int]]) -> None:
    """Claim the due deliveries and record one attempt each, as a worker would: ``outcomes``
    gives each one's success and response time, in claim order."""
    now = store.clock()
    claimed = await store.claim(
        ClaimRequest(now=now, capacity=100, per_webhook=100, margin_ms=60_000, token="t-1")
    )
    results = [
        (
            c,
            AttemptResult(
                now,
                ok,
                200 if ok else 500,
                "OK" if ok else "Server Error",
                ms,
                b"fine" if ok else b"boom",
                None,
            ),
        )
        for c, (ok, ms) in zip(claimed, outcomes, strict=False)
    ]
    await store.settle(build_settlement(results, (60.0,), 10, random.Random(1)))


# Sign-in and sessions.


async def test_signing_in_with_a_key_sets_a_safe_session_cookie(api: Api, browser: Browser) -> None:
    assert (await browser.client.get("/dashboard")).headers["location"] == "/dashboard/sign-in"
    bad = await browser.sign_in("sk_not_a_real_key_at_all_0000000000000")
    assert bad.status_code == 401 and 'id="api_key-error"' in bad.text
    assert "This API key does not exist." in bad.text, "the error is shown beside the field"

    response = await browser.sign_in(api.key)
    assert response.status_code == 303 and response.headers["location"] == "/dashboard"
    cookie = next(
        v for v in response.headers.get_list("set-cookie") if v.startswith("hookd_session=")
    )
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/dashboard" in cookie
    assert "Secure" not in cookie, "not Secure on plain http (the browser would drop it)"
    page = await browser.get("/dashboard")
    assert page.status_code == 200 and "Webhooks" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp


async def test_the_sign_in_form_needs_its_csrf_token(api: Api, browser: Browser) -> None:
    await browser.client.get("/dashboard/sign-in")
    response = await browser.client.post(
        "/dashboard/sign-in", data={"csrf_token": "forged", "api_key": api.key}
    )
    assert response.status_code == 403 and "csrf_invalid" in response.text
    assert "hookd_session" not in response.headers.get("set-cookie", "")


async def test_changes_need_the_sessions_csrf_token(api: Api, browser: Browser) -> None:
    hook = await api.create_webhook()
    await browser.sign_in(api.key)
    forged = await browser.client.post(
        f"/dashboard/webhooks/{hook['id']}/status", data={"status": "paused"}
    )
    assert forged.status_code == 403 and "csrf_invalid" in forged.text
    assert (await api.get(f"/v2/webhooks/{hook['id']}")).json()["status"] == "active"

    by_header = await browser.client.post(
        f"/dashboard/webhooks/{hook['id']}/status",
        data={"status": "paused"},
        headers={"X-CSRF-Token": browser.csrf},
    )
    assert by_header.status_code == 303, "htmx sends the token as X-CSRF-Token"
    assert (await api.get(f"/v2/webhooks/{hook['id']}")).json()["status"] == "paused"


async def test_a_request_without_a_session_is_refused(api: Api, browser: Browser) -> None:
    hook = await api.create_webhook()
    post = await browser.client.post(f"/dashboard/webhooks/{hook['id']}/test", data={})
    assert post.status_code == 401 and "session_missing" in post.text
    htmx = await browser.client.get(
        f"/dashboard/webhooks/{hook['id']}/deliveries", headers={"HX-Request": "true"}
    )
    assert htmx.status_code == 401 and htmx.headers["hx-redirect"] == "/dashboard/sign-in"


async def test_revoking_the_key_ends_its_sessions(api: Api, browser: Browser) -> None:
    org = await api.store.find_organization("default")
    assert org is not None
    _key, secret = await api.store.create_api_key(org.id, "dash")
    await browser.sign_in(secret)
    assert (await browser.get("/dashboard")).status_code == 200
    [key] = [k for k in await api.store.list_api_keys(org.id) if k.label == "dash"]
    await api.store.revoke_api_key(key.id)
    response = await browser.client.get("/dashboard")
    assert response.status_code == 303 and response.headers["location"] == "/dashboard/sign-in"


async def test_signing_out_ends_the_session(api: Api, browser: Browser) -> None:
    await browser.sign_in(api.key)
    assert (await browser.post("/dashboard/sign-out")).status_code == 303
    assert (await browser.client.get("/dashboard")).status_code == 303


# Pages with real data.


async def test_the_create_form_shows_errors_beside_fields_then_creates(
    api: Api, browser: Browser
) -> None:
    await browser.sign_in(api.key)
    await browser.get("/dashboard/webhooks/new")
    bad = await browser.post(
        "/dashboard/webhooks",
        {"name": "Orders", "url": "not a url", "topics": ["post.created"], "timeoutMs": "5000"},
    )
    assert bad.status_code == 400
    assert 'id="url-error"' in bad.text and 'aria-invalid="true"' in bad.text
    assert 'value="Orders"' in bad.text, "what was typed stays in the form"
    no_topics = await browser.post(
        "/dashboard/webhooks",
        {"name": "Orders", "url": "https://example.com/h", "timeoutMs": "5000"},
    )
    assert no_topics.status_code == 400 and 'id="topics-error"' in no_topics.text
    slow = await browser.post(
        "/dashboard/webhooks",
        {
            "name": "Orders",
            "url": "https://example.com/h",
            "topics": "post.created",
            "timeoutMs": "99",
        },
    )
    assert slow.status_code == 400 and 'id="timeoutMs-error"' in slow.text

    good = await browser.post(
        "/dashboard/webhooks",
        {
            "name": "Orders",
            "url": "https://example.com/h",
            "topics": ["post.created", "comment.created"],
            "timeoutMs": "7000",
            "headers": "X-Team: billing",
        },
    )
    assert good.status_code == 303, good.text
    page = await browser.get(good.headers["location"])
    created = (await api.get("/v2/webhooks")).json()["data"][0]
    assert created["name"] == "Orders" and created["requestConfig"] == {
        "timeoutMs": 7000,
        "headers": {"X-Team": "billing"},
    }
    assert created["secret"] in page.text, "the new webhook's secret is shown once created"


async def test_editing_a_webhook_applies_the_apis_validation(api: Api, browser: Browser) -> None:
    hook = await api.create_webhook(name="Old")
    await browser.sign_in(api.key)
    form = await browser.get(f"/dashboard/webhooks/{hook['id']}/edit")
    assert 'value="Old"' in form.text
    values = {"name": " ", "url": hook["url"], "topics": "post.created", "timeoutMs": "5000"}
    bad = await browser.post(f"/dashboard/webhooks/{hook['id']}", values)
    assert bad.status_code == 400 and 'id="name-error"' in bad.text
    ok = await browser.post(f"/dashboard/webhooks/{hook['id']}", {**values, "name": "New"})
    assert ok.status_code == 303
    assert (await api.get(f"/v2/webhooks/{hook['id']}")).json()["name"] == "New"


async def test_the_overview_shows_24h_stats_with_failing_webhooks_first(
    api: Api, browser: Browser
) -> None:
    healthy = await api.create_webhook(name="Healthy")
    failing = await api.create_webhook(name="Broken", topics=["comment.created"])
    await api.publish("post.created")
    await api.publish("post.created")
    await api.publish("comment.created")
    # Claim order is fair, not fixed: look each claimed delivery's webhook up.
    now = api.store.clock()
    claimed = await api.store.claim(
        ClaimRequest(now=now, capacity=100, per_webhook=100, margin_ms=60_000, token="t-1")
    )
    results = [
        (
            c,
            AttemptResult(
                now,
                c.webhook_id == healthy["id"],
                200 if c.webhook_id == healthy["id"] else 500,
                "m",
                30,
                b"",
                None,
            ),
        )
        for c in claimed
    ]
    await api.store.settle(build_settlement(results, (60.0,), 10, random.Random(1)))

    await browser.sign_in(api.key)
    page = (await browser.get("/dashboard")).text
    assert page.index("Broken") < page.index("Healthy"), "failing webhooks come first"
    row = page[page.index("Healthy") : page.index("Healthy") + 1200]
    assert "100.0 %" in row and ">2<" in row, "a success rate and the attempt count of 24 h"
    broken = page[page.index("Broken") : page.index("Broken") + 1200]
    assert "0.0 %" in broken and "500" in broken
    assert failing["id"] in page and "ms" in row, "p95 shown"


async def test_output_is_escaped(api: Api, browser: Browser) -> None:
    await api.create_webhook(name="<script>alert(1)</script>")
    await browser.sign_in(api.key)
    page = (await browser.get("/dashboard")).text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


async def test_the_webhook_page_has_charts_secret_actions_and_live_deliveries(
    api: Api, browser: Browser
) -> None:
    hook = await api.create_webhook(name="Charts")
    for _ in range(3):
        await api.publish()
    await settle_attempts(api.store, [(True, 20), (False, 900), (True, 40)])
    await api.publish()  # one pending
    await browser.sign_in(api.key)
    page = await browser.get(f"/dashboard/webhooks/{hook['id']}")
    text = page.text
    assert text.count("<svg") == 2 and 'class="ok"' in text and 'class="fail"' in text
    assert "2 succeeded, 1 failed" in text, "the hour's bar says what it counts"
    assert hook["secret"] not in text, "the secret is shown only on request"
    assert (
        hook["secret"]
        in (await browser.get(f"/dashboard/webhooks/{hook['id']}?reveal=secret")).text
    )
    assert 'hx-trigger="every 2s"' in text, "the delivery list refreshes itself"
    assert text.count("/deliveries/") >= 4
    week = await browser.get(f"/dashboard/webhooks/{hook['id']}?range=7d")
    assert "over 7 days" in week.text

    failed = await browser.get(f"/dashboard/webhooks/{hook['id']}/deliveries?status=failed")
    assert failed.text.count('class="status status-') == 0 or "status-succeeded" not in failed.text
    pending = await browser.get(f"/dashboard/webhooks/{hook['id']}/deliveries?status=pending")
    assert pending.text.count("status-pending") == 2, "the failed attempt is a pending retry"
    assert "<html" not in pending.text, "the fragment alone"
    invalid = await browser.get(f"/dashboard/webhooks/{hook['id']}?status=nope")
    assert invalid.status_code == 400 and "parameter_invalid" in invalid.text


async def test_the_delivery_list_pages(api: Api, browser: Browser) -> None:
    hook = await api.create_webhook()
    for _ in range(23):
        await api.publish()
    await browser.sign_in(api.key)
    first = await browser.get(f"/dashboard/webhooks/{hook['id']}")
    older = re.search(r'href="(/dashboard/webhooks/[^"]+before=[0-9a-f]{24})', first.text)
    assert older, "a link to older deliveries"
    second = await browser.get(older.group(1).replace("&amp;", "&"))
    ids_first = set(re.findall(r"deliveries/([0-9a-f]{24})", first.text))
    ids_second = set(re.findall(r"deliveries/([0-9a-f]{24})", second.text))
    assert len(ids_first) == 20 and len(ids_second) == 3 and not ids_first & ids_second
    assert 'hx-trigger="every 2s"' not in second.text, "older pages stay still"


async def test_actions_pause_test_recover_refresh_secret_and_retry(
    api: Api, browser: Browser
) -> None:
    hook = await api.create_webhook()
    await api.publish()
    await settle_attempts(api.store, [(False, 50)])
    await browser.sign_in(api.key)
    await browser.get(f"/dashboard/webhooks/{hook['id']}")
    base = f"/dashboard/webhooks/{hook['id']}"

    assert (await browser.post(f"{base}/status", {"status": "paused"})).status_code == 303
    assert (await api.get(f"/v2/webhooks/{hook['id']}")).json()["status"] == "paused"
    assert (await browser.post(f"{base}/status", {"status": "active"})).status_code == 303
    assert (await browser.post(f"{base}/test", {"topic": "post.created"})).status_code == 303
    listed = (await api.get(f"/v2/webhooks/{hook['id']}/deliveries")).json()["data"]
    assert len(listed) == 2

    unconfirmed = await browser.post(f"{base}/secret", {"gracePeriodSeconds": "3600"})
    assert unconfirmed.status_code == 400, "refreshing needs the confirmation"
    rotated = await browser.post(f"{base}/secret", {"gracePeriodSeconds": "3600", "confirm": "yes"})
    assert rotated.status_code == 303
    new_secret = (await api.get(f"/v2/webhooks/{hook['id']}")).json()["secret"]
    assert new_secret != hook["secret"]
    assert new_secret in (await browser.get(rotated.headers["location"])).text

    recover = await browser.post(f"{base}/recover", {"since": "2000-01-01T00:00", "until": ""})
    assert recover.status_code == 400 and "window_outside_retention" in recover.text
    page = await browser.get(base)
    since = re.search(r'name="since" type="datetime-local" value="([^"]+)"', page.text)
    assert since
    recovered = await browser.post(f"{base}/recover", {"since": since.group(1)})
    assert recovered.status_code == 303
    assert "Recovery queued: 0 event(s)" in (await browser.get(recovered.headers["location"])).text

    delivery = listed[-1]
    detail = await browser.get(f"{base}/deliveries/{delivery['id']}")
    assert detail.status_code == 200
    assert (
        "&#34;topic&#34;: &#34;post.created&#34;" in detail.text or "&#34;topic&#34;" in detail.text
    ), "the payload, pretty-printed (escaped)"
    assert "boom" in detail.text and "500" in detail.text, "each attempt's status and body"
    retried = await browser.post(f"{base}/deliveries/{delivery['id']}/retry")
    assert retried.status_code == 303
    assert (await api.get(f"/v2/webhooks/{hook['id']}/deliveries/{delivery['id']}")).json()[
        "nextAttemptAt"
    ] is not None
    assert (await browser.get(f"{base}/deliveries/{'0' * 24}")).status_code == 404


async def test_the_events_page_lists_and_looks_up_events(api: Api, browser: Browser) -> None:
    one = await api.create_webhook(name="One")
    two = await api.create_webhook(name="Two")
    event = await api.publish()
    await browser.sign_in(api.key)
    page = await browser.get("/dashboard/events")
    assert event["id"] in page.text
    found = await browser.get(f"/dashboard/events?id={event['id']}")
    assert found.status_code == 200
    assert "One" in found.text and "Two" in found.text, "its deliveries across webhooks"
    assert one["id"] in found.text and two["id"] in found.text
    missing = await browser.get("/dashboard/events?id=notif_nope")
    assert missing.status_code == 400 and 'id="event-id-error"' in missing.text


async def test_a_malformed_form_is_refused_not_a_server_error(api: Api, browser: Browser) -> None:
    hook = await api.create_webhook()
    await browser.sign_in(api.key)
    flood = "&".join(f"f{i}=x" for i in range(300))
    response = await browser.client.post(
        f"/dashboard/webhooks/{hook['id']}/test",
        content=flood.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400
    garbage = await browser.client.post(
        f"/dashboard/webhooks/{hook['id']}/test",
        content=b"\xff\xfe%%%=&&==",
        headers={"X-CSRF-Token": browser.csrf},
    )
    assert garbage.status_code in (303, 400), garbage.status_code


async def test_the_static_assets_are_served_with_their_license(browser: Browser) -> None:
    js = await browser.client.get("/dashboard/static/htmx.min.js")
    assert js.status_code == 200 and "htmx" in js.text
    assert "BSD" in (await browser.client.get("/dashboard/static/htmx.LICENSE")).text
    assert (await browser.client.get("/dashboard/static/../web.py")).status_code == 404


# Portal sessions.


async def portal(api: Api, key: str | None = None, **body: Any) -> httpx.Response:
    return await api.post("/v2/portal/sessions", json=body, key=key)


async def test_the_portal_api_makes_a_one_time_link(api: Api, browser: Browser) -> None:
    hook = await api.create_webhook()
    response = await portal(api, webhookIds=[hook["id"]], expiresInSeconds=600)
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"object", "url", "expiresAt"} and body["object"] == "portal_session"
    assert body["url"].startswith("http://hookd.test/dashboard/portal/"), "on the request's host"
    path = body["url"].removeprefix("http://hookd.test")

    opened = await browser.client.get(path)
    assert opened.status_code == 303
    assert opened.headers["location"] == f"/dashboard/webhooks/{hook['id']}"
    assert "hookd_session=" in opened.headers["set-cookie"]
    again = await browser.client.get(path)
    assert again.status_code == 404 and "portal_link_invalid" in again.text, "the link works once"


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"expiresInSeconds": 59}, 400, "parameter_out_of_range", "expiresInSeconds"),
        ({"expiresInSeconds": 86401}, 400, "parameter_out_of_range", "expiresInSeconds"),
        ({"readOnly": "yes"}, 400, "parameter_invalid_type", "readOnly"),
        ({"webhookIds": []}, 400, "parameter_too_short", "webhookIds"),
        ({"webhookIds": ["nope"]}, 400, "parameter_invalid", "webhookIds.0"),
        ({"webhookIds": ["0" * 24]}, 404, "resource_missing", "webhookIds.0"),
        ({"scope": "all"}, 400, "parameter_unknown", "scope"),
    ],
)
async def test_the_portal_api_validates_its_input(
    api: Api, body: dict[str, Any], status: int, code: str, param: str
) -> None:
    response = await portal(api, **body)
    error = response.json()["error"]
    assert (response.status_code, error["code"], error["param"]) == (status, code, param), error


async def test_a_portal_link_cannot_reach_another_organizations_webhook(api: Api) -> None:
    other = await api.new_org_key("other")
    theirs = await api.create_webhook(key=other)
    response = await portal(api, webhookIds=[theirs["id"]])
    assert response.status_code == 404 and response.json()["error"]["param"] == "webhookIds.0"
    assert (await api.post("/v2/portal/sessions", json={}, key="sk_" + "x" * 40)).status_code == 401


async def test_the_portal_url_uses_the_public_url(api: Api, database_url: str) -> None:
    settings = make_settings(database_url, public_url="https://hooks.example.com/")
    app = create_app(settings, api.store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://internal:8080"
    ) as client:
        response = await client.post("/v2/portal/sessions", json={}, headers=api.auth())
        url = response.json()["url"]
        assert url.startswith("https://hooks.example.com/dashboard/portal/"), url
        opened = await client.get(url.removeprefix("https://hooks.example.com"))
        assert "Secure" in opened.headers["set-cookie"], "Secure when served on https"


async def test_a_scoped_session_sees_only_its_webhooks(api: Api, browser: Browser) -> None:
    mine = await api.create_webhook(name="Mine")
    other = await api.create_webhook(name="NotMine")
    event = await api.publish()
    url = (await portal(api, webhookIds=[mine["id"]])).json()["url"]
    await browser.client.get(url.removeprefix("http://hookd.test"))
    overview = await browser.get("/dashboard")
    assert "Mine" in overview.text and "NotMine" not in overview.text
    assert "New webhook" not in overview.text
    assert (await browser.get(f"/dashboard/webhooks/{other['id']}")).status_code == 404
    assert (await browser.get(f"/dashboard/webhooks/{mine['id']}")).status_code == 200
    created = await browser.post(
        "/dashboard/webhooks", {"name": "x", "url": "https://e.com", "topics": "post.created"}
    )
    assert created.status_code == 403 and "outside_session_scope" in created.text
    looked_up = await browser.get(f"/dashboard/events?id={event['id']}")
    assert mine["id"] in looked_up.text and other["id"] not in looked_up.text
    assert "Recent events" not in (await browser.get("/dashboard/events")).text


async def test_a_read_only_session_shows_no_controls_and_refuses_changes(
    api: Api, browser: Browser
) -> None:
    hook = await api.create_webhook()
    await api.publish()
    [delivery] = (await api.get(f"/v2/webhooks/{hook['id']}/deliveries")).json()["data"]
    url = (await portal(api, readOnly=True)).json()["url"]
    await browser.client.get(url.removeprefix("http://hookd.test"))
    pages = [
        "/dashboard",
        f"/dashboard/webhooks/{hook['id']}",
        f"/dashboard/webhooks/{hook['id']}/deliveries/{delivery['id']}",
        "/dashboard/events",
    ]
    for path in pages:
        page = await browser.get(path)
        assert page.status_code == 200, path
        forms = re.findall(r'<form method="post" action="([^"]+)"', page.text)
        assert forms == ["/dashboard/sign-out"], f"{path}: only sign-out, found {forms}"
        assert "New webhook" not in page.text and ">Edit<" not in page.text
    assert "read-only" in page.text
    for path, data in [
        (f"/dashboard/webhooks/{hook['id']}/status", {"status": "paused"}),
        (f"/dashboard/webhooks/{hook['id']}/test", {}),
        (f"/dashboard/webhooks/{hook['id']}/secret", {"confirm": "yes", "gracePeriodSeconds": "0"}),
        (f"/dashboard/webhooks/{hook['id']}/deliveries/{delivery['id']}/retry", {}),
        (f"/dashboard/webhooks/{hook['id']}", {"name": "x"}),
    ]:
        refused = await browser.post(path, data)
        assert refused.status_code == 403 and "read_only_session" in refused.text, path
    assert (await api.get(f"/v2/webhooks/{hook['id']}")).json()["status"] == "active"


async def test_portal_links_and_sessions_expire(api: Api, browser: Browser) -> None:
    stale = (await portal(api, expiresInSeconds=60)).json()["url"]
    await run_sql(api.store, "UPDATE portal_links SET expires_at = 0")
    response = await browser.client.get(stale.removeprefix("http://hookd.test"))
    assert response.status_code == 404 and "portal_link_invalid" in response.text

    url = (await portal(api)).json()["url"]
    await browser.client.get(url.removeprefix("http://hookd.test"))
    assert (await browser.get("/dashboard")).status_code == 200
    await run_sql(api.store, "UPDATE dashboard_sessions SET expires_at = 1")
    assert (await browser.client.get("/dashboard")).status_code == 303, "the session ended"


async def test_a_portal_link_revoked_with_its_key(api: Api, browser: Browser) -> None:
    org = await api.store.find_organization("default")
    assert org is not None
    key, secret = await api.store.create_api_key(org.id, "app")
    url = (await portal(api, key=secret)).json()["url"]
    await browser.client.get(url.removeprefix("http://hookd.test"))
    assert (await browser.get("/dashboard")).status_code == 200
    await api.store.revoke_api_key(key.id)
    assert (await browser.client.get("/dashboard")).status_code == 303


async def test_the_dashboard_can_be_turned_off(database_url: str, store: Store) -> None:
    key = await store.bootstrap(10, DEFAULT_API_VERSION)
    app = create_app(make_settings(database_url, dashboard=False), store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://hookd.test"
    ) as client:
        assert (await client.get("/dashboard")).status_code == 404
        response = await client.post(
            "/v2/portal/sessions", json={}, headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "dashboard_disabled"


async def test_the_webhooks_page_shows_100_a_page(api: Api, browser: Browser) -> None:
    org = await api.store.create_organization("big", 200, DEFAULT_API_VERSION)
    _key, secret = await api.store.create_api_key(org.id, None)
    for i in range(101):
        await api.store.create_webhook(
            org.id,
            name=f"Hook {i:03d}",
            url="https://example.com/h",
            description=None,
            topics=["post.created"],
            timeout_ms=5000,
            headers={},
            secret="whsec_x",
        )
    await browser.sign_in(secret)
    first = await browser.get("/dashboard")
    rows = '<td data-label="Webhook"><a href="/dashboard/webhooks/'
    assert first.text.count(rows) == 100, "100 webhooks a page"
    assert "Hook 000" in first.text and "Hook 100" not in first.text
    assert "1\u2013100 of 101" in first.text and 'href="/dashboard?page=2"' in first.text
    second = await browser.get("/dashboard?page=2")
    assert "Hook 100" in second.text and "Hook 099" not in second.text
    assert (await browser.get("/dashboard?page=3")).status_code == 400


async def test_the_portal_can_be_framed_by_the_listed_origins(api: Api, database_url: str) -> None:
    settings = make_settings(database_url, portal_frame_ancestors="https://app.example.com 'self'")
    app = create_app(settings, api.store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://hookd.test"
    ) as client:
        url = (await client.post("/v2/portal/sessions", json={}, headers=api.auth())).json()["url"]
        await client.get(url.removeprefix("http://hookd.test"))  # keeps the session cookie
        page = await client.get("/dashboard")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "frame-ancestors https://app.example.com 'self'" in csp
