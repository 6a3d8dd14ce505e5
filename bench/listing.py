"""Listing: the delivery log of a webhook with a long history, and the events of an
organization with as many, stay fast.

``hookd serve`` on a fresh database (``--db sqlite``, ``postgres`` or ``both``, the
default) with one webhook (an ``https://`` URL that is never called: nothing is pending).
``--deliveries`` (100,000) finished deliveries of it, one event each, are inserted straight
into the database while hookd runs (SQLite: one ``executemany`` transaction from this
process next to hookd's connections, which WAL allows; PostgreSQL: ``COPY``, then
``ANALYZE`` as autovacuum would soon do; SQLite gets no ``ANALYZE``, as hookd runs none).
One delivery a second going back from now; every 20th, 21st and 22nd (15 %) ``failed``
after 4 attempts (``500``), the rest ``succeeded`` at the first (``204``). Topics: every
10th event is ``comment.created``, every 100th (shifted by one) ``post.deleted`` (1 %), the
rest ``post.created``; every 50th (shifted by 7) is a test event (never listed).

Timed, each as the median (and p90, max) of 20 sequential requests on one keep-alive
connection, client side (``http.client``), after a few warm-up requests:

* ``GET /v2/webhooks/{id}/deliveries?limit=100``: the first page, and the last page. The
  last page's cursor is found by walking every ``nextCursor`` from the first page, which
  also checks that the walk returns every delivery exactly once, newest first;
* the same with ``status=succeeded`` and with ``status=failed``.

The events (each checked: newest first, only listed events, only the filter's):

* ``GET /v2/events?limit=100``: the first page and the next one (by its ``nextCursor``);
* the same with ``topic=post.deleted`` (1 % of the events), first page;
* ``since``/``until`` one hour of the oldest day (a window deep in the history);
* ``GET /v2/events/{id}`` of an old event (its data and its delivery), and
  ``GET /v2/webhooks/{id}/deliveries?eventId=`` of it.

The baseline, on the same server in the same run: ``GET /v2/webhooks/{id}`` (authenticate,
read one webhook, render it). Targets: every delivery listing under 50 ms, every events
request under 10 ms. Results: ``bench/results/listing.jsonl``.

Command line::

    python bench/listing.py                      # both databases, 100,000 deliveries
    python bench/listing.py --db postgres --deliveries 1000000
    python bench/listing.py --only events --deliveries 1000000   # the events part only
    python bench/listing.py --smoke              # 5,000 deliveries, checked
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    LOOPBACK,
    Result,
    add_run_arguments,
    append_jsonl,
    percentile,
    print_table,
)
from bench.harness import Deployment, finish, hookd_commit, median

__all__ = ["delivery_rows", "main"]

RESULTS_NAME = "listing"
DEFAULT_DELIVERIES = 100_000
SMOKE_DELIVERIES = 5000
REPEAT = 20
PAGE = 100
TARGET_MS = 50.0
EVENTS_TARGET_MS = 10.0
FILTERS: tuple[str | None, ...] = (None, "succeeded", "failed")
RARE_TOPIC = "post.deleted"


def _failed(n: int) -> bool:
    return n % 20 in (0, 1, 2)


def _topic(n: int) -> str:
    if n % 100 == 1:
        return RARE_TOPIC
    return "comment.created" if n % 10 == 0 else "post.created"


def _is_test(n: int) -> bool:
    return n % 50 == 7


def delivery_rows(
    org_id: str, webhook_id: str, count: int, now_ms: int
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Events and deliveries (column order of :data:`_EVENT_COLS`, :data:`_DELIVERY_COLS`)."""
    events: list[tuple[Any, ...]] = []
    deliveries: list[tuple[Any, ...]] = []
    for n in range(count):
        created = now_ms - (count - n) * 1000  # one a second, the last one a second ago
        rand = f"{n:020x}"
        ts = f"{created:012x}"
        event_id = f"notif_{ts[:8]}-{ts[8:]}-7{rand[:3]}-8{rand[3:6]}-{rand[8:]}"
        data = (
            f'{{"object":"notification_event_data","item":{{"id":"post_{n}",'
            f'"title":"History {n}"}},"changes":[]}}'
        )
        topic, is_test = _topic(n), _is_test(n)
        events.append((event_id, org_id, topic, data, None, None, is_test, created))
        failed = _failed(n)
        attempted = created + (4_000 if failed else 40)
        deliveries.append(
            (
                f"{created // 1000:08x}{n:016x}",
                webhook_id,
                event_id,
                topic,
                is_test,
                "failed" if failed else "succeeded",
                4 if failed else 1,
                None,
                None,
                None,
                attempted,
                500 if failed else 204,
                "Internal Server Error" if failed else "Success",
                created,
            )
        )
    return events, deliveries


_EVENT_COLS = (
    "id",
    "organization_id",
    "topic",
    "data",
    "conversation_id",
    "conversation_url",
    "is_test",
    "created_at",
)
_DELIVERY_COLS = (
    "id",
    "webhook_id",
    "event_id",
    "topic",
    "is_test",
    "status",
    "attempt_count",
    "next_attempt_at",
    "lease_until",
    "lease_token",
    "last_attempt_at",
    "last_status_code",
    "last_status_message",
    "created_at",
)


def insert(dep: Deployment, webhook_id: str, count: int, now_ms: int) -> float:
    """Insert ``count`` deliveries of ``webhook_id`` (with their events), the last one a
    second before ``now_ms``; returns seconds."""
    started = time.monotonic()
    if dep.db_kind == "sqlite":
        path = dep.db.url[len("sqlite:///") :]
        conn = sqlite3.connect(path, timeout=30)
        try:
            conn.execute("PRAGMA busy_timeout=30000")
            org = conn.execute(
                "SELECT organization_id FROM webhooks WHERE id = ?", (webhook_id,)
            ).fetchone()[0]
            events, deliveries = delivery_rows(org, webhook_id, count, now_ms)
            with conn:
                conn.executemany(
                    f"INSERT INTO events ({', '.join(_EVENT_COLS)}) "
                    f"VALUES ({', '.join('?' * len(_EVENT_COLS))})",
                    events,
                )
                conn.executemany(
                    f"INSERT INTO deliveries ({', '.join(_DELIVERY_COLS)}) "
                    f"VALUES ({', '.join('?' * len(_DELIVERY_COLS))})",
                    deliveries,
                )
        finally:
            conn.close()
    else:
        import asyncpg

        async def go() -> None:
            conn = await asyncpg.connect(dep.db.url, timeout=10)
            try:
                org = await conn.fetchval(
                    "SELECT organization_id FROM webhooks WHERE id = $1", webhook_id
                )
                events, deliveries = delivery_rows(org, webhook_id, count, now_ms)
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "events", records=events, columns=list(_EVENT_COLS)
                    )
                    await conn.copy_records_to_table(
                        "deliveries", records=deliveries, columns=list(_DELIVERY_COLS)
                    )
                await conn.execute("ANALYZE events; ANALYZE deliveries", timeout=600)
            finally:
                await conn.close()

        asyncio.run(go())
    return time.monotonic() - started


class Client:
    """Sequential GETs on one keep-alive connection, timed on the client."""

    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
        self.headers = {"Authorization": f"Bearer {key}"}

    def get(self, path: str) -> tuple[float, int, Any]:
        started = time.perf_counter()
        self.conn.request("GET", path, headers=self.headers)
        resp = self.conn.getresponse()
        body = resp.read()
        elapsed = (time.perf_counter() - started) * 1000
        return elapsed, resp.status, json.loads(body)

    def timed(self, path: str, repeat: int = REPEAT) -> dict[str, float]:
        times = []
        for _ in range(repeat):
            ms, status, body = self.get(path)
            if status != 200:
                raise RuntimeError(f"GET {path} answered {status}: {body}")
            times.append(ms)
        return {"median": median(times), "p90": percentile(times, 90), "max": max(times)}

    def close(self) -> None:
        self.conn.close()


def _path(webhook_id: str, status: str | None, cursor: str | None = None) -> str:
    query: dict[str, Any] = {"limit": PAGE}
    if status:
        query["status"] = status
    if cursor:
        query["cursor"] = cursor
    return f"/v2/webhooks/{webhook_id}/deliveries?{urlencode(query)}"


def _walk_deliveries(
    client: Client, db: str, webhook_id: str, count: int, problems: list[str], out: dict[str, Any]
) -> None:
    """Time the delivery log's first and last pages, each status filter, and walk them."""
    for status in FILTERS:
        name = status or "all"
        expected = sum(
            1 for n in range(count) if status is None or (status == "failed") == _failed(n)
        )
        first = client.timed(_path(webhook_id, status))
        # Walk every page; keep the cursor that fetched the last one.
        cursor: str | None = None
        last_cursor: str | None = None
        seen = 0
        previous = "g"
        walk_ms: list[float] = []
        pages = 0
        while True:
            ms, code, body = client.get(_path(webhook_id, status, cursor))
            if code != 200:
                raise RuntimeError(f"page {pages + 1} of {name} answered {code}: {body}")
            walk_ms.append(ms)
            pages += 1
            for item in body["data"]:
                if item["id"] >= previous:
                    problems.append(f"{db} {name}: ids not strictly descending")
                    break
                previous = item["id"]
                if status is not None and item["status"] != status:
                    problems.append(f"{db} {name}: a {item['status']} delivery")
                    break
            seen += len(body["data"])
            if body["nextCursor"] is None:
                last_cursor = cursor
                break
            cursor = body["nextCursor"]
            if pages > count // PAGE + 10:
                problems.append(f"{db} {name}: the walk does not end")
                break
        if seen != expected:
            problems.append(f"{db} {name}: the walk returned {seen} of {expected}")
        last = client.timed(_path(webhook_id, status, last_cursor))
        out[name] = {
            "expected": expected,
            "walked": seen,
            "pages": pages,
            "first_ms": first,
            "last_ms": last,
            "walk_page_ms": {
                "median": median(walk_ms),
                "p90": percentile(walk_ms, 90),
                "max": max(walk_ms),
            },
        }
        print(
            f"  {db:<8} {name:<9} first page {first['median']:6.2f} ms, last page "
            f"{last['median']:6.2f} ms (median of {REPEAT}); walk of {pages} pages: "
            f"median {median(walk_ms):.2f} ms, max {max(walk_ms):.1f} ms; "
            f"{seen:,}/{expected:,} deliveries",
            flush=True,
        )


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def _time_events(
    client: Client,
    db: str,
    webhook_id: str,
    count: int,
    now_ms: int,
    problems: list[str],
    out: dict[str, Any],
) -> None:
    """Time the events requests (see the module docstring), checking each answer."""

    def check(label: str, path: str, test: Any) -> dict[str, float]:
        _ms, code, body = client.get(path)
        if code != 200:
            raise RuntimeError(f"{label}: GET {path} answered {code}: {body}")
        problem = test(body)
        if problem:
            problems.append(f"{db} events {label}: {problem}")
        timed = client.timed(path)
        out.setdefault("events", {})[label] = timed
        print(f"  {db:<8} events {label:<22} {timed['median']:6.2f} ms (median of {REPEAT})")
        return timed

    def listed(topic: str | None = None, since: int = 0, until: int = 1 << 60) -> Any:
        def test(body: dict[str, Any]) -> str | None:
            data = body["data"]
            ids = [e["id"] for e in data]
            if not data or len(data) > PAGE or ids != sorted(ids, reverse=True):
                return f"{len(data)} events, newest first: {ids == sorted(ids, reverse=True)}"
            if topic is not None and any(e["topic"] != topic for e in data):
                return f"an event of another topic than {topic}"
            # The index of each listed event: the bench's events are one a second.
            for e in data:
                n = count - (now_ms - _parse_ms(e["createdAt"])) // 1000
                if _is_test(n) or not since <= _parse_ms(e["createdAt"]) < until:
                    return f"event {n} (test {_is_test(n)}) should not be listed"
            return None

        return test

    first_page = f"/v2/events?limit={PAGE}"
    check("first page", first_page, listed())
    _ms, _code, body = client.get(first_page)
    check("next page", f"{first_page}&cursor={body['nextCursor']}", listed())
    check(f"topic={RARE_TOPIC}", f"{first_page}&topic={RARE_TOPIC}", listed(RARE_TOPIC))
    oldest = now_ms - count * 1000
    since, until = oldest + 600_000, oldest + 600_000 + 3_600_000
    check(
        "oldest hour",
        f"{first_page}&since={_iso(since)}&until={_iso(until)}",
        listed(None, since, until),
    )
    # An old event that is listed: the 3rd (neither test nor rare topic).
    _ms, _code, window = client.get(f"{first_page}&until={_iso(oldest + 3000)}")
    [old] = [e for e in window["data"] if e["createdAt"] == _iso(oldest + 2000)] or [None]
    if old is None:
        problems.append(f"{db} events: the 3rd event is not listed")
        return

    def detail(body: dict[str, Any]) -> str | None:
        if body["id"] != old["id"] or len(body["deliveries"]) != 1:
            return "not the event with its one delivery"
        return None

    check("GET /v2/events/{id}", f"/v2/events/{old['id']}", detail)

    def of_event(body: dict[str, Any]) -> str | None:
        if [d["eventId"] for d in body["data"]] != [old["id"]]:
            return "not the event's one delivery"
        return None

    check(
        "deliveries?eventId=",
        f"/v2/webhooks/{webhook_id}/deliveries?eventId={old['id']}",
        of_event,
    )


def _parse_ms(iso: str) -> int:
    import calendar

    seconds = calendar.timegm(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1000 + int(iso[20:23])


def measure_db(db: str, count: int, pg_admin_url: str, only: str | None = None) -> dict[str, Any]:
    """Set up one database and time every listing; returns figures and problems found."""
    tmp = Path(tempfile.mkdtemp(prefix="hookd-bench-listing-"))
    problems: list[str] = []
    out: dict[str, Any] = {"db": db, "deliveries": count}
    try:
        with Deployment(db, tmp, pg_admin_url=pg_admin_url) as dep:
            dep.start()
            [webhook_id] = dep.create_webhooks(1, lambda _i: "https://127.0.0.1:9/never-called")
            now_ms = int(time.time() * 1000)
            out["insert_s"] = round(insert(dep, webhook_id, count, now_ms), 2)
            client = Client(dep.port, dep.key)
            try:
                for _ in range(5):  # warm-up
                    client.get(f"/v2/webhooks/{webhook_id}")
                    client.get(_path(webhook_id, None))
                    client.get(f"/v2/events?limit={PAGE}")
                out["baseline_ms"] = client.timed(f"/v2/webhooks/{webhook_id}")
                if only != "events":
                    _walk_deliveries(client, db, webhook_id, count, problems, out)
                if only != "deliveries":
                    _time_events(client, db, webhook_id, count, now_ms, problems, out)
            finally:
                client.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["problems"] = problems
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hookd: listing a long delivery log and events")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--deliveries", type=int, help=f"default {DEFAULT_DELIVERIES:,}")
    parser.add_argument(
        "--only", choices=["deliveries", "events"], help="time only the delivery log or events"
    )
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    count = args.deliveries or (SMOKE_DELIVERIES if args.smoke else DEFAULT_DELIVERIES)
    if not PAGE <= count <= 10_000_000:
        parser.error(f"--deliveries must be within {PAGE}..10,000,000")
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    commit = hookd_commit()
    print(
        f"listing: {', '.join(dbs)}, {count:,} deliveries of one webhook, pages of {PAGE}; "
        f"hookd at {commit}",
        flush=True,
    )
    started = time.monotonic()
    found = [measure_db(db, count, args.pg_admin_url, args.only) for db in dbs]
    results: list[Result] = []
    for f in found:
        base = f["baseline_ms"]["median"]
        for label, timed_ms in f.get("events", {}).items():
            ms = timed_ms["median"]
            results.append(
                Result(
                    f"events {f['db']}, {count / 1000:g}k: {label}",
                    ms,
                    "ms",
                    base,
                    extra={"target": f"< {EVENTS_TARGET_MS:g} ms", "met": ms < EVENTS_TARGET_MS},
                )
            )
        for name in ("all", "succeeded", "failed") if "all" in f else ():
            for which in ("first", "last"):
                ms = f[name][f"{which}_ms"]["median"]
                label = f"listing {f['db']}, {count / 1000:g}k: {which} page" + (
                    "" if name == "all" else f", status={name}"
                )
                results.append(
                    Result(
                        label,
                        ms,
                        "ms",
                        base,
                        extra={"target": f"< {TARGET_MS:g} ms", "met": ms < TARGET_MS},
                    )
                )
        results.append(Result(f"baseline {f['db']}: GET /v2/webhooks/{{id}}", base, "ms"))
    print()
    print_table(
        results,
        title=f"medians of {REPEAT} requests, vs baseline = multiple of GET /v2/webhooks/{{id}}",
    )
    timed = [r for r in results if r.extra.get("target")]
    worst = max(timed, key=lambda r: r.value)
    all_met = all(r.extra["met"] for r in timed)
    print(
        f"targets (< {TARGET_MS:g} ms a delivery listing, < {EVENTS_TARGET_MS:g} ms an events "
        f"request) {'met' if all_met else 'MISSED'} (slowest: {worst.name} {worst.value:.2f} ms)"
    )
    print(f"took {time.monotonic() - started:.1f} s")
    problems = [p for f in found for p in f["problems"]]
    if not (args.smoke or args.no_save):
        for f in found:
            append_jsonl(
                RESULTS_NAME,
                {"name": f"listing {f['db']}", "commit": commit, "label": args.label, **f},
            )
    return finish(args.summary_file, "listing", timed, problems)


if __name__ == "__main__":
    sys.exit(main())
