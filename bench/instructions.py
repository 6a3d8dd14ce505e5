"""Instructions per request: what hookd's API costs, counted instead of timed.

Requests/s and CPU time on a shared 2-core machine move by tens of percent from one minute
to the next, and so do ratios of two routes measured a few seconds apart. Counting the
machine instructions a request runs does not move: valgrind's ``callgrind`` gives the same
count for the same code and input whatever else the machine is doing. Use this benchmark
to see what a change to hookd saves (run it on two snapshots, ``run_all.py --snapshot``)
and how the API's routes compare with one another.

A child process builds hookd's ASGI app (``create_app`` over a SQLite store in a file of
its own, or with ``--db postgres`` over a PostgreSQL database of its own: migrated, an
organization, an API key, one webhook; rate limiter off, as in ``api_throughput``'s
headline figures) and calls it in-process, without a socket or uvicorn. PostgreSQL's
server runs outside valgrind: the counts are hookd's side of each request only. Routes, lettered as in ``api_throughput``:

(a) ``GET /healthz``: the trivial route;
(b) ``GET /v2/webhooks/{id}``: authenticate, read one webhook, render it;
(d) ``POST /v2/events`` to an organization without webhooks, from 32 concurrent callers so
    that commits group as they do under load.

(e) the delivery path, counted per delivery: ``--events`` events published through the
    app (as (d), 32 callers) to 10 webhooks at a local receiver (nginx when installed),
    each claimed, signed, sent over hookd's HTTP client and settled by hookd's worker in
    the same process, as in ``hookd serve``;
(s) the raw sender of ``baseline.py``, per request, for (e)'s ratio.

Each child warms every route up, then calls one route ``--requests`` times (or none);
every child runs under callgrind, and a route's instructions per request are its child's
count minus the count of the child that called none, divided by ``--requests``: start-up,
imports and warm-up cancel out. Reported: instructions per request, and (a) divided by
(b) and by (d), in the sense of ``api_throughput``'s ratios. uvicorn's and the socket's
share is left out of both routes alike, so these ratios are lower than the throughput
ones. The children run side by side (one per core); counts do not depend on it.
For (e) and (s) the pair is a child that drains a warm-up burst and one that drains the
warm-up and then the counted burst: per delivery (per request) is their difference over
the counted deliveries. How many deliveries a turn of the worker settles together depends
on timing, so (e)'s count moves a little from run to run (about 1 %), unlike those of (a) to (d).
``--smoke`` runs the children without valgrind, a few requests each, checking every
answer. Results: ``bench/results/instructions.jsonl``.

    python bench/instructions.py                 # ~5 min on 2 cores (Python under valgrind)
    python bench/instructions.py --db postgres --routes de   # hookd's side on PostgreSQL
    python bench/instructions.py --smoke         # seconds, no valgrind needed
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, NamedTuple

import orjson

if __package__ in (None, ""):
    # After PYTHONPATH, not before: the children must import the hookd that PYTHONPATH
    # names (run_all.py --snapshot), not this checkout's.
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from bench.api_throughput import Database
from bench.common import (
    Result,
    add_run_arguments,
    append_jsonl,
    print_table,
    python_command,
    run_hookd_cli,
)
from bench.harness import hookd_commit, write_summary
from bench.receiver import Receiver, receiver_kind

__all__ = ["ROUTES", "Route", "main"]


class Route(NamedTuple):
    name: str
    method: str
    path: str  # ``{id}`` stands for the webhook's id
    auth: bool
    body: bytes = b""


ROUTES: dict[str, Route] = {
    "a": Route("GET /healthz", "GET", "/healthz", False),
    "b": Route("GET /v2/webhooks/{id}", "GET", "/v2/webhooks/{id}", True),
    "d": Route(
        "POST /v2/events (0 subscribers)",
        "POST",
        "/v2/events",
        True,
        b'{"topic":"post.updated","data":{"item":{"id":"p1","title":"Hello"},"changes":[]}}',
    ),
}
CONCURRENCY = 32
STORES = {"sqlite": "SQLite", "postgres": "PostgreSQL (hookd's side)"}
SUFFIX = {"sqlite": "", "postgres": ", PostgreSQL"}  # SQLite's names are those of earlier runs
_COLLECTED = re.compile(r"Collected : (\d+)")
_SOURCE = re.compile(r"^hookd from (.+)$", re.M)


# =========================================================================== child


async def _asgi_call(
    app: Any,
    key: str | None,
    method: str,
    path: str,
    body: bytes,
    statuses: list[int],
    bodies: list[bytes] | None = None,
) -> None:
    """Call the app in-process; the status goes to ``statuses``, the first body to
    ``bodies``."""
    headers = [(b"host", b"127.0.0.1")]
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    if body:
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "state": {},
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        elif bodies is not None and not bodies:
            bodies.append(message.get("body", b""))

    await app(scope, receive, send)


async def _child(database_url: str, key: str, route: str, requests: int, warmup: int) -> None:
    """Build the app, warm every route up, then call ``route`` ``requests`` times."""
    import hookd
    from hookd.api import create_app
    from hookd.server import _tune_gc, open_driver_for
    from hookd.settings import Settings
    from hookd.store import Store

    settings = Settings(database_url=database_url, rate_limit=0)
    store = Store(open_driver_for(settings))
    await store.start()
    app = create_app(settings, store)
    statuses: list[int] = []
    bodies: list[bytes] = []

    async def call(method: str, path: str, auth: bool, body: bytes) -> None:
        await _asgi_call(app, key if auth else None, method, path, body, statuses, bodies)

    webhook = b'{"name":"i","url":"https://example.com/h","topics":["post.created"]}'
    await call("POST", "/v2/webhooks", True, webhook)
    if statuses[-1] != 200:
        raise SystemExit(f"creating the webhook answered {statuses[-1]}: {bodies[:1]!r}")
    webhook_id = orjson.loads(bodies[0])["id"]
    _tune_gc()
    # The collector runs whenever allocations reach its thresholds, so where its passes
    # fall moves with any change to the code, not with the work a request does. Off while
    # counting (on one version, on or off changed (b)'s count by about 0.1 %).
    gc.disable()

    async def run(letter: str, count: int) -> None:
        target = ROUTES[letter]
        path = target.path.replace("{id}", webhook_id)
        per, extra = divmod(count, CONCURRENCY)

        async def caller(n: int) -> None:
            for _ in range(n):
                await call(target.method, path, target.auth, target.body)

        await asyncio.gather(*(caller(per + (i < extra)) for i in range(CONCURRENCY)))

    for letter in ROUTES:
        await run(letter, warmup)
    statuses.clear()
    if route != "none":
        await run(route, requests)
    await store.close()
    print(f"hookd from {Path(hookd.__file__).parent}", file=sys.stderr)
    bad = [s for s in statuses if s not in (200, 202)]
    if bad or len(statuses) != (0 if route == "none" else requests):
        raise SystemExit(f"route {route}: {len(bad)} answers not 200/202 (first {bad[:3]})")


FANOUT = 10
DELIVERY_TOPIC = "post.created"


async def _delivery_child(database_url: str, key: str, receiver: str, events: int) -> None:
    """(e): a warm-up burst, then ``events`` events to FANOUT webhooks, each drained to the
    receiver by the worker before the next burst; the count covers both."""
    import hookd
    from hookd.api import create_app
    from hookd.metrics import METRICS
    from hookd.server import _tune_gc, build_worker, open_driver_for
    from hookd.settings import Settings
    from hookd.store import Store

    settings = Settings(
        database_url=database_url,
        rate_limit=0,
        allow_http=True,
        allowed_networks=("127.0.0.0/8",),
    )
    # As hookd serve does: HOOKD_METRICS=false in the environment counts without metrics.
    METRICS.configure(enabled=settings.metrics, webhook_labels=settings.metrics_webhook_labels)
    store = Store(open_driver_for(settings))
    await store.start()
    app = create_app(settings, store)
    settled = 0
    wanted = 0
    drained = asyncio.Event()
    settle = store.settle

    async def counting_settle(settlement: Any) -> list[Any]:
        nonlocal settled
        changes = await settle(settlement)
        settled += sum(1 for d in settlement.deliveries if d["status"] == "succeeded")
        if settled >= wanted:
            drained.set()
        return changes

    store.settle = counting_settle  # type: ignore[method-assign]
    statuses: list[int] = []
    for n in range(FANOUT):
        body = orjson.dumps({"name": f"e{n}", "url": receiver, "topics": [DELIVERY_TOPIC]})
        await _asgi_call(app, key, "POST", "/v2/webhooks", body, statuses)
    worker = build_worker(settings, store)
    await worker.start()
    _tune_gc()
    gc.disable()
    event = orjson.dumps(
        {"topic": DELIVERY_TOPIC, "data": {"item": {"id": "p1", "title": "Hello"}, "changes": []}}
    )

    async def burst(count: int) -> None:
        nonlocal wanted
        drained.clear()
        wanted += count * FANOUT
        per, extra = divmod(count, CONCURRENCY)

        async def caller(n: int) -> None:
            for _ in range(n):
                await _asgi_call(app, key, "POST", "/v2/events", event, statuses)

        await asyncio.gather(*(caller(per + (i < extra)) for i in range(CONCURRENCY)))
        await asyncio.wait_for(drained.wait(), 3600)

    await burst(WARMUP_EVENTS)
    if events:
        await burst(events)
    await worker.stop()
    await store.close()
    print(f"hookd from {Path(hookd.__file__).parent}", file=sys.stderr)
    bad = [s for s in statuses if s not in (200, 202)]
    if bad or settled != wanted:
        raise SystemExit(f"deliveries: {len(bad)} answers not 200/202, {settled} of {wanted} sent")


async def _sender_child(receiver: str, requests: int) -> None:
    """(s): baseline.py's raw sender, a warm-up burst and then ``requests`` more."""
    from bench.baseline import baseline

    gc.disable()
    for total in (WARMUP_EVENTS * FANOUT, requests):
        if total:
            done = await baseline(receiver, total, 64, warmup=0)
            if done["errors"]:
                raise SystemExit(f"raw sender: {done['errors']} errors")


WARMUP_EVENTS = 32


# =========================================================================== parent


def _prepare(directory: Path, db: str, admin_url: str) -> tuple[Database, str]:
    """A migrated database with the organization ``bench`` and a key of it: the template
    that each child copies."""
    database = Database(db, directory, admin_url)
    database.create()
    env = {**os.environ, "HOOKD_DATABASE_URL": database.url}
    run_hookd_cli(["migrate"], env, directory)
    run_hookd_cli(["orgs", "create", "bench"], env, directory)
    key = run_hookd_cli(["keys", "create", "bench", "--name", "bench"], env, directory)
    return database, key


def _copy(template: Database, route: str, workdir: Path) -> Database:
    """The child ``route``'s own copy of the template database."""
    if template.kind == "sqlite":
        own = Database("sqlite", workdir / route, template.admin_url)
        (workdir / route).mkdir()
        shutil.copyfile(template.url.removeprefix("sqlite:///"), own.url.removeprefix("sqlite:///"))
        return own
    own = Database("postgres", workdir, template.admin_url)
    asyncio.run(own._pg(f'CREATE DATABASE "{own.name}" TEMPLATE "{template.name}"'))
    return own


def _run_child(
    database: Database, key: str, route: str, args: argparse.Namespace, workdir: Path
) -> tuple[int | None, str]:
    """Run one child on its own copy of the database: its instruction count (None in a
    smoke run, without valgrind) and where its hookd came from. Children ``e0``/``e`` and
    ``s0``/``s`` are (e)'s and (s)'s pairs: without and with the counted burst."""
    options: dict[str, Any] = {"--child": route, "--database-url": database.url, "--key": key}
    if route in ("e0", "e", "s0", "s"):
        counted = args.events if route in ("e", "s") else 0
        options.update({"--events": counted, "--receiver-url": args.receiver_url})
    else:
        options.update({"--requests": args.requests, "--warmup": args.warmup})
    argv = python_command(__file__, options)
    env = {**os.environ, "PYTHONHASHSEED": str(args.hash_seed)}
    if not args.smoke:
        out_file = workdir / f"{route}.callgrind"
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", *argv]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        raise RuntimeError(f"child {route} failed: {done.stderr.strip()[-1500:]}")
    origin = _SOURCE.search(done.stderr)
    where = origin.group(1) if origin else "-"
    if args.smoke:
        return None, where
    found = _COLLECTED.search(done.stderr)
    if found is None:
        raise RuntimeError(f"child {route}: no instruction count in valgrind's output")
    return int(found.group(1)), where


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--requests", type=int, default=2000, help="per route (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="per route, before counting")
    parser.add_argument("--timeout", type=float, default=1200.0, help="per child, seconds")
    parser.add_argument(
        "--routes",
        default="".join(ROUTES) + "e",
        help=f"which of {''.join(ROUTES)}e (default all; e brings s)",
    )
    parser.add_argument(
        "--events", type=int, default=200, help=f"(e): events counted, x{FANOUT} deliveries"
    )
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="keep callgrind's files there (callgrind_annotate)"
    )
    parser.add_argument(
        "--hash-seed", type=int, default=0, help="PYTHONHASHSEED of the children (default 0)"
    )
    parser.add_argument(
        "--db",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="the store: a SQLite file (default) or a database on --pg-admin-url's server",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--receiver-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import uvloop

        if args.child in ("e0", "e"):
            child = _delivery_child(args.database_url, args.key, args.receiver_url, args.events)
        elif args.child in ("s0", "s"):
            child = _sender_child(args.receiver_url, args.events * FANOUT)
        else:
            child = _child(args.database_url, args.key, args.child, args.requests, args.warmup)
        uvloop.run(child)
        return 0
    if args.smoke:
        args.requests, args.warmup, args.events = 64, 32, 8
    elif shutil.which("valgrind") is None:
        print("instructions: needs valgrind (apt-get install -y valgrind)", file=sys.stderr)
        return 1
    commit = hookd_commit()
    print(
        f"instructions: {args.requests} requests per route, {STORES[args.db]}, hookd at {commit}",
        flush=True,
    )
    deliveries = "e" in args.routes and args.events > 0
    if not deliveries and not any(k in args.routes for k in ROUTES):
        parser.error(f"nothing to count: --routes takes letters of {''.join(ROUTES)}e")
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="hookd-instr-"))
        workdir = Path(tmp)
        template, key = _prepare(workdir, args.db, args.pg_admin_url)
        stack.callback(template.drop)
        api = [k for k in ROUTES if k in args.routes]
        routes = ["none", *api] if api else []
        if deliveries:
            receiver = stack.enter_context(Receiver.start(kind=receiver_kind(args.smoke)))
            args.receiver_url = receiver.url
            routes += ["e0", "e", "s0", "s"]
        # Copied before any child starts: PostgreSQL copies a template no one is connected to.
        copies = {}
        for route in routes:
            copies[route] = _copy(template, route, workdir)
            stack.callback(copies[route].drop)
        workers = max(1, min(len(routes), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            ran = dict(
                zip(
                    routes,
                    pool.map(lambda r: _run_child(copies[r], key, r, args, workdir), routes),
                    strict=True,
                )
            )
        counts = {route: count for route, (count, _) in ran.items()}
        print(f"instructions: the children ran hookd from {ran[routes[0]][1]}", flush=True)
        if args.keep and not args.smoke:
            args.keep.mkdir(parents=True, exist_ok=True)
            for found in workdir.glob("*.callgrind"):
                shutil.copy(found, args.keep / found.name)
    if args.smoke:
        print("instructions: smoke run passed (every answer 200/202)")
        if args.summary_file:
            write_summary(args.summary_file, "instructions", [], True)
        return 0
    per = {k: (counts[k] - counts["none"]) / args.requests for k in api}  # type: ignore[operator]
    results = [
        Result(
            f"instructions per request: ({k}) {ROUTES[k].name}{SUFFIX[args.db]}",
            per[k],
            "instr",
            None if k == "a" or "a" not in per else per["a"],
            {"commit": commit, "requests": args.requests},
            None if k == "a" or "a" not in per else per["a"] / per[k],
        )
        for k in per
    ]
    if deliveries:
        sent = args.events * FANOUT
        hookd_per = (counts["e"] - counts["e0"]) / sent  # type: ignore[operator]
        raw_per = (counts["s"] - counts["s0"]) / sent  # type: ignore[operator]
        results += [
            Result(
                f"instructions per delivery: (e) publish, claim, send, settle ({FANOUT} webhooks)"
                + SUFFIX[args.db],
                hookd_per,
                "instr",
                raw_per,
                {"commit": commit, "deliveries": sent, "receiver": receiver.kind},
                raw_per / hookd_per,
            ),
            Result("instructions per request: (s) the raw sender (baseline.py)", raw_per, "instr"),
        ]
    print_table(
        results,
        title="under callgrind; vs baseline: (a) / route, and (s) / (e) for the delivery path",
    )
    if not args.no_save:
        for r in results:
            append_jsonl("instructions", r)
    if args.summary_file:
        write_summary(args.summary_file, "instructions", results, True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
