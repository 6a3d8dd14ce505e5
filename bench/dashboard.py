"""Dashboard: the webhooks page and a webhook's page render fast with a large history.

One organization with ``--webhooks`` (1,000) webhooks and ``--attempts`` (1,000,000)
attempts spread evenly over them and over the last 7 days: ``attempts / webhooks`` events,
each delivered once to every webhook with one attempt (5 % failed with a ``500``, the rest
``204``; response times from 5 ms to a few seconds, log-normal). Events, deliveries, attempts
and the hourly rollups the settles would have written (:func:`hookd.store.rollups.rollup_rows`
per hour) are inserted in bulk (SQLite: ``executemany`` in one transaction; PostgreSQL:
``COPY``, then ``ANALYZE``), on a fresh database of each engine.

Timed: the server's time to answer, in process (hookd's ASGI app over the real store, called
through httpx's ASGI transport: no sockets, so the figure is routing, session check, store
reads and rendering), as the median (and p90) of 20 requests after warm-up, signed in:

* ``GET /dashboard``: every webhook with its 24 h attempts, success rate and p95;
* ``GET /dashboard/webhooks/{id}``: charts of 24 h, its stats and first page of deliveries;
* ``GET /dashboard/webhooks/{id}?range=7d``: the same with the 7-day charts;
* ``GET /dashboard/webhooks/{id}/deliveries``: the fragment htmx polls every 2 s.

The baseline, in the same run: ``GET /v2/webhooks/{id}`` through the same transport.
Target (issue 17): the webhooks page and a webhook's page each ≤ 100 ms on both databases.
Results: ``bench/results/dashboard.jsonl``.

Command line::

    python bench/dashboard.py                 # both databases, 1,000 webhooks, 1,000,000 attempts
    python bench/dashboard.py --db sqlite --attempts 200000
    python bench/dashboard.py --smoke         # 100 webhooks, 20,000 attempts, checked
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.common import Result, add_run_arguments, append_jsonl, print_table
from bench.harness import finish, hookd_commit
from hookd.api import create_app
from hookd.ids import new_event_id, new_object_id, new_secret
from hookd.settings import DEFAULT_API_VERSION, load_settings
from hookd.store import Store, open_driver
from hookd.store.migrate import upgrade_async
from hookd.store.rollups import HOUR_MS, rollup_rows
from hookd.store.schema import SKETCH_BUCKETS

__all__ = ["main"]

RESULTS_NAME = "dashboard"
DEFAULT_WEBHOOKS = 1000
DEFAULT_ATTEMPTS = 1_000_000
SMOKE_WEBHOOKS = 100
SMOKE_ATTEMPTS = 20_000
REPEAT = 20
TARGET_MS = 100.0
WEEK_MS = 7 * 24 * HOUR_MS

_EVENT_COLS = ("id", "organization_id", "topic", "data", "is_test", "created_at")
_DELIVERY_COLS = (
    "id", "webhook_id", "event_id", "topic", "is_test", "status", "attempt_count",
    "next_attempt_at", "retry_requested", "last_attempt_at", "last_status_code",
    "last_status_message", "created_at",
)  # fmt: skip
_ATTEMPT_COLS = (
    "id", "delivery_id", "webhook_id", "attempt_number", "attempted_at", "succeeded",
    "status_code", "response_time_ms", "response_body", "error",
)  # fmt: skip
_ROLLUP_COLS = (
    "webhook_id", "hour", "attempts", "successes", "failures", "time_sum",
    *(f"b{i:02d}" for i in range(SKETCH_BUCKETS)),
)  # fmt: skip


def history(
    org: str, webhooks: list[str], attempts: int, now: int
) -> tuple[
    list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]
]:
    """Rows of events, deliveries, attempts and rollups (see the module docstring)."""
    rng = random.Random(17)
    n_events = max(1, attempts // len(webhooks))
    step = (WEEK_MS - 60_000) // n_events
    events, deliveries, tried = [], [], []
    attempt_dicts: list[dict[str, Any]] = []
    data = '{"object":"notification_event_data","item":{"id":"post_1"},"changes":[]}'
    for e in range(n_events):
        at = now - WEEK_MS + 60_000 + e * step
        event_id = new_event_id(at)
        events.append((event_id, org, "post.created", data, False, at))
        for w in webhooks:
            failed = rng.random() < 0.05
            rt = min(30_000, max(1, int(rng.lognormvariate(math.log(80), 1.0))))
            delivery_id = new_object_id(at)
            code = 500 if failed else 204
            message = "Internal Server Error" if failed else "Success"
            deliveries.append(
                (delivery_id, w, event_id, "post.created", False, "failed" if failed else "succeeded",
                 1, None, False, at, code, message, at)
            )  # fmt: skip
            tried.append(
                (new_object_id(at), delivery_id, w, 1, at, not failed, code, rt,
                 b"boom" if failed else None, None)
            )  # fmt: skip
            attempt_dicts.append(
                {"id": "", "webhook_id": w, "attempted_at": at, "succeeded": not failed,
                 "response_time_ms": rt}
            )  # fmt: skip
    rollups = [tuple(r[c] for c in _ROLLUP_COLS) for r in rollup_rows(attempt_dicts)]
    return events, deliveries, tried, rollups


def _insert_sqlite(
    path: str, tables: dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]]
) -> None:
    conn = sqlite3.connect(path, timeout=30)
    try:
        with conn:
            for table, (cols, rows) in tables.items():
                conn.executemany(
                    f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                    rows,
                )
        # What hookd's checkpointer does soon after any large write: the pages move from
        # the WAL into the database file (read from a 500 MB WAL, every page costs a lookup).
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


async def _insert_postgres(
    url: str, tables: dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]]
) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        async with conn.transaction():
            for table, (cols, rows) in tables.items():
                await conn.copy_records_to_table(table, records=rows, columns=list(cols))
        await conn.execute("ANALYZE", timeout=600)
    finally:
        await conn.close()


async def _timed(client: httpx.AsyncClient, path: str, check: str) -> dict[str, float]:
    for _ in range(3):
        response = await client.get(path)
        if response.status_code != 200 or check not in response.text:
            raise AssertionError(f"{path}: {response.status_code} {response.text[:300]}")
    times = []
    for _ in range(REPEAT):
        started = time.perf_counter()
        response = await client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
    times.sort()
    return {
        "median": statistics.median(times),
        "p90": times[int(0.9 * (len(times) - 1))],
        "max": times[-1],
    }


async def measure_db(db: str, webhooks: int, attempts: int, pg_admin_url: str) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="hookd-bench-dashboard-"))
    out: dict[str, Any] = {"db": db, "webhooks": webhooks, "attempts": attempts}
    pg_name = f"hookd_bench_dashboard_{uuid.uuid4().hex[:8]}"
    if db == "sqlite":
        url = f"sqlite:///{tmp / 'hookd.db'}"
    else:
        import asyncpg

        admin = await asyncpg.connect(pg_admin_url)
        await admin.execute(f"CREATE DATABASE {pg_name}")
        await admin.close()
        url = pg_admin_url.rsplit("/", 1)[0] + f"/{pg_name}"
    try:
        await upgrade_async(url)
        store = Store(open_driver(url))
        await store.start()
        try:
            org = await store.create_organization("bench", webhooks, DEFAULT_API_VERSION)
            key, secret = await store.create_api_key(org.id, "bench")
            started = time.monotonic()
            ids = []
            for i in range(webhooks):
                hook = await store.create_webhook(
                    org.id,
                    name=f"Webhook {i:04d}",
                    url=f"https://hooks{i}.example.com/receive",
                    description=None,
                    topics=["post.created", "comment.created"],
                    timeout_ms=5000,
                    headers={},
                    secret=new_secret(),
                )
                ids.append(hook.id)
            now = store.clock()
            events, deliveries, tried, rollups = history(org.id, ids, attempts, now)
            tables = {
                "events": (_EVENT_COLS, events),
                "deliveries": (_DELIVERY_COLS, deliveries),
                "attempts": (_ATTEMPT_COLS, tried),
                "webhook_rollups": (_ROLLUP_COLS, rollups),
            }
            if db == "sqlite":
                _insert_sqlite(url[len("sqlite:///") :], tables)
            else:
                await _insert_postgres(url, tables)
            out["setup_s"] = round(time.monotonic() - started, 1)
            out["attempts_inserted"] = len(tried)
            out["rollup_rows"] = len(rollups)
            session = await store.create_session(org.id, key.id, None, False, now + HOUR_MS)
            app = create_app(load_settings(database_url=url, rate_limit=0), store)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://hookd.bench",
                cookies={"hookd_session": session},
                headers={"Authorization": f"Bearer {secret}"},
            ) as client:
                target = ids[len(ids) // 2]
                out["baseline_ms"] = await _timed(client, f"/v2/webhooks/{target}", target)
                out["overview_ms"] = await _timed(client, "/dashboard", "Webhook 0000")
                out["webhook_ms"] = await _timed(client, f"/dashboard/webhooks/{target}", "<svg")
                out["webhook_7d_ms"] = await _timed(
                    client, f"/dashboard/webhooks/{target}?range=7d", "over 7 days"
                )
                out["deliveries_ms"] = await _timed(
                    client, f"/dashboard/webhooks/{target}/deliveries", "status-"
                )
        finally:
            await store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if db == "postgres":
            import asyncpg

            admin = await asyncpg.connect(pg_admin_url)
            await admin.execute(f"DROP DATABASE IF EXISTS {pg_name} WITH (FORCE)")
            await admin.close()
    return out


PAGES = (
    ("overview_ms", "GET /dashboard", True),
    ("webhook_ms", "GET /dashboard/webhooks/{id}", True),
    ("webhook_7d_ms", "GET /dashboard/webhooks/{id}?range=7d", True),
    ("deliveries_ms", "GET /dashboard/webhooks/{id}/deliveries", False),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hookd: dashboard pages with a large history")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--webhooks", type=int)
    parser.add_argument("--attempts", type=int)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    webhooks = args.webhooks or (SMOKE_WEBHOOKS if args.smoke else DEFAULT_WEBHOOKS)
    attempts = args.attempts or (SMOKE_ATTEMPTS if args.smoke else DEFAULT_ATTEMPTS)
    if not 1 <= webhooks <= attempts:
        parser.error("give at least one attempt per webhook")
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    commit = hookd_commit()
    print(
        f"dashboard: {', '.join(dbs)}, {webhooks:,} webhooks, {attempts:,} attempts over 7 days; "
        f"hookd at {commit}",
        flush=True,
    )
    started = time.monotonic()
    problems: list[str] = []
    found = []
    for db in dbs:
        try:
            found.append(asyncio.run(measure_db(db, webhooks, attempts, args.pg_admin_url)))
        except Exception as exc:
            problems.append(f"{db}: {type(exc).__name__}: {exc}")
    results: list[Result] = []
    for f in found:
        base = f["baseline_ms"]["median"]
        for field, label, targeted in PAGES:
            ms = f[field]["median"]
            extra: dict[str, Any] = {"p90": f[field]["p90"]}
            if targeted:
                extra |= {"target": f"<= {TARGET_MS:g} ms", "met": ms <= TARGET_MS}
            results.append(
                Result(f"dashboard {f['db']}, {webhooks} webhooks: {label}", ms, "ms", base, extra)
            )
        results.append(Result(f"baseline {f['db']}: GET /v2/webhooks/{{id}}", base, "ms"))
        print(
            f"{f['db']}: set up in {f['setup_s']} s ({f['attempts_inserted']:,} attempts, "
            f"{f['rollup_rows']:,} rollup rows)"
        )
    print()
    if results:
        print_table(results, title=f"server time, medians of {REPEAT} requests")
    timed = [r for r in results if r.extra.get("target")]
    if timed:
        worst = max(timed, key=lambda r: r.value)
        met = all(r.extra["met"] for r in timed)
        print(
            f"target (<= {TARGET_MS:g} ms a page) {'met' if met else 'MISSED'} "
            f"(slowest: {worst.name} {worst.value:.1f} ms)"
        )
    print(f"took {time.monotonic() - started:.1f} s")
    if not (args.smoke or args.no_save):
        for f in found:
            append_jsonl(
                RESULTS_NAME,
                {"name": f"dashboard {f['db']}", "commit": commit, "label": args.label, **f},
            )
    return finish(args.summary_file, RESULTS_NAME, timed, problems)


if __name__ == "__main__":
    sys.exit(main())
