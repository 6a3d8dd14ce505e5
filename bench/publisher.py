"""A load generator for ``POST /v2/events``: N concurrent aiohttp clients on uvloop.

Run by the delivery benchmarks as a separate process (``bench/harness.py``,
:func:`run_publisher`), so that its CPU is not hookd's nor the benchmark's. ``--clients``
coroutines share one ``aiohttp.ClientSession`` with ``TCPConnector(limit=clients)`` (one
keep-alive connection each) and take event numbers from a shared counter until
``--events`` are published, each with an item of about 1 KiB (:func:`event_body`). The
API key comes from ``$HOOKD_BENCH_KEY``. The loop stops after ``--max-seconds`` too.

Prints one JSON line: ``first_start`` and ``last_end`` (``time.monotonic()``, the same
clock in every process of the machine, so a benchmark can line them up with what its
receiver saw), ``ok``, ``statuses``, ``errors``, the first failure's text, and the
publish requests' latency percentiles (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import percentile

__all__ = ["ITEM_BYTES", "event_body", "publish"]

ITEM_BYTES = 1024
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_ITEM_HEAD = '{"id":"post_%010d","title":"Benchmark post %d","status":"open","upvotes":0,'
_ITEM_TAIL = '"tags":["bench","drain"],"content":"'
_PAD = ITEM_BYTES - len(_ITEM_HEAD % (0, 0)) - len(_ITEM_TAIL) - 2  # minus '"}'


def event_body(n: int, topic: str = "post.created") -> bytes:
    """The JSON body publishing event *n*: ``data.item`` is about 1 KiB of JSON."""
    item = (_ITEM_HEAD % (n, n)) + _ITEM_TAIL + "x" * max(0, _PAD - len(str(n))) + '"}'
    return (
        '{"topic":' + json.dumps(topic) + ',"data":{"item":' + item + ',"changes":[]}}'
    ).encode()


async def publish(
    url: str,
    key: str,
    events: int,
    clients: int = 32,
    *,
    topic: str = "post.created",
    max_seconds: float = 300.0,
) -> dict[str, Any]:
    """Publish *events* events to ``<url>/v2/events``; see the module doc for the result."""
    import aiohttp

    host = urlsplit(url).hostname
    if host not in _LOOPBACK_HOSTS:
        raise ValueError(f"benchmarks only use loopback addresses, not {host!r}")
    target = url.rstrip("/") + "/v2/events"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    first_bad: list[str] = []
    latencies: list[float] = []
    counter = 0
    mono = time.monotonic
    deadline = mono() + max_seconds
    first_start: float | None = None
    last_end = 0.0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal counter, first_start, last_end
        while counter < events and mono() < deadline:
            n = counter
            counter += 1
            body = event_body(n, topic)
            started = mono()
            if first_start is None:
                first_start = started
            try:
                async with session.post(target, data=body, headers=headers) as resp:
                    text = await resp.read()
                    status = resp.status
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                if not first_bad:
                    first_bad.append(repr(exc))
                continue
            ended = mono()
            last_end = max(last_end, ended)
            latencies.append((ended - started) * 1000.0)
            statuses[status] = statuses.get(status, 0) + 1
            if not 200 <= status < 300 and not first_bad:
                first_bad.append(f"{status} {text[:300].decode(errors='replace')}")

    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
    return {
        "events": events,
        "clients": clients,
        "ok": ok,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "first_bad": first_bad[0] if first_bad else None,
        "first_start": first_start if first_start is not None else mono(),
        "last_end": last_end,
        "stopped_by_deadline": ok + sum(errors.values()) < events and mono() >= deadline,
        "latency_ms": {
            "p50": percentile(latencies, 50),
            "p90": percentile(latencies, 90),
            "p99": percentile(latencies, 99),
            "max": max(latencies) if latencies else float("nan"),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="publish events to hookd (benchmarks)")
    parser.add_argument("--url", required=True, help="hookd's base URL (loopback)")
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--topic", default="post.created")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args(argv)
    key = os.environ.get("HOOKD_BENCH_KEY", "")
    if not key:
        parser.error("set HOOKD_BENCH_KEY to the API key")
    if not 1 <= args.events <= 10_000_000 or not 1 <= args.clients <= 1024:
        parser.error("--events must be within 1..10,000,000 and --clients within 1..1024")
    coro = publish(
        args.url,
        key,
        args.events,
        args.clients,
        topic=args.topic,
        max_seconds=min(args.max_seconds, 3600.0),
    )
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coro)
    else:
        result = uvloop.run(coro)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
