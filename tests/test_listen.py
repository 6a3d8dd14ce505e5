"""``hookd listen`` (SPEC §10) as a user runs it: a real ``hookd serve`` (and, on PostgreSQL,
two ``hookd api`` processes), the ``listen`` command as a subprocess, a real receiver; and the
receiver example of ``examples/`` verifying real deliveries with ``hookd.verify``."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import standardwebhooks
import svix.webhooks

import hookd
from hookd import __version__
from tests.conftest import Api, eventually
from tests.processes import HookdProcess, HookdProcesses, free_port, run_hookd
from tests.receiver import Receiver

ROOT = Path(__file__).resolve().parent.parent
SECRET_LINE = re.compile(r"signing secret (whsec_[A-Za-z0-9+/=]+)")


def start_listen(
    procs: HookdProcesses, server: HookdProcess, key: str, forward_to: str, *args: str
) -> tuple[HookdProcess, str]:
    """``hookd listen`` against ``server`` (server and key from the environment), once ready;
    returns it and the secret it printed."""
    listen = procs.start(
        "listen",
        args=["--forward-to", forward_to, *args],
        env={"HOOKD_SERVER_URL": server.base_url, "HOOKD_API_KEY": key},
        wait=False,
    )
    output = listen.wait_for_output("hookd listen: ready", stream="stdout")
    found = SECRET_LINE.search(output)
    assert found, listen.describe()
    return listen, found.group(1)


async def publish(server: HookdProcess, key: str, topic: str = "post.created") -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            server.url("/v2/events"),
            headers={"Authorization": f"Bearer {key}"},
            json={"topic": topic, "data": {"item": {"id": "item_1"}}},
        )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_a_signed_delivery_request(request: Any, secret: str, event: dict[str, Any]) -> None:
    for check in (
        lambda: standardwebhooks.Webhook(secret).verify(request.body, request.headers),
        lambda: svix.webhooks.Webhook(secret).verify(request.body, request.headers),
        lambda: hookd.verify(request.body, request.headers, secret),
    ):
        check()
    envelope = orjson.loads(request.body)
    assert envelope["id"] == event["id"] and envelope["topic"] == event["topic"]
    assert envelope["webhookId"] is None, "expected the envelope of no webhook"
    assert envelope["object"] == "notification_event" and envelope["deliveryStatus"] == "pending"
    assert envelope["data"] == {
        "object": "notification_event_data",
        "item": {"id": "item_1"},
        "changes": [],
    }
    assert request.header("webhook-id") == event["id"]
    assert request.header("X-Webhook-Topic") == event["topic"]
    assert request.header("X-Webhook-Attempt") == "1"
    assert request.header("User-Agent") == f"hookd/{__version__}"
    assert request.header("Content-Type") == "application/json"


async def test_listen_forwards_every_event_and_resumes_after_a_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    database_url = f"sqlite:///{tmp_path / 'hookd.db'}"
    with HookdProcesses(tmp_path) as procs:
        server = procs.start("serve", database_url=database_url)
        key = server.api_key()
        listen, secret = start_listen(procs, server, key, receiver.url("/hooks"))
        events = [await publish(server, key), await publish(server, key, "comment.created")]
        requests = await receiver.wait_for(2, "/hooks", timeout=20)
        for request, event in zip(
            sorted(requests, key=lambda r: r.json()["id"]),
            sorted(events, key=lambda e: e["id"]),
            strict=True,
        ):
            assert_a_signed_delivery_request(request, secret, event)
        output = await eventually(
            lambda: (out := listen.stdout()).count("-> 204") == 2 and out, timeout=10
        )
        for event in events:
            assert re.search(rf"{event['topic']}\s+{event['id']}\s+-> 204 \(\d+ ms\)", output), (
                output
            )
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
            hooks = (await client.get(server.url("/v2/webhooks"))).json()
            assert hooks["data"] == [], "expected listen to create no webhook"
            for event in events:
                detail = (await client.get(server.url(f"/v2/events/{event['id']}"))).json()
                assert detail["deliveries"] == [], "expected listen to create no delivery"

        # The server restarts; what is published before listen is back reaches it after.
        assert server.stop() == 0, server.describe()
        again = await asyncio.to_thread(
            procs.start, "serve", database_url=database_url, port=server.port
        )
        meanwhile = await publish(again, key)
        await receiver.wait_for(3, "/hooks", timeout=30)
        # Blocking waits run off the loop, where the receiver answers listen's requests.
        await asyncio.to_thread(listen.wait_for_output, "reconnected", stream="stdout")
        live = await publish(again, key)
        requests = await receiver.wait_for(4, "/hooks", timeout=20)
        assert [r.json()["id"] for r in requests[2:]] == [meanwhile["id"], live["id"]]
        assert_a_signed_delivery_request(requests[-1], secret, live)

        listen.signal(signal.SIGINT)
        assert listen.wait() == 0, listen.describe()
        assert "hookd listen: stopped" in listen.stdout()
        assert "Traceback" not in listen.stdout() + listen.stderr(), listen.describe()


def test_listen_refuses_bad_options_and_keys(tmp_path: Path) -> None:
    result = run_hookd("listen", "--forward-to", "http://127.0.0.1:9/hooks")
    assert result.returncode == 2 and "HOOKD_API_KEY" in result.stderr, result
    result = run_hookd(
        "listen",
        "--forward-to",
        "http://127.0.0.1:9/",
        "--topics",
        "post.nope",
        "--api-key",
        "sk_x",
    )
    assert result.returncode == 2 and "post.nope" in result.stderr, result
    with HookdProcesses(tmp_path) as procs:
        server = procs.start("serve", database_url=f"sqlite:///{tmp_path / 'hookd.db'}")
        result = run_hookd(
            "listen",
            "--forward-to",
            "http://127.0.0.1:9/",
            "--server",
            server.base_url,
            "--api-key",
            "sk_" + "x" * 43,
        )
    assert result.returncode == 1, result
    assert "api_key_invalid" in result.stdout, result.stdout


@pytest.mark.parametrize("engine", ["postgres"])
async def test_listen_across_api_processes_and_a_slow_receiver_holds_up_no_one(
    tmp_path: Path, database_url: str, receiver: Receiver
) -> None:
    release = asyncio.Event()
    receiver.behave("/slow", status=204, hold=release)
    org = run_hookd("orgs", "create", "acme", database_url=database_url)
    assert org.returncode == 0, org.stderr
    created = run_hookd("keys", "create", "acme", database_url=database_url)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    with HookdProcesses(tmp_path) as procs:
        first = procs.start("api", database_url=database_url)
        second = procs.start("api", database_url=database_url)
        fast, _ = start_listen(procs, first, key, receiver.url("/fast"))
        slow, _ = start_listen(
            procs, second, key, receiver.url("/slow"), "--topics", "post.created"
        )
        events = [await publish(second, key) for _ in range(2)] + [await publish(first, key)]
        got = await receiver.wait_for(3, "/fast", timeout=20)
        assert sorted(r.json()["id"] for r in got) == sorted(e["id"] for e in events), (
            "expected a listener on one API process to get the events published through both"
        )
        # The slow listener is still in its first forward (its receiver hangs): it got one
        # request, and the other listener was not held up by it.
        assert len(receiver.on("/slow")) == 1
        release.set()
        for process in (fast, slow):
            process.signal(signal.SIGINT)
            assert process.wait() == 0, process.describe()


async def test_the_receiver_example_verifies_real_deliveries(
    delivering: Api, tmp_path: Path
) -> None:
    api = delivering
    port = free_port()
    hook = await api.create_webhook(url=f"http://127.0.0.1:{port}/hooks")
    log = (tmp_path / "receiver.out").open("wb")
    example = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, str(ROOT / "examples" / "receiver.py"), "--port", str(port)],
        env={**os.environ, "HOOKD_WEBHOOK_SECRET": hook["secret"], "PYTHONUNBUFFERED": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def output() -> str:
        return (tmp_path / "receiver.out").read_text()

    try:
        async with httpx.AsyncClient() as client:

            async def up() -> bool:
                try:
                    await client.get(f"http://127.0.0.1:{port}/docs")
                except httpx.HTTPError:
                    return False
                return True

            await eventually(up, timeout=30)
            event = await api.publish()
            await eventually(lambda: f"received post.created {event['id']}" in output(), 20)
            # A secret refreshed with a grace period: the example, still on the old one,
            # keeps verifying.
            response = await api.post(
                f"/v2/webhooks/{hook['id']}/secret", json={"gracePeriodSeconds": 3600}
            )
            assert response.status_code == 200
            second = await api.publish()
            await eventually(lambda: f"received post.created {second['id']}" in output(), 20)
            forged = await client.post(
                f"http://127.0.0.1:{port}/hooks",
                content=b'{"id":"notif_x","topic":"post.created"}',
                headers={
                    "webhook-id": "notif_x",
                    "webhook-timestamp": "1",
                    "webhook-signature": "v1,AAAA",
                },
            )
            assert forged.status_code == 400, forged.text
            assert "tolerance" in forged.json()["error"]
        assert "refused" in output() and "Traceback" not in output(), output()
    finally:
        example.terminate()
        example.wait(10)
        log.close()
