"""Drain: how fast hookd publishes and delivers a burst, against the raw-sender baseline.

``hookd serve`` (or, with ``--mode split``, ``hookd api`` + 2 ``hookd worker`` processes on
PostgreSQL) on a fresh database, ``--webhooks`` (10) webhooks subscribed to
``post.created``, each with its own path on one nginx receiver (``bench/receiver.py``).
A separate publisher process (``bench/publisher.py``: aiohttp + uvloop, 32 keep-alive
clients) publishes ``--events`` (2,000) events with a ~1 KiB item: 20,000 deliveries.

Reported per run and as medians over ``--runs`` (3):

* publish rate: events / (end of the last publish request - start of the first);
* delivery rate: deliveries / (start of the first publish -> the receiver's count, polled
  every 5 ms through nginx's ``stub_status``, reaching every delivery);
* hookd's CPU (all its processes, all threads) per delivery, and the PostgreSQL backends'
  CPU; hookd's peak RSS (``VmHWM``) per process;
* the ratio of the delivery rate to the baseline (``bench/baseline.py``'s
  :func:`run_baseline`, 64 connections, 20,000 requests) against the same nginx, measured
  in the same run. Baseline and hookd alternate (B H, H B, ...).

On PostgreSQL (``--db postgres``) the database is, with ``--pg-cluster machine`` (the
default), one on the server at ``--pg-admin-url`` (this machine's: ``autovacuum=off``,
``shared_buffers=128MB``), or with ``--pg-cluster prod`` one on a cluster the benchmark
starts itself with production-like settings (``bench/pgcluster.py``: autovacuum on,
shared_buffers 25% of RAM up to 4GB, pg_stat_statements, ...). Either way each run also
reports the PostgreSQL backends' CPU per delivery and the churn of the drain
(``pg_stat_user_tables`` before and after, read once the backends flushed their counts,
see ``bench/pgcluster.py``): dead row versions made per delivery, updates per delivery
and the share of HOT updates per table, and, where pg_stat_statements is loaded (the prod
cluster), the top 15 statements by execution time (``--statements`` prints them).

Each run gets a fresh deployment and database (``--reuse-deployment``: one for all runs;
on PostgreSQL later runs are then slower, as dead rows pile up, see ``backlog.py``), a
warm-up batch of 100 events, and in split mode the time for the workers to split the
per-webhook cap (7 s). Results are appended to ``bench/results/drain.jsonl``.

Command line::

    python bench/drain.py                                   # SQLite, hookd serve, 3 runs
    python bench/drain.py --db postgres --mode split        # api + 2 workers
    python bench/drain.py --db postgres --mode split --pg-cluster prod --statements
    python bench/drain.py --smoke                           # 100 events, checked, ~5 s
    python bench/drain.py --profile /tmp/prof               # + py-spy of one more drain

Exits 1 if a delivery is missing (or arrived twice), or a publish failed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api_throughput import summarise_profile
from bench.baseline import run_baseline
from bench.common import (
    Result,
    add_run_arguments,
    append_jsonl,
    print_table,
    start_process,
    stop_process,
)
from bench.harness import (
    DEFAULT_PG_ADMIN_URL,
    Deployment,
    DrainResult,
    Mode,
    finish,
    hookd_commit,
    measure_drain,
    median,
)
from bench.pgcluster import (
    ChurnSnapshot,
    ProdCluster,
    churn_report,
    format_statements,
    server_settings,
    settled_snapshot,
)
from bench.receiver import Receiver, receiver_kind

__all__ = ["TARGETS", "drain_once", "main", "prepare"]

RESULTS_NAME = "drain"
DEFAULT_EVENTS = 2000
DEFAULT_WEBHOOKS = 10
DEFAULT_RUNS = 3
SMOKE_EVENTS = 100
SMOKE_BASELINE_TOTAL = 2000
WARMUP_EVENTS = 100
# The targets: delivery rate as a fraction of the baseline.
TARGETS: dict[tuple[str, str], float] = {("sqlite", "serve"): 0.5, ("postgres", "split"): 0.8}


def prepare(
    dep: Deployment, receiver: Receiver, webhooks: int, warmup_events: int, settle: bool = True
) -> list[str]:
    """Start ``dep``, create ``webhooks`` webhooks to ``receiver`` (one path each), drain a
    warm-up batch, and (``settle``) let split-mode workers split the per-webhook cap.
    Returns the webhook ids."""
    dep.start()
    ids = dep.create_webhooks(webhooks, lambda i: f"{receiver.url}hook/{i}")
    if warmup_events:
        warm = measure_drain(dep, receiver, warmup_events, warmup_events * webhooks, timeout=60)
        if not warm.complete:
            raise RuntimeError(
                f"warm-up: {warm.received} of {warm.expected} deliveries arrived\n"
                + dep.stderr_tail()
            )
    if settle:
        dep.settle()
    return ids


def drain_once(
    db: str,
    mode: Mode,
    receiver: Receiver,
    *,
    events: int = DEFAULT_EVENTS,
    webhooks: int = DEFAULT_WEBHOOKS,
    clients: int = 32,
    pg_admin_url: str = DEFAULT_PG_ADMIN_URL,
    warmup_events: int = WARMUP_EVENTS,
) -> DrainResult:
    """One drain on a deployment of its own (used by ``backlog.py`` as its reference)."""
    tmp = Path(tempfile.mkdtemp(prefix="hookd-bench-drain-"))
    try:
        with Deployment(
            db,
            tmp,
            mode=mode,
            pg_admin_url=pg_admin_url,
            webhook_limit=webhooks,
        ) as dep:
            prepare(dep, receiver, webhooks, warmup_events)
            return measure_drain(
                dep,
                receiver,
                events,
                events * webhooks,
                clients=clients,
                timeout=_timeout(events * webhooks),
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _timeout(deliveries: int) -> float:
    return 60.0 + deliveries / 200.0


def _profile(dep: Deployment, receiver: Receiver, events: int, webhooks: int, out: Path) -> None:
    """py-spy each hookd process during one more drain each: serve, or the api and worker-1
    (the other workers do the same work as worker-1)."""
    pyspy = Path(sys.executable).with_name("py-spy")
    if not pyspy.exists():
        pyspy = Path(shutil.which("py-spy") or "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    for role, pid in dep.pids.items():
        if dep.mode == "split" and role not in ("api", "worker-1"):
            continue
        raw = out / f"drain-{dep.db_kind}-{dep.mode}-{role}.txt"
        spy = start_process(
            [
                str(pyspy),
                "record",
                "--pid",
                str(pid),
                "--duration",
                "600",
                "--threads",
                "--rate",
                "200",
                "--format",
                "raw",
                "--nonblocking",
                "-o",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            res = measure_drain(
                dep, receiver, events, events * webhooks, timeout=_timeout(events * webhooks)
            )
        finally:
            stop_process(spy, sig=2, timeout=30)  # SIGINT: py-spy writes what it has
        print(
            f"\nprofile of {role} during a drain ({res.delivery_rate:,.0f} deliveries/s "
            f"under py-spy): {raw}"
        )
        if raw.exists():
            print(summarise_profile(raw.read_text(), top=20))


def _churn_line(churn: dict[str, Any]) -> str:
    """One line of a run's churn figures."""
    parts = [
        f"dead rows made {churn['dead_tuples_made_per_delivery']:.2f}/delivery "
        f"(n_dead_tup {churn['n_dead_tup_growth_per_delivery']:+.2f}/delivery)"
    ]
    for name, t in churn["tables"].items():
        if t["n_tup_upd"] or t["n_tup_ins"] or t["n_tup_del"]:
            hot = "-" if t["hot_share"] is None else f"{t['hot_share']:.0%}"
            parts.append(
                f"{name} ins {t['ins_per_delivery']:.2f} upd {t['upd_per_delivery']:.2f} "
                f"(HOT {hot}) del {t['n_tup_del'] / max(1, churn['deliveries']):.2f}"
                + (f" autovacuum x{t['autovacuum_count']}" if t["autovacuum_count"] else "")
            )
    return "; ".join(parts) + f" [counts read after {churn['stats_wait_s']:.1f} s]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hookd drain: publish a burst, deliver it")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--mode", choices=["serve", "split"], default="serve")
    parser.add_argument("--workers", type=int, default=2, help="worker processes in split mode")
    parser.add_argument(
        "--events", type=int, help=f"default {DEFAULT_EVENTS} ({SMOKE_EVENTS} with --smoke)"
    )
    parser.add_argument("--webhooks", type=int, default=DEFAULT_WEBHOOKS)
    parser.add_argument("--clients", type=int, default=32, help="concurrent publishers")
    parser.add_argument("--runs", type=int, help=f"interleaved runs (default {DEFAULT_RUNS})")
    parser.add_argument("--baseline-total", type=int, help="baseline requests (default 20,000)")
    parser.add_argument("--baseline-connections", type=int, default=64)
    add_run_arguments(parser)
    parser.add_argument("--profile", metavar="DIR", help="afterwards py-spy one more drain")
    parser.add_argument(
        "--pg-cluster",
        choices=["machine", "prod"],
        default="machine",
        help="PostgreSQL: the server at --pg-admin-url (machine), or a cluster started for the "
        "run with production-like settings (prod, bench/pgcluster.py)",
    )
    parser.add_argument(
        "--statements",
        action="store_true",
        help="print each run's top 15 statements by time (pg_stat_statements, prod cluster)",
    )
    parser.add_argument(
        "--reuse-deployment",
        action="store_true",
        help="one deployment (and database) for every run, instead of a fresh one per run",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        help="HOOKD_BATCH_WAIT_MS for hookd (default: hookd's own); 0 turns the wait off",
    )
    args = parser.parse_args(argv)

    if args.mode == "split" and args.db != "postgres":
        parser.error("--mode split needs --db postgres")
    if args.pg_cluster == "prod" and args.db != "postgres":
        parser.error("--pg-cluster prod needs --db postgres")
    pg = args.db == "postgres"
    cluster_kind: Literal["machine", "prod"] = args.pg_cluster
    events = args.events or (SMOKE_EVENTS if args.smoke else DEFAULT_EVENTS)
    runs = max(1, min(args.runs or (1 if args.smoke else DEFAULT_RUNS), 20))
    base_total = args.baseline_total or (SMOKE_BASELINE_TOTAL if args.smoke else 20_000)
    if not 1 <= events <= 1_000_000 or not 1 <= args.webhooks <= 1000:
        parser.error("--events must be within 1..1,000,000 and --webhooks within 1..1000")
    save = not (args.smoke or args.no_save)
    expected = events * args.webhooks
    commit = hookd_commit()
    print(
        f"drain: {args.db}, {args.mode}, {args.webhooks} webhooks x {events:,} events = "
        f"{expected:,} deliveries, {args.clients} publishers, {runs} run(s); hookd at {commit}"
        + ("" if args.batch_wait_ms is None else f", HOOKD_BATCH_WAIT_MS={args.batch_wait_ms:g}"),
        flush=True,
    )

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="hookd-bench-drain-"))
    runs_out: list[dict[str, Any]] = []
    failures: list[str] = []
    stack = ExitStack()
    try:
        receiver = stack.enter_context(Receiver.start(receiver_kind(args.smoke)))
        dep: Deployment | None = None
        pg_admin_url: str = args.pg_admin_url
        cluster: ProdCluster | None = None
        pg_info: dict[str, Any] = {}
        if pg and cluster_kind == "prod":
            t0 = time.monotonic()
            cluster = stack.enter_context(ProdCluster(tmp))
            pg_admin_url = cluster.admin_url
            pg_info = cluster.describe()
            print(
                f"prod cluster: PostgreSQL {cluster.version} on {pg_admin_url} (postmaster pid "
                f"{cluster.pid}, started in {time.monotonic() - t0:.1f} s), "
                + ", ".join(f"{k}={v}" for k, v in cluster.settings.items())
                + f"; {'; '.join(f'{k}: {v}' for k, v in pg_info['sizing_rules'].items())}",
                flush=True,
            )
        elif pg:
            pg_info = {"cluster": "machine"}
        if pg:
            pg_info["server_settings"] = server_settings(pg_admin_url)
            if cluster is None:
                print(
                    "machine cluster: "
                    + ", ".join(f"{k}={v}" for k, v in pg_info["server_settings"].items()),
                    flush=True,
                )
        # Smoke runs only check that the counters can be read: they do not wait long for
        # the backends to flush them.
        stats_cap = 3.0 if args.smoke else 12.0

        def fresh() -> Deployment:
            made = Deployment(
                args.db,
                tmp / f"run-{time.monotonic_ns()}",
                mode=args.mode,
                workers=args.workers,
                pg_admin_url=pg_admin_url,
                webhook_limit=args.webhooks,
                extra_env=(
                    {"HOOKD_BATCH_WAIT_MS": f"{args.batch_wait_ms:g}"}
                    if args.batch_wait_ms is not None
                    else None
                ),
            )
            made.tmp.mkdir()
            stack.callback(made.close)
            prepare(
                made,
                receiver,
                args.webhooks,
                20 if args.smoke else WARMUP_EVENTS,
                settle=not args.smoke,
            )
            return made

        for run in range(1, runs + 1):
            if dep is None or not args.reuse_deployment:
                if dep is not None:
                    dep.close()
                dep = fresh()
            order = ("baseline", "hookd") if run % 2 else ("hookd", "baseline")
            base: dict[str, Any] = {}
            res: DrainResult | None = None
            churn: dict[str, Any] | None = None
            cluster_cpu = 0.0
            for what in order:
                if what == "baseline":
                    base = run_baseline(receiver.url, base_total, args.baseline_connections)
                    if base["errors"] or base["ok"] != base_total:
                        failures.append(f"run {run}: baseline errors {base['error_kinds']}")
                else:
                    snap_before: ChurnSnapshot | None = None
                    if pg:
                        # The warm-up's counts are flushed before the drain starts.
                        snap_before, _ = settled_snapshot(dep.db.url, cap=stats_cap)
                    cluster_before = cluster.cpu_seconds() if cluster else 0.0
                    res = measure_drain(
                        dep,
                        receiver,
                        events,
                        expected,
                        clients=args.clients,
                        timeout=_timeout(expected),
                    )
                    if cluster is not None:
                        cluster_cpu = cluster.cpu_seconds() - cluster_before
                    if snap_before is not None:
                        snap_after, waited = settled_snapshot(
                            dep.db.url, since=res.done_at, cap=stats_cap
                        )
                        churn = churn_report(snap_before, snap_after, res.received)
                        churn["stats_wait_s"] = round(waited, 1)
            assert res is not None
            rate = res.delivery_rate
            ratio = rate / base["requests_per_s"] if base["requests_per_s"] else float("nan")
            rss = res.peak_rss_kib
            print(
                f"run {run}: hookd {rate:,.0f} deliveries/s ({res.received:,}/{expected:,} in "
                f"{res.seconds:.2f} s), publish {res.publish_rate:,.0f} events/s "
                f"(p50 {res.publish['latency_ms']['p50']:.1f} ms, p99 "
                f"{res.publish['latency_ms']['p99']:.1f} ms), hookd CPU "
                f"{res.cpu_us_per_delivery:.0f} us/delivery (event loop "
                f"{res.loop_cpu_us_per_delivery:.0f}"
                + (
                    "; "
                    + ", ".join(
                        f"{role} {us:.0f}" for role, us in res.role_cpu_us_per_delivery().items()
                    )
                    if len(res.cpu_by_role_s) > 1
                    else ""
                )
                + ")"
                + (
                    f" + PG {res.db_cpu_s * 1e6 / max(1, res.received):.0f} us"
                    if res.db_cpu_s
                    else ""
                )
                + f"; kernel {res.system_share[0]:.0%} of hookd's"
                + (f", {res.system_share[1]:.0%} of PG's" if res.db_cpu_s else "")
                + f", peak RSS {', '.join(f'{k} {v / 1024:.0f} MiB' for k, v in rss.items())}; "
                f"baseline {base['requests_per_s']:,.0f} req/s"
                f" ({base['client_cpu_s'] * 1e6 / max(1, base['completed']):.0f} us CPU/request,"
                f" kernel {base['client_system_cpu_s'] / max(1e-9, base['client_cpu_s']):.0%});"
                f" ratio {ratio:.2f}",
                flush=True,
            )
            pg_out: dict[str, Any] = {}
            if pg:
                per = max(1, res.received)
                pg_out = {
                    "pg_cluster": cluster_kind,
                    "db_backend_cpu_us_per_delivery": round(res.db_cpu_s * 1e6 / per, 1),
                    "churn": churn,
                }
                if cluster is not None:
                    # Every process of the cluster: backends, autovacuum, WAL writer, ...
                    pg_out["pg_cluster_cpu_us_per_delivery"] = round(cluster_cpu * 1e6 / per, 1)
                print(
                    f"run {run}: PG ({cluster_kind}) backends "
                    f"{pg_out['db_backend_cpu_us_per_delivery']:.0f} us/delivery"
                    + (
                        f", whole cluster {pg_out['pg_cluster_cpu_us_per_delivery']:.0f} us"
                        if cluster is not None
                        else ""
                    )
                    + (f"; {_churn_line(churn)}" if churn else ""),
                    flush=True,
                )
                if churn and args.statements:
                    print(
                        f"run {run}: top statements by execution time, "
                        f"{churn.get('statements_us_per_delivery', '-')} us of top-level "
                        "statements per delivery:\n" + format_statements(churn),
                        flush=True,
                    )
            if not res.complete:
                failures.append(f"run {run}: {res.received} of {expected} deliveries arrived")
            if res.extra_after:
                failures.append(f"run {run}: {res.extra_after} deliveries more than expected")
            if res.publish["ok"] != events:
                failures.append(
                    f"run {run}: {res.publish['ok']} of {events} publishes succeeded "
                    f"(first failure: {res.publish['first_bad']})"
                )
            runs_out.append(
                {
                    "run": run,
                    "order": list(order),
                    "baseline_rps": base["requests_per_s"],
                    "baseline": {
                        k: base[k]
                        for k in (
                            "requests_per_s",
                            "seconds",
                            "latency_ms",
                            "client_cpu_util",
                            "client_cpu_s",
                            "client_system_cpu_s",
                            "errors",
                        )
                    },
                    "ratio": ratio,
                    **res.as_dict(),
                    **pg_out,
                }
            )
        assert dep is not None
        if args.profile:
            _profile(dep, receiver, events, args.webhooks, Path(args.profile))
        if failures:
            print(dep.stderr_tail(), file=sys.stderr)
    finally:
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)

    db_label = f"{args.db} (prod cluster)" if pg and cluster_kind == "prod" else args.db
    label = f"drain, {db_label}, {'hookd serve' if args.mode == 'serve' else f'api + {args.workers} workers'}"
    rates = [r["delivery_rate"] for r in runs_out]
    bases = [r["baseline_rps"] for r in runs_out]
    ratios = [r["ratio"] for r in runs_out]
    target = TARGETS.get((args.db, args.mode))
    med_ratio = median(ratios)
    met = None if target is None else med_ratio >= target
    peak = max((max(r["hookd_peak_rss_kib"].values()) for r in runs_out), default=0)
    results = [
        Result(
            f"{label}: delivery rate",
            median(rates),
            "deliveries/s",
            median(bases),
            extra={
                "target": None if target is None else f">= {target}x baseline",
                "met": met,
                "ratio_of_medians": median(rates) / median(bases) if median(bases) else None,
            },
            paired_ratio=med_ratio,
        ),
        Result(f"{label}: publish rate", median([r["publish_rate"] for r in runs_out]), "events/s"),
        Result(
            f"{label}: hookd CPU per delivery",
            median([r["hookd_cpu_us_per_delivery"] for r in runs_out]),
            "us",
        ),
        Result(
            f"{label}: event-loop CPU per delivery",
            median([r["hookd_loop_cpu_us_per_delivery"] for r in runs_out]),
            "us",
        ),
        Result(f"{label}: hookd peak RSS (max process)", peak / 1024, "MiB"),
        Result("baseline (raw aiohttp sender, same nginx)", median(bases), "req/s"),
    ]
    pg_results: list[Result] = []

    def pg_figure(name: str, values: list[float], unit: str) -> None:
        pg_results.append(Result(f"{label}: {name}", median(values), unit))

    if pg:
        pg_figure(
            "PG backend CPU per delivery",
            [r["db_backend_cpu_us_per_delivery"] for r in runs_out],
            "us",
        )
        if cluster_kind == "prod":
            pg_figure(
                "PG cluster CPU per delivery (all its processes)",
                [r.get("pg_cluster_cpu_us_per_delivery", 0.0) for r in runs_out],
                "us",
            )
        churns = [r["churn"] for r in runs_out if r.get("churn")]
        if churns:
            pg_figure(
                "dead row versions made per delivery",
                [c["dead_tuples_made_per_delivery"] for c in churns],
                "rows",
            )
            for table in ("deliveries", "webhooks"):
                stats = [c["tables"][table] for c in churns if table in c["tables"]]
                pg_figure(
                    f"{table} updates per delivery", [t["upd_per_delivery"] for t in stats], "rows"
                )
                hot = [100 * t["hot_share"] for t in stats if t["hot_share"] is not None]
                pg_figure(f"{table} HOT share of updates", hot, "%")
        results[5:5] = pg_results
    print()
    print_table(
        results,
        title=f"{label}: medians of {len(runs_out)} run(s); vs baseline: median of the runs' ratios",
    )
    print(
        f"per-run ratios: {', '.join(f'{x:.2f}' for x in ratios)} (median {med_ratio:.2f})"
        + ("" if target is None else f"; target >= {target}x: {'met' if met else 'MISSED'}")
    )
    print(f"took {time.monotonic() - started:.1f} s")
    common = {
        "db": args.db,
        "mode": args.mode,
        "workers": args.workers if args.mode == "split" else 0,
        "webhooks": args.webhooks,
        "clients": args.clients,
        "commit": commit,
        "label": args.label,
        "batch_wait_ms": args.batch_wait_ms,
    }
    if pg:
        common["pg_cluster"] = cluster_kind
        common["pg"] = pg_info
    if save:
        for r in runs_out:
            append_jsonl(RESULTS_NAME, {"name": f"{label} run", "kind": "run", **common, **r})
        for res_row in results:
            append_jsonl(
                RESULTS_NAME,
                Result(
                    res_row.name,
                    res_row.value,
                    res_row.unit,
                    res_row.baseline,
                    {**res_row.extra, **common, "kind": "summary"},
                    res_row.paired_ratio,
                ),
            )
    # run_all.py's table: the headline rows, the PostgreSQL CPU and the dead rows made.
    headline = [r for r in pg_results if "CPU" in r.name or "dead row" in r.name]
    return finish(args.summary_file, "drain", results[:4] + headline, failures)


if __name__ == "__main__":
    sys.exit(main())
