"""Backlog: does a queue of 1,000,000 pending deliveries slow hookd down or grow its memory?

PostgreSQL only. Steps, all in one run:

1. **Reference** (the empty-queue rate): the drain benchmark's setup (``drain.py``:
   publish 2,000 events to 10 webhooks, 20,000 deliveries, on a fresh database, same
   ``--mode``) and its end-to-end delivery rate.
2. **Backlog**: a fresh database; hookd starts once to migrate, print its API key and
   create 10 webhooks (through the API, so they are valid) pointing at nginx, then stops.
   ``--rows`` (1,000,000) pending deliveries are inserted with two ``INSERT ... SELECT``
   over ``generate_series``: ``rows / 10`` events (``notif_`` + a UUIDv7-shaped id, the
   data ``{"object":"notification_event_data","item":{...~1 KiB...},"changes":[]}``) and,
   for each, one delivery per webhook (24-hex ObjectId: 8 hex of seconds + 16 hex;
   ``status 'pending'``, ``attempt_count 0``, ``next_attempt_at`` = the event's time, in
   the past, ``lease_until`` NULL, ``is_test`` false). Then ``ANALYZE``.
3. hookd starts again (``hookd serve``, or ``--mode split``: ``hookd api`` + 2 workers) and
   drains into nginx. From the first delivery on, for ``--seconds`` (60): the receiver's
   count, hookd's CPU and every process's RSS (``VmRSS``) are sampled every
   ``--sample`` (2) seconds.

Reported: the delivery (= claim) rate over the window, per-sample rates (a rate that falls
as the drain goes on shows up there), the reference rate and the ratio (target: >= 0.8x,
"within 20 %"), hookd's CPU per delivery, max RSS (target < 250 MiB) and its growth from
the end of the first quarter of the window to the end (target: flat, under 10 MiB or 5 %).
After stopping, the database must hold exactly as many succeeded deliveries as nginx
counted, and none failed. Results: ``bench/results/backlog.jsonl``.

Command line::

    python bench/backlog.py                        # 1M rows, 60 s, hookd serve (~3 min)
    python bench/backlog.py --mode split
    python bench/backlog.py --smoke                # 20,000 rows, 3 s, checked, saves nothing
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Result, add_run_arguments, append_jsonl, print_table
from bench.drain import drain_once
from bench.harness import (
    Deployment,
    Mode,
    hookd_commit,
    write_summary,
)
from bench.receiver import Receiver, receiver_kind

__all__ = ["insert_backlog", "main"]

RESULTS_NAME = "backlog"
WEBHOOKS = 10
DEFAULT_ROWS = 1_000_000
DEFAULT_SECONDS = 60.0
SMOKE_ROWS = 20_000
SMOKE_SECONDS = 3.0
TARGET_RATIO = 0.8
TARGET_RSS_MIB = 250.0
FLAT_MIB = 10.0
SMALL_ROWS = 20_000
FLAT_FRACTION = 0.05

# Event n (0-based) of the backlog: created at :base + n ms, its id a UUIDv7 of that time
# (version 7, variant 10) with md5(n) as the random bits.
_EVENT_ID = """'notif_' || substr(lpad(to_hex($1::bigint + n), 12, '0'), 1, 8) || '-'
    || substr(lpad(to_hex($1::bigint + n), 12, '0'), 9, 4) || '-7' || substr(md5(n::text), 1, 3)
    || '-8' || substr(md5(n::text), 4, 3) || '-' || substr(md5(n::text), 7, 12)"""
_EVENTS_SQL = f"""
INSERT INTO events (id, organization_id, topic, data, conversation_id, conversation_url,
                    is_test, created_at)
SELECT {_EVENT_ID}, $2, 'post.created',
       '{{"object":"notification_event_data","item":{{"id":"post_' || n || '","title":"Backlog post '
       || n || '","status":"open","upvotes":0,"tags":["bench","backlog"],"content":"'
       || repeat('x', 900) || '"}},"changes":[]}}',
       NULL, NULL, false, $1::bigint + n
FROM generate_series(0, $3::bigint - 1) AS n
"""
_DELIVERIES_SQL = f"""
INSERT INTO deliveries (id, webhook_id, event_id, topic, is_test, status, attempt_count,
                        next_attempt_at, lease_until, lease_token, created_at)
SELECT lpad(to_hex(($1::bigint + n) / 1000), 8, '0') || lpad(to_hex(n * $4::int + k - 1), 16, '0'),
       ($2::text[])[k], {_EVENT_ID}, 'post.created', false, 'pending', 0,
       $1::bigint + n, NULL, NULL, $1::bigint + n
FROM generate_series(0, $3::bigint - 1) AS n, generate_series(1, $4::int) AS k
ORDER BY n, k
"""


def insert_backlog(url: str, rows: int, now_ms: int) -> dict[str, Any]:
    """Insert ``rows`` pending deliveries (``rows / webhooks`` events, one delivery to every
    webhook each) into the database at ``url``; returns counts and seconds."""
    import asyncpg

    async def go() -> dict[str, Any]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            hooks = [
                r["id"]
                for r in await conn.fetch(
                    "SELECT id FROM webhooks WHERE deleted_at IS NULL ORDER BY id"
                )
            ]
            org = await conn.fetchval("SELECT organization_id FROM webhooks LIMIT 1")
            events = -(-rows // len(hooks))
            base = now_ms - events - 1000  # every event in the past, 1 ms apart
            t0 = time.monotonic()
            await conn.execute(_EVENTS_SQL, base, org, events, timeout=3600)
            t1 = time.monotonic()
            await conn.execute(_DELIVERIES_SQL, base, hooks, events, len(hooks), timeout=3600)
            t2 = time.monotonic()
            await conn.execute("ANALYZE events; ANALYZE deliveries", timeout=3600)
            t3 = time.monotonic()
            count = await conn.fetchval(
                "SELECT count(*) FROM deliveries WHERE status = 'pending' AND lease_until IS NULL"
            )
            size = await conn.fetchval("SELECT pg_database_size(current_database())")
        finally:
            await conn.close()
        return {
            "webhooks": len(hooks),
            "events": events,
            "deliveries": int(count),
            "insert_events_s": round(t1 - t0, 2),
            "insert_deliveries_s": round(t2 - t1, 2),
            "analyze_s": round(t3 - t2, 2),
            "database_mib": round(size / 2**20, 1),
        }

    return asyncio.run(go())


def delivery_counts(url: str) -> dict[str, int]:
    """Deliveries by status, and how many are leased (should be none after a stop)."""
    import asyncpg

    async def go() -> dict[str, int]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            rows = await conn.fetch("SELECT status, count(*) AS n FROM deliveries GROUP BY status")
            leased = await conn.fetchval(
                "SELECT count(*) FROM deliveries WHERE lease_until IS NOT NULL"
            )
        finally:
            await conn.close()
        out = {str(r["status"]): int(r["n"]) for r in rows}
        out["leased"] = int(leased)
        return out

    return asyncio.run(go())


def drain_backlog(
    receiver: Receiver,
    mode: Mode,
    rows: int,
    seconds: float,
    sample: float,
    pg_admin_url: str,
) -> dict[str, Any]:
    """Steps 2 and 3 of the module doc on a fresh database: insert ``rows`` pending
    deliveries, start hookd, sample for ``seconds`` (or until the backlog is gone), stop
    hookd and count the deliveries by status. Returns the figures, ``failures`` included."""
    tmp = Path(tempfile.mkdtemp(prefix="hookd-bench-backlog-"))
    samples: list[dict[str, Any]] = []
    failures: list[str] = []
    try:
        with Deployment("postgres", tmp, mode=mode, pg_admin_url=pg_admin_url) as dep:
            dep.start()
            dep.create_webhooks(WEBHOOKS, lambda i: f"{receiver.url}backlog/{i}")
            dep.stop()
            inserted = insert_backlog(dep.db.url, rows, int(time.time() * 1000))
            print(
                f"inserted {inserted['events']:,} events in {inserted['insert_events_s']} s, "
                f"{inserted['deliveries']:,} pending deliveries in "
                f"{inserted['insert_deliveries_s']} s, ANALYZE {inserted['analyze_s']} s; "
                f"database {inserted['database_mib']:,.0f} MiB",
                flush=True,
            )
            before = receiver.request_count()
            dep.start()
            first = time.monotonic()
            while receiver.request_count() == before:
                dep.check_alive()
                if time.monotonic() - first > 60:
                    raise RuntimeError("no delivery within 60 s\n" + dep.stderr_tail())
                time.sleep(0.005)
            t0 = time.monotonic()
            count0 = receiver.request_count()
            cpu0 = dep.cpu_seconds()
            db0 = dep.db.backend_cpu()
            print(f"first delivery {t0 - first:.2f} s after the start", flush=True)
            next_at = t0 + sample
            drained = False
            prev_t, prev_n = 0.0, 0
            while True:
                # The count is polled every 20 ms, so that the end of a drained backlog is
                # seen on time; samples are taken every `sample` seconds.
                time.sleep(0.02)
                now = time.monotonic()
                got = receiver.request_count() - count0
                t = now - t0
                drained = got + (count0 - before) >= inserted["deliveries"]
                if now < next_at and not drained and t < seconds:
                    continue
                next_at += sample
                rss = dep.rss_kib()
                rate = (got - prev_n) / max(1e-9, t - prev_t)
                cpu = dep.cpu_seconds() - cpu0
                db_cpu = sum(c - db0.get(pid, 0.0) for pid, c in dep.db.backend_cpu().items())
                step = max(1, got - prev_n)
                samples.append(
                    {
                        "t": round(t, 3),
                        "delivered": got,
                        "rate": round(rate, 1),
                        "cpu_s": round(cpu, 3),
                        "db_cpu_s": round(db_cpu, 3),
                        "rss_kib": rss,
                    }
                )
                last = samples[-2] if len(samples) > 1 else {"cpu_s": 0.0, "db_cpu_s": 0.0}
                print(
                    f"  t={t:5.1f} s  delivered {got:>9,}  {rate:>7,.0f}/s  CPU per delivery: "
                    f"hookd {(cpu - last['cpu_s']) * 1e6 / step:4.0f} us, PG "
                    f"{(db_cpu - last['db_cpu_s']) * 1e6 / step:4.0f} us  RSS "
                    + ", ".join(f"{k} {v / 1024:.0f} MiB" for k, v in rss.items()),
                    flush=True,
                )
                prev_t, prev_n = t, got
                if drained or t >= seconds - 1e-6:
                    break
                dep.check_alive()
            peak = dep.peak_rss_kib()
            dep.stop()
            counts = delivery_counts(dep.db.url)
            total_received = receiver.request_count() - before
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    end = samples[-1]
    roles = list(samples[0]["rss_kib"])
    quarter = samples[max(0, len(samples) // 4 - 1)]
    growth = {r: (end["rss_kib"][r] - quarter["rss_kib"][r]) / 1024 for r in roles}
    max_rss = {r: max(s["rss_kib"][r] for s in samples) / 1024 for r in roles}
    flat = all(
        growth[r] < max(FLAT_MIB, FLAT_FRACTION * quarter["rss_kib"][r] / 1024) for r in roles
    )
    if counts.get("failed", 0):
        failures.append(f"{counts['failed']} deliveries failed")
    if counts.get("leased", 0):
        failures.append(f"{counts['leased']} deliveries still leased after the stop")
    if counts.get("succeeded", 0) != total_received:
        failures.append(
            f"the database has {counts.get('succeeded', 0):,} succeeded deliveries, "
            f"nginx counted {total_received:,}"
        )
    return {
        "rows": rows,
        "rate": end["delivered"] / end["t"] if end["t"] > 0 else 0.0,
        "window_s": end["t"],
        "drained": drained,
        "inserted": inserted,
        "samples": samples,
        "max_rss_mib": max_rss,
        "growth_mib": growth,
        "flat": flat,
        "peak_rss_kib": peak,
        "cpu_us_per_delivery": (
            end["cpu_s"] * 1e6 / end["delivered"] if end["delivered"] else float("nan")
        ),
        "db_cpu_us_per_delivery": (
            end["db_cpu_s"] * 1e6 / end["delivered"] if end["delivered"] else float("nan")
        ),
        "counts_after": counts,
        "failures": failures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hookd with 1M pending deliveries")
    parser.add_argument("--mode", choices=["serve", "split"], default="serve")
    parser.add_argument("--rows", type=int, help=f"pending deliveries (default {DEFAULT_ROWS:,})")
    parser.add_argument(
        "--seconds", type=float, help=f"measured window (default {DEFAULT_SECONDS:g})"
    )
    parser.add_argument("--sample", type=float, help="seconds between samples (default 2)")
    parser.add_argument(
        "--reference-events", type=int, help="events of the reference drain (2,000)"
    )
    parser.add_argument(
        "--small-rows",
        type=int,
        default=SMALL_ROWS,
        help=f"rows of the like-for-like small backlog (default {SMALL_ROWS:,}; 0: skip it; "
        "skipped with --smoke)",
    )
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    rows = args.rows or (SMOKE_ROWS if args.smoke else DEFAULT_ROWS)
    seconds = min(args.seconds or (SMOKE_SECONDS if args.smoke else DEFAULT_SECONDS), 3600.0)
    sample = args.sample or (1.0 if args.smoke else 2.0)
    ref_events = args.reference_events or (100 if args.smoke else 2000)
    small_rows = 0 if args.smoke else args.small_rows
    if not WEBHOOKS <= rows <= 20_000_000:
        parser.error("--rows must be within 10..20,000,000")
    commit = hookd_commit()
    print(
        f"backlog: postgres, {args.mode}, {rows:,} pending deliveries to {WEBHOOKS} webhooks, "
        f"{seconds:g} s window; hookd at {commit}",
        flush=True,
    )
    started = time.monotonic()
    failures: list[str] = []
    small: dict[str, Any] | None = None
    with Receiver.start(receiver_kind(args.smoke)) as receiver:
        # 1. The reference: an empty queue filled by publishing (drain.py's setup).
        ref = drain_once(
            "postgres",
            args.mode,
            receiver,
            events=ref_events,
            webhooks=WEBHOOKS,
            pg_admin_url=args.pg_admin_url,
            warmup_events=20 if args.smoke else 100,
        )
        print(
            f"reference (empty queue, {ref.expected:,} deliveries created by publishing): "
            f"{ref.delivery_rate:,.0f} deliveries/s, hookd CPU {ref.cpu_us_per_delivery:.0f} "
            f"us/delivery, peak RSS "
            + ", ".join(f"{k} {v / 1024:.0f} MiB" for k, v in ref.peak_rss_kib.items()),
            flush=True,
        )
        if not ref.complete:
            failures.append(f"reference: {ref.received} of {ref.expected} deliveries arrived")
        # 1b. Like for like: a small backlog inserted the same way, drained the same way.
        if small_rows:
            print(f"small backlog ({small_rows:,} rows, the same method):", flush=True)
            small = drain_backlog(receiver, args.mode, small_rows, seconds, 0.5, args.pg_admin_url)
            failures += [f"small backlog: {f}" for f in small["failures"]]
        # 2, 3. The backlog.
        print(f"backlog ({rows:,} rows):", flush=True)
        big = drain_backlog(receiver, args.mode, rows, seconds, sample, args.pg_admin_url)
        failures += big["failures"]

    rate = big["rate"]
    ratio = rate / ref.delivery_rate if ref.delivery_rate else float("nan")
    max_rss = max(big["max_rss_mib"].values())
    rss_ok = max_rss < TARGET_RSS_MIB and big["flat"]
    label = f"backlog {rows / 1e6:g}M, postgres, " + (
        "hookd serve" if args.mode == "serve" else "api + 2 workers"
    )
    results = [
        Result(
            f"{label}: delivery rate",
            rate,
            "deliveries/s",
            ref.delivery_rate,
            extra={
                "target": f">= {TARGET_RATIO}x the empty-queue drain",
                "met": ratio >= TARGET_RATIO,
            },
        ),
        Result(
            f"{label}: max RSS (max process)",
            max_rss,
            "MiB",
            extra={
                "target": f"< {TARGET_RSS_MIB:g} MiB and flat",
                "met": rss_ok,
                "growth_mib": big["growth_mib"],
                "flat": big["flat"],
            },
        ),
        Result(f"{label}: RSS growth (max process)", max(big["growth_mib"].values()), "MiB"),
        Result(
            f"{label}: hookd CPU per delivery",
            big["cpu_us_per_delivery"],
            "us",
            ref.cpu_us_per_delivery,
        ),
        Result("empty-queue drain (reference)", ref.delivery_rate, "deliveries/s"),
    ]
    if small is not None:
        results.insert(
            1,
            Result(
                f"{label}: rate vs a {small_rows / 1e3:g}k-row backlog",
                rate,
                "deliveries/s",
                small["rate"],
                extra={
                    "target": f">= {TARGET_RATIO}x (like for like)",
                    "met": rate >= TARGET_RATIO * small["rate"],
                },
            ),
        )
    print()
    print_table(results, title=f"{label}: over {big['window_s']:.1f} s, vs the empty-queue drain")
    print(
        "per-sample rates: "
        + ", ".join(f"{s['rate']:,.0f}" for s in big["samples"])
        + (" (the backlog ran out)" if big["drained"] else "")
    )
    print(
        f"target rate >= {TARGET_RATIO}x reference: {'met' if ratio >= TARGET_RATIO else 'MISSED'} "
        f"({ratio:.2f}x"
        + ("" if small is None else f"; {rate / small['rate']:.2f}x a {small_rows:,}-row backlog")
        + f"); RSS < {TARGET_RSS_MIB:g} MiB and flat: {'met' if rss_ok else 'MISSED'} "
        f"(max {max_rss:.0f} MiB, growth "
        + ", ".join(f"{r} {g:+.1f} MiB" for r, g in big["growth_mib"].items())
        + f"); database after: {big['counts_after']}"
    )
    print(f"took {time.monotonic() - started:.1f} s")
    if not (args.smoke or args.no_save):
        append_jsonl(
            RESULTS_NAME,
            {
                "name": label,
                "mode": args.mode,
                "seconds": seconds,
                "commit": commit,
                "label": args.label,
                "reference_rate": ref.delivery_rate,
                "ratio": ratio,
                "reference": ref.as_dict(),
                "small": small,
                **big,
            },
        )
    if args.summary_file:
        rows_out = [r for r in results if r.name != "empty-queue drain (reference)"]
        write_summary(args.summary_file, "backlog", rows_out, not failures)
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
