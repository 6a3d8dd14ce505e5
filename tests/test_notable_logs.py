"""Logs of notable changes (SPEC §8): one structured line each for webhook.suspended,
delivery.failed, webhook.reactivated, secret.refreshed, and the settings at start-up with
secrets masked; each with organization, webhook and ids as fields. Read from a real
``hookd serve`` writing JSON lines, and, for the text format, key=value lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from hookd.logs import MASK, masked_settings, masked_url
from tests.conftest import eventually
from tests.processes import HookdProcesses
from tests.receiver import Receiver

ENV = {
    "HOOKD_ALLOW_HTTP": "true",
    "HOOKD_ALLOWED_NETWORKS": "127.0.0.0/8",
    "HOOKD_RETRY_SCHEDULE": "0.05",
    "HOOKD_SUSPEND_AFTER": "1",
    "HOOKD_RATE_LIMIT": "0",
}
PASSWORD = "not-for-logs-7f3a"


def _with_password(database_url: str) -> str:
    """The PostgreSQL URL with a password (the test server trusts local connections, so it
    is accepted and ignored): the settings line must mask it."""
    if not database_url.startswith("postgresql://"):
        return database_url
    scheme, _, rest = database_url.partition("://")
    user, _, place = rest.partition("@")
    return f"{scheme}://{user}:{PASSWORD}@{place}"


async def _run_story(base_url: str, key: str, receiver: Receiver) -> dict[str, Any]:
    """Suspend a webhook through a final failure, reactivate it, refresh its secret."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers) as client:
        created = await client.post(
            "/v2/webhooks",
            json={"name": "down", "url": receiver.url("/down"), "topics": ["post.created"]},
        )
        assert created.status_code == 200, created.text
        webhook = created.json()
        published = await client.post(
            "/v2/events", json={"topic": "post.created", "data": {"item": {"id": "p"}}}
        )
        assert published.status_code == 202, published.text

        async def suspended() -> bool:
            found = await client.get(f"/v2/webhooks/{webhook['id']}")
            return bool(found.json()["status"] == "suspended")

        await eventually(suspended, timeout=15)
        reactivated = await client.patch(f"/v2/webhooks/{webhook['id']}", json={"status": "active"})
        assert reactivated.status_code == 200, reactivated.text
        again = await client.patch(f"/v2/webhooks/{webhook['id']}", json={"status": "active"})
        assert again.status_code == 200, "setting active on an active webhook is no reactivation"
        refreshed = await client.post(f"/v2/webhooks/{webhook['id']}/secret")
        assert refreshed.status_code == 200, refreshed.text
        deliveries = await client.get(f"/v2/webhooks/{webhook['id']}/deliveries")
        return {
            "webhook": webhook,
            "event": published.json()["id"],
            "delivery": deliveries.json()["data"][0]["id"],
            "secrets": [webhook["secret"], refreshed.json()["secret"]],
        }


async def test_notable_changes_and_settings_are_logged_as_json_lines(
    tmp_path: Path, database_url: str, receiver: Receiver
) -> None:
    receiver.behave("/down", status=500)
    url = _with_password(database_url)
    with HookdProcesses(tmp_path) as procs:
        server = procs.start("serve", database_url=url, env={**ENV, "HOOKD_LOG_FORMAT": "json"})
        key = server.api_key()
        story = await _run_story(server.base_url, key, receiver)
        assert server.stop() == 0, server.describe()
        log = server.stderr()

    lines = [orjson.loads(line) for line in log.splitlines() if line.strip()]
    for secret in [key, PASSWORD, *story["secrets"]]:
        assert secret not in log, "a secret appears in the logs"

    def named(event: str) -> list[dict[str, Any]]:
        return [line for line in lines if line.get("event") == event]

    webhook = story["webhook"]
    (settings,) = named("settings")
    assert settings["command"] == "serve" and settings["suspend_after"] == 1
    assert settings["retry_schedule"] == [0.05] and settings["allowed_networks"] == ["127.0.0.0/8"]
    # the batch wait in force, not the None that asks for the engine's default
    assert settings["batch_wait_ms"] == (0 if url.startswith("sqlite") else 3), settings
    if url != database_url:
        assert settings["database_url"] == url.replace(PASSWORD, MASK), settings
    else:
        assert settings["database_url"] == url

    (failed,) = named("delivery.failed")
    assert failed["level"] == "warning"
    assert failed["organization"] == (suspended_line := named("webhook.suspended")[0])[
        "organization"
    ]
    assert failed["webhook"] == webhook["id"] and failed["delivery"] == story["delivery"]
    assert failed["event_id"] == story["event"] and failed["topic"] == "post.created"
    assert failed["attempts"] == 2 and failed["status"] == 500
    assert len(named("webhook.suspended")) == 1
    assert suspended_line["webhook"] == webhook["id"]
    assert suspended_line["consecutive_failures"] == 1
    assert suspended_line["operational_event_id"].startswith("notif_")

    (reactivated,) = named("webhook.reactivated")
    assert reactivated["webhook"] == webhook["id"]
    assert reactivated["organization"] == failed["organization"]
    assert reactivated["previous_status"] == "suspended"
    (refreshed,) = named("secret.refreshed")
    assert refreshed["webhook"] == webhook["id"]
    assert refreshed["organization"] == failed["organization"]


async def test_notable_changes_in_the_text_format(
    tmp_path: Path, database_url: str, receiver: Receiver
) -> None:
    receiver.behave("/down", status=500)
    with HookdProcesses(tmp_path) as procs:
        server = procs.start("serve", database_url=database_url, env=ENV)
        story = await _run_story(server.base_url, server.api_key(), receiver)
        assert server.stop() == 0, server.describe()
        log = server.stderr()
    webhook_id = story["webhook"]["id"]
    for event in ("webhook.suspended", "delivery.failed", "webhook.reactivated", "secret.refreshed"):
        found = [line for line in log.splitlines() if f"event='{event}'" in line]
        assert len(found) == 1, f"one text line for {event}, got {found}"
        assert f"webhook='{webhook_id}'" in found[0] and "organization='" in found[0], found[0]
    assert sum("event='settings'" in line for line in log.splitlines()) == 1


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://hookd:s3cret@db:5432/hookd", "postgresql://hookd:***@db:5432/hookd"),
        ("postgresql://hookd@db/hookd?password=s3cret&sslmode=require",
         "postgresql://hookd@db/hookd?password=***&sslmode=require"),
        ("sqlite:///hookd.db", "sqlite:///hookd.db"),
    ],
)
def test_urls_are_masked(url: str, shown: str) -> None:
    assert masked_url(url) == shown


def test_secret_settings_are_masked_by_name() -> None:
    shown = masked_settings(
        {"metrics_token": "tok-123", "api_key": "sk_abc", "empty_token": "", "port": 8080}
    )
    assert shown == {"metrics_token": MASK, "api_key": MASK, "empty_token": "", "port": 8080}
