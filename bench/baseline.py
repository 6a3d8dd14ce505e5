"""Baseline: the fastest a plain Python webhook sender gets on this machine.

A raw sender, with none of hookd's work (no database, no queue, no retries): one asyncio
event loop on uvloop, one shared :class:`aiohttp.ClientSession` with
``TCPConnector(limit=connections)``, and ``connections`` worker coroutines that take the
next number from a shared counter and POST a signed JSON body of 1 KiB (different per
request: it holds the number) to a local receiver. Each request gets a real HMAC-SHA256
signature (hex) over ``"<timestamp>.<body>"`` made from a precomputed key with
:meth:`hmac.HMAC.copy`, sent as ``X-Webhook-Signature`` next to ``X-Webhook-Timestamp`` and
a ``webhook-id``.

hookd's delivery benchmarks report their rate as a fraction of this one, measured in the
same run: :func:`run_baseline` returns the figures as a dict.

Command line::

    python bench/baseline.py                      # 20,000 requests, 64 connections, nginx
    python bench/baseline.py --receiver python --runs 3
    python bench/baseline.py --smoke              # 500 requests, for CI; exits 1 on failure
    python bench/baseline.py --client hookd       # the same sender on hookd's delivery client
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Result,
    append_jsonl,
    peak_rss_kib,
    percentile,
    print_table,
    python_command,
)

__all__ = [
    "BODY_BYTES",
    "DEFAULT_CONNECTIONS",
    "DEFAULT_TOTAL",
    "baseline",
    "check_loopback",
    "make_body",
    "run_baseline",
    "run_baseline_isolated",
]

DEFAULT_TOTAL = 20_000
DEFAULT_CONNECTIONS = 64
SMOKE_TOTAL = 500
BODY_BYTES = 1024
# Upper bounds for every load loop, whatever the caller asks for.
MAX_TOTAL = 10_000_000
DEFAULT_MAX_SECONDS = 300.0
# A fixed benchmark key (32 bytes, like a decoded "whsec_" secret); not a real secret.
SIGNING_KEY = hashlib.sha256(b"hookd-bench-baseline-key").digest()
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

_BODY_HEAD = (
    b'{"id":"evt_%012d","type":"post.created","createdAt":"2024-01-01T00:00:00.000Z",'
    b'"data":{"item":{"id":"%024d","title":"Benchmark post","content":"'
)
_BODY_TAIL = b'","status":"open","upvotes":0,"tags":["bench","baseline"]}}}'
_PAD = BODY_BYTES - len(_BODY_HEAD % (0, 0)) - len(_BODY_TAIL)
_BODY_TEMPLATE = _BODY_HEAD + b"x" * _PAD + _BODY_TAIL


def make_body(n: int) -> bytes:
    """Return the JSON body of request *n*: exactly :data:`BODY_BYTES` long for n < 10**12."""
    return _BODY_TEMPLATE % (n, n)


def check_loopback(url: str) -> None:
    """Raise :class:`ValueError` unless *url* points at a loopback address."""
    host = urlsplit(url).hostname
    if host not in _LOOPBACK_HOSTS:
        raise ValueError(f"benchmarks only target loopback addresses, not {host!r}")


async def baseline(
    url: str,
    total: int = DEFAULT_TOTAL,
    connections: int = DEFAULT_CONNECTIONS,
    *,
    warmup: int | None = None,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    request_timeout: float = 30.0,
    client: str = "aiohttp",
) -> dict[str, Any]:
    """Send *total* signed POSTs to *url* over *connections* connections; return figures.

    *client* ``"aiohttp"`` (the baseline) or ``"hookd"``: hookd's own delivery client
    (:class:`hookd.delivery.transport.HttpTransport`, keep-alive pool of *connections*,
    the guard allowing loopback) doing the same work, to see what that client costs alone.

    The first *warmup* requests (default: two per connection, so every connection is open)
    are sent before the clock starts and are not counted. The timed loop stops early after
    *max_seconds* (``stopped_by_deadline`` is then true), and each request gives up after
    *request_timeout* seconds (counted in ``errors``/``error_kinds``). Runs in the current
    event loop; see :func:`run_baseline` for the keys of the result.
    """
    import aiohttp

    check_loopback(url)
    if not 1 <= total <= MAX_TOTAL:
        raise ValueError(f"total must be within 1..{MAX_TOTAL}, not {total}")
    if not 1 <= connections <= 4096:
        raise ValueError(f"connections must be within 1..4096, not {connections}")
    if warmup is None:
        warmup = min(2 * connections, 1000)

    base_mac = hmac.new(SIGNING_KEY, digestmod=hashlib.sha256)
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    latencies: list[float] = []
    counter = 0
    stop_at = 0

    perf = time.perf_counter
    wall = time.time
    deadline = 0.0

    async def worker(post: Any, record: bool) -> None:
        nonlocal counter
        while counter < stop_at:
            n = counter
            counter += 1
            if perf() > deadline:
                break
            body = make_body(n)
            ts = str(int(wall()))
            mac = base_mac.copy()
            mac.update(ts.encode())
            mac.update(b".")
            mac.update(body)
            headers = {
                "Content-Type": "application/json",
                "webhook-id": f"msg_{n}",
                "X-Webhook-Timestamp": ts,
                "X-Webhook-Signature": mac.hexdigest(),
            }
            started = perf()
            try:
                status = await post(body, headers)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                key = type(exc).__name__
                errors[key] = errors.get(key, 0) + 1
                continue
            if record:
                latencies.append(perf() - started)
                statuses[status] = statuses.get(status, 0) + 1

    def usage() -> tuple[float, float]:
        """This process's CPU seconds so far: (all, system)."""
        now = resource.getrusage(resource.RUSAGE_SELF)
        return now.ru_utime + now.ru_stime, now.ru_stime

    async def timed(post: Any) -> tuple[float, float, float]:
        """The timed part's seconds, CPU seconds and the kernel's share of those."""
        nonlocal counter, stop_at, deadline
        if warmup:
            stop_at = warmup
            deadline = perf() + max_seconds
            await asyncio.gather(*(worker(post, False) for _ in range(connections)))
            errors.clear()
        counter = 0
        stop_at = total
        cpu_before, system_before = usage()
        started = perf()
        deadline = started + max_seconds
        await asyncio.gather(*(worker(post, True) for _ in range(connections)))
        elapsed = perf() - started
        cpu_after, system_after = usage()
        return elapsed, cpu_after - cpu_before, system_after - system_before

    if client == "hookd":
        from yarl import URL

        from hookd.delivery.guard import AddressGuard, parse_networks
        from hookd.delivery.transport import HttpTransport

        transport = HttpTransport(AddressGuard(parse_networks("127.0.0.0/8")), limit=connections)
        target = URL(url)

        async def post_hookd(body: bytes, headers: dict[str, str]) -> int:
            async with asyncio.timeout(request_timeout):
                return (await transport.post(target, headers, body)).status

        try:
            elapsed, cpu_used, system_used = await timed(post_hookd)
        finally:
            await transport.close()
    else:
        connector = aiohttp.TCPConnector(limit=connections)
        client_timeout = aiohttp.ClientTimeout(total=request_timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
            session_post = session.post

            async def post_aiohttp(body: bytes, headers: dict[str, str]) -> int:
                async with session_post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    return resp.status

            elapsed, cpu_used, system_used = await timed(post_aiohttp)

    done = sum(statuses.values())
    ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
    failed = sum(errors.values())
    lat_ms = [x * 1000.0 for x in latencies]
    return {
        "url": url,
        "client": client,
        "total": total,
        "connections": connections,
        "warmup": warmup,
        "body_bytes": BODY_BYTES,
        "completed": done,
        "ok": ok,
        "errors": failed,
        "error_kinds": errors,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": elapsed,
        "requests_per_s": done / elapsed if elapsed > 0 else 0.0,
        "ok_per_s": ok / elapsed if elapsed > 0 else 0.0,
        "stopped_by_deadline": done + failed < total,
        "latency_ms": {
            "p50": percentile(lat_ms, 50),
            "p90": percentile(lat_ms, 90),
            "p99": percentile(lat_ms, 99),
            "max": max(lat_ms) if lat_ms else float("nan"),
        },
        "client_cpu_s": cpu_used,
        "client_cpu_util": cpu_used / elapsed if elapsed > 0 else 0.0,
        "client_system_cpu_s": system_used,
        "peak_rss_kib": peak_rss_kib(),
        "pid": os.getpid(),
    }


def run_baseline(
    url: str,
    total: int = DEFAULT_TOTAL,
    connections: int = DEFAULT_CONNECTIONS,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run :func:`baseline` to completion on a fresh uvloop event loop; return its figures.

    Keys: ``requests_per_s`` (completed requests / timed seconds), ``ok_per_s``,
    ``completed``, ``ok``, ``errors``, ``statuses``, ``seconds``, ``latency_ms`` (p50, p90,
    p99, max), ``client_cpu_s``/``client_cpu_util`` (CPU of this process in the timed
    part), ``peak_rss_kib`` (VmHWM of this process, so of everything it did so far) and the
    arguments. Keyword arguments go to :func:`baseline` (``warmup``, ``max_seconds``,
    ``request_timeout``). Must not be called from a running event loop (await :func:`baseline`
    there, or use :func:`run_baseline_isolated`).
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(baseline(url, total, connections, **kwargs))
    return uvloop.run(baseline(url, total, connections, **kwargs))


def run_baseline_isolated(
    url: str,
    total: int = DEFAULT_TOTAL,
    connections: int = DEFAULT_CONNECTIONS,
    *,
    max_seconds: float = DEFAULT_MAX_SECONDS,
) -> dict[str, Any]:
    """Like :func:`run_baseline`, but in a fresh Python process.

    The figures (``peak_rss_kib`` above all) are then those of a sender doing nothing
    else, and the caller's own event loop, threads or memory do not weigh on it.
    """
    check_loopback(url)
    argv = python_command(
        __file__,
        {
            "--url": url,
            "--total": total,
            "--connections": connections,
            "--max-seconds": max_seconds,
        },
        "--json",
        "--no-save",
    )
    out = subprocess.run(
        argv, capture_output=True, text=True, check=True, timeout=max_seconds + 120
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# =========================================================================== CLI


def _summary(result: dict[str, Any]) -> str:
    lat = result["latency_ms"]
    return (
        f"{result['requests_per_s']:,.0f} req/s  ({result['completed']:,} in "
        f"{result['seconds']:.2f}s, {result['errors']} errors, statuses {result['statuses']}, "
        f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, client CPU "
        f"{result['client_cpu_util']:.0%}, receiver CPU "
        f"{result.get('receiver_cpu_util', float('nan')):.0%}, "
        f"peak RSS {result['peak_rss_kib'] / 1024:.1f} MiB)"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the baseline from the command line; returns the exit status."""
    parser = argparse.ArgumentParser(description="hookd baseline: a raw Python sender's rate")
    parser.add_argument("--total", type=int, help=f"requests per run (default {DEFAULT_TOTAL})")
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument(
        "--receiver",
        choices=["nginx", "python", "auto"],
        default="auto",
        help="receiver to start (default: nginx if installed, else python)",
    )
    parser.add_argument(
        "--workers", default="1", help="nginx worker_processes: a number or 'auto' (default 1)"
    )
    parser.add_argument("--url", help="use this running loopback receiver instead")
    parser.add_argument(
        "--client",
        choices=["aiohttp", "hookd"],
        default="aiohttp",
        help="aiohttp (the baseline) or hookd's own delivery client, doing the same work",
    )
    parser.add_argument("--runs", type=int, default=1, help="repeat the measurement N times")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS)
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_TOTAL} requests, checked")
    parser.add_argument("--json", action="store_true", help="print one JSON line per run only")
    parser.add_argument("--no-save", action="store_true", help="do not append to results/")
    parser.add_argument("--summary-file", type=Path, help=argparse.SUPPRESS)  # for run_all.py
    args = parser.parse_args(argv)

    total = args.total or (SMOKE_TOTAL if args.smoke else DEFAULT_TOTAL)
    runs = max(1, min(args.runs, 100))
    max_seconds = min(args.max_seconds, 60.0) if args.smoke else args.max_seconds
    save = not (args.no_save or args.smoke)
    workers: int | str = "auto" if args.workers == "auto" else int(args.workers)

    from bench.receiver import Receiver

    receiver: Receiver | None = None
    if args.url:
        url = args.url
        try:
            check_loopback(url)
        except ValueError as exc:
            parser.error(str(exc))
    else:
        receiver = Receiver.start(args.receiver, workers=workers)  # type: ignore[arg-type]
        url = receiver.url
    results: list[dict[str, Any]] = []
    try:
        for run in range(runs):
            recv_cpu = receiver.cpu_seconds() if receiver else 0.0
            sent_before = receiver.request_count() if receiver else 0
            result = run_baseline(
                url, total, args.connections, max_seconds=max_seconds, client=args.client
            )
            if receiver is not None:
                result["receiver"] = receiver.kind
                result["receiver_workers"] = workers if receiver.kind == "nginx" else 1
                result["receiver_cpu_util"] = (receiver.cpu_seconds() - recv_cpu) / result[
                    "seconds"
                ]
                result["receiver_counted"] = receiver.request_count() - sent_before
            result["run"] = run + 1
            results.append(result)
            if args.json:
                print(json.dumps(result, sort_keys=True), flush=True)
            else:
                print(f"run {run + 1}/{runs}: {_summary(result)}", flush=True)
            if save:
                append_jsonl("baseline", {"name": "baseline", **result})
    finally:
        if receiver is not None:
            receiver.stop()

    if not args.json:
        rates = [r["requests_per_s"] for r in results]
        best = max(rates)
        print_table(
            [
                Result(f"baseline run {r['run']}", r["requests_per_s"], "req/s", best)
                for r in results
            ],
            title=f"\nbaseline against {results[0].get('receiver', url)}, ratios vs best run",
        )
    failed = [
        r
        for r in results
        if r["errors"]
        or r["ok"] != total
        or ("receiver_counted" in r and r["receiver_counted"] != total + r["warmup"])
    ]
    if args.summary_file:
        med = statistics.median(r["requests_per_s"] for r in results)
        row = Result(
            f"baseline: raw aiohttp sender -> {results[0].get('receiver', 'url')}"
            f" (median of {len(results)})",
            med,
            "req/s",
        )
        args.summary_file.write_text(
            json.dumps({"benchmark": "baseline", "ok": not failed, "rows": [row.as_dict()]})
        )
    if failed:
        print(f"FAILED: {len(failed)} run(s) with errors or missing answers", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
