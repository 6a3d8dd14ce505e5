"""Tenant isolation in delivery (SPEC §5 Isolation, Timeouts, Retries): one organization's
black-holed DNS, hanging endpoints, TLS peers that never close and throttling receivers
must not slow another's deliveries nor exhaust hookd; on SQLite and PostgreSQL, with real
receivers (HTTP and TLS) and a real DNS server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import email.utils
import os
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bench.dns_server import DnsServer
from hookd.clock import parse_iso
from hookd.delivery.guard import AddressGuard, parse_networks
from hookd.delivery.outcomes import retry_after_ms
from hookd.delivery.resolver import Resolver
from hookd.delivery.sender import AttemptResult, Sender
from hookd.store import ClaimedDelivery
from tests.conftest import Api, eventually
from tests.receiver import Receiver
from tests.test_delivery import deliveries, worker_for

HERE = Path(__file__).parent


async def _last_status(api: Api, webhook_id: str, key: str | None = None) -> dict[str, Any] | None:
    response = await api.get(f"/v2/webhooks/{webhook_id}", key=key)
    assert response.status_code == 200, response.text
    status: dict[str, Any] | None = response.json()["lastStatus"]
    return status


# 1. DNS: a black-holed name server delays only its own tenant's deliveries.


async def test_a_tenants_black_holed_dns_does_not_delay_another_tenants_deliveries(
    api: Api, receiver: Receiver
) -> None:
    dns = await DnsServer.start({"healthy.test": ["127.0.0.1"]}, blackholed={"dead.test"})
    try:
        noisy_key = await api.new_org_key("noisy")
        dead = await api.create_webhook(
            key=noisy_key,
            url=f"http://dead.test:{receiver.port}/dead",
            requestConfig={"timeoutMs": 1500},
        )
        nowhere = await api.create_webhook(
            key=noisy_key,
            url=f"http://nowhere.test:{receiver.port}/nowhere",
            topics=["post.updated"],
        )
        await api.create_webhook(url=f"http://healthy.test:{receiver.port}/healthy")
        async with worker_for(api, dns_servers=dns.address, retry_schedule=""):
            for _ in range(40):
                await api.publish(key=noisy_key)
            await api.publish("post.updated", key=noisy_key)
            for _ in range(40):
                await api.publish()
            arrived = await receiver.wait_for(40, "/healthy", timeout=5.0)
            assert len(arrived) == 40, "every healthy delivery arrived within a few seconds"
            dead_status = await eventually(
                lambda: _last_status(api, dead["id"], noisy_key), timeout=10
            )
            nowhere_status = await eventually(lambda: _last_status(api, nowhere["id"], noisy_key))
        assert dead_status["code"] == 0
        assert dead_status["message"].startswith("DNS lookup of dead.test timed out after "), (
            dead_status
        )
        assert nowhere_status["message"] == "no such host nowhere.test", nowhere_status
        assert receiver.on("/dead") == [] and receiver.on("/nowhere") == []
        assert dns.questions["healthy.test"] <= 4, (
            f"the healthy name was asked {dns.questions['healthy.test']} times for 40 "
            "deliveries: its answer is cached"
        )
    finally:
        dns.close()


async def test_a_name_that_failed_to_resolve_is_not_retried_before_its_failure_expires(
    api: Api, receiver: Receiver
) -> None:
    """A retry before the resolver forgets the failure (30 s) would fail the same way without
    asking: the next attempt waits for it, however short the schedule (no attempt added)."""
    dns = await DnsServer.start({"healthy.test": ["127.0.0.1"]})
    try:
        nowhere = await api.create_webhook(url=f"http://nowhere.test:{receiver.port}/nowhere")
        failing = await api.create_webhook(url=f"http://healthy.test:{receiver.port}/fail")
        receiver.behave("/fail", status=500)

        async def first_failures() -> list[dict[str, Any]] | None:
            found = [(await deliveries(api, hook["id"]))[0] for hook in (nowhere, failing)]
            return found if all(d["attemptCount"] == 1 for d in found) else None

        async with worker_for(api, dns_servers=dns.address, retry_schedule="1,1,1"):
            await api.publish()
            dns_failed, http_failed = await eventually(first_failures, timeout=10)
        assert dns_failed["status"] == "pending"
        assert dns_failed["lastStatus"]["message"] == "no such host nowhere.test"
        waited = parse_iso(dns_failed["nextAttemptAt"]) - parse_iso(dns_failed["lastAttemptAt"])
        assert 29_000 <= waited <= 31_000, dns_failed
        waited = parse_iso(http_failed["nextAttemptAt"]) - parse_iso(http_failed["lastAttemptAt"])
        assert waited <= 2_000, ("a 500 keeps its schedule", http_failed)
    finally:
        dns.close()


# 7. Attempts end at timeoutMs, DNS, connect and TLS included.


def _claimed(url: str, timeout_ms: int) -> ClaimedDelivery:
    return ClaimedDelivery(
        id="0" * 24,
        webhook_id="1" * 24,
        event_id="notif_test",
        topic="post.created",
        is_test=False,
        attempt_count=0,
        lease_until=0,
        lease_token="t",
        data='{"object":"notification_event_data","item":{},"changes":[]}',
        event_created_at=0,
        conversation_id=None,
        conversation_url=None,
        organization_id="2" * 24,
        url=url,
        secret="whsec_" + "A" * 43 + "=",
        previous_secrets=(),
        headers=(),
        timeout_ms=timeout_ms,
    )


@asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that accepts and reads, and never answers (not even TLS)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in held:
            writer.transport.abort()


@asynccontextmanager
async def sender_with(dns: DnsServer | None = None, **kwargs: Any) -> AsyncIterator[Sender]:
    resolver = Resolver([dns.address] if dns is not None else [])
    sender = Sender(AddressGuard(parse_networks("127.0.0.0/8"), dns=resolver), **kwargs)
    await sender.start()
    try:
        yield sender
    finally:
        await sender.close()


async def _timed(sender: Sender, url: str, timeout_ms: int) -> tuple[AttemptResult, float]:
    started = time.perf_counter()
    result = await sender.send(_claimed(url, timeout_ms))
    return result, (time.perf_counter() - started) * 1000


async def test_attempts_end_at_their_timeout_whatever_they_wait_for() -> None:
    dns = await DnsServer.start({}, blackholed={"dead.test"})
    try:
        async with silent_server() as port, sender_with(dns) as sender:
            cases = [
                (f"http://127.0.0.1:{port}/", 1500, "Timed out after 1500 ms"),
                # Above 5 s, where aiohttp's own timeout rounded up to the next second.
                (f"http://127.0.0.1:{port}/", 5500, "Timed out after 5500 ms"),
                # A TLS handshake the server never answers.
                (f"https://127.0.0.1:{port}/", 1500, "Timed out after 1500 ms"),
                (
                    f"http://dead.test:{port}/",
                    1500,
                    "DNS lookup of dead.test timed out after 1500 ms",
                ),
            ]
            outcomes = await asyncio.gather(
                *(_timed(sender, url, timeout) for url, timeout, _ in cases)
            )
    finally:
        dns.close()
    for (url, timeout, message), (result, elapsed) in zip(cases, outcomes, strict=True):
        assert not result.succeeded and result.message == message, (url, result)
        assert abs(elapsed - timeout) <= 100, (
            f"{url} with timeoutMs {timeout} ended after {elapsed:.0f} ms"
        )


# 3. TLS peers that never finish the TLS shutdown do not keep hookd's sockets open.


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 that the tests trust (made with openssl)."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


@asynccontextmanager
async def stubborn_tls_receiver(cert: Path, key: Path) -> AsyncIterator[int]:
    """tests/tls_receiver.py in a process of its own (its sockets are not counted here)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "tls_receiver.py"),
        str(cert),
        str(key),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        yield int(line)
    finally:
        proc.kill()
        await proc.wait()


async def test_sockets_are_closed_without_waiting_for_the_peers_tls_shutdown(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    trusting = ssl.create_default_context(cafile=str(cert))
    async with (
        stubborn_tls_receiver(cert, key) as port,
        sender_with(ssl_context=trusting) as sender,
    ):
        url = f"https://127.0.0.1:{port}/hook"
        first = await sender.send(_claimed(url, 5000))
        assert first.succeeded, f"the TLS receiver works: {first}"
        before = _open_descriptors()
        for _ in range(10):
            results = await asyncio.gather(*(sender.send(_claimed(url, 5000)) for _ in range(10)))
            assert all(r.succeeded for r in results), results
        # Each answer said "Connection: close" and the receiver never answers hookd's
        # close_notify: waiting for it would hold every one of these 100 sockets for 30 s.
        await asyncio.sleep(0.2)
        after = _open_descriptors()
    assert after - before <= 10, (
        f"{after - before} more descriptors open after 100 deliveries to a receiver that "
        "never completes the TLS shutdown"
    )


# 8. Retry-After on 429 and 503 defers the next attempt.


async def test_retry_after_defers_the_next_attempt(api: Api, receiver: Receiver) -> None:
    in_two_hours = email.utils.formatdate(time.time() + 7200, usegmt=True)
    receiver.behave("/seconds", status=429, headers={"Retry-After": "120"})
    receiver.behave("/date", status=503, headers={"Retry-After": in_two_hours})
    receiver.behave("/capped", status=503, headers={"Retry-After": "604800"})
    receiver.behave("/ignored", status=500, headers={"Retry-After": "120"})
    receiver.behave("/earlier", status=503, headers={"Retry-After": "1"})
    paths = ("seconds", "date", "capped", "ignored", "earlier")
    hooks = {path: await api.create_webhook(url=receiver.url(f"/{path}")) for path in paths}
    found = {}
    async with worker_for(api, retry_schedule="60"):
        await api.publish()
        for path, hook in hooks.items():
            [found[path]] = await eventually(lambda hook=hook: _attempted(api, hook["id"]))
    delay = {
        path: (parse_iso(d["nextAttemptAt"]) - parse_iso(d["lastAttemptAt"])) / 1000
        for path, d in found.items()
    }
    assert 120 <= delay["seconds"] <= 121, f"Retry-After: 120 → 120 s, no jitter; got {delay}"
    assert 7190 <= delay["date"] <= 7201, f"an HTTP date two hours ahead → 2 h; got {delay}"
    assert 86_400 <= delay["capped"] <= 86_401, f"a week is capped at 24 h; got {delay}"
    assert 54 <= delay["ignored"] <= 66, f"a 500's Retry-After is ignored; got {delay}"
    assert 54 <= delay["earlier"] <= 66, f"an earlier Retry-After keeps the schedule; got {delay}"


async def _attempted(api: Api, webhook_id: str) -> list[dict[str, Any]] | None:
    found = await deliveries(api, webhook_id)
    return found if found and found[0]["attemptCount"] >= 1 else None


async def test_retry_after_never_adds_an_attempt(api: Api, receiver: Receiver) -> None:
    receiver.behave("/throttled", status=429, headers={"Retry-After": "1"})
    hook = await api.create_webhook(url=receiver.url("/throttled"))
    async with worker_for(api, retry_schedule="0.2"):
        await api.publish()
        [delivery] = await eventually(lambda: _finished(api, hook["id"]), timeout=10)
    assert delivery["status"] == "failed" and delivery["attemptCount"] == 2, delivery
    assert delivery["nextAttemptAt"] is None
    assert len(receiver.on("/throttled")) == 2, "the schedule's two attempts, no more"
    first, second = receiver.on("/throttled")
    assert second.at - first.at >= 0.95, "the second attempt waited for Retry-After (1 s)"


async def _finished(api: Api, webhook_id: str) -> list[dict[str, Any]] | None:
    found = await deliveries(api, webhook_id)
    return found if found and found[0]["status"] != "pending" else None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("0", 0),
        (" 30 ", 30_000),
        ("86400", 86_400_000),
        ("86401", 86_400_000),
        ("Thu, 01 Jan 1970 00:00:10 GMT", 5_000),  # received at 5 s after the epoch
        ("Thu, 01 Jan 1970 00:00:01 GMT", 0),  # in the past: no wait
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
    ],
)
def test_retry_after_values(header: str | None, expected: int | None) -> None:
    assert retry_after_ms(header, 5_000) == expected
