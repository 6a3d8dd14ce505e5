"""Prometheus metrics (SPEC §8): every metric's name, type and labels, in one place.

Two kinds:

* **Per-process counters and histograms** (:data:`METRICS`): what this process did — events
  it published, attempts it made, deliveries it saw end ``failed``, webhooks it suspended,
  HTTP requests it answered. A Prometheus that scrapes every process and sums counts each
  delivery once.
* **Database-read gauges** (:class:`QueueGauges`): the queue by state, the lag of the oldest
  due delivery and the webhooks by status, read with one set of cheap named queries
  (``metrics_*`` in ``hookd/store/sql``) at most once per :data:`GAUGE_TTL` seconds however
  often ``/metrics`` is scraped. Only ``serve`` and ``api`` serve them, so that they are not
  counted once per worker.

``/metrics`` is served by ``serve`` and ``api`` on their HTTP port (``hookd.api.app``) and by
``hookd worker`` on ``HOOKD_METRICS_PORT`` (:class:`MetricsServer`). ``HOOKD_METRICS_TOKEN``
protects both (:func:`check_token`).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from hookd.errors import ApiError
from hookd.settings import DEFAULT_API_VERSION

__all__ = [
    "ATTEMPT_OUTCOMES",
    "CONTENT_TYPE",
    "DELIVERY_STATES",
    "GAUGE_TTL",
    "GAUGE_WAIT",
    "METRICS",
    "METRIC_NAMES",
    "UNMATCHED_ROUTE",
    "WEBHOOK_STATUSES",
    "Metrics",
    "MetricsServer",
    "QueueGauges",
    "QueueSnapshot",
    "TimedCounter",
    "TimedSeries",
    "check_token",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# No ``*_created`` series: they are not part of SPEC §8 and double what a scrape carries.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: ``hookd_delivery_attempts_total{outcome}``: every value, in the order of SPEC §8.
ATTEMPT_OUTCOMES = (
    "success",
    "http_3xx",
    "http_4xx",
    "http_5xx",
    "timeout",
    "dns",
    "connect",
    "tls",
    "refused",
)
#: ``hookd_deliveries{state}``: every value, exported even when 0.
DELIVERY_STATES = ("due", "scheduled", "held", "in_flight")
#: ``hookd_webhooks{status}``: every value, exported even when 0.
WEBHOOK_STATUSES = ("active", "paused", "suspended")
#: The ``route`` label of a request that matched no route (never the raw path).
UNMATCHED_ROUTE = "unmatched"
#: Seconds a set of database-read gauges is served before it is read again.
GAUGE_TTL = 5.0
#: Seconds a scrape waits for the gauges to be read before it answers with the last ones.
GAUGE_WAIT = 0.02

#: Every metric family hookd serves (the names of SPEC §8; histograms add ``_bucket``,
#: ``_sum`` and ``_count`` series, counters ``_total``).
METRIC_NAMES = (
    "hookd_events_published_total",
    "hookd_delivery_attempts_total",
    "hookd_delivery_attempt_duration_seconds",
    "hookd_deliveries_failed_total",
    "hookd_webhook_suspensions_total",
    "hookd_deliveries",
    "hookd_delivery_lag_seconds",
    "hookd_webhooks",
    "hookd_http_requests_total",
    "hookd_http_request_duration_seconds",
)

# Attempts run from a few milliseconds to the 30 s timeout maximum.
_ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# hookd answers in about a millisecond; a slow database or a large page takes longer.
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class TimedSeries:
    """One label set of a :class:`TimedCounter`: how many, in which bucket, and the sum."""

    __slots__ = ("bounds", "buckets", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one more, that took ``seconds``."""
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
        self.buckets[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds


class TimedCounter(Collector):
    """A counter and a histogram of the same things under the same labels, such as
    ``hookd_delivery_attempts_total`` and ``hookd_delivery_attempt_duration_seconds``: the
    counter is the histogram's count, so one count serves both.

    It is served exactly as a prometheus_client ``Counter`` and ``Histogram`` would serve
    them (the test suite compares the two), but counting costs one bisect and two additions
    on plain numbers: prometheus_client takes a lock for each of a histogram's values and
    walks its buckets one by one, which on the delivery path cost more than a percent of
    each delivery's instructions. The price is that it must be counted and collected on
    one thread: hookd counts on its event loop, and ``/metrics`` renders on it too."""

    def __init__(
        self,
        counter: tuple[str, str],
        histogram: tuple[str, str],
        labelnames: Sequence[str],
        bounds: Sequence[float],
    ) -> None:
        self.counter = counter
        self.histogram = histogram
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(float(b) for b in bounds)
        self._le = [floatToGoString(b) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self._series: dict[tuple[str, ...], TimedSeries] = {}

    def series(self, labels: tuple[str, ...]) -> TimedSeries:
        """The series of these label values (in ``labelnames``' order), made on first use:
        one dict look-up on the hot path, where prometheus_client's ``labels()`` cost more
        than the count itself."""
        found = self._series.get(labels)
        if found is None:
            if len(labels) != len(self.labelnames):
                raise ValueError(f"{self.counter[0]}: labels {self.labelnames}, given {labels}")
            found = self._series[labels] = TimedSeries(self.bounds)
        return found

    def collect(self) -> Iterable[Metric]:
        counts = CounterMetricFamily(*self.counter, labels=self.labelnames)
        durations = HistogramMetricFamily(*self.histogram, labels=self.labelnames)
        for labels, series in self._series.items():
            running = 0
            cumulative = []
            for le, n in zip(self._le, series.buckets, strict=True):
                running += n
                cumulative.append((le, float(running)))
            counts.add_metric(labels, float(running))
            durations.add_metric(labels, cumulative, series.total)
        return [counts, durations]


class Metrics:
    """This process's counters and histograms. ``configure`` once at start-up (the
    settings); when ``enabled`` is false every method returns at once and nothing is
    served."""

    def __init__(self, *, enabled: bool = True, webhook_labels: bool = False) -> None:
        self.configure(enabled=enabled, webhook_labels=webhook_labels)

    def configure(self, *, enabled: bool, webhook_labels: bool) -> None:
        self.enabled = enabled
        self.webhook_labels = webhook_labels
        self.registry = CollectorRegistry(auto_describe=False)
        registry = self.registry
        attempt_labels = ["outcome", "organization", "webhook"] if webhook_labels else ["outcome"]
        self.events = Counter(
            "hookd_events_published",
            "Events published through this process (POST /v2/events).",
            ["topic"],
            registry=registry,
        )
        self.attempts = TimedCounter(
            ("hookd_delivery_attempts", "Delivery attempts this process made, by outcome."),
            (
                "hookd_delivery_attempt_duration_seconds",
                "How long this process's delivery attempts took, by outcome.",
            ),
            attempt_labels,
            _ATTEMPT_BUCKETS,
        )
        registry.register(self.attempts)
        self.deliveries_failed = Counter(
            "hookd_deliveries_failed",
            "Deliveries that ended failed (their last scheduled attempt failed) in this "
            "process; test deliveries aside.",
            registry=registry,
        )
        self.suspensions = Counter(
            "hookd_webhook_suspensions",
            "Webhooks this process suspended (consecutive failures reached the limit).",
            registry=registry,
        )
        self.http_requests = TimedCounter(
            (
                "hookd_http_requests",
                "HTTP requests this process answered, by method, route template and status.",
            ),
            (
                "hookd_http_request_duration_seconds",
                "How long this process took to answer HTTP requests.",
            ),
            ["method", "route", "status"],
            _HTTP_BUCKETS,
        )
        registry.register(self.http_requests)
        self._topics: dict[str, Any] = {}
        if not webhook_labels:
            for outcome in ATTEMPT_OUTCOMES:  # every outcome is served, 0 until it happens
                self.attempts.series((outcome,))

    def event_published(self, topic: str) -> None:
        if not self.enabled:
            return
        series = self._topics.get(topic)
        if series is None:
            series = self._topics[topic] = self.events.labels(topic)
        series.inc()

    def attempt(self, outcome: str, seconds: float, organization: str, webhook: str) -> None:
        """One attempt made, ``outcome`` one of :data:`ATTEMPT_OUTCOMES`."""
        if not self.enabled:
            return
        key = (outcome, organization, webhook) if self.webhook_labels else (outcome,)
        self.attempts.series(key).observe(seconds)

    def settled(self, failed: int, suspended: int) -> None:
        """A batch of outcomes was written: ``failed`` deliveries ended failed and
        ``suspended`` webhooks were suspended by it."""
        if not self.enabled:
            return
        if failed:
            self.deliveries_failed.inc(failed)
        if suspended:
            self.suspensions.inc(suspended)

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.series((method, route, str(status))).observe(seconds)

    def render(self) -> bytes:
        """This process's metrics in Prometheus' text format."""
        return generate_latest(self.registry)


#: The metrics of this process (configured by ``hookd.server`` from the settings).
METRICS = Metrics()


def check_token(token: str, authorization: str | None) -> ApiError | None:
    """Whether a request with this ``Authorization`` header may read ``/metrics`` when
    ``HOOKD_METRICS_TOKEN`` is ``token`` (empty: anyone may); the error to answer if not."""
    if not token:
        return None
    challenge = {"WWW-Authenticate": 'Bearer realm="hookd metrics"'}
    if not authorization:
        return ApiError(
            401,
            "metrics_token_missing",
            "/metrics needs the header Authorization: Bearer <HOOKD_METRICS_TOKEN>.",
            headers=challenge,
        )
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        return ApiError(
            401,
            "metrics_token_invalid",
            "The bearer token is not this server's HOOKD_METRICS_TOKEN.",
            headers=challenge,
        )
    return None


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """The database-read gauges at one moment."""

    deliveries: Mapping[str, int]  # by state, every state of DELIVERY_STATES
    lag_seconds: float
    webhooks: Mapping[str, int]  # by status, every status of WEBHOOK_STATUSES


class QueueGauges(Collector):
    """The database-read gauges, read by ``read`` (one query set) at most once per ``ttl``
    seconds: scrapes in between get the last values, and scrapes that arrive while a read
    is under way share that read rather than start another. A scrape waits at most
    ``wait`` seconds for a read (except the first ever, which has nothing else to show):
    with a queue so long that counting it takes longer, it answers with the previous
    values and the next scrape gets the new ones."""

    def __init__(
        self,
        read: Callable[[], Awaitable[QueueSnapshot]],
        ttl: float = GAUGE_TTL,
        clock: Callable[[], float] = time.monotonic,
        wait: float = GAUGE_WAIT,
    ) -> None:
        self.read = read
        self.ttl = ttl
        self.clock = clock
        self.wait = wait
        self.reads = 0  # query sets run so far (the cache's proof, for tests and benchmarks)
        self._snapshot: QueueSnapshot | None = None
        self._read_at = float("-inf")
        self._reading: asyncio.Future[QueueSnapshot] | None = None
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    async def refresh(self) -> QueueSnapshot:
        """The snapshot to serve now, read anew if the last is older than ``ttl``."""
        if self._snapshot is not None and self.clock() - self._read_at < self.ttl:
            return self._snapshot
        reading = self._start_read()
        if self._snapshot is None:
            return await asyncio.shield(reading)
        try:
            # Shielded: a scrape that stops waiting does not cancel the read.
            return await asyncio.wait_for(asyncio.shield(reading), self.wait)
        except TimeoutError:
            return self._snapshot

    def prime(self) -> None:
        """Start the first read now (at start-up, in the background), so that the first
        scrape finds it done or under way instead of waiting for a whole count."""
        if self._snapshot is None:
            self._start_read()

    def _start_read(self) -> asyncio.Future[QueueSnapshot]:
        reading = self._reading
        if reading is None:
            reading = self._reading = asyncio.ensure_future(self._read())
            # A read nobody waits for to the end must not leave its error unretrieved.
            reading.add_done_callback(lambda done: done.cancelled() or done.exception())
        return reading

    async def _read(self) -> QueueSnapshot:
        try:
            self.reads += 1
            snapshot = await self.read()
            self._snapshot, self._read_at = snapshot, self.clock()
            return snapshot
        finally:
            self._reading = None

    def collect(self) -> Iterable[Metric]:
        snapshot = self._snapshot
        if snapshot is None:
            return
        by_state = GaugeMetricFamily(
            "hookd_deliveries",
            "Deliveries waiting or under way, by state (read from the database): due (its "
            "time has come), scheduled (a retry in the future), held (webhook paused or "
            "suspended), in_flight (an attempt under way).",
            labels=["state"],
        )
        for state in DELIVERY_STATES:
            by_state.add_metric([state], snapshot.deliveries.get(state, 0))
        yield by_state
        yield GaugeMetricFamily(
            "hookd_delivery_lag_seconds",
            "Age of the oldest due delivery (0 when none is due), read from the database.",
            value=snapshot.lag_seconds,
        )
        webhooks = GaugeMetricFamily(
            "hookd_webhooks", "Webhooks by status (read from the database).", labels=["status"]
        )
        for status in WEBHOOK_STATUSES:
            webhooks.add_metric([status], snapshot.webhooks.get(status, 0))
        yield webhooks

    async def render(self) -> bytes:
        """The gauges in Prometheus' text format, read anew when due."""
        await self.refresh()
        return generate_latest(self._registry)


# As on the API's port (SPEC §2): every answer says which API version it speaks.
_VERSION_HEADER = {"Featurebase-Version": DEFAULT_API_VERSION}


def _error(error: ApiError) -> web.Response:
    return web.Response(
        body=orjson.dumps(error.body()),
        status=error.status,
        content_type="application/json",
        headers={**_VERSION_HEADER, **error.headers},
    )


class MetricsServer:
    """``GET /metrics`` of a process without an HTTP API (``hookd worker``), on its own port.
    Every other path answers ``404`` and other methods ``405``, in the error shape."""

    def __init__(self, metrics: Metrics, host: str, port: int, token: str = "") -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self.token = token
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        response = self._answer(request)
        self.metrics.http_request(
            request.method,
            "/metrics" if request.path == "/metrics" else UNMATCHED_ROUTE,
            response.status,
            time.perf_counter() - started,
        )
        return response

    def _answer(self, request: web.Request) -> web.Response:
        if request.path != "/metrics":
            return _error(
                ApiError(
                    404,
                    "route_not_found",
                    f"There is no endpoint {request.path}; this port serves /metrics only.",
                )
            )
        if request.method not in ("GET", "HEAD"):
            return _error(
                ApiError(
                    405,
                    "method_not_allowed",
                    f"{request.method} is not allowed on /metrics; use GET.",
                    headers={"Allow": "GET"},
                )
            )
        refused = check_token(self.token, request.headers.get("Authorization"))
        if refused is not None:
            return _error(refused)
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE, **_VERSION_HEADER}
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
