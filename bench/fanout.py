"""Fan-out: what does one event cost when many webhooks subscribe to it?

``hookd serve`` (SQLite by default, ``--db postgres``) on a fresh database for each size in
``--sizes`` (1, 10, 100, 1,000 webhooks, every one subscribed to ``post.created`` and
pointing at a path of one nginx answering ``204``). For each size:

* **creating the webhooks**: every ``POST /v2/webhooks`` is timed; reported, the median of
  the last 20 (the organization already has about ``size`` webhooks) against the median of
  the first 20 (it has almost none). Issue 20's target: at 1,000 webhooks >= 0.9x the rate
  at 1, i.e. the time per create at most 1.1x;
* **publish latency**: ``--latency-events`` events published from one client, each timed
  from the request to its ``202`` (which comes after the event and every delivery are
  committed), twice: each event alone (published once the previous one reached every
  webhook), the target's measure (p50 at 1,000 webhooks <= 25 ms), and back to back, while
  the earlier events' deliveries are sent (with ``hookd serve`` by the same process, whose
  one event loop the publishes then share with up to ``size`` x 20 attempts);
* **CPU per delivery**: a drain of about ``--deliveries`` deliveries (``deliveries / size``
  events from 8 concurrent clients), hookd's CPU (every thread) and, on PostgreSQL, the
  database backends' CPU per delivery, from the first publish until nginx counted every
  delivery. Target: flat within 20 % from 1 to 1,000 webhooks (reported as each size's
  ratio against the smallest).

The sizes run one after another, each on its own deployment, so the ratios compare runs
minutes apart on a machine that may be busy: run it twice when a ratio is close to its
target. Results: ``bench/results/fanout.jsonl``.

    python bench/fanout.py                 # SQLite, ~2 min
    python bench/fanout.py --db postgres
    python bench/fanout.py --smoke         # sizes 1 and 50, checked, saves nothing
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Result, add_run_arguments, append_jsonl, print_table
from bench.harness import Deployment, finish, hookd_commit, measure_drain
from bench.receiver import Receiver, receiver_kind

RESULTS_NAME = "fanout"
CREATE_WINDOW = 20
PUBLISH_TARGET_MS = 25.0
CREATE_TARGET = 1.1
CPU_FLATNESS = 1.2
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _timed_creates(dep: Deployment, receiver: Receiver, size: int) -> list[float]:
    """Create ``size`` webhooks one after another; each request's time in ms."""
    times = []
    for i in range(size):
        started = time.perf_counter()
        status, made = dep.request(
            "POST",
            "/v2/webhooks",
            {
                "name": f"fan-out {i}",
                "url": f"{receiver.url}fan/{i}",
                "topics": ["post.created"],
                "requestConfig": {"timeoutMs": 5000},
            },
        )
        times.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise RuntimeError(f"creating webhook {i} answered {status}: {made}")
    return times


def _timed_publishes(
    dep: Deployment, events: int, wait_for: Callable[[int], None] | None = None
) -> list[float]:
    """Publish ``events`` events one after another from one client; each one's ms to 202.
    With ``wait_for``, each publish waits until the previous event was delivered to every
    webhook (``wait_for(n)``: until ``n`` events were), so that it is timed alone."""
    body = json.dumps(
        {
            "topic": "post.created",
            "data": {"item": {"id": "fan", "title": "fan-out"}, "changes": []},
        }
    ).encode()
    headers = {"Authorization": f"Bearer {dep.key}", "Content-Type": "application/json"}
    times = []
    for n in range(events):
        if wait_for is not None:
            wait_for(n)
        request = urllib.request.Request(
            dep.base + "/v2/events", data=body, method="POST", headers=headers
        )
        started = time.perf_counter()
        with _DIRECT.open(request, timeout=60) as response:
            response.read()
            status = response.status
        times.append((time.perf_counter() - started) * 1000)
        if status != 202:
            raise RuntimeError(f"POST /v2/events answered {status}")
    return times


def measure_size(
    db: str, size: int, receiver: Receiver, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    with Deployment(db, tmp, webhook_limit=size, extra_env={"HOOKD_RATE_LIMIT": "0"}) as dep:
        dep.start()
        creates = _timed_creates(dep, receiver, size)
        window = min(CREATE_WINDOW, max(1, size // 2))
        before = receiver.request_count()

        def delivered(events: int) -> None:
            deadline = time.monotonic() + 120
            while receiver.request_count() - before < events * size:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{size} webhooks: the latency events were not delivered")
                time.sleep(0.002)

        alone = _timed_publishes(dep, args.latency_events, delivered)
        delivered(args.latency_events)
        before = receiver.request_count()
        publishes = _timed_publishes(dep, args.latency_events)
        # The latency events' deliveries drain before the CPU is counted.
        delivered(args.latency_events)
        events = max(4, args.deliveries // size)
        drain = measure_drain(dep, receiver, events, events * size, clients=min(8, events))
        dep.check_alive()
        result = drain.as_dict()
        deliveries = max(1, result["received"])
        return {
            "size": size,
            "create_first_ms": statistics.median(creates[:window]),
            "create_last_ms": statistics.median(creates[-window:]),
            "publish_alone_p50_ms": _percentile(alone, 0.5),
            "publish_alone_max_ms": max(alone),
            "publish_p50_ms": _percentile(publishes, 0.5),
            "publish_max_ms": max(publishes),
            "events": events,
            "complete": drain.complete,
            "received": result["received"],
            "expected": events * size,
            "publish_ok": result["publish_ok"],
            "hookd_cpu_us_per_delivery": result["hookd_cpu_us_per_delivery"],
            "db_cpu_us_per_delivery": result["db_backend_cpu_s"] * 1e6 / deliveries,
            "delivery_rate": result["delivery_rate"],
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hookd: one event to many webhooks")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--sizes", help="comma-separated webhook counts (default 1,10,100,1000)")
    parser.add_argument("--deliveries", type=int, help="deliveries per drain (default 20,000)")
    parser.add_argument("--latency-events", type=int, default=20)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in (args.sizes or ("1,50" if args.smoke else "1,10,100,1000")).split(",")]
    if args.deliveries is None:
        args.deliveries = 1_000 if args.smoke else 20_000
    if args.smoke:
        args.latency_events = min(args.latency_events, 10)
    commit = hookd_commit()
    print(
        f"fan-out: {args.db}; sizes {sizes}; {args.latency_events} timed publishes and a drain of "
        f"about {args.deliveries:,} deliveries per size; hookd at {commit}",
        flush=True,
    )
    started = time.monotonic()
    measured: list[dict[str, Any]] = []
    failures: list[str] = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hookd-fanout-")))
        receiver = stack.enter_context(Receiver.start(receiver_kind(args.smoke)))
        for size in sizes:
            (tmp / f"n{size}").mkdir()
            got = measure_size(args.db, size, receiver, args, tmp / f"n{size}")
            measured.append(got)
            print(
                f"{size:>5} webhooks: create {got['create_first_ms']:.2f} ms at first, "
                f"{got['create_last_ms']:.2f} ms at the end; publish alone p50 "
                f"{got['publish_alone_p50_ms']:.1f} ms, max {got['publish_alone_max_ms']:.1f} ms, "
                f"back to back p50 {got['publish_p50_ms']:.1f} ms; "
                f"{got['received']:,} deliveries at {got['delivery_rate']:,.0f}/s, hookd "
                f"{got['hookd_cpu_us_per_delivery']:.0f} us and database "
                f"{got['db_cpu_us_per_delivery']:.0f} us of CPU per delivery",
                flush=True,
            )
            if not got["complete"]:
                failures.append(f"{size} webhooks: {got['received']} of {got['expected']} arrived")
            if got["publish_ok"] != got["events"]:
                failures.append(f"{size} webhooks: {got['publish_ok']} publishes succeeded")
    small, large = measured[0], measured[-1]
    label = f"fan-out, {args.db}"
    create_ratio = large["create_last_ms"] / large["create_first_ms"]
    cpu_small = small["hookd_cpu_us_per_delivery"] + small["db_cpu_us_per_delivery"]
    cpu_large = large["hookd_cpu_us_per_delivery"] + large["db_cpu_us_per_delivery"]
    results = [
        Result(
            f"{label}: POST /v2/webhooks at {large['size']} webhooks vs at none",
            large["create_last_ms"],
            "ms",
            large["create_first_ms"],
            extra={"target": f"<= {CREATE_TARGET}x", "met": create_ratio <= CREATE_TARGET},
        ),
        Result(
            f"{label}: publish -> 202, one event to {large['size']} webhooks (p50)",
            large["publish_alone_p50_ms"],
            "ms",
            small["publish_alone_p50_ms"],
            extra={
                "target": f"<= {PUBLISH_TARGET_MS:.0f} ms",
                "met": large["publish_alone_p50_ms"] <= PUBLISH_TARGET_MS,
            },
        ),
        Result(
            f"{label}: the same, back to back while earlier events are delivered (p50)",
            large["publish_p50_ms"],
            "ms",
            small["publish_p50_ms"],
        ),
        Result(
            f"{label}: CPU per delivery (hookd + database) at {large['size']} vs "
            f"{small['size']} webhook(s)",
            cpu_large,
            "us",
            cpu_small,
            extra={"target": f"<= {CPU_FLATNESS}x", "met": cpu_large <= CPU_FLATNESS * cpu_small},
        ),
    ]
    print()
    print_table(results, title=f"{label}: the largest size against the smallest")
    print(f"took {time.monotonic() - started:.1f} s")
    if not (args.smoke or args.no_save):
        append_jsonl(
            RESULTS_NAME,
            {
                "name": label,
                "db": args.db,
                "commit": commit,
                "label": args.label,
                "sizes": measured,
            },
        )
    return finish(args.summary_file, "fanout", results, failures)


if __name__ == "__main__":
    sys.exit(main())
