"""Crash recovery: how soon delivery is back at full speed after ``kill -9`` and a restart.

hookd on a fresh database (SQLite: ``hookd serve``; PostgreSQL: ``hookd api`` + 2 ``hookd
worker``), ``--webhooks`` (10) webhooks, each with its own path on one python receiver
(``bench/receiver.py``) that holds every answer ``--delay-ms`` (200 ms): the per-webhook
in-flight cap (10) is what limits the rate, as in a drain to real, slower receivers, and it
is what a dead process's leases used to block. A separate publisher process publishes
``--deliveries / --webhooks`` events (50,000 deliveries); then, ``--first-kill`` (12) s after
the last publish and every ``--kill-every`` (25) s after that, one process is killed with
SIGKILL and started again at once:

* SQLite: ``hookd serve``, three times;
* PostgreSQL: worker 1, the api, worker 2.

The receiver's count is sampled every 0.1 s. For each kill: the delivery rate over the 10 s
before it, over 5 to 15 s after it, their ratio (target: at least 0.8), and the longest
time without any delivery after it. At the end, from the receiver's record of every
request (path and ``webhook-id``) against the database's deliveries: lost (delivered
never: must be 0) and duplicates (delivered more than once: at most the deliveries leased
at the kills, the attempts in flight then). Results: ``bench/results/crash_recovery.jsonl``.

Command line::

    python bench/crash_recovery.py --db sqlite            # 50,000 deliveries, ~2.5 min
    python bench/crash_recovery.py --db postgres
    python bench/crash_recovery.py --db sqlite --smoke    # 5,000 deliveries, one kill, checked

Exits 1 if a delivery was lost, duplicates exceed the bound, or a process or publish failed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Result, add_run_arguments, append_jsonl, print_table
from bench.harness import Deployment, Mode, hookd_commit, run_publisher, write_summary
from bench.receiver import Receiver

__all__ = ["Kill", "main", "rate_between"]

RESULTS_NAME = "crash_recovery"
TARGET_RATIO = 0.8
KILLED: dict[str, tuple[str, ...]] = {
    "sqlite": ("serve", "serve", "serve"),
    "postgres": ("worker-1", "api", "worker-2"),
}
SAMPLE_EVERY = 0.1


@dataclass(frozen=True)
class Windows:
    """Seconds: the window before each kill, and the one after it (start, end)."""

    before: float
    after: tuple[float, float]


FULL = Windows(before=10.0, after=(5.0, 15.0))
# Smoke runs check that the benchmark works, not the target: short windows, one kill.
SMOKE = Windows(before=2.0, after=(5.0, 7.0))


@dataclass
class Kill:
    role: str
    at: float  # time.monotonic() of the SIGKILL
    leased: int  # deliveries leased in the database just before it
    restarted_after: float = 0.0  # seconds until the new process listened (or was started)
    before: float = 0.0  # deliveries/s
    after: float = 0.0
    stalled: float = 0.0  # the longest time without a delivery after the kill, seconds
    drain_over: bool = False  # the drain ended inside the window after: the rate means little

    @property
    def ratio(self) -> float:
        return self.after / self.before if self.before else float("nan")


class Sampler:
    """The receiver's request count every ``SAMPLE_EVERY`` seconds, in a thread."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.monotonic(), self.receiver.request_count()))
            self._halt.wait(SAMPLE_EVERY)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._thread.join(10)

    def count(self) -> int:
        return self.samples[-1][1] if self.samples else 0


def _count_at(samples: list[tuple[float, int]], at: float) -> int:
    found = 0
    for t, n in samples:
        if t > at:
            break
        found = n
    return found


def rate_between(samples: list[tuple[float, int]], start: float, end: float) -> float:
    """Deliveries per second between two moments, from the sampled counts."""
    return (_count_at(samples, end) - _count_at(samples, start)) / (end - start)


def longest_stall(samples: list[tuple[float, int]], start: float, end: float) -> float:
    """The longest time between ``start`` and ``end`` in which the count did not move."""
    longest, since, last = 0.0, start, _count_at(samples, start)
    for t, n in samples:
        if t <= start or t > end:
            continue
        if n != last:
            longest, since, last = max(longest, t - since), t, n
    return max(longest, min(end, samples[-1][0]) - since)


def lost_and_duplicates(
    dep: Deployment, webhook_ids: list[str], targets: list[str]
) -> tuple[int, int, int]:
    """(deliveries in the database, never delivered, delivered more than once)."""
    path_of = {hook: f"/hook/{i}" for i, hook in enumerate(webhook_ids)}
    rows = dep.sql_rows("SELECT webhook_id, event_id FROM deliveries")
    expected = {f"{path_of[str(w)]} {e}" for w, e in rows}
    arrived = Counter(targets)
    lost = len(expected - set(arrived))
    duplicates = sum(n - 1 for key, n in arrived.items() if key in expected and n > 1)
    return len(expected), lost, duplicates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hookd: delivery rate around kill -9 + restart")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--deliveries", type=int, help="default 50,000 (5,000 with --smoke)")
    parser.add_argument("--webhooks", type=int, default=10)
    parser.add_argument("--delay-ms", type=float, default=200.0, help="the receiver's answer delay")
    parser.add_argument("--kills", type=int, help="default 3 (1 with --smoke)")
    parser.add_argument("--first-kill", type=float, help="s after the last publish (12; smoke 2)")
    parser.add_argument("--kill-every", type=float, default=25.0)
    add_run_arguments(parser)
    args = parser.parse_args(argv)

    windows = SMOKE if args.smoke else FULL
    deliveries = args.deliveries or (5000 if args.smoke else 50_000)
    kills = max(1, min(args.kills or (1 if args.smoke else 3), len(KILLED[args.db])))
    first_kill = args.first_kill or (windows.before if args.smoke else 12.0)
    events = max(1, deliveries // args.webhooks)
    expected = events * args.webhooks
    mode: Mode = "serve" if args.db == "sqlite" else "split"
    label = f"crash recovery, {args.db}, " + (
        "hookd serve" if mode == "serve" else "api + 2 workers"
    )
    commit = hookd_commit()
    print(
        f"{label}: {args.webhooks} webhooks x {events:,} events = {expected:,} deliveries, "
        f"receiver delay {args.delay_ms:.0f} ms, kills of {', '.join(KILLED[args.db][:kills])}; "
        f"hookd at {commit}",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="hookd-bench-crash-"))
    failures: list[str] = []
    done: list[Kill] = []
    counts = (0, 0, 0)
    try:
        with (
            Receiver.start("python", delay_ms=args.delay_ms, record_ids=True) as receiver,
            Deployment(args.db, tmp, mode=mode, webhook_limit=args.webhooks) as dep,
        ):
            dep.start()
            webhook_ids = dep.create_webhooks(args.webhooks, lambda i: f"{receiver.url}hook/{i}")
            dep.settle()
            with Sampler(receiver) as sampler:
                published = run_publisher(dep.base, dep.key, events, clients=32)
                assert isinstance(published, dict)
                if published["ok"] != events:
                    failures.append(f"{published['ok']} of {events} publishes succeeded")
                for n, role in enumerate(KILLED[args.db][:kills]):
                    at = float(published["last_end"]) + first_kill + n * args.kill_every
                    time.sleep(max(0.0, at - time.monotonic()))
                    kill = Kill(role, 0.0, int(dep.sql_value(_LEASED)))
                    kill.at = time.monotonic()
                    dep.kill(role)
                    dep.restart(role)
                    kill.restarted_after = time.monotonic() - kill.at
                    done.append(kill)
                    print(
                        f"kill {n + 1}: {role} with {kill.leased} deliveries leased; started "
                        f"again, {kill.restarted_after:.1f} s",
                        flush=True,
                    )
                # Drained: every delivery recorded as sent (the receiver's count alone
                # would be reached early, duplicates included).
                deadline = time.monotonic() + 60 + expected / 100
                while dep.sql_value(_WAITING) and time.monotonic() < deadline:
                    dep.check_alive()
                    time.sleep(0.5)
                time.sleep(max(windows.after[1] - (time.monotonic() - done[-1].at), 1.0))
            samples = sampler.samples
            drained_at = next((t for t, n in samples if n >= expected), float("inf"))
            if dep.sql_value(_WAITING):
                failures.append("the drain did not end")
            for kill in done:
                kill.before = rate_between(samples, kill.at - windows.before, kill.at)
                kill.after = rate_between(
                    samples, kill.at + windows.after[0], kill.at + windows.after[1]
                )
                kill.stalled = longest_stall(samples, kill.at, kill.at + windows.after[1])
                kill.drain_over = drained_at < kill.at + windows.after[1]
            stats = receiver.stats(ids=True)
            dep.stop()
            counts = lost_and_duplicates(dep, webhook_ids, stats["targets"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    in_db, lost, duplicates = counts
    bound = sum(k.leased for k in done)
    if in_db != expected:
        failures.append(f"{in_db} deliveries in the database, {expected} published")
    if lost:
        failures.append(f"{lost} deliveries never arrived")
    if duplicates > bound:
        failures.append(f"{duplicates} duplicates, more than the {bound} leased at the kills")
    results = [
        Result(
            f"{label}: kill {n} ({k.role}), rate {windows.after[0]:.0f}-{windows.after[1]:.0f} s "
            f"after vs {windows.before:.0f} s before",
            k.after,
            "deliveries/s",
            k.before,
            extra={
                "target": f">= {TARGET_RATIO}x",
                "met": None if k.drain_over else k.ratio >= TARGET_RATIO,
                "stalled_s": round(k.stalled, 2),
                "restarted_after_s": round(k.restarted_after, 2),
                "leased_at_kill": k.leased,
            },
        )
        for n, k in enumerate(done, 1)
    ]
    results += [
        Result(
            f"{label}: lost deliveries", lost, "deliveries", extra={"target": "0", "met": not lost}
        ),
        Result(
            f"{label}: duplicates",
            duplicates,
            "deliveries",
            extra={"target": f"<= {bound} (leased at the kills)", "met": duplicates <= bound},
        ),
    ]
    print()
    print_table(results, title=f"{label} ({expected:,} deliveries)")
    for n, k in enumerate(done, 1):
        print(
            f"kill {n} ({k.role}): {k.before:,.0f}/s before, {k.after:,.0f}/s after "
            f"(ratio {k.ratio:.2f}), longest stall {k.stalled:.1f} s, {k.leased} leased"
            + (" (the drain ended inside the window after)" if k.drain_over else "")
        )
    ok = not failures
    if args.summary_file:
        write_summary(args.summary_file, RESULTS_NAME, results, ok)
    if not (args.smoke or args.no_save):
        append_jsonl(
            RESULTS_NAME,
            {
                "name": RESULTS_NAME,
                "commit": commit,
                "label": args.label,
                "db": args.db,
                "deliveries": expected,
                "delay_ms": args.delay_ms,
                "kills": [vars(k) | {"ratio": k.ratio} for k in done],
                "lost": lost,
                "duplicates": duplicates,
                "failures": failures,
            },
        )
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 0 if ok else 1


_LEASED = "SELECT count(*) FROM deliveries WHERE lease_until IS NOT NULL"
_WAITING = "SELECT count(*) FROM deliveries WHERE status <> 'succeeded'"


if __name__ == "__main__":
    sys.exit(main())
