"""OpenTelemetry tracing (SPEC §8), optional: spans for API requests, fan-out (publishing an
event) and every delivery attempt, exported over OTLP/HTTP.

Tracing is on when the ``otel`` extra is installed (``pip install 'hookd[otel]'``) and
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set; the
exporter takes the other standard ``OTEL_*`` variables as usual (headers, timeout,
``OTEL_SERVICE_NAME``, ``OTEL_BSP_*``). Otherwise every function here does nothing and
nothing of OpenTelemetry is imported: its modules load only in :func:`configure`.

An event keeps the W3C ``traceparent`` of its fan-out span (``events.traceparent``), and each
attempt's span, a trace of its own (an attempt may come hours later, from another process),
carries a link to it: from an attempt one reaches the ``POST /v2/events`` that caused it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hookd import __version__
from hookd.logs import get_logger

if TYPE_CHECKING:
    from hookd.delivery.sender import AttemptResult
    from hookd.store.records import ClaimedDelivery

__all__ = [
    "TracingMiddleware",
    "attempt_span",
    "configure",
    "enabled",
    "end_attempt",
    "publish_span",
    "shutdown",
    "traceparent",
]

log = get_logger("hookd")

class _Tracing:
    """The tracer and its provider once :func:`configure` turned tracing on."""

    tracer: Any = None
    provider: Any = None


_state = _Tracing()


def enabled() -> bool:
    """Whether :func:`configure` turned tracing on in this process."""
    return _state.tracer is not None


def configure() -> bool:
    """Turn tracing on if asked for (see the module docstring); whether it is on."""
    if _state.tracer is not None:
        return True
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not endpoint:
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the otel extra is not installed; "
            "no spans are exported (pip install 'hookd[otel]')"
        )
        return False
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, when set, win over these defaults.
    resource = Resource({SERVICE_NAME: "hookd", SERVICE_VERSION: __version__}).merge(
        Resource.create()
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _state.provider = provider
    _state.tracer = provider.get_tracer("hookd", __version__)
    log.info("tracing on: spans exported over OTLP/HTTP", endpoint=endpoint)
    return True


def shutdown() -> None:
    """Export the spans still buffered and stop (a process ending)."""
    provider, _state.provider, _state.tracer = _state.provider, None, None
    if provider is not None:
        provider.shutdown()


def traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, or ``None`` without one."""
    if _state.tracer is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def publish_span(organization_id: str, topic: str) -> Iterator[Any]:
    """The fan-out span of ``POST /v2/events`` (a child of the request's span)."""
    if _state.tracer is None:
        yield None
        return
    attributes = {"hookd.organization": organization_id, "hookd.topic": topic}
    with _state.tracer.start_as_current_span("hookd.publish", attributes=attributes) as span:
        yield span


@contextlib.contextmanager
def attempt_span(claimed: ClaimedDelivery) -> Iterator[Any]:
    """The span of one delivery attempt: a new trace, linked to the publishing request's."""
    if _state.tracer is None:
        yield None
        return
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    links = []
    if claimed.traceparent:
        context = TraceContextTextMapPropagator().extract({"traceparent": claimed.traceparent})
        linked = trace.get_current_span(context).get_span_context()
        if linked.is_valid:
            links.append(trace.Link(linked, {"hookd.link": "published_by"}))
    attributes: dict[str, str | int | bool] = {
        "hookd.organization": claimed.organization_id,
        "hookd.webhook": claimed.webhook_id,
        "hookd.delivery": claimed.id,
        "hookd.event": claimed.event_id,
        "hookd.topic": claimed.topic,
        "hookd.attempt": claimed.attempt_count + 1,
        "hookd.test": claimed.is_test,
        "http.request.method": "POST",
    }
    with _state.tracer.start_as_current_span(
        "hookd.attempt",
        context=trace.set_span_in_context(trace.INVALID_SPAN),
        kind=trace.SpanKind.CLIENT,
        links=links,
        attributes=attributes,
    ) as span:
        yield span


def end_attempt(span: Any, result: AttemptResult) -> None:
    """Record an attempt's outcome on its span (from :func:`attempt_span`)."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("hookd.succeeded", result.succeeded)
    span.set_attribute("hookd.response_time_ms", result.response_time_ms)
    if result.status_code is not None:
        span.set_attribute("http.response.status_code", result.status_code)
    if not result.succeeded:
        span.set_status(Status(StatusCode.ERROR, result.message))


class TracingMiddleware:
    """A server span per HTTP request, named after its route's template (never a raw path
    with ids in it), continuing the caller's trace when it sent a ``traceparent``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracer = _state.tracer
        if scope["type"] != "http" or tracer is None:
            await self.app(scope, receive, send)
            return
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in (b"traceparent", b"tracestate")
        }
        parent = TraceContextTextMapPropagator().extract(headers)
        method = scope["method"]
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with tracer.start_as_current_span(
            method,
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "url.scheme": scope.get("scheme", "http")},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                await self.app(scope, receive, send_status)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route is not None:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(trace.Status(trace.StatusCode.ERROR))
