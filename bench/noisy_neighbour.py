"""Noisy neighbour: does one organization's broken endpoints slow another's deliveries?

``hookd serve`` (SQLite by default, ``--db postgres``) with ``HOOKD_DNS_SERVERS`` pointed
at a local DNS server (``bench/dns_server.py``, in a process of its own) that answers
``b.bench`` with 127.0.0.1 and never answers ``dead*.bench``. Two scenarios, each on a
fresh deployment:

* **alone**: organization B (the bootstrap organization) has 10 webhooks to a healthy
  receiver (``http://b.bench:PORT/...``) and drains ``--deliveries`` (20,000) deliveries;
* **noisy**: the same, while organization A has 50 webhooks, 25 whose host names never
  resolve (the name server is black-holed) and 25 whose receiver holds every request past
  their ``timeoutMs`` of 5,000 ms, with a backlog of ``--noisy-events`` events published
  to them first (50 deliveries each) and retried every second (``HOOKD_RETRY_SCHEDULE`` is
  ``1`` ten times, ``HOOKD_SUSPEND_AFTER`` is huge, so they keep failing throughout).

Measured for B in each scenario: the drain rate (deliveries over the time from the first
publish to the last arrival, as ``drain.py``), and publish→arrival latency of a paced
probe (``latency.py``'s method: 50 events/s to one more webhook of B's, a receiver in this
process) right after the drain, with A's load still there. Reported: B's drain rate noisy /
alone (target >= 0.8) and B's p99 latency noisy / alone (target <= 2), and hookd's RSS and
open file descriptors at the start and the end of B's drain in the noisy scenario (target:
flat). Results: ``bench/results/noisy_neighbour.jsonl``.

Without a per-organization bound on attempts in flight, A's 50 webhooks (10 attempts each)
can hold all 256 of a worker's slots for their whole timeout; the ratios show what the
in-flight caps and fair claiming buy.

    python bench/noisy_neighbour.py                # SQLite, 20,000 deliveries, ~2 min
    python bench/noisy_neighbour.py --db postgres
    python bench/noisy_neighbour.py --smoke        # 500 deliveries, checked, saves nothing
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    LOOPBACK,
    Result,
    add_run_arguments,
    append_jsonl,
    print_table,
    start_process,
    stop_process,
)
from bench.harness import (
    Deployment,
    finish,
    hookd_commit,
    measure_drain,
    proc_status_kib,
    run_publisher,
)
from bench.latency import _measure as measure_latency
from bench.receiver import Receiver, receiver_kind

__all__ = ["main"]

RESULTS_NAME = "noisy_neighbour"
B_WEBHOOKS = 10
A_DEAD_DNS = 25
A_HANGING = 25
A_TIMEOUT_MS = 5000
DEFAULT_DELIVERIES = 20_000
SMOKE_DELIVERIES = 500
DEFAULT_NOISY_EVENTS = 200
SMOKE_NOISY_EVENTS = 10
PROBE_EVENTS = 100
SMOKE_PROBE_EVENTS = 20
PROBE_RATE = 50.0
TARGET_RATE = 0.8
TARGET_P99 = 2.0


def _open_descriptors(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _start_dns(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """bench/dns_server.py in a process of its own; returns it and its host:port."""
    out = tmp / "dns.out"
    argv = [
        sys.executable,
        str(Path(__file__).with_name("dns_server.py")),
        "--answer",
        "b.bench=127.0.0.1",
    ]
    argv += [f"--blackhole=dead{i}.bench" for i in range(A_DEAD_DNS)]
    with out.open("wb") as sink:
        proc = start_process(
            argv, env=dict(os.environ), cwd=tmp, stdout=sink, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = out.read_text().strip()
        if text:
            return proc, text.splitlines()[0]
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop_process(proc)
    raise RuntimeError(f"the DNS server did not start: {out.read_text()[-500:]}")


def _scenario(
    noisy: bool,
    args: argparse.Namespace,
    deliveries: int,
    noisy_events: int,
    probe_events: int,
    receivers: dict[str, Receiver],
    dns_address: str,
) -> dict[str, Any]:
    healthy = receivers["healthy"]
    port = healthy.url.rstrip("/").rsplit(":", 1)[1]
    b_url = f"http://b.bench:{port}/"
    env = {
        "HOOKD_DNS_SERVERS": dns_address,
        "HOOKD_RETRY_SCHEDULE": ",".join(["1"] * 10),
        "HOOKD_SUSPEND_AFTER": "1000000",
    }
    tmp = Path(tempfile.mkdtemp(prefix="hookd-bench-noisy-"))
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind((LOOPBACK, 0))
        probe.listen(128)
        probe.setblocking(False)
        probe_url = f"http://{LOOPBACK}:{probe.getsockname()[1]}/probe"
        with Deployment(
            args.db, tmp, extra_env=env, pg_admin_url=args.pg_admin_url, webhook_limit=100
        ) as dep:
            dep.start()
            dep.create_webhooks(B_WEBHOOKS, lambda i: f"{b_url}b/{i}")
            a_requests = 0
            if noisy:
                dep.cli("orgs", "create", "a", "--webhook-limit", "100")
                a_key = dep.cli("keys", "create", "a")
                hanging = receivers["hanging"].url
                urls = [f"http://dead{i}.bench:{port}/a/{i}" for i in range(A_DEAD_DNS)]
                urls += [f"{hanging}a/{i}" for i in range(A_HANGING)]
                b_key, dep.key = dep.key, a_key
                try:
                    dep.create_webhooks(len(urls), lambda i: urls[i], timeout_ms=A_TIMEOUT_MS)
                    published = run_publisher(dep.base, a_key, noisy_events, clients=4)
                finally:
                    dep.key = b_key
                assert isinstance(published, dict)
                if published.get("ok") != noisy_events:
                    raise RuntimeError(f"organization A's backlog was not published: {published}")
                a_before = receivers["hanging"].request_count()
            pid = dep.pids["serve"]
            start_rss, start_fds = proc_status_kib(pid, "VmRSS"), _open_descriptors(pid)
            drain = measure_drain(
                dep, healthy, deliveries // B_WEBHOOKS, deliveries, timeout=120 + deliveries / 50
            )
            end_rss, end_fds = proc_status_kib(pid, "VmRSS"), _open_descriptors(pid)
            if not drain.complete:
                print(dep.stderr_tail(), file=sys.stderr)
            dep.create_webhooks(1, lambda _i: probe_url)
            latency = asyncio.run(
                measure_latency(probe, dep.base, dep.key, probe_events, PROBE_RATE, probe_url)
            )
            if noisy:
                a_requests = receivers["hanging"].request_count() - a_before
    finally:
        probe.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "scenario": "noisy" if noisy else "alone",
        "rate": drain.delivery_rate,
        "p99_ms": latency["latency_ms"]["p99"],
        "p50_ms": latency["latency_ms"]["p50"],
        "probe_missing": latency["missing"] + latency["failure_count"],
        "rss_kib": [start_rss, end_rss],
        "fds": [start_fds, end_fds],
        "a_hanging_requests": a_requests,
        **drain.as_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hookd: one organization next to a noisy one")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--deliveries", type=int, help=f"B's drain (default {DEFAULT_DELIVERIES:,})"
    )
    parser.add_argument(
        "--noisy-events", type=int, help=f"A's backlog (default {DEFAULT_NOISY_EVENTS})"
    )
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    deliveries = args.deliveries or (SMOKE_DELIVERIES if args.smoke else DEFAULT_DELIVERIES)
    noisy_events = args.noisy_events or (SMOKE_NOISY_EVENTS if args.smoke else DEFAULT_NOISY_EVENTS)
    probe_events = SMOKE_PROBE_EVENTS if args.smoke else PROBE_EVENTS
    if not B_WEBHOOKS <= deliveries <= 1_000_000 or not 1 <= noisy_events <= 100_000:
        parser.error("--deliveries must be within 10..1,000,000 and --noisy-events 1..100,000")
    commit = hookd_commit()
    print(
        f"noisy neighbour: {args.db}; B drains {deliveries:,} deliveries to {B_WEBHOOKS} healthy "
        f"webhooks, alone and next to A's {A_DEAD_DNS} black-holed-DNS + {A_HANGING} hanging "
        f"webhooks ({noisy_events} events each); hookd at {commit}",
        flush=True,
    )
    started = time.monotonic()
    failures: list[str] = []
    kind = receiver_kind(args.smoke)
    tmp = Path(tempfile.mkdtemp(prefix="hookd-bench-noisy-dns-"))
    got: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        dns, dns_address = _start_dns(tmp)
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        stack.callback(stop_process, dns)
        receivers = {
            "healthy": stack.enter_context(Receiver.start(kind)),
            "hanging": stack.enter_context(
                Receiver.start("python", delay_ms=A_TIMEOUT_MS * 3, record_ids=False)
            ),
        }
        for noisy in (False, True):
            r = _scenario(
                noisy, args, deliveries, noisy_events, probe_events, receivers, dns_address
            )
            got[r["scenario"]] = r
            print(
                f"{r['scenario']:<5}: B drained {r['received']:,}/{r['expected_deliveries']:,} at "
                f"{r['rate']:,.0f}/s; B's probe p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms; "
                f"hookd RSS {r['rss_kib'][0] / 1024:.0f} -> {r['rss_kib'][1] / 1024:.0f} MiB, "
                f"open fds {r['fds'][0]} -> {r['fds'][1]}"
                + (f"; A's hanging receiver got {r['a_hanging_requests']:,}" if noisy else ""),
                flush=True,
            )
            if not r["complete"]:
                failures.append(
                    f"{r['scenario']}: {r['received']} of {r['expected_deliveries']} arrived"
                )
            if r["probe_missing"]:
                failures.append(
                    f"{r['scenario']}: {r['probe_missing']} probe events lost or failed"
                )
    alone, noisy_r = got["alone"], got["noisy"]
    rate_ratio = noisy_r["rate"] / alone["rate"] if alone["rate"] else float("nan")
    p99_ratio = noisy_r["p99_ms"] / alone["p99_ms"] if alone["p99_ms"] else float("nan")
    results = [
        Result(
            f"noisy neighbour, {args.db}: B's drain rate next to A",
            noisy_r["rate"],
            "deliveries/s",
            alone["rate"],
            extra={"target": f">= {TARGET_RATE}x alone", "met": rate_ratio >= TARGET_RATE},
        ),
        Result(
            f"noisy neighbour, {args.db}: B's publish->arrival p99 next to A",
            noisy_r["p99_ms"],
            "ms",
            alone["p99_ms"],
            extra={"target": f"<= {TARGET_P99}x alone", "met": p99_ratio <= TARGET_P99},
        ),
        Result(
            f"noisy neighbour, {args.db}: hookd RSS at the end of B's drain next to A",
            noisy_r["rss_kib"][1] / 1024,
            "MiB",
            noisy_r["rss_kib"][0] / 1024,
        ),
        Result(
            f"noisy neighbour, {args.db}: hookd open descriptors at the end of B's drain",
            noisy_r["fds"][1],
            "fds",
            noisy_r["fds"][0],
        ),
    ]
    print()
    print_table(
        results, title="noisy neighbour: B next to A, vs B alone (RSS and fds: end vs start)"
    )
    print(
        f"B's drain rate {rate_ratio:.2f}x alone (target >= {TARGET_RATE}), p99 {p99_ratio:.2f}x "
        f"alone (target <= {TARGET_P99}); took {time.monotonic() - started:.0f} s"
    )
    if not (args.smoke or args.no_save):
        append_jsonl(
            RESULTS_NAME,
            {
                "name": "noisy neighbour",
                "db": args.db,
                "deliveries": deliveries,
                "noisy_events": noisy_events,
                "commit": commit,
                "label": args.label,
                "rate_ratio": rate_ratio,
                "p99_ratio": p99_ratio,
                "scenarios": got,
            },
        )
    return finish(args.summary_file, "noisy_neighbour", results, failures)


if __name__ == "__main__":
    sys.exit(main())
