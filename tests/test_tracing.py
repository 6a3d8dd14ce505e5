"""OpenTelemetry tracing (SPEC §8), from a real ``hookd serve`` exporting to a real OTLP/HTTP
receiver on 127.0.0.1 (this test's own, decoding the protobuf requests the exporter sends):
spans for the API request, the fan-out and each attempt, the attempt's span linked to the
``POST /v2/events`` trace. And without ``OTEL_EXPORTER_OTLP_ENDPOINT``, hookd imports nothing
of OpenTelemetry beyond what FastAPI itself imports."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import eventually
from tests.processes import HookdProcesses
from tests.receiver import Receiver

trace_service_pb2 = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    reason="the otel extra (pip install -e '.[otel]') is part of the test extra",
)


class OtlpReceiver:
    """An OTLP/HTTP trace receiver: every span of every ``POST /v1/traces``, decoded."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                with receiver.lock:
                    for resource_spans in request.resource_spans:
                        for scope_spans in resource_spans.scope_spans:
                            receiver.spans.extend(scope_spans.spans)
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def named(self, name: str) -> list[Any]:
        with self.lock:
            return [s for s in self.spans if s.name == name]


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def _attributes(span: Any) -> dict[str, Any]:
    found = {}
    for attribute in span.attributes:
        value = attribute.value
        found[attribute.key] = getattr(value, value.WhichOneof("value"))
    return found


async def test_spans_for_requests_fan_out_and_attempts_linked_to_the_publish(
    tmp_path: Path, database_url: str, receiver: Receiver, otlp: OtlpReceiver
) -> None:
    receiver.behave("/hook", status=204)
    env = {
        "HOOKD_ALLOW_HTTP": "true",
        "HOOKD_ALLOWED_NETWORKS": "127.0.0.0/8",
        "HOOKD_RATE_LIMIT": "0",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "hookd-test",
    }
    with HookdProcesses(tmp_path) as procs:
        server = procs.start("serve", database_url=database_url, env=env)
        headers = {"Authorization": f"Bearer {server.api_key()}"}
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as client:
            created = await client.post(
                "/v2/webhooks",
                json={"name": "h", "url": receiver.url("/hook"), "topics": ["post.created"]},
            )
            assert created.status_code == 200, created.text
            webhook_id = created.json()["id"]
            published = await client.post(
                "/v2/events", json={"topic": "post.created", "data": {"item": {"id": "p1"}}}
            )
            assert published.status_code == 202, published.text
            event_id = published.json()["id"]
            await receiver.wait_for(1, "/hook", timeout=15)
        await eventually(lambda: otlp.named("hookd.attempt"), timeout=15)
        assert server.stop() == 0, server.describe()

    requests = otlp.named("POST /v2/events")
    assert len(requests) == 1, [s.name for s in otlp.spans]
    request = requests[0]
    assert _attributes(request)["http.route"] == "/v2/events"
    assert _attributes(request)["http.response.status_code"] == 202
    created_spans = otlp.named("POST /v2/webhooks")
    assert len(created_spans) == 1, "route templates name the request spans"
    assert not any(webhook_id in s.name for s in otlp.spans), "a raw id in a span name"

    (fan_out,) = otlp.named("hookd.publish")
    assert fan_out.trace_id == request.trace_id and fan_out.parent_span_id == request.span_id
    assert _attributes(fan_out)["hookd.event"] == event_id

    (attempt,) = otlp.named("hookd.attempt")
    attributes = _attributes(attempt)
    assert attributes["hookd.event"] == event_id and attributes["hookd.webhook"] == webhook_id
    assert attributes["http.response.status_code"] == 204 and attributes["hookd.attempt"] == 1
    assert attempt.trace_id != request.trace_id, "an attempt is a trace of its own"
    links = [(link.trace_id, link.span_id) for link in attempt.links]
    assert links == [(fan_out.trace_id, fan_out.span_id)], (
        "the attempt's span links to the POST /v2/events trace that created it"
    )


def test_without_an_endpoint_hookd_imports_nothing_of_opentelemetry(tmp_path: Path) -> None:
    """FastAPI may import opentelemetry-api itself; hookd (the app, the worker, a request,
    an attempt's code path) adds no OpenTelemetry module to those."""
    script = f"""
import asyncio, os, sys
for name in [n for n in os.environ if n.startswith("OTEL_")]:
    del os.environ[name]
import fastapi
baseline = {{m for m in sys.modules if m.startswith("opentelemetry")}}
import httpx
from hookd import tracing
from hookd.api import create_app
from hookd.server import build_worker
from hookd.settings import load_settings
from hookd.store import Store, open_driver
from hookd.store.migrate import upgrade

url = "sqlite:///{tmp_path / 'otel.db'}"
upgrade(url)
assert not tracing.configure()

async def main():
    settings = load_settings(database_url=url)
    store = Store(open_driver(url))
    await store.start()
    app = create_app(settings, store)
    worker = build_worker(settings, store)
    await worker.start()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/v2/webhooks")
        await client.get("/openapi.json")
    await worker.stop(grace=1)
    await store.close()

asyncio.run(main())
added = sorted({{m for m in sys.modules if m.startswith("opentelemetry")}} - baseline)
print("ADDED", added)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "ADDED []" in done.stdout, done.stdout + done.stderr
