"""Failure load: do failing endpoints slow the delivery to healthy ones?

``hookd serve`` (SQLite by default, ``--db postgres``, ``--mode split``) with 10 webhooks
subscribed to ``post.created``, in two groups of 5:

* **healthy**: each a path on nginx A (``204``);
* **the others**: in the *failing* scenario, 3 on an nginx answering ``500`` and 2 on the
  python receiver (``bench/receiver.py``) holding every answer for 3 s, longer than their
  ``requestConfig.timeoutMs`` of 1,000 ms, so hookd times out; in the *all healthy*
  scenario, paths on a second nginx answering ``204``.

Each receiver serves one behaviour (the python receiver's status and delay are the same for
every path), hence four receivers. In each scenario a fresh deployment (fresh database)
gets ``--events`` (2,000) events from 32 concurrent publishers (``bench/publisher.py``),
and the measure is the healthy group's delivery rate: its 5 x 2,000 deliveries over the
time from the first publish to nginx A counting the last of them. The scenarios alternate
(F H, H F, ...) for ``--runs`` (3) runs; the result is the median of the per-run ratios
failing / all-healthy (target: >= 0.8, "within 20 %").

Retries: ``HOOKD_RETRY_SCHEDULE`` is ``1`` ten times (``--retry-schedule``), so a failing
delivery is tried again about every second (plus the 1 s timeout) for as long as the
measurement lasts: the worst case for the healthy webhooks, whose work competes with a
stream of retries. With hookd's default (60 s, 1 h, 6 h) nothing is retried within a
measurement of a few seconds, so it would only show the cost of first attempts.
``HOOKD_SUSPEND_AFTER`` is set to 1,000,000 so that the failing webhooks are not
suspended part way (which would take their load away); in the all-healthy scenario both
settings change nothing. The attempts the failing receivers got while the healthy group
was drained are reported too. Results: ``bench/results/failure.jsonl``.

Command line::

    python bench/failure.py                       # SQLite, 3 runs, ~1 min
    python bench/failure.py --db postgres
    python bench/failure.py --retry-schedule default
    python bench/failure.py --smoke               # 100 events, 1 run, checked
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Result, add_run_arguments, append_jsonl, print_table
from bench.harness import Deployment, Mode, finish, hookd_commit, measure_drain, median
from bench.receiver import Receiver, receiver_kind

__all__ = ["main"]

RESULTS_NAME = "failure"
DEFAULT_EVENTS = 2000
SMOKE_EVENTS = 100
DEFAULT_RUNS = 3
HEALTHY = 5
FAILING_500 = 3
FAILING_TIMEOUT = 2
TIMEOUT_MS = 1000
SLOW_DELAY_MS = 3000
SHORT_SCHEDULE = ",".join(["1"] * 10)
TARGET_RATIO = 0.8


def _scenario(
    name: str,
    receivers: dict[str, Receiver],
    db: str,
    mode: Mode,
    events: int,
    env: dict[str, str],
    pg_admin_url: str,
    warmup: int,
) -> dict[str, Any]:
    """One scenario on a fresh deployment; returns the healthy group's drain and counts."""
    healthy = receivers["healthy"]
    if name == "failing":
        others = [f"{receivers['500'].url}fail500/{i}" for i in range(FAILING_500)] + [
            f"{receivers['slow'].url}timeout/{i}" for i in range(FAILING_TIMEOUT)
        ]
        watched: tuple[str, ...] = ("500", "slow")
    else:
        others = [
            f"{receivers['other'].url}other/{i}" for i in range(FAILING_500 + FAILING_TIMEOUT)
        ]
        watched = ("other",)
    urls = [f"{healthy.url}healthy/{i}" for i in range(HEALTHY)] + others
    tmp = Path(tempfile.mkdtemp(prefix="hookd-bench-failure-"))
    try:
        with Deployment(db, tmp, mode=mode, extra_env=env, pg_admin_url=pg_admin_url) as dep:
            dep.start()
            dep.create_webhooks(len(urls), lambda i: urls[i], timeout_ms=TIMEOUT_MS)
            if warmup:
                before = healthy.request_count()
                warm = measure_drain(dep, healthy, warmup, warmup * HEALTHY, timeout=60)
                if not warm.complete:
                    raise RuntimeError(
                        f"warm-up: {warm.received} of {warm.expected} healthy deliveries "
                        f"(healthy receiver {healthy.request_count() - before})\n"
                        + dep.stderr_tail()
                    )
                dep.settle()
            other_before = {k: receivers[k].request_count() for k in watched}
            res = measure_drain(
                dep, healthy, events, events * HEALTHY, timeout=120 + events * HEALTHY / 100
            )
            others_got = {k: receivers[k].request_count() - other_before[k] for k in watched}
            if not res.complete:
                print(dep.stderr_tail(), file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "scenario": name,
        "healthy_rate": res.delivery_rate,
        "others_requests": others_got,
        "others_rate": {k: v / res.seconds for k, v in others_got.items()}
        if res.seconds > 0
        else {},
        **res.as_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hookd: healthy endpoints next to failing ones")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--mode", choices=["serve", "split"], default="serve")
    parser.add_argument(
        "--events", type=int, help=f"default {DEFAULT_EVENTS} ({SMOKE_EVENTS} with --smoke)"
    )
    parser.add_argument("--runs", type=int, help=f"default {DEFAULT_RUNS} (1 with --smoke)")
    parser.add_argument(
        "--retry-schedule",
        default=SHORT_SCHEDULE,
        help=f"HOOKD_RETRY_SCHEDULE (default {SHORT_SCHEDULE}; 'default': hookd's own)",
    )
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.mode == "split" and args.db != "postgres":
        parser.error("--mode split needs --db postgres")
    events = args.events or (SMOKE_EVENTS if args.smoke else DEFAULT_EVENTS)
    runs = max(1, min(args.runs or (1 if args.smoke else DEFAULT_RUNS), 20))
    if not 1 <= events <= 1_000_000:
        parser.error("--events must be within 1..1,000,000")
    env = {"HOOKD_SUSPEND_AFTER": "1000000"}
    if args.retry_schedule != "default":
        env["HOOKD_RETRY_SCHEDULE"] = args.retry_schedule
    commit = hookd_commit()
    print(
        f"failure: {args.db}, {args.mode}, {HEALTHY} healthy + {FAILING_500} answering 500 + "
        f"{FAILING_TIMEOUT} timing out (timeoutMs {TIMEOUT_MS}, answer after {SLOW_DELAY_MS} ms) "
        f"vs all healthy; {events:,} events, {runs} run(s), retry schedule "
        f"{args.retry_schedule}; hookd at {commit}",
        flush=True,
    )
    started = time.monotonic()
    out: list[dict[str, Any]] = []
    failures: list[str] = []
    kind = receiver_kind(args.smoke)
    with ExitStack() as stack:
        receivers = {
            "healthy": stack.enter_context(Receiver.start(kind)),
            "other": stack.enter_context(Receiver.start(kind)),
            "500": stack.enter_context(Receiver.start(kind, status=500)),
            "slow": stack.enter_context(
                Receiver.start("python", delay_ms=SLOW_DELAY_MS, record_ids=False)
            ),
        }
        for run in range(1, runs + 1):
            order = ("failing", "healthy") if run % 2 else ("healthy", "failing")
            got: dict[str, dict[str, Any]] = {}
            for name in order:
                got[name] = _scenario(
                    name,
                    receivers,
                    args.db,
                    args.mode,
                    events,
                    env,
                    args.pg_admin_url,
                    20 if args.smoke else 100,
                )
                r = got[name]
                print(
                    f"run {run} {name:<8}: healthy group {r['healthy_rate']:,.0f} deliveries/s "
                    f"({r['received']:,}/{r['expected_deliveries']:,} in {r['seconds']:.2f} s), "
                    f"publish {r['publish_rate']:,.0f} events/s, hookd CPU "
                    f"{r['hookd_cpu_us_per_delivery']:.0f} us per healthy delivery; the other "
                    "receivers got "
                    + ", ".join(
                        f"{k} {v:,} ({r['others_rate'].get(k, 0):,.0f}/s)"
                        for k, v in r["others_requests"].items()
                    ),
                    flush=True,
                )
                if not r["complete"]:
                    failures.append(
                        f"run {run} {name}: {r['received']} of {r['expected_deliveries']} healthy deliveries arrived"
                    )
                if r["publish_ok"] != events:
                    failures.append(
                        f"run {run} {name}: {r['publish_ok']} of {events} publishes succeeded"
                    )
                if r["extra_after"]:
                    failures.append(
                        f"run {run} {name}: {r['extra_after']} healthy deliveries more than expected"
                    )
            ratio = got["failing"]["healthy_rate"] / got["healthy"]["healthy_rate"]
            print(f"run {run}: ratio failing / all healthy {ratio:.2f}", flush=True)
            out.append(
                {"run": run, "order": list(order), "ratio": ratio, **{k: v for k, v in got.items()}}
            )

    ratios = [o["ratio"] for o in out]
    fail_rate = median([o["failing"]["healthy_rate"] for o in out])
    ok_rate = median([o["healthy"]["healthy_rate"] for o in out])
    med_ratio = median(ratios)
    met = med_ratio >= TARGET_RATIO
    label = f"failure load, {args.db}" + ("" if args.mode == "serve" else ", api + 2 workers")
    results = [
        Result(
            f"{label}: healthy webhooks' delivery rate",
            fail_rate,
            "deliveries/s",
            ok_rate,
            extra={
                "target": f">= {TARGET_RATIO}x all healthy",
                "met": met,
            },
            paired_ratio=med_ratio,
        ),
        Result(f"{label}: the same, all webhooks healthy", ok_rate, "deliveries/s"),
        Result(
            f"{label}: hookd CPU per healthy delivery",
            median([o["failing"]["hookd_cpu_us_per_delivery"] for o in out]),
            "us",
            median([o["healthy"]["hookd_cpu_us_per_delivery"] for o in out]),
        ),
    ]
    print()
    print_table(results, title=f"{label}: medians of {runs} run(s), vs the all-healthy scenario")
    print(
        f"per-run ratios: {', '.join(f'{x:.2f}' for x in ratios)} (median {med_ratio:.2f}); "
        f"target >= {TARGET_RATIO}x: {'met' if met else 'MISSED'}"
    )
    print(f"took {time.monotonic() - started:.1f} s")
    if not (args.smoke or args.no_save):
        common = {
            "db": args.db,
            "mode": args.mode,
            "events": events,
            "retry_schedule": args.retry_schedule,
            "commit": commit,
            "label": args.label,
        }
        for o in out:
            append_jsonl(RESULTS_NAME, {"name": f"{label} run", "kind": "run", **common, **o})
        append_jsonl(
            RESULTS_NAME,
            {
                "name": label,
                "kind": "summary",
                **common,
                "ratio": med_ratio,
                "ratios": ratios,
                "failing_rate": fail_rate,
                "healthy_rate": ok_rate,
            },
        )
    return finish(args.summary_file, "failure", results[:1] + results[2:], failures)


if __name__ == "__main__":
    sys.exit(main())
