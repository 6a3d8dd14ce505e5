"""The webhook page's charts as inline SVG, drawn on the server from hourly rollups: no
script, no outside asset, readable without colour (a title per bar and point, a table
beside each chart for screen readers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from hookd.clock import iso_ms
from hookd.store.rollups import HOUR_MS, Rollup

__all__ = ["Point", "attempts_chart", "hourly_points", "p95_chart"]

_WIDTH = 720
_HEIGHT = 180
_LEFT = 44
_BOTTOM = 22
_TOP = 8


@dataclass(frozen=True, slots=True)
class Point:
    """One hour of a chart: its start (ms), succeeded and failed attempts, p95 (ms)."""

    hour: int
    succeeded: int
    failed: int
    p95: int | None

    @property
    def label(self) -> str:
        return iso_ms(self.hour)[:13].replace("T", " ") + ":00 UTC"


def hourly_points(series: Sequence[Rollup], now: int, hours: int) -> list[Point]:
    """One point per hour of the last ``hours`` (the current one last), zero where the
    webhook had no attempts."""
    last = now - now % HOUR_MS
    by_hour = {r.hour: r for r in series}
    points = []
    for i in range(hours - 1, -1, -1):
        hour = last - i * HOUR_MS
        r = by_hour.get(hour)
        points.append(
            Point(hour, 0, 0, None) if r is None else Point(hour, r.successes, r.failures, r.p95)
        )
    return points


def _scale_max(value: int) -> int:
    top = max(value, 1)
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            if magnitude * step >= top:
                return magnitude * step
        magnitude *= 10


def _frame(title: str, top: int, unit: str, body: list[str], points: Sequence[Point]) -> Markup:
    plot_h = _HEIGHT - _BOTTOM - _TOP
    parts = [
        f'<svg class="chart" viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" preserveAspectRatio="none">',
        f"<title>{escape(title)}</title>",
    ]
    for frac in (0.0, 0.5, 1.0):
        y = _TOP + plot_h * (1 - frac)
        parts.append(
            f'<line class="grid" x1="{_LEFT}" x2="{_WIDTH}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">'
            f"{top * frac:g}{unit}</text>"
        )
    if points:
        parts.append(
            f'<text class="axis" x="{_LEFT}" y="{_HEIGHT - 6}">{escape(points[0].label)}</text>'
            f'<text class="axis" x="{_WIDTH}" y="{_HEIGHT - 6}" text-anchor="end">'
            f"{escape(points[-1].label)}</text>"
        )
    parts += body
    parts.append("</svg>")
    return Markup("".join(parts))


def attempts_chart(points: Sequence[Point], title: str) -> Markup:
    """Stacked bars per hour: succeeded attempts below, failed above."""
    top = _scale_max(max((p.succeeded + p.failed for p in points), default=0))
    plot_h = _HEIGHT - _BOTTOM - _TOP
    slot = (_WIDTH - _LEFT) / max(len(points), 1)
    bar = max(slot * 0.8, 1.0)
    body = []
    for i, p in enumerate(points):
        if not p.succeeded and not p.failed:
            continue
        x = _LEFT + i * slot + (slot - bar) / 2
        ok_h = plot_h * p.succeeded / top
        fail_h = plot_h * p.failed / top
        base = _TOP + plot_h
        tip = f"{p.label}: {p.succeeded} succeeded, {p.failed} failed"
        body.append(
            f"<g><title>{escape(tip)}</title>"
            f'<rect class="ok" x="{x:.1f}" y="{base - ok_h:.1f}" width="{bar:.1f}" height="{ok_h:.1f}"/>'
            f'<rect class="fail" x="{x:.1f}" y="{base - ok_h - fail_h:.1f}" width="{bar:.1f}" '
            f'height="{fail_h:.1f}"/></g>'
        )
    return _frame(title, top, "", body, points)


def p95_chart(points: Sequence[Point], title: str) -> Markup:
    """A line of each hour's p95 response time (hours without attempts leave a gap)."""
    top = _scale_max(max((p.p95 or 0 for p in points), default=0))
    plot_h = _HEIGHT - _BOTTOM - _TOP
    slot = (_WIDTH - _LEFT) / max(len(points), 1)
    body = []
    run: list[str] = []
    dots = []
    for i, p in enumerate(points):
        if p.p95 is None:
            if len(run) > 1:
                body.append(f'<polyline class="line" points="{" ".join(run)}"/>')
            run = []
            continue
        x = _LEFT + i * slot + slot / 2
        y = _TOP + plot_h * (1 - p.p95 / top)
        run.append(f"{x:.1f},{y:.1f}")
        dots.append(
            f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="2.5">'
            f"<title>{escape(p.label)}: p95 {p.p95} ms</title></circle>"
        )
    if len(run) > 1:
        body.append(f'<polyline class="line" points="{" ".join(run)}"/>')
    return _frame(title, top, " ms", body + dots, points)
