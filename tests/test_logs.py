"""Logs (issue: one structured line per attempt outcome at debug, per failure at info, with
webhook, delivery, status and duration; no secret or API key in any line), from a real
``hookd serve`` writing JSON lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.conftest import eventually
from tests.processes import HookdProcesses
from tests.receiver import Receiver


async def _settled(client: httpx.AsyncClient, webhook_id: str, count: int) -> bool:
    response = await client.get(f"/v2/webhooks/{webhook_id}/deliveries?limit=100")
    data = response.json()["data"]
    return len(data) >= count and all(d["status"] != "pending" for d in data)


async def test_attempt_logs_are_structured_and_carry_no_secrets(
    tmp_path: Path, database_url: str, receiver: Receiver
) -> None:
    receiver.behave("/ok", status=204)
    receiver.behave("/bad", status=503)
    env = {
        "HOOKD_LOG_LEVEL": "debug",
        "HOOKD_LOG_FORMAT": "json",
        "HOOKD_ALLOW_HTTP": "true",
        "HOOKD_ALLOWED_NETWORKS": "127.0.0.0/8",
        "HOOKD_RETRY_SCHEDULE": "0.1",
        "HOOKD_RATE_LIMIT": "0",
    }
    with HookdProcesses(tmp_path) as procs:
        server = procs.start("serve", database_url=database_url, env=env)
        key = server.api_key()
        headers = {"Authorization": f"Bearer {key}"}
        secrets = []
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as client:
            hooks = {}
            for path in ("/ok", "/bad"):
                created = await client.post(
                    "/v2/webhooks",
                    json={"name": path, "url": receiver.url(path), "topics": ["post.created"]},
                )
                assert created.status_code == 200, created.text
                hooks[path] = created.json()["id"]
                secrets.append(created.json()["secret"])
            refreshed = await client.post(f"/v2/webhooks/{hooks['/ok']}/secret")
            secrets.append(refreshed.json()["secret"])
            for _ in range(3):
                event = {"topic": "post.created", "data": {"item": {}}}
                assert (await client.post("/v2/events", json=event)).status_code == 202
            await eventually(lambda: _settled(client, hooks["/ok"], 3), timeout=15)
            await eventually(lambda: _settled(client, hooks["/bad"], 3), timeout=15)
        assert server.stop() == 0, server.describe()
        log = server.stderr()

    lines = [orjson.loads(line) for line in log.splitlines() if line.strip()]
    assert lines, "hookd logged nothing"
    for secret in [key, *secrets, key.removeprefix("sk_")]:
        assert secret not in log, "a secret or API key appears in the logs"

    def attempts(event: str) -> list[dict[str, Any]]:
        return [line for line in lines if line.get("event") == event]

    succeeded = attempts("attempt succeeded")
    failed = attempts("attempt failed")
    assert len(succeeded) == 3, f"one debug line per successful attempt, got {len(succeeded)}"
    assert len(failed) == 6, (
        f"one info line per failed attempt (3 deliveries x 2 attempts), got {len(failed)}"
    )
    for line in succeeded:
        assert line["level"] == "debug"
        assert line["webhook"] == hooks["/ok"] and line["status"] == 204
        assert isinstance(line["duration_ms"], int) and len(line["delivery"]) == 24
    for line in failed:
        assert line["level"] == "info"
        assert line["webhook"] == hooks["/bad"] and line["status"] == 503
        assert line["reason"] == "Service Unavailable" and isinstance(line["duration_ms"], int)
