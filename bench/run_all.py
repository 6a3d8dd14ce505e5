"""Run every benchmark of hookd, then print one table of figures, ratios and targets.

Each benchmark runs as its own process, one after the other (they would disturb each
other's figures otherwise), with its output shown as it goes; each hands its headline
figures back through a summary file. At the end: one table (figure, unit, ratio against
that benchmark's own baseline measured in the same run, the issue's target and whether it
is met) and one line per benchmark that failed.

    python bench/run_all.py              # everything, full size (~15 min on 2 cores)
    python bench/run_all.py --smoke      # every smoke run (~1 min): exits 1 if one fails
    python bench/run_all.py --only drain-sqlite,latency-sqlite
    python bench/run_all.py --list
    python bench/run_all.py --snapshot HEAD   # hookd as committed, whatever the working tree holds

Full runs append their results to ``bench/results/<benchmark>.jsonl`` as usual, and the
combined table to ``bench/results/run_all.jsonl``. The exit status is 1 if a benchmark
failed (a missing delivery, an error, a crash), in either mode; a missed target is
reported, not an error.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH_DIR, append_jsonl
from bench.harness import hookd_commit

__all__ = ["BENCHMARKS", "main"]


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    args: tuple[str, ...] = ()
    full_args: tuple[str, ...] = ()  # only in full runs
    full_timeout: float = 1800.0
    smoke_timeout: float = 120.0


BENCHMARKS: tuple[Bench, ...] = (
    Bench("baseline", "baseline.py", full_args=("--runs", "3")),
    Bench(
        "api-sqlite",
        "api_throughput.py",
        # The limiter run (HOOKD_RATE_LIMIT=100000000) is not one of the targets.
        full_args=("--no-limiter-run",),
    ),
    Bench("drain-sqlite", "drain.py", ("--db", "sqlite", "--mode", "serve")),
    Bench("drain-postgres-serve", "drain.py", ("--db", "postgres", "--mode", "serve")),
    Bench("drain-postgres-split", "drain.py", ("--db", "postgres", "--mode", "split")),
    # The same on a PostgreSQL cluster the benchmark starts itself with production-like
    # settings (bench/pgcluster.py: autovacuum on, shared_buffers 25% of RAM up to 4GB,
    # pg_stat_statements). Its smoke run checks that the cluster starts and stops (~20 s).
    Bench(
        "drain-postgres-split-prod",
        "drain.py",
        ("--db", "postgres", "--mode", "split", "--pg-cluster", "prod"),
    ),
    Bench("latency-sqlite", "latency.py", ("--db", "sqlite")),
    Bench("latency-postgres", "latency.py", ("--db", "postgres")),
    Bench("backlog", "backlog.py", ("--mode", "serve"), full_timeout=3600.0),
    Bench("failure-sqlite", "failure.py", ("--db", "sqlite")),
    Bench("crash-recovery-sqlite", "crash_recovery.py", ("--db", "sqlite"), full_timeout=900.0),
    Bench("crash-recovery-postgres", "crash_recovery.py", ("--db", "postgres"), full_timeout=900.0),
    Bench("noisy-neighbour-sqlite", "noisy_neighbour.py", ("--db", "sqlite")),
    Bench("fanout-sqlite", "fanout.py", ("--db", "sqlite")),
    Bench("fanout-postgres", "fanout.py", ("--db", "postgres")),
    Bench("listing", "listing.py", ("--db", "both")),
    Bench("dashboard", "dashboard.py", ("--db", "both")),
    Bench("instructions", "instructions.py", full_timeout=2400.0),
    # hookd's side of a publish and of a delivery on PostgreSQL (the server outside valgrind).
    Bench(
        "instructions-postgres",
        "instructions.py",
        ("--db", "postgres", "--routes", "de"),
        full_timeout=2400.0,
    ),
    Bench("helper-thread", "helper_thread.py"),
    Bench("metrics", "metrics.py", full_timeout=2400.0),
    # Regenerates docs/metrics.svg in a full run (not with --no-save); checked either way.
    Bench("metrics-plot", "metrics_plot.py", full_timeout=300.0),
)


def _fmt(value: Any) -> str:
    if not isinstance(value, int | float) or value != value:
        return "-" if value is None else str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:,.2f}"
    return f"{value:.3g}"


def print_combined(rows: list[dict[str, Any]], smoke: bool = False) -> None:
    """One table of every benchmark's headline rows. Smoke figures come from runs far too
    small to judge a target, so their "met" column says so instead."""
    header = ("measure", "figure", "unit", "vs baseline", "target", "met")
    body = []
    for r in rows:
        ratio = r.get("ratio")
        met = r.get("met")
        if smoke and met is not None:
            met = "smoke"
        body.append(
            (
                str(r["name"]),
                _fmt(r.get("value")),
                str(r.get("unit", "")),
                "-" if ratio is None else f"{ratio:.2f}x",
                str(r.get("target") or "-"),
                "-" if met is None else met if isinstance(met, str) else ("yes" if met else "NO"),
            )
        )
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    aligns = ("<", ">", "<", ">", "<", "<")
    for n, row in enumerate([header, *body]):
        print(
            "  ".join(f"{c:{a}{w}}" for c, a, w in zip(row, aligns, widths, strict=True)).rstrip()
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores the whole machine kept busy over the next ``seconds`` (/proc/stat)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields[:8]) - idle, sum(fields[:8])

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except (OSError, ValueError):
        return float("nan")
    cpus = os.cpu_count() or 1
    return cpus * (busy1 - busy0) / max(1, total1 - total0)


def wait_for_quiet(limit: float, threshold: float) -> tuple[float, float]:
    """Wait up to ``limit`` s for a 1 s window with under ``threshold`` cores busy; returns
    (the last window's busy cores, seconds waited)."""
    started = time.monotonic()
    while True:
        busy = busy_cores()
        waited = time.monotonic() - started
        if busy < threshold or waited >= limit or stopping:
            return busy, waited


stopping = False


def _stop(signum: int, _frame: object) -> None:
    global stopping
    stopping = True
    if _child is not None and _child.poll() is None:
        # The benchmark cleans up on SIGINT (stops its processes, drops its database).
        _child.send_signal(signal.SIGINT)


_child: subprocess.Popen[bytes] | None = None


def snapshot(ref: str, into: Path) -> str:
    """Extract ``hookd/`` as committed at ``ref`` into ``into``; returns the short commit."""
    repo = str(BENCH_DIR.parent)
    sha = subprocess.run(
        ["git", "-C", repo, "rev-parse", "--short", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", repo, "archive", "--format=tar", sha, "hookd"],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return sha


def run_child(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> int:
    """Run one benchmark; on timeout (exit -1) or SIGINT/SIGTERM of this process, ask it to
    stop with SIGINT (it cleans up), and kill it (by pid) if it has not stopped 60 s later."""
    global _child
    # A session of its own: a Ctrl-C reaches only this process, which forwards one SIGINT.
    _child = subprocess.Popen(argv, start_new_session=True, env=env)
    try:
        try:
            return _child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _child.send_signal(signal.SIGINT)
            try:
                _child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                _child.kill()
                _child.wait()
            return -1
    finally:
        if _child.poll() is None:
            try:
                _child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                _child.kill()
                _child.wait()
        _child = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run every hookd benchmark")
    parser.add_argument("--smoke", action="store_true", help="every smoke run, checked")
    parser.add_argument("--only", help="comma-separated names (see --list)")
    parser.add_argument("--skip", help="comma-separated names to leave out")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--no-save", action="store_true", help="full runs: save nothing")
    parser.add_argument("--label", help="stored with every full result")
    parser.add_argument(
        "--snapshot",
        metavar="REF",
        help="run hookd as committed at REF (e.g. HEAD), not the working tree: git archive "
        "into a temporary directory put first on PYTHONPATH",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="S",
        help="before each benchmark wait up to S s for the machine to be quiet (default 0)",
    )
    parser.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.25,
        metavar="CORES",
        help="quiet: under this many cores busy over 1 s (default 0.25)",
    )
    args = parser.parse_args(argv)
    if args.list:
        width = max(len(b.name) for b in BENCHMARKS)
        for b in BENCHMARKS:
            print(f"{b.name:<{width}} bench/{b.script} {' '.join(b.args + b.full_args)}")
        return 0
    names = {b.name for b in BENCHMARKS}
    only = set(args.only.split(",")) if args.only else names
    skip = set(args.skip.split(",")) if args.skip else set()
    unknown = (only | skip) - names
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))} (see --list)")
    chosen = [b for b in BENCHMARKS if b.name in only and b.name not in skip]
    env: dict[str, str] | None = None
    snap_dir = None
    if args.snapshot:
        snap_dir = tempfile.TemporaryDirectory(prefix="hookd-bench-snapshot-")
        sha = snapshot(args.snapshot, Path(snap_dir.name))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (snap_dir.name, os.environ.get("PYTHONPATH", "")) if p
        )
        env["HOOKD_BENCH_COMMIT"] = sha
        os.environ["HOOKD_BENCH_COMMIT"] = sha
    commit = hookd_commit()
    print(
        f"run_all: {'smoke' if args.smoke else 'full'}, {len(chosen)} benchmark(s), "
        f"hookd at {commit}",
        flush=True,
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    timings: dict[str, float] = {}
    busy: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="hookd-bench-all-") as tmp:
        for b in chosen:
            summary = Path(tmp) / f"{b.name}.json"
            argv_b = [sys.executable, str(BENCH_DIR / b.script), *b.args]
            if args.smoke:
                argv_b.append("--smoke")
            else:
                argv_b += list(b.full_args)
                if args.no_save:
                    argv_b.append("--no-save")
                if args.label and b.script != "baseline.py":
                    argv_b += ["--label", args.label]
            argv_b += ["--summary-file", str(summary)]
            print(f"\n=== {b.name}: {' '.join(argv_b[1:-2])}", flush=True)
            if stopping:
                break
            if args.smoke:
                busy[b.name] = float("nan")
            else:
                busy[b.name], waited = wait_for_quiet(args.quiet_wait, args.quiet_threshold)
                print(
                    f"=== other processes kept {busy[b.name]:.2f} cores busy just before"
                    + (f" (waited {waited:.0f} s)" if waited >= 1 else ""),
                    flush=True,
                )
            t0 = time.monotonic()
            code = run_child(argv_b, b.smoke_timeout if args.smoke else b.full_timeout, env)
            if code == -1:
                print(f"=== {b.name}: timed out", flush=True)
            if stopping:
                failed.append(f"{b.name} (interrupted)")
                break
            timings[b.name] = time.monotonic() - t0
            data: dict[str, Any] = {}
            if summary.exists():
                data = json.loads(summary.read_text())
                for row in data.get("rows", []):
                    rows.append({"benchmark": b.name, **row})
            if code != 0 or not data.get("ok", False):
                failed.append(f"{b.name} (exit {code})")
            print(f"=== {b.name}: exit {code}, {timings[b.name]:.1f} s", flush=True)

    total = time.monotonic() - started
    print(
        f"\n=== all benchmarks ({'smoke' if args.smoke else 'full'}), hookd at {commit}, "
        f"{total:.0f} s; ratios are against each benchmark's own baseline, same run"
    )
    print_combined(rows, smoke=args.smoke)
    print("\ntime per benchmark: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    if not args.smoke:
        print(
            "cores kept busy by other processes just before each: "
            + ", ".join(f"{k} {v:.2f}" for k, v in busy.items())
        )
    if not args.smoke and not args.no_save:
        append_jsonl(
            "run_all",
            {
                "name": "run_all",
                "commit": commit,
                "label": args.label,
                "rows": rows,
                "failed": failed,
                "seconds": total,
                "timings": timings,
                "busy_cores_before": busy,
            },
        )
    if snap_dir is not None:
        snap_dir.cleanup()
    for f in failed:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
