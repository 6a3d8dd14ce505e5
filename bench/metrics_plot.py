"""Metrics plot: the Grafana dashboard's main panels, drawn from a real run (``docs/metrics.svg``).

Grafana cannot run here, so this draws what ``deploy/grafana/hookd.json`` would show, from
the same PromQL, evaluated here on ``/metrics`` scrapes of a short, bounded scenario
(loopback only, about 40 s; ``--smoke``: about 12 s):

* ``hookd serve`` on a fresh SQLite database (:class:`bench.harness.Deployment`) with
  ``HOOKD_RETRY_SCHEDULE`` ``1,2`` (three attempts a delivery) and ``HOOKD_SUSPEND_AFTER``
  ``24`` (smoke: ``0.5,1`` and ``4``), so that deliveries fail for good and webhooks are
  suspended during the run;
* 8 healthy webhooks (nginx, or the python receiver, answering ``204``), 2 whose receiver
  answers ``500`` and 1 whose receiver holds every answer back 5 s, past its ``timeoutMs``
  of 1 s (the least allowed); the healthy ones subscribe to ``post.created`` and ``ticket.created``, the failing
  ones to ``ticket.created`` only;
* a steady 20 ``post.created`` and 2 ``ticket.created`` events a second (one at a time), and one
  burst of ``post.created`` events (``bench/publisher.py``, 32 clients) that builds a lag;
* ``GET /metrics`` every second, parsed with ``prometheus_client``'s parser.

From the scrapes it evaluates the dashboard's expressions: ``rate()`` and ``increase()``
over a 4-s window (``$__rate_interval`` for a 1-s scrape interval: 4 x the interval) from
counter deltas (resets handled; no extrapolation), ``histogram_quantile`` from bucket deltas
with Prometheus' linear interpolation, gauges as scraped (the database gauges are cached
5 s by hookd, hence their steps). Six panels, one self-contained SVG (no scripts, no
external fonts): events published by topic, attempts by outcome, attempt duration
p50/p95/p99, delivery lag, queue by state, suspensions and failed deliveries.

    python bench/metrics_plot.py                 # writes docs/metrics.svg
    python bench/metrics_plot.py --smoke         # ~15 s, to a temporary file, checked
    python bench/metrics_plot.py --no-save       # the full run, checked, to a temporary file
    python bench/metrics_plot.py --out /tmp/m.svg
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client.parser import text_string_to_metric_families

from bench.common import Result, add_run_arguments, print_table, stop_process
from bench.harness import Deployment, finish, hookd_commit, publisher_result, run_publisher
from bench.publisher import event_body
from bench.receiver import Receiver, receiver_kind

__all__ = [
    "Panel",
    "Scenario",
    "Scrapes",
    "histogram_quantile",
    "main",
    "parse_scrape",
    "render_svg",
]

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "metrics.svg"
RATE_WINDOW = 4.0  # seconds: Grafana's $__rate_interval for a 1-s scrape interval
HEALTHY = 8
FAILING_500 = 2
HANGING = 1
HANG_DELAY_MS = 5000.0
HANG_TIMEOUT_MS = 1000
STEADY_POST_PER_S = 20
STEADY_TICKET_PER_S = 2

Labels = tuple[tuple[str, str], ...]
Series = list[float | None]  # one value per scrape, None where there is none


@dataclass(frozen=True)
class Scenario:
    seconds: int
    burst_at: int
    burst_events: int
    retry_schedule: str
    suspend_after: int


FULL = Scenario(seconds=40, burst_at=14, burst_events=5000, retry_schedule="1,2", suspend_after=24)
SMOKE = Scenario(seconds=12, burst_at=4, burst_events=400, retry_schedule="0.5,1", suspend_after=4)


# =========================================================================== scrapes


def parse_scrape(text: str) -> dict[tuple[str, Labels], float]:
    """Every sample of a Prometheus text exposition: (sample name, sorted labels) -> value."""
    samples: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


@dataclass
class Scrapes:
    """The scrapes of one run: their times (s since the start) and their samples."""

    times: list[float] = field(default_factory=list)
    samples: list[dict[tuple[str, Labels], float]] = field(default_factory=list)

    def add(self, t: float, text: str) -> None:
        self.times.append(t)
        self.samples.append(parse_scrape(text))

    def select(
        self, name: str, match: Callable[[dict[str, str]], bool] = lambda _l: True
    ) -> dict[Labels, Series]:
        """The series of sample ``name`` whose labels pass ``match``, aligned with the scrapes."""
        keys = {
            labels
            for scrape in self.samples
            for (n, labels) in scrape
            if n == name and match(dict(labels))
        }
        return {k: [scrape.get((name, k)) for scrape in self.samples] for k in sorted(keys)}

    # ------------------------------------------------------------------ PromQL functions

    def _window_start(self, i: int, window: float) -> int:
        j = i
        while j > 0 and self.times[i] - self.times[j - 1] <= window + 1e-6:
            j -= 1
        return j

    def increase(self, series: Series, i: int, window: float) -> tuple[float, float] | None:
        """(increase, seconds covered) of a counter over the samples within ``window`` of
        scrape ``i`` (counter resets counted as in Prometheus), or None for fewer than two."""
        points = [
            (self.times[j], v)
            for j in range(self._window_start(i, window), i + 1)
            if (v := series[j]) is not None
        ]
        if len(points) < 2:
            return None
        total = 0.0
        for (_t0, v0), (_t1, v1) in itertools.pairwise(points):
            total += v1 - v0 if v1 >= v0 else v1
        return total, points[-1][0] - points[0][0]

    def rate(self, series: Series, window: float = RATE_WINDOW) -> Series:
        """``rate(x[window])`` at every scrape (per second, without extrapolation)."""
        out: Series = []
        for i in range(len(self.times)):
            got = self.increase(series, i, window)
            out.append(got[0] / got[1] if got and got[1] > 0 else None)
        return out

    def increase_over(self, series: Series, window: float = RATE_WINDOW) -> Series:
        """``increase(x[window])``: the rate times the window, as Prometheus extrapolates it."""
        return [None if r is None else r * window for r in self.rate(series, window)]


def sum_series(parts: Sequence[Series]) -> Series:
    """``sum``: the sum of the series present at each scrape (None if none is)."""
    if not parts:
        return []
    out: Series = []
    for values in zip(*parts, strict=True):
        present = [v for v in values if v is not None]
        out.append(sum(present) if present else None)
    return out


def max_series(parts: Sequence[Series]) -> Series:
    """``max``: the largest of the series present at each scrape."""
    if not parts:
        return []
    out: Series = []
    for values in zip(*parts, strict=True):
        present = [v for v in values if v is not None]
        out.append(max(present) if present else None)
    return out


def group_by(series: dict[Labels, Series], label: str) -> dict[str, list[Series]]:
    groups: dict[str, list[Series]] = {}
    for labels, values in series.items():
        groups.setdefault(dict(labels).get(label, ""), []).append(values)
    return groups


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile`` of cumulative ``(le, count)`` buckets: linear
    interpolation within the bucket of rank ``q * total``, the lowest bucket starting at 0,
    the highest finite bound when the rank falls in ``+Inf``; None without observations."""
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return None
    total = ordered[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                return ordered[-2][0]
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return ordered[-2][0]


def quantile_series(scrapes: Scrapes, name: str, q: float) -> Series:
    """``histogram_quantile(q, sum by (le) (rate(<name>_bucket[window])))``."""
    per_le: dict[float, list[Series]] = {}
    for labels, values in scrapes.select(name + "_bucket").items():
        le = float(dict(labels)["le"])
        per_le.setdefault(le, []).append(scrapes.rate(values))
    summed = {le: sum_series(parts) for le, parts in per_le.items()}
    out: Series = []
    for i in range(len(scrapes.times)):
        buckets = [(le, v) for le, s in summed.items() if (v := s[i]) is not None]
        out.append(histogram_quantile(q, buckets))
    return out


# =========================================================================== panels


@dataclass
class Panel:
    title: str
    unit: str
    exprs: list[str]
    lines: dict[str, Series]


OUTCOME_ORDER = ["success", "http_5xx", "timeout", "http_4xx", "http_3xx", "connect", "dns", "tls"]
COLOURS = {
    "success": "#37872d",
    "http_5xx": "#c4162a",
    "timeout": "#fa6400",
    "post.created": "#1f60c4",
    "ticket.created": "#8f3bb8",
    "failed / all": "#c4162a",
    "p50": "#73bf69",
    "p95": "#fa6400",
    "p99": "#c4162a",
    "lag": "#1f60c4",
    "due": "#1f60c4",
    "scheduled": "#fa6400",
    "held": "#8f3bb8",
    "in_flight": "#37872d",
    "suspensions": "#c4162a",
    "failed deliveries": "#8f3bb8",
}
FALLBACK_COLOURS = ["#1f60c4", "#e0b400", "#8f3bb8", "#6e6e6e", "#00a3a3"]


def dashboard_panels(scrapes: Scrapes) -> list[Panel]:
    """The dashboard's main panels, each from its expression in deploy/grafana/hookd.json."""
    rw = "$__rate_interval"
    attempts_groups = group_by(scrapes.select("hookd_delivery_attempts_total"), "outcome")
    order = sorted(
        attempts_groups, key=lambda o: (OUTCOME_ORDER.index(o) if o in OUTCOME_ORDER else 99, o)
    )
    attempts = {o: sum_series([scrapes.rate(s) for s in attempts_groups[o]]) for o in order}
    # hookd exports every outcome from the start; like a Grafana legend with "hide series with
    # only zeros", the outcomes that never happened are left out.
    attempts = {o: s for o, s in attempts.items() if any(s)}
    every = sum_series([scrapes.rate(s) for parts in attempts_groups.values() for s in parts])
    failing = sum_series(
        [scrapes.rate(s) for o, parts in attempts_groups.items() if o != "success" for s in parts]
    )
    ratio: Series = [
        None if f is None or not a else f / a for f, a in zip(failing, every, strict=True)
    ]
    duration = "hookd_delivery_attempt_duration_seconds"
    quantiles = {
        f"p{round(q * 100)}": quantile_series(scrapes, duration, q) for q in (0.5, 0.95, 0.99)
    }
    lag = max_series(list(scrapes.select("hookd_delivery_lag_seconds").values()))
    queue_groups = group_by(scrapes.select("hookd_deliveries"), "state")
    queue = {
        s: max_series(queue_groups[s])
        for s in ["due", "scheduled", "held", "in_flight"]
        if s in queue_groups
    }
    suspensions = sum_series(
        [
            scrapes.increase_over(s)
            for s in scrapes.select("hookd_webhook_suspensions_total").values()
        ]
    )
    failed = sum_series(
        [scrapes.increase_over(s) for s in scrapes.select("hookd_deliveries_failed_total").values()]
    )
    return [
        Panel(
            "Attempts by outcome",
            "attempts/s",
            [f"sum by (outcome) (rate(hookd_delivery_attempts_total[{rw}]))"],
            attempts,
        ),
        Panel(
            "Failure ratio",
            "failed / all attempts",
            [
                f'sum(rate(hookd_delivery_attempts_total{{outcome!="success"}}[{rw}])) / '
                f"sum(rate(hookd_delivery_attempts_total[{rw}]))"
            ],
            {"failed / all": ratio},
        ),
        Panel(
            "Attempt duration (p50, p95, p99)",
            "seconds",
            [
                f"histogram_quantile({q}, sum by (le) (rate({duration}_bucket[{rw}])))"
                for q in ("0.5", "0.95", "0.99")
            ],
            quantiles,
        ),
        Panel(
            "Delivery lag (oldest due delivery)",
            "seconds",
            ["max(hookd_delivery_lag_seconds)"],
            {"lag": lag},
        ),
        Panel("Queue by state", "deliveries", ["max by (state) (hookd_deliveries)"], queue),
        Panel(
            "Suspensions and failed deliveries",
            f"per {RATE_WINDOW:g} s",
            [
                f"sum(increase(hookd_webhook_suspensions_total[{rw}]))",
                f"sum(increase(hookd_deliveries_failed_total[{rw}]))",
            ],
            {"suspensions": suspensions, "failed deliveries": failed},
        ),
    ]


# =========================================================================== SVG


def nice_ceiling(value: float) -> tuple[float, float]:
    """A round upper bound for an axis and its tick step (about 4 ticks)."""
    if value <= 0 or math.isnan(value):
        return 1.0, 0.25
    raw = value / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        step = m * magnitude
        if step >= raw:
            return step * math.ceil(value / step - 1e-9), step
    return value, raw


def fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value / 1000:g}k"
    if abs(value) >= 1:
        return f"{value:g}"
    return f"{value:.3g}"


def render_svg(
    panels: Sequence[Panel],
    times: Sequence[float],
    *,
    seconds: float,
    burst: tuple[float, float] | None,
    caption: Sequence[str],
    columns: int = 2,
) -> str:
    """One self-contained SVG: ``panels`` in a grid, each with axes, ticks, a legend and the
    burst shaded; the PromQL of each panel is in its ``<title>`` (a tooltip)."""
    pw, ph = 470, 250
    gap, top = 10, 34 + 15 * len(caption)
    footer = [
        f"rate() and increase() over {RATE_WINDOW:g} s ($__rate_interval at a 1-s scrape interval) "
        "from counter deltas, histogram_quantile from bucket deltas, gauges as scraped",
        "(hookd caches the database gauges 5 s). The PromQL of each panel is its tooltip. "
        "Regenerate: python bench/metrics_plot.py",
    ]
    rows = math.ceil(len(panels) / columns)
    width = columns * pw + (columns + 1) * gap
    height = top + rows * (ph + gap) + 14 * len(footer) + 6
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{gap}" y="22" font-size="15" font-weight="bold" fill="#1f1f1f">'
        "hookd: the Grafana dashboard&#8217;s main panels (deploy/grafana/hookd.json), "
        "computed from /metrics scrapes</text>",
    ]
    for k, line in enumerate(caption):
        out.append(f'<text x="{gap}" y="{40 + 15 * k}" fill="#555">{escape(line)}</text>')
    for n, panel in enumerate(panels):
        x0 = gap + (n % columns) * (pw + gap)
        y0 = top + (n // columns) * (ph + gap)
        out.append(f'<g transform="translate({x0},{y0})">')
        out.append(f"<title>{escape(' ; '.join(panel.exprs))}</title>")
        out.append(f'<rect width="{pw}" height="{ph}" fill="#fafafa" stroke="#d0d0d0" rx="3"/>')
        out.append(
            f'<text x="10" y="18" font-size="13" font-weight="bold" fill="#1f1f1f">'
            f"{escape(panel.title)}</text>"
        )
        # plot area
        left, right, ptop, bottom = 52, pw - 12, 48, ph - 30
        values = [v for s in panel.lines.values() for v in s if v is not None]
        ymax, ystep = nice_ceiling(max(values) if values else 0.0)
        xs = (right - left) / seconds if seconds else 1.0

        def px(t: float, left: float = left, xs: float = xs) -> float:
            return left + t * xs

        def py(v: float, ymax: float = ymax, bottom: float = bottom, ptop: float = ptop) -> float:
            return bottom - (v / ymax) * (bottom - ptop)

        if burst:
            b0, b1 = max(0.0, burst[0]), min(seconds, burst[1])
            out.append(
                f'<rect x="{px(b0):.1f}" y="{ptop}" width="{max(1.0, px(b1) - px(b0)):.1f}" '
                f'height="{bottom - ptop}" fill="#fff3c4"/>'
            )
            if n == 0:
                out.append(
                    f'<text x="{px(b0) + 3:.1f}" y="{ptop + 11}" font-size="10" fill="#8a6d00">'
                    "burst</text>"
                )
        tick = 0.0
        while tick <= ymax + 1e-9:
            y = py(tick)
            out.append(
                f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#e4e4e4"/>'
            )
            out.append(
                f'<text x="{left - 5}" y="{y + 4:.1f}" text-anchor="end" fill="#555">'
                f"{fmt(tick)}</text>"
            )
            tick += ystep
        xstep = 10 if seconds > 20 else 2
        t = 0
        while t <= seconds + 1e-9:
            x = px(t)
            out.append(
                f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#888"/>'
            )
            out.append(
                f'<text x="{x:.1f}" y="{bottom + 15}" text-anchor="middle" fill="#555">{t}</text>'
            )
            t += xstep
        out.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#888"/>')
        out.append(f'<line x1="{left}" y1="{ptop}" x2="{left}" y2="{bottom}" stroke="#888"/>')
        out.append(
            f'<text x="{right}" y="{ph - 4}" text-anchor="end" fill="#555">seconds since start</text>'
        )
        out.append(
            f'<text transform="translate(13,{(ptop + bottom) / 2:.0f}) rotate(-90)" '
            f'text-anchor="middle" fill="#555">{escape(panel.unit)}</text>'
        )
        # legend
        lx = 10.0
        for k, name in enumerate(panel.lines):
            colour = COLOURS.get(name, FALLBACK_COLOURS[k % len(FALLBACK_COLOURS)])
            out.append(f'<rect x="{lx:.0f}" y="28" width="12" height="4" fill="{colour}"/>')
            out.append(f'<text x="{lx + 16:.0f}" y="34" fill="#333">{escape(name)}</text>')
            lx += 24 + 6.2 * len(name)
        # lines (broken where a value is missing)
        for k, (name, series) in enumerate(panel.lines.items()):
            colour = COLOURS.get(name, FALLBACK_COLOURS[k % len(FALLBACK_COLOURS)])
            run: list[str] = []
            runs: list[list[str]] = []
            for tt, v in zip(times, series, strict=True):
                if v is None or math.isnan(v):
                    if run:
                        runs.append(run)
                    run = []
                    continue
                run.append(f"{px(min(tt, seconds)):.1f},{py(v):.1f}")
            if run:
                runs.append(run)
            for points in runs:
                if len(points) == 1:
                    cx, cy = points[0].split(",")
                    out.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{colour}"/>')
                else:
                    out.append(
                        f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" '
                        'stroke-width="1.8" stroke-linejoin="round"/>'
                    )
        out.append("</g>")
    for k, line in enumerate(footer):
        y = top + rows * (ph + gap) + 10 + 14 * k
        out.append(f'<text x="{gap}" y="{y}" font-size="10" fill="#777">{escape(line)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# =========================================================================== the run


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def scrape(base: str, timeout: float = 5.0) -> str:
    with _DIRECT.open(base + "/metrics", timeout=timeout) as resp:
        body: bytes = resp.read()
    return body.decode()


def steady_publisher(dep: Deployment, t0: float, until: float, stop: threading.Event) -> list[int]:
    """Publish ``STEADY_*_PER_S`` events a second, one request at a time, until ``until``
    (monotonic) or ``stop``; returns [published, refused]."""
    counts = [0, 0]
    per_s = STEADY_POST_PER_S + STEADY_TICKET_PER_S
    every = per_s // STEADY_TICKET_PER_S  # one ticket.created every `every` events
    n = 0
    while not stop.is_set():
        due = t0 + n / per_s
        now = time.monotonic()
        if due >= until:
            break
        if due > now:
            stop.wait(due - now)
            continue
        topic = "ticket.created" if n % every == every - 1 else "post.created"
        try:
            status, _ = dep.request("POST", "/v2/events", json.loads(event_body(n, topic)), 10)
        except OSError:
            status = 0
        counts[0 if status in (200, 202) else 1] += 1
        n += 1
    return counts


@dataclass
class RunResult:
    scrapes: Scrapes
    burst: tuple[float, float]
    published: list[int]
    burst_result: dict[str, object]
    scrape_errors: int


def run_scenario(sc: Scenario, tmp: Path, smoke: bool) -> RunResult:
    env = {
        "HOOKD_RETRY_SCHEDULE": sc.retry_schedule,
        "HOOKD_SUSPEND_AFTER": str(sc.suspend_after),
    }
    total = HEALTHY + FAILING_500 + HANGING
    with contextlib.ExitStack() as stack:
        healthy = stack.enter_context(Receiver.start(receiver_kind(smoke)))
        failing = stack.enter_context(Receiver.start("python", status=500))
        hanging = stack.enter_context(Receiver.start("python", delay_ms=HANG_DELAY_MS))
        dep = stack.enter_context(
            Deployment("sqlite", tmp, extra_env=env, webhook_limit=total).start()
        )
        both = ("post.created", "ticket.created")
        dep.create_webhooks(HEALTHY, lambda i: f"{healthy.url}ok/{i}", topics=both)
        dep.create_webhooks(
            FAILING_500, lambda i: f"{failing.url}500/{i}", topics=("ticket.created",)
        )
        dep.create_webhooks(
            HANGING,
            lambda i: f"{hanging.url}hang/{i}",
            topics=("ticket.created",),
            timeout_ms=HANG_TIMEOUT_MS,
        )
        scrapes = Scrapes()
        errors = 0
        t0 = time.monotonic()
        stop = threading.Event()
        published: list[int] = []
        thread = threading.Thread(
            target=lambda: published.extend(steady_publisher(dep, t0, t0 + sc.seconds, stop)),
            daemon=True,
        )
        thread.start()
        burst_proc: subprocess.Popen[bytes] | None = None
        burst_start = burst_end = float(sc.burst_at)
        try:
            for i in range(sc.seconds + 1):
                left = t0 + i - time.monotonic()
                if left > 0:
                    time.sleep(left)
                if i == sc.burst_at:
                    started = run_publisher(
                        dep.base,
                        dep.key,
                        sc.burst_events,
                        topic="post.created",
                        max_seconds=30,
                        wait=False,
                    )
                    assert isinstance(started, subprocess.Popen)
                    burst_proc = started
                    burst_start = time.monotonic() - t0
                if (
                    burst_proc is not None
                    and burst_end <= burst_start
                    and burst_proc.poll() is not None
                ):
                    burst_end = time.monotonic() - t0
                at = time.monotonic() - t0
                try:
                    text = scrape(dep.base)
                except OSError:
                    errors += 1
                    continue
                scrapes.add(at, text)
            dep.check_alive()
        except BaseException:
            if burst_proc is not None and burst_proc.poll() is None:
                stop_process(burst_proc)  # the publisher this run started, by its pid
            raise
        finally:
            stop.set()
            thread.join(timeout=15)
        burst_result: dict[str, object] = {}
        if burst_proc is not None:
            burst_result = dict(publisher_result(burst_proc, timeout=30))
            if burst_end <= burst_start:
                burst_end = float(sc.seconds)
        return RunResult(scrapes, (burst_start, burst_end), published, burst_result, errors)


def check(panels: Sequence[Panel], svg_path: Path, scrapes: Scrapes, smoke: bool) -> list[str]:
    """What every run checks: the SVG, that each panel has data, that attempts succeeded,
    failed with 5xx and timed out, and that deliveries failed and webhooks were suspended;
    a full run also that the burst built a lag (a smoke run's is gone within the 5 s for
    which hookd caches the gauge)."""
    failures: list[str] = []
    try:
        root = ET.parse(svg_path).getroot()
        if (
            not root.tag.endswith("svg")
            or len(root.findall(".//{http://www.w3.org/2000/svg}polyline")) < 6
        ):
            failures.append(f"{svg_path}: not an SVG with a line in every panel")
    except (OSError, ET.ParseError) as exc:
        failures.append(f"{svg_path}: {exc}")
    for panel in panels:
        filled = {name: sum(v is not None for v in s) for name, s in panel.lines.items()}
        if not filled or not any(filled.values()):
            failures.append(f"panel {panel.title!r}: no series")
    by_title = {p.title: p for p in panels}
    attempts = by_title["Attempts by outcome"].lines
    for outcome in ("success", "http_5xx", "timeout"):
        if not any(v for v in attempts.get(outcome, [])):
            failures.append(f"attempts by outcome: no {outcome} attempts")
    if not smoke and not any(
        v for v in by_title["Delivery lag (oldest due delivery)"].lines["lag"]
    ):
        failures.append("delivery lag: never above 0")
    last = scrapes.samples[-1] if scrapes.samples else {}
    for name in ("hookd_webhook_suspensions_total", "hookd_deliveries_failed_total"):
        if last.get((name, ())) is None or last[(name, ())] < 1:
            failures.append(f"{name}: none during the run")
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, help=f"the SVG (default {DEFAULT_OUT}; smoke: a temp file)"
    )
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    sc = SMOKE if args.smoke else FULL
    commit = hookd_commit()
    print(
        f"metrics_plot: {sc.seconds} s scenario on SQLite ({HEALTHY} healthy, {FAILING_500} x 500, "
        f"{HANGING} hanging webhook(s); burst of {sc.burst_events} events at {sc.burst_at} s); "
        f"hookd at {commit}",
        flush=True,
    )
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="hookd-bench-metrics-plot-"))
    failures: list[str] = []
    results: list[Result] = []
    try:
        run = run_scenario(sc, tmp, args.smoke)
        scrapes = run.scrapes
        if run.published[1:2] != [0] or not run.published[0]:
            failures.append(f"steady publisher: {run.published} (published, refused)")
        if run.scrape_errors:
            failures.append(f"{run.scrape_errors} scrape(s) of /metrics failed")
        panels = dashboard_panels(scrapes)
        caption = [
            f"hookd serve on SQLite for {sc.seconds} s: {HEALTHY} healthy webhooks, "
            f"{FAILING_500} whose receiver answers 500, {HANGING} whose receiver hangs past its "
            f"timeoutMs; {STEADY_POST_PER_S + STEADY_TICKET_PER_S} events/s",
            f"and a burst of {sc.burst_events:,} events (shaded); HOOKD_RETRY_SCHEDULE="
            f"{sc.retry_schedule}, HOOKD_SUSPEND_AFTER={sc.suspend_after}; /metrics scraped "
            f"every second; hookd {commit}",
        ]
        svg = render_svg(
            panels, scrapes.times, seconds=sc.seconds, burst=run.burst, caption=caption
        )
        # --smoke and --no-save (run_all.py --no-save) leave docs/metrics.svg as it is.
        out: Path = args.out or (tmp / "metrics.svg" if args.smoke or args.no_save else DEFAULT_OUT)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(svg, encoding="utf-8")
        failures += check(panels, out, scrapes, args.smoke)
        last = scrapes.samples[-1] if scrapes.samples else {}

        def final(name: str) -> float:
            return sum(v for (n, _l), v in last.items() if n == name)

        def peak(series: Series) -> float:
            return max((v for v in series if v is not None), default=0.0)

        by_title = {p.title: p for p in panels}
        results = [
            Result("scrapes of /metrics", len(scrapes.times), "scrapes"),
            Result(
                "events published (steady + burst)", final("hookd_events_published_total"), "events"
            ),
            Result("delivery attempts", final("hookd_delivery_attempts_total"), "attempts"),
            Result("failed deliveries", final("hookd_deliveries_failed_total"), "deliveries"),
            Result("suspensions", final("hookd_webhook_suspensions_total"), "webhooks"),
            Result(
                "peak delivery lag",
                peak(by_title["Delivery lag (oldest due delivery)"].lines["lag"]),
                "s",
            ),
            Result(
                "peak p95 attempt duration",
                peak(by_title["Attempt duration (p50, p95, p99)"].lines["p95"]),
                "s",
            ),
        ]
        print(
            f"wrote {out} ({len(svg):,} bytes); steady publisher: {run.published}, "
            f"burst: {run.burst_result.get('events', '?')} events"
        )
    except Exception as exc:  # reported like a failed check, after the cleanup
        failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print_table(results, title="metrics_plot: what the scenario did")
    print(f"took {time.monotonic() - started:.1f} s")
    return finish(args.summary_file, "metrics-plot", results, failures)


if __name__ == "__main__":
    sys.exit(main())
