"""Prometheus metrics, served at ``/metrics`` by the API process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["ATTEMPTS", "ATTEMPT_SECONDS", "EVENTS", "IN_FLIGHT"]

EVENTS = Counter("hookd_events_published_total", "Events accepted by POST /v2/events")
ATTEMPTS = Counter("hookd_delivery_attempts_total", "Delivery attempts by outcome", ["outcome"])
ATTEMPT_SECONDS = Histogram(
    "hookd_delivery_attempt_seconds",
    "Response time of delivery attempts",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IN_FLIGHT = Gauge("hookd_delivery_in_flight", "Delivery attempts under way in this process")
