"""bench/metrics_plot.py's PromQL evaluation (rate with counter resets, histogram_quantile,
sum by) on hand-made scrapes, and its SVG: every panel drawn, valid XML. The scenario
itself runs in ``bench/run_all.py --smoke``."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from bench.metrics_plot import Scrapes, dashboard_panels, histogram_quantile, render_svg

INF = math.inf


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    assert histogram_quantile(0.5, [(0.1, 5), (0.5, 10), (INF, 10)]) == pytest.approx(0.1)
    assert histogram_quantile(0.95, [(0.1, 0), (0.5, 10), (INF, 10)]) == pytest.approx(0.48)
    # The rank in +Inf: the highest finite bound.
    assert histogram_quantile(0.99, [(0.1, 0), (0.5, 0), (INF, 10)]) == 0.5
    assert histogram_quantile(0.5, [(0.1, 0), (INF, 0)]) is None
    assert histogram_quantile(0.5, [(0.1, 3)]) is None  # no +Inf bucket


def test_rate_handles_counter_resets_over_the_window() -> None:
    s = Scrapes()
    s.times = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    rates = s.rate([0, 10, 20, 5, 15, 25], window=4.0)
    assert rates[0] is None
    assert rates[1:] == pytest.approx([10.0, 10.0, 25 / 3, 35 / 4, 35 / 4])
    assert s.rate([None, None, 1, 2, None, 4], window=4.0)[3] == pytest.approx(1.0)


def _exposition(t: int) -> str:
    ok, bad = 100 * t, 5 * t
    return "\n".join(
        [
            "# TYPE hookd_delivery_attempts_total counter",
            f'hookd_delivery_attempts_total{{outcome="success"}} {ok}',
            f'hookd_delivery_attempts_total{{outcome="http_5xx"}} {bad}',
            'hookd_delivery_attempts_total{outcome="dns"} 0',
            "# TYPE hookd_delivery_attempt_duration_seconds histogram",
            f'hookd_delivery_attempt_duration_seconds_bucket{{le="0.1",outcome="success"}} {ok}',
            f'hookd_delivery_attempt_duration_seconds_bucket{{le="+Inf",outcome="success"}} {ok}',
            f'hookd_delivery_attempt_duration_seconds_sum{{outcome="success"}} {ok * 0.01}',
            f'hookd_delivery_attempt_duration_seconds_count{{outcome="success"}} {ok}',
            'hookd_delivery_attempt_duration_seconds_bucket{le="0.1",outcome="http_5xx"} 0',
            f'hookd_delivery_attempt_duration_seconds_bucket{{le="+Inf",outcome="http_5xx"}} {bad}',
            f'hookd_delivery_attempt_duration_seconds_sum{{outcome="http_5xx"}} {bad * 2}',
            f'hookd_delivery_attempt_duration_seconds_count{{outcome="http_5xx"}} {bad}',
            "# TYPE hookd_deliveries_failed_total counter",
            f"hookd_deliveries_failed_total {t}",
            "# TYPE hookd_webhook_suspensions_total counter",
            f"hookd_webhook_suspensions_total {1 if t > 3 else 0}",
            "# TYPE hookd_deliveries gauge",
            f'hookd_deliveries{{state="due"}} {10 * t}',
            'hookd_deliveries{state="held"} 0',
            "# TYPE hookd_delivery_lag_seconds gauge",
            f"hookd_delivery_lag_seconds {t / 2}",
            "",
        ]
    )


def test_panels_and_svg_from_scrapes() -> None:
    s = Scrapes()
    for t in range(8):
        s.add(float(t), _exposition(t))
    panels = {p.title: p for p in dashboard_panels(s)}
    attempts = panels["Attempts by outcome"].lines
    assert list(attempts) == ["success", "http_5xx"]  # dns never happened: left out
    assert attempts["success"][-1] == pytest.approx(100.0)
    assert panels["Failure ratio"].lines["failed / all"][-1] == pytest.approx(5 / 105)
    p95 = panels["Attempt duration (p50, p95, p99)"].lines["p95"][-1]
    # rank 0.95 * 105 = 99.75 of the 100 observations in the first bucket, (0, 0.1]
    assert p95 == pytest.approx(0.1 * 99.75 / 100)
    suspended = panels["Suspensions and failed deliveries"].lines["suspensions"]
    assert max(v or 0 for v in suspended) == pytest.approx(1.0)
    assert panels["Delivery lag (oldest due delivery)"].lines["lag"][-1] == 3.5
    svg = render_svg(
        list(panels.values()), s.times, seconds=7, burst=(2.0, 4.0), caption=["a", "b"]
    )
    root = ET.fromstring(svg)
    assert len(root.findall(".//{http://www.w3.org/2000/svg}polyline")) >= 6
    assert "<script" not in svg and "href" not in svg
