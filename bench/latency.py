"""Latency: from a publish request's start to the delivery's arrival, on an idle hookd.

``hookd serve`` on a fresh database (SQLite by default, ``--db postgres``; ``--mode split``
runs ``hookd api`` + 2 workers on PostgreSQL) with one webhook. Its receiver runs in this
process, on the same uvloop event loop as the publisher: a raw asyncio protocol with
httptools' parser that stamps each request with :func:`time.perf_counter` when it has
arrived completely and answers ``204``. Both ends use the same clock, so

    latency = arrival at the receiver - start of the ``POST /v2/events`` request

matched by event id (the ``webhook-id`` header against the publish answer's ``id``). The
publisher sends ``--events`` (300) events at ``--rate`` (50/s) on a fixed schedule (open
loop: each request starts on time whatever the others do), ~1 KiB items, keep-alive.
Ten warm-up events go first and are not counted.

The baseline, in the same run: the same client POSTs the same bodies straight to the
same receiver at the same rate (one hop, no hookd): what the machine and the event loop
add on their own. Reported: p50, p90, p99 and max of both, hookd's publish answer time,
and the targets (p50 <= 5 ms, p99 <= 25 ms). Results: ``bench/results/latency.jsonl``.

Command line::

    python bench/latency.py                 # SQLite, 300 events at 50/s, ~8 s
    python bench/latency.py --db postgres
    python bench/latency.py --smoke         # 30 events, checked, saves nothing

Exits 1 if a delivery is missing or a request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

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
from bench.harness import Deployment, hookd_commit, write_summary
from bench.publisher import event_body

__all__ = ["TARGET_P50_MS", "TARGET_P99_MS", "main"]

RESULTS_NAME = "latency"
TARGET_P50_MS = 5.0
TARGET_P99_MS = 25.0
DEFAULT_EVENTS = 300
SMOKE_EVENTS = 30
WARMUP_EVENTS = 10
_RESPONSE = b"HTTP/1.1 204 No Content\r\nServer: hookd-bench\r\n\r\n"


class _Stamp(asyncio.Protocol):
    """One connection of the in-process receiver: stamps each complete request."""

    def __init__(self, arrivals: dict[str, float], signal: asyncio.Event) -> None:
        import httptools

        self.arrivals = arrivals
        self.signal = signal
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.webhook_id = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:
            if self.transport is not None:
                self.transport.close()

    def on_message_begin(self) -> None:
        self.webhook_id = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"webhook-id":
            self.webhook_id = value

    def on_message_complete(self) -> None:
        now = time.perf_counter()
        key = self.webhook_id.decode("latin-1")
        self.arrivals.setdefault(key, now)
        self.signal.set()
        if self.transport is not None:
            self.transport.write(_RESPONSE)


def _stats(values_ms: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values_ms, 50),
        "p90": percentile(values_ms, 90),
        "p99": percentile(values_ms, 99),
        "max": max(values_ms) if values_ms else float("nan"),
        "mean": sum(values_ms) / len(values_ms) if values_ms else float("nan"),
    }


async def _measure(
    sock: socket.socket, base: str, key: str, events: int, rate: float, recv_url: str
) -> dict[str, Any]:
    import aiohttp

    loop = asyncio.get_running_loop()
    arrivals: dict[str, float] = {}
    signal = asyncio.Event()
    server = await loop.create_server(lambda: _Stamp(arrivals, signal), sock=sock)
    publish_url = base + "/v2/events"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    failures: list[str] = []
    perf = time.perf_counter

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=16), timeout=aiohttp.ClientTimeout(total=30)
    ) as session:

        async def publish(n: int) -> tuple[str, float, float] | None:
            body = event_body(n)
            started = perf()
            try:
                async with session.post(publish_url, data=body, headers=headers) as resp:
                    answer = await resp.json(content_type=None)
                    if resp.status != 202:
                        failures.append(f"publish {n}: {resp.status} {answer}")
                        return None
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                failures.append(f"publish {n}: {exc!r}")
                return None
            return str(answer["id"]), started, perf()

        async def direct(n: int) -> tuple[str, float, float] | None:
            body = event_body(n)
            mark = f"direct_{n}"
            started = perf()
            try:
                async with session.post(recv_url, data=body, headers={"webhook-id": mark}) as resp:
                    await resp.read()
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                failures.append(f"direct {n}: {exc!r}")
                return None
            return mark, started, perf()

        async def paced(send: Any, first: int, count: int) -> list[tuple[str, float, float]]:
            start = loop.time() + 0.05
            tasks = []
            for i in range(count):
                delay = start + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(send(first + i)))
            done = await asyncio.gather(*tasks)
            return [d for d in done if d is not None]

        async def arrived(ids: list[str], timeout: float) -> None:
            deadline = loop.time() + timeout
            while any(i not in arrivals for i in ids):
                left = deadline - loop.time()
                if left <= 0:
                    return
                signal.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(signal.wait(), min(left, 0.5))

        # Warm-up: connections, hookd's caches and its worker's first claim.
        warm = await paced(publish, 0, WARMUP_EVENTS)
        await arrived([w[0] for w in warm], 10.0)
        await paced(direct, 0, WARMUP_EVENTS)
        await asyncio.sleep(0.3)  # idle again
        failures.clear()

        hookd = await paced(publish, WARMUP_EVENTS, events)
        await arrived([h[0] for h in hookd], 15.0)
        await asyncio.sleep(0.2)
        base_runs = await paced(direct, WARMUP_EVENTS, events)
        await arrived([b[0] for b in base_runs], 5.0)
    server.close()

    missing = [h[0] for h in hookd if h[0] not in arrivals]
    latency = [(arrivals[i] - s) * 1000 for i, s, _e in hookd if i in arrivals]
    answer = [(e - s) * 1000 for _i, s, e in hookd]
    direct_ms = [(arrivals[i] - s) * 1000 for i, s, _e in base_runs if i in arrivals]
    return {
        "events": events,
        "rate": rate,
        "published": len(hookd),
        "delivered": len(latency),
        "missing": len(missing),
        "failures": failures[:5],
        "failure_count": len(failures),
        "latency_ms": _stats(latency),
        "publish_answer_ms": _stats(answer),
        "direct_ms": _stats(direct_ms),
        "direct_sent": len(base_runs),
        "direct_arrived": len(direct_ms),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hookd latency: publish -> arrival, idle")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--mode", choices=["serve", "split"], default="serve")
    parser.add_argument(
        "--events", type=int, help=f"default {DEFAULT_EVENTS} ({SMOKE_EVENTS} with --smoke)"
    )
    parser.add_argument("--rate", type=float, default=50.0, help="events per second")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.mode == "split" and args.db != "postgres":
        parser.error("--mode split needs --db postgres")
    events = args.events or (SMOKE_EVENTS if args.smoke else DEFAULT_EVENTS)
    if not 1 <= events <= 100_000 or not 0.1 <= args.rate <= 2000:
        parser.error("--events must be within 1..100,000 and --rate within 0.1..2000")
    commit = hookd_commit()
    print(
        f"latency: {args.db}, {args.mode}, {events} events at {args.rate:g}/s; hookd at {commit}",
        flush=True,
    )
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="hookd-bench-latency-"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((LOOPBACK, 0))
        sock.listen(128)
        sock.setblocking(False)
        recv_url = f"http://{LOOPBACK}:{sock.getsockname()[1]}/latency"
        with Deployment(args.db, tmp, mode=args.mode, pg_admin_url=args.pg_admin_url) as dep:
            dep.start()
            dep.create_webhooks(1, lambda _i: recv_url)
            if not args.smoke:
                dep.settle()
            coro = _measure(sock, dep.base, dep.key, events, args.rate, recv_url)
            try:
                import uvloop
            except ImportError:
                data = asyncio.run(coro)
            else:
                data = uvloop.run(coro)
            rss = dep.peak_rss_kib()
            if data["missing"] or data["failure_count"]:
                print(dep.stderr_tail(), file=sys.stderr)
    finally:
        sock.close()
        shutil.rmtree(tmp, ignore_errors=True)

    lat, direct, answer = data["latency_ms"], data["direct_ms"], data["publish_answer_ms"]
    label = f"latency idle, {args.db}" + ("" if args.mode == "serve" else ", api + 2 workers")
    met50 = lat["p50"] <= TARGET_P50_MS
    met99 = lat["p99"] <= TARGET_P99_MS
    results = [
        Result(
            f"{label}: p50",
            lat["p50"],
            "ms",
            direct["p50"],
            extra={"target": f"<= {TARGET_P50_MS:g} ms", "met": met50},
        ),
        Result(f"{label}: p90", lat["p90"], "ms", direct["p90"]),
        Result(
            f"{label}: p99",
            lat["p99"],
            "ms",
            direct["p99"],
            extra={"target": f"<= {TARGET_P99_MS:g} ms", "met": met99},
        ),
        Result(f"{label}: max", lat["max"], "ms", direct["max"]),
        Result(f"{label}: publish answer p50", answer["p50"], "ms"),
    ]
    print(
        f"hookd: {data['delivered']}/{data['published']} delivered; latency p50 {lat['p50']:.2f} ms, "
        f"p90 {lat['p90']:.2f}, p99 {lat['p99']:.2f}, max {lat['max']:.2f} ms; the publish answer "
        f"took p50 {answer['p50']:.2f} ms, p99 {answer['p99']:.2f} ms; peak RSS "
        + ", ".join(f"{k} {v / 1024:.0f} MiB" for k, v in rss.items())
    )
    print(
        f"baseline (one direct hop, same client and receiver): p50 {direct['p50']:.2f} ms, "
        f"p90 {direct['p90']:.2f}, p99 {direct['p99']:.2f}, max {direct['max']:.2f} ms"
    )
    print()
    print_table(results, title=f"{label}: ms, vs baseline = multiple of the direct hop")
    print(
        f"targets: p50 <= {TARGET_P50_MS:g} ms {'met' if met50 else 'MISSED'}, "
        f"p99 <= {TARGET_P99_MS:g} ms {'met' if met99 else 'MISSED'}"
    )
    print(f"took {time.monotonic() - started:.1f} s")
    failed = (
        data["missing"] or data["failure_count"] or data["direct_arrived"] != data["direct_sent"]
    )
    if not (args.smoke or args.no_save):
        append_jsonl(
            RESULTS_NAME,
            {
                "name": label,
                "db": args.db,
                "mode": args.mode,
                "commit": commit,
                "label": args.label,
                "peak_rss_kib": rss,
                **data,
            },
        )
    if args.summary_file:
        write_summary(
            args.summary_file, "latency", [results[0], results[2], results[3]], not failed
        )
    if failed:
        print(
            f"FAILED: {data['missing']} deliveries missing, {data['failure_count']} failed requests "
            f"{data['failures']}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
