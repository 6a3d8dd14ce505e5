"""Metrics: what Prometheus metrics cost hookd (SPEC §8, issue 16's targets).

Two measurements:

1. **CPU of counting.** The drain of ``drain.py`` (``hookd serve``, ``--webhooks`` (10)
   webhooks, ``--events`` (2,000) events: 20,000 deliveries into nginx) with metrics as
   shipped, ``/metrics`` scraped every second meanwhile (15 times Prometheus' default
   rate), against the same drain with ``HOOKD_METRICS=false``. Runs alternate (off on, on
   off, ...), each on a fresh deployment; reported: hookd's CPU per delivery (all its
   processes and threads) in each mode, as medians, and the ratio on/off (target: at most
   1.03, i.e. metrics cost at most 3 %).
2. **Scrape time with a large queue.** A database holding ``--rows`` (1,000,000) waiting
   deliveries (``--rows / 10`` events, one delivery to each of 10 webhooks; a quarter of
   them retries an hour ahead, one webhook paused: every state has rows) and ``hookd api``
   on it (no worker, so the queue stays as it is): the time of the first ``GET /metrics``
   (it waits for the whole count, ``metrics_*`` in hookd/store/sql, having nothing else to
   show), of later ones when the 5-s cache has run out (they wait at most
   ``hookd.metrics.GAUGE_WAIT`` for the count, else answer with the last values), and
   within the cache. Target: under 50 ms with 1,000,000 deliveries.

``--db sqlite``, ``postgres`` or ``both`` (default ``both``; ``--smoke``: SQLite only, 100
events, 10,000 rows, one run, checked, about 15 s). Results: ``bench/results/metrics.jsonl``.

    python bench/metrics.py                  # both engines, 3 pairs of drains, 1M rows
    python bench/metrics.py --db postgres --rows 1000000 --scrapes 5
    python bench/metrics.py --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.backlog import _EVENT_ID, _EVENTS_SQL
from bench.common import Result, add_run_arguments, append_jsonl, print_table
from bench.drain import prepare
from bench.harness import Deployment, finish, hookd_commit, measure_drain, median
from bench.receiver import Receiver, receiver_kind
from hookd.metrics import Metrics

__all__ = ["main", "scrape_times"]

RESULTS_NAME = "metrics"
WEBHOOKS = 10
DEFAULT_EVENTS = 2000
SMOKE_EVENTS = 100
DEFAULT_RUNS = 3
DEFAULT_ROWS = 1_000_000
SMOKE_ROWS = 10_000
DEFAULT_SCRAPES = 5
TARGET_CPU_RATIO = 1.03
TARGET_SCRAPE_MS = 50.0
GAUGE_TTL = 5.0  # hookd.metrics.GAUGE_TTL, waited out between cold scrapes

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# PostgreSQL: one delivery per (event, webhook), as bench/backlog.py, but a quarter of them
# retries an hour ahead (scheduled) instead of due.
_PG_DELIVERIES_SQL = f"""
INSERT INTO deliveries (id, webhook_id, event_id, topic, is_test, status, attempt_count,
                        next_attempt_at, lease_until, lease_token, created_at)
SELECT lpad(to_hex(($1::bigint + n) / 1000), 8, '0') || lpad(to_hex(n * $4::int + k - 1), 16, '0'),
       ($2::text[])[k], {_EVENT_ID}, 'post.created', false, 'pending',
       CASE WHEN n % 4 = 0 THEN 1 ELSE 0 END,
       CASE WHEN n % 4 = 0 THEN $1::bigint + n + 3600000 ELSE $1::bigint + n END,
       NULL, NULL, $1::bigint + n
FROM generate_series(0, $3::bigint - 1) AS n, generate_series(1, $4::int) AS k
ORDER BY n, k
"""

_SQLITE_EVENTS_SQL = """
WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n + 1 < :events)
INSERT INTO events (id, organization_id, topic, data, conversation_id, conversation_url,
                    is_test, created_at)
SELECT printf('notif_%012x-bench', :base + n), :org, 'post.created',
       '{"object":"notification_event_data","item":{"id":"p"},"changes":[]}',
       NULL, NULL, 0, :base + n
FROM s
"""
_SQLITE_DELIVERIES_SQL = """
WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n + 1 < :events),
     h(k, id) AS (SELECT row_number() OVER (ORDER BY id), id FROM webhooks
                  WHERE deleted_at IS NULL)
INSERT INTO deliveries (id, webhook_id, event_id, topic, is_test, status, attempt_count,
                        next_attempt_at, lease_until, lease_token, created_at)
SELECT printf('%08x%016x', (:base + n) / 1000, n * :hooks + h.k - 1), h.id,
       printf('notif_%012x-bench', :base + n), 'post.created', 0, 'pending',
       CASE WHEN n % 4 = 0 THEN 1 ELSE 0 END,
       CASE WHEN n % 4 = 0 THEN :base + n + 3600000 ELSE :base + n END,
       NULL, NULL, :base + n
FROM s, h ORDER BY n, h.k
"""


def counting_us_per_delivery(webhooks: int = WEBHOOKS, n: int = 200_000) -> dict[str, float]:
    """What the counting itself costs, timed in this process (µs): per attempt, per HTTP
    request and per published event, and per delivery of a drain (an attempt, and a
    publish request with its event for every ``webhooks`` deliveries). Less noisy than two
    drains on a shared machine, which differ by more than the metrics cost."""
    metrics = Metrics()
    costs: dict[str, float] = {}
    calls: tuple[tuple[str, Callable[[], None]], ...] = (
        ("attempt", lambda: metrics.attempt("success", 0.012, "org", "webhook")),
        ("http_request", lambda: metrics.http_request("POST", "/v2/events", 202, 0.001)),
        ("event", lambda: metrics.event_published("post.created")),
    )
    for name, call in calls:
        call()
        started = time.process_time()
        for _ in range(n):
            call()
        costs[name] = (time.process_time() - started) / n * 1e6
    costs["per_delivery"] = costs["attempt"] + (costs["http_request"] + costs["event"]) / webhooks
    return costs


def fill_queue(dep: Deployment, rows: int) -> dict[str, Any]:
    """Insert ``rows`` waiting deliveries (see the module docstring) and pause one webhook."""
    now_ms = int(time.time() * 1000)
    hooks = [r[0] for r in dep.sql_rows("SELECT id FROM webhooks ORDER BY id")]
    org = dep.sql_value("SELECT organization_id FROM webhooks LIMIT 1")
    events = -(-rows // len(hooks))
    base = now_ms - events - 1000
    started = time.monotonic()
    if dep.db_kind == "sqlite":
        conn = sqlite3.connect(dep.db.url[len("sqlite:///") :], timeout=60)
        try:
            params = {"events": events, "base": base, "org": org, "hooks": len(hooks)}
            conn.execute(_SQLITE_EVENTS_SQL, params)
            conn.execute(_SQLITE_DELIVERIES_SQL, params)
            conn.execute("UPDATE webhooks SET status = 'paused' WHERE id = ?", (hooks[-1],))
            conn.commit()
        finally:
            conn.close()
    else:
        import asyncpg

        async def go() -> None:
            conn = await asyncpg.connect(dep.db.url, timeout=10)
            try:
                await conn.execute(_EVENTS_SQL, base, org, events, timeout=3600)
                await conn.execute(
                    _PG_DELIVERIES_SQL, base, hooks, events, len(hooks), timeout=3600
                )
                await conn.execute("UPDATE webhooks SET status = 'paused' WHERE id = $1", hooks[-1])
                await conn.execute("VACUUM ANALYZE deliveries", timeout=3600)
                await conn.execute("ANALYZE events; ANALYZE webhooks", timeout=3600)
            finally:
                await conn.close()

        asyncio.run(go())
    return {
        "deliveries": int(dep.sql_value("SELECT count(*) FROM deliveries")),
        "fill_s": round(time.monotonic() - started, 1),
    }


def _get(url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    with _DIRECT.open(url, timeout=30) as response:
        body: bytes = response.read()
    return (time.perf_counter() - started) * 1000, body


def scrape_times(url: str, cold: int, warm: int = 20) -> dict[str, Any]:
    """The first scrape (it waits for the whole count: nothing was counted before), then
    ``cold`` scrapes each after the gauges' cache ran out and ``warm`` within it; ms each."""
    cold_ms: list[float] = []
    warm_ms: list[float] = []
    first_ms, body = _get(url)
    for _ in range(cold):
        time.sleep(GAUGE_TTL + 0.1)
        ms, body = _get(url)
        cold_ms.append(ms)
        # Once the count this scrape started is over (within the cache, not waiting on it).
        time.sleep(1.0)
        for _ in range(warm // max(1, cold)):
            warm_ms.append(_get(url)[0])
    gauges = [
        line.decode()
        for line in body.splitlines()
        if line.startswith((b"hookd_deliveries{", b"hookd_delivery_lag_seconds "))
    ]
    return {"first_ms": first_ms, "cold_ms": cold_ms, "warm_ms": warm_ms, "gauges": gauges}


class _Scraper:
    """Scrapes ``url`` every ``interval`` seconds on a thread until stopped."""

    def __init__(self, url: str, interval: float = 1.0) -> None:
        self.url = url
        self.interval = interval
        self.count = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                _get(self.url)
                self.count += 1
            except OSError:
                self.failures += 1

    def __enter__(self) -> _Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def drain_pairs(
    db: str, receiver: Receiver, events: int, runs: int, tmp: Path, args: argparse.Namespace
) -> tuple[dict[str, list[float]], list[str]]:
    """hookd's CPU per delivery (µs), metrics on and off, ``runs`` alternating pairs."""
    cpu: dict[str, list[float]] = {"on": [], "off": []}
    failures: list[str] = []
    expected = events * WEBHOOKS
    for run in range(1, runs + 1):
        for mode in ("off", "on") if run % 2 else ("on", "off"):
            env = {"HOOKD_METRICS": "false"} if mode == "off" else {}
            with Deployment(
                db,
                tmp / f"{db}-{mode}-{run}",
                pg_admin_url=args.pg_admin_url,
                extra_env=env,
                webhook_limit=WEBHOOKS,
            ) as dep:
                dep.tmp.mkdir(parents=True)
                prepare(dep, receiver, WEBHOOKS, 20 if args.smoke else 100, settle=False)
                with ExitStack() as stack:
                    scraper = None
                    if mode == "on" and args.scrape_every > 0:
                        scraper = stack.enter_context(
                            _Scraper(dep.base + "/metrics", args.scrape_every)
                        )
                    res = measure_drain(
                        dep, receiver, events, expected, timeout=60 + expected / 200
                    )
                if not res.complete:
                    failures.append(f"{db} {mode} run {run}: {res.received}/{expected} arrived")
                if scraper is not None and scraper.failures:
                    failures.append(f"{db} run {run}: {scraper.failures} scrapes failed")
                cpu[mode].append(res.cpu_us_per_delivery)
                print(
                    f"{db} run {run}, metrics {mode}: {res.delivery_rate:,.0f} deliveries/s, "
                    f"hookd CPU {res.cpu_us_per_delivery:.1f} us/delivery"
                    + (f", {scraper.count} scrapes" if scraper is not None else ""),
                    flush=True,
                )
    return cpu, failures


def scrape_run(
    db: str, rows: int, cold: int, tmp: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Fill a queue of ``rows`` deliveries, start ``hookd api``, time its scrapes."""
    with Deployment(db, tmp / f"{db}-scrape", pg_admin_url=args.pg_admin_url) as dep:
        dep.tmp.mkdir(parents=True)
        # serve once: migrate, the key, the webhooks (valid, through the API); then stop it.
        dep.start()
        dep.create_webhooks(WEBHOOKS, lambda i: f"http://127.0.0.1:9/{i}")
        dep.stop()
        filled = fill_queue(dep, rows)
        dep._start_server("api")
        times = scrape_times(dep.base + "/metrics", cold)
    return {**filled, **times}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hookd metrics: CPU of counting, scrape time")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default=None)
    parser.add_argument("--events", type=int, help=f"per drain (default {DEFAULT_EVENTS})")
    parser.add_argument("--runs", type=int, help=f"pairs of drains (default {DEFAULT_RUNS})")
    parser.add_argument("--rows", type=int, help=f"queued deliveries (default {DEFAULT_ROWS:,})")
    parser.add_argument("--scrapes", type=int, help=f"cold scrapes (default {DEFAULT_SCRAPES})")
    parser.add_argument("--no-drain", action="store_true", help="only the scrape measurement")
    parser.add_argument("--no-scrape", action="store_true", help="only the drains")
    parser.add_argument(
        "--scrape-every",
        type=float,
        default=1.0,
        help="seconds between scrapes during a drain with metrics (0: none; default 1)",
    )
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    dbs = {"sqlite": ["sqlite"], "postgres": ["postgres"], "both": ["sqlite", "postgres"]}[
        args.db or ("sqlite" if args.smoke else "both")
    ]
    events = args.events or (SMOKE_EVENTS if args.smoke else DEFAULT_EVENTS)
    runs = max(1, args.runs or (1 if args.smoke else DEFAULT_RUNS))
    rows = args.rows or (SMOKE_ROWS if args.smoke else DEFAULT_ROWS)
    cold = max(1, args.scrapes or (2 if args.smoke else DEFAULT_SCRAPES))
    commit = hookd_commit()
    print(
        f"metrics: {', '.join(dbs)}; {runs} pair(s) of drains of {events * WEBHOOKS:,} "
        f"deliveries; scrapes with {rows:,} deliveries queued; hookd at {commit}",
        flush=True,
    )
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="hookd-bench-metrics-"))
    results: list[Result] = []
    failures: list[str] = []
    try:
        with Receiver.start(receiver_kind(args.smoke)) as receiver:
            for db in dbs:
                if args.no_drain:
                    continue
                cpu, failed = drain_pairs(db, receiver, events, runs, tmp, args)
                failures += failed
                on, off = median(cpu["on"]), median(cpu["off"])
                ratio = on / off if off else float("nan")
                counting = counting_us_per_delivery()
                print(
                    f"{db}: counting costs {counting['per_delivery']:.2f} us per delivery "
                    f"(attempt {counting['attempt']:.2f}, HTTP request "
                    f"{counting['http_request']:.2f}, event {counting['event']:.2f} us), "
                    f"{counting['per_delivery'] / off:.1%} of hookd's CPU per delivery without "
                    "metrics",
                    flush=True,
                )
                results.append(
                    Result(
                        f"{db}: counting (timed in-process) / hookd CPU per delivery, metrics off",
                        counting["per_delivery"],
                        "us",
                        off,
                        extra={"target": "<= 3 %", "met": counting["per_delivery"] / off <= 0.03},
                    )
                )
                results.append(
                    Result(
                        f"{db}: hookd CPU per delivery, metrics on / off",
                        on,
                        "us",
                        off,
                        extra={
                            "target": f"<= {TARGET_CPU_RATIO}x",
                            "met": ratio <= TARGET_CPU_RATIO,
                            "on": cpu["on"],
                            "off": cpu["off"],
                        },
                    )
                )
        for db in [] if args.no_scrape else dbs:
            scraped = scrape_run(db, rows, cold, tmp, args)
            print(
                f"{db}: {scraped['deliveries']:,} deliveries (filled in {scraped['fill_s']} s); "
                f"first scrape (the whole count) {scraped['first_ms']:.1f} ms; later scrapes "
                f"with the cache run out {', '.join(f'{ms:.1f}' for ms in scraped['cold_ms'])} ms, warm "
                f"median {median(scraped['warm_ms']):.1f} ms; {'; '.join(scraped['gauges'])}",
                flush=True,
            )
            if not any(g.startswith('hookd_deliveries{state="due"}') for g in scraped["gauges"]):
                failures.append(f"{db}: the scrape has no hookd_deliveries gauge")
            cold_ms = median(scraped["cold_ms"])
            results.append(
                Result(
                    f"{db}: GET /metrics, {scraped['deliveries']:,} deliveries, cache run out",
                    cold_ms,
                    "ms",
                    extra={
                        "target": f"< {TARGET_SCRAPE_MS} ms at 1,000,000",
                        "met": cold_ms < TARGET_SCRAPE_MS,
                        "cold_ms": scraped["cold_ms"],
                        "rows": scraped["deliveries"],
                    },
                )
            )
            results.append(
                Result(
                    f"{db}: first GET /metrics (counts {scraped['deliveries']:,} deliveries)",
                    scraped["first_ms"],
                    "ms",
                )
            )
            results.append(
                Result(
                    f"{db}: GET /metrics, {scraped['deliveries']:,} deliveries, cached",
                    median(scraped["warm_ms"]),
                    "ms",
                )
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print_table(results, title="metrics: ratio = metrics on / off (target <= 1.03)")
    print(f"took {time.monotonic() - started:.1f} s")
    if not (args.smoke or args.no_save):
        for result in results:
            result.extra.update({"commit": commit, "label": args.label, "events": events})
            append_jsonl(RESULTS_NAME, result)
    return finish(args.summary_file, "metrics", results, failures)


if __name__ == "__main__":
    sys.exit(main())
