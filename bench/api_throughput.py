"""API throughput: requests/s of hookd's HTTP API against a trivial route of the same app.

Starts ``hookd serve`` (API + delivery worker, one process, as operators run it) on a fresh
database: a SQLite file in a temporary directory, or with ``--db postgres`` a fresh
PostgreSQL database ``hookd_bench_<random>`` created (and dropped at the end) through asyncpg
on ``postgresql://postgres@127.0.0.1:5432/test``. The API key the server prints on its first
start is read from its stdout; then ``hookd orgs create bench --webhook-limit 1000000`` and
``hookd keys create bench`` make a second organization whose limit the benchmark cannot
reach (1,000,000 is the most the CLI accepts).

Four measurements, each with 32 concurrent keep-alive connections:

(a) ``GET /healthz``: the trivial route of the same app (routing, middleware, JSON), no
    authentication, no database; the reference every other figure is divided by.
(b) ``GET /v2/webhooks/{id}``: authenticated read of an existing webhook of ``bench``.
(c) ``POST /v2/webhooks``: authenticated create in ``bench`` (its webhooks pile up: the
    org's webhook count before each run is recorded, as creating counts them).
(d) ``POST /v2/events``: authenticated publish in ``default``, which has no webhooks, so
    nothing is queued for delivery.

The load generator is ``wrk`` (a C client, ``apt-get install wrk``) with a Lua script per
measurement that sets the method, the ``Authorization`` header and the body, and counts
the answers by status. It runs in its own process, one thread: on a 2-core machine the
server gets one core to itself, and wrk needs a small part of the other (its CPU is
recorded), while an aiohttp load generator would need most of a core to keep up with
``/healthz`` and would itself be what is measured.

Each measurement is a warm-up (1 s, discarded) and a timed part (5 s); the measurements
are interleaved, and the whole set repeated 3 times with the order of the four rotated
each time. Every set runs twice, on a server with ``HOOKD_RATE_LIMIT=0`` (the headline
figures) and on one with the limiter on but out of reach (``HOOKD_RATE_LIMIT=100000000``),
which shows what the limiter costs; the server is restarted (same database) to switch.
Reported: median requests/s, median p50/p99 latency, and the ratio of (b), (c), (d) to (a)
of the same run (its median over the runs). Results go to
``bench/results/api_throughput.jsonl``.

Command line::

    python bench/api_throughput.py                  # SQLite, 3 runs of 5 s (+1 s warm-up)
    python bench/api_throughput.py --db postgres
    python bench/api_throughput.py --smoke          # ~0.5 s each, checked, for CI
    python bench/api_throughput.py --profile /tmp/prof   # then py-spy each route (not saved)

Exits 1 if any request failed or got a non-2xx answer (in every mode). Only loopback
addresses are used, every run is bounded in time, and only the processes the benchmark
started are stopped, by their pid.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    DEFAULT_PG_ADMIN_URL,
    LOOPBACK,
    Result,
    append_jsonl,
    cpu_seconds,
    cpu_times,
    free_port,
    print_table,
    read_printed_key,
    run_hookd_cli,
    start_process,
    stop_process,
    wait_for_port,
)

__all__ = ["SCENARIOS", "Scenario", "main"]

RESULTS_NAME = "api_throughput"
DEFAULT_CONNECTIONS = 32
DEFAULT_SECONDS = 5.0
DEFAULT_WARMUP = 1.0
DEFAULT_RUNS = 3
SMOKE_SECONDS = 0.5
# The most `hookd orgs create --webhook-limit` accepts (and HOOKD_WEBHOOK_LIMIT's maximum).
BENCH_WEBHOOK_LIMIT = 1_000_000
# High enough never to answer 429 in a benchmark, low enough for HOOKD_RATE_LIMIT's range.
HIGH_RATE_LIMIT = 100_000_000
TARGET_RATIO = 0.5  # the target: GET /v2/webhooks/{id} >= 0.5x /healthz on SQLite
MAX_SECONDS = 600.0  # upper bound of one timed part, whatever is asked
SERVER_START_TIMEOUT = 60.0
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

WEBHOOK_BODY = {
    "name": "bench",
    # Never contacted: no event is ever published in the organization "bench".
    "url": "https://127.0.0.1:9/hookd-bench",
    "topics": ["post.created", "post.updated"],
}
EVENT_BODY = {
    "topic": "post.created",
    "data": {
        "item": {
            "id": "65f0c0ffee0000000000beef",
            "title": "Benchmark post",
            "content": "A post published by bench/api_throughput.py. " * 4,
            "status": "open",
            "upvotes": 0,
            "tags": ["bench", "api"],
        },
        "changes": [],
    },
}


@dataclass(frozen=True)
class Scenario:
    """One route under load: ``key`` (a-d), ``name`` for tables, and the request."""

    key: str
    name: str
    method: str
    path: str  # may hold "{webhook_id}"
    auth: str | None  # "bench", "default" or None
    body: dict[str, Any] | None = None


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("a", "GET /healthz", "GET", "/healthz", None),
    Scenario("b", "GET /v2/webhooks/{id}", "GET", "/v2/webhooks/{webhook_id}", "bench"),
    Scenario("c", "POST /v2/webhooks", "POST", "/v2/webhooks", "bench", WEBHOOK_BODY),
    Scenario("d", "POST /v2/events (0 subscribers)", "POST", "/v2/events", "default", EVENT_BODY),
)
CONFIGS: dict[str, int] = {"rate_limit=0": 0, f"rate_limit={HIGH_RATE_LIMIT}": HIGH_RATE_LIMIT}


def _check_loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in _LOOPBACK_HOSTS:
        raise ValueError(f"benchmarks only use loopback addresses, not {host!r}")


def find_wrk() -> str | None:
    return (
        os.environ.get("HOOKD_BENCH_WRK")
        or shutil.which("wrk")
        or ("/usr/bin/wrk" if os.path.exists("/usr/bin/wrk") else None)
    )


# =========================================================================== databases


class Database:
    """A fresh database for one benchmark: a SQLite file, or a PostgreSQL database."""

    def __init__(self, kind: str, tmp: Path, admin_url: str) -> None:
        self.kind = kind
        self.admin_url = admin_url
        self.name: str | None = None
        if kind == "sqlite":
            self.url = f"sqlite:///{tmp / 'hookd-bench.db'}"
        else:
            _check_loopback(admin_url)
            self.name = f"hookd_bench_{secrets.token_hex(6)}"
            parts = urlsplit(admin_url)
            self.url = parts._replace(path="/" + self.name).geturl()

    def create(self) -> None:
        if self.name is not None:
            asyncio.run(self._pg(f'CREATE DATABASE "{self.name}"'))

    def drop(self) -> None:
        if self.name is not None:
            asyncio.run(self._pg(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))

    def backend_cpu(self) -> dict[int, float]:
        """CPU seconds so far of each PostgreSQL backend connected to this database (the
        server's pool and LISTEN connection), by pid; empty for SQLite."""
        return {pid: total for pid, (total, _system) in self.backend_cpu_split().items()}

    def backend_cpu_split(self) -> dict[int, tuple[float, float]]:
        """:meth:`backend_cpu` with each backend's kernel share: ``(all, system)`` seconds."""
        if self.name is None:
            return {}
        pids = asyncio.run(self._backend_pids())
        return {pid: cpu_times(pid) for pid in pids}

    async def _backend_pids(self) -> list[int]:
        import asyncpg

        conn = await asyncpg.connect(self.admin_url, timeout=10)
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1", self.name, timeout=10
            )
        finally:
            await conn.close()
        return [int(r["pid"]) for r in rows]

    async def _pg(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.admin_url, timeout=10)
        try:
            await conn.execute(sql, timeout=60)
        finally:
            await conn.close()


# =========================================================================== the server


class Server:
    """``hookd serve`` as a child process on a free loopback port."""

    def __init__(self, db_url: str, rate_limit: int, tmp: Path, label: str) -> None:
        self.db_url = db_url
        self.rate_limit = rate_limit
        self.tmp = tmp
        self.label = label
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.stdout_path = tmp / f"server-{label}.out"
        self.stderr_path = tmp / f"server-{label}.err"

    @property
    def base(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKD_")}
        env.update(
            HOOKD_DATABASE_URL=self.db_url,
            HOOKD_HOST=LOOPBACK,
            HOOKD_PORT=str(self.port),
            HOOKD_RATE_LIMIT=str(self.rate_limit),
            HOOKD_LOG_LEVEL="warning",
        )
        return env

    def start(self) -> None:
        for attempt in range(3):
            self.port = free_port()
            with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
                self.proc = start_process(
                    [sys.executable, "-m", "hookd", "serve"],
                    env=self.env(),
                    cwd=self.tmp,
                    stdout=out,
                    stderr=err,
                )
            try:
                wait_for_port(self.port, timeout=SERVER_START_TIMEOUT, proc=self.proc)
                return
            except (RuntimeError, TimeoutError) as exc:
                stop_process(self.proc)
                tail = self.stderr_path.read_bytes()[-2000:].decode(errors="replace")
                if attempt == 2 or "address already in use" not in tail.lower():
                    raise RuntimeError(f"hookd serve did not start: {exc}\n{tail}") from None

    def bootstrap_key(self, timeout: float = 10.0) -> str:
        """The key ``hookd serve`` printed on its first start (read from its stdout)."""
        return read_printed_key(self.stdout_path, timeout)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=15.0)
            self.proc = None

    def cli(self, *args: str) -> str:
        """Run ``hookd <args>`` against the same database; return its stdout."""
        return run_hookd_cli(args, self.env(), self.tmp)

    def request(
        self, method: str, path: str, key: str | None, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


# =========================================================================== wrk

_LUA = r"""
wrk.method = __METHOD__
wrk.path = __PATH__
__HEADERS__
__BODY__

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  first_bad = nil
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if (status < 200 or status > 299) and first_bad == nil then
    first_bad = string.sub(tostring(status) .. " " .. (body or ""), 1, 300)
  end
end

local function jstr(s)
  s = string.gsub(s, '[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end)
  return '"' .. s .. '"'
end

function done(summary, latency, requests)
  local counts, bad = {}, nil
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    if s then
      for k, v in pairs(s) do counts[k] = (counts[k] or 0) + v end
    end
    bad = bad or t:get("first_bad")
  end
  local parts = {}
  for k, v in pairs(counts) do table.insert(parts, string.format('"%d":%d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'HOOKD_WRK {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d},' ..
    '"statuses":{%s},"first_bad":%s}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max,
    table.concat(parts, ","), bad and jstr(bad) or "null"))
end
"""


def _lua_str(text: str) -> str:
    """A Lua long-bracket string literal holding *text* verbatim."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def lua_script(method: str, path: str, key: str | None, body: dict[str, Any] | None) -> str:
    headers = []
    if key:
        headers.append(f'wrk.headers["Authorization"] = {_lua_str("Bearer " + key)}')
    if body is not None:
        headers.append('wrk.headers["Content-Type"] = "application/json"')
    body_line = (
        f"wrk.body = {_lua_str(json.dumps(body, separators=(',', ':')))}"
        if body is not None
        else ""
    )
    return (
        _LUA.replace("__METHOD__", _lua_str(method))
        .replace("__PATH__", _lua_str(path))
        .replace("__HEADERS__", "\n".join(headers))
        .replace("__BODY__", body_line)
    )


def _system_busy_seconds() -> float:
    """CPU seconds all processes of the machine spent busy so far (``/proc/stat``)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return math.nan
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(
    wrk: str,
    url: str,
    script: Path,
    seconds: float,
    connections: int,
    threads: int = 1,
    timeout_s: float = 5.0,
) -> dict[str, Any]:
    """Run wrk for *seconds* (sub-second: stopped early with SIGINT, which wrk reports)."""
    _check_loopback(url)
    seconds = min(seconds, MAX_SECONDS)
    whole = max(1, math.ceil(seconds))
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{whole}s",
        f"--timeout={max(1, math.ceil(timeout_s))}s",
        "-s",
        str(script),
        url,
    ]
    cpu_before = _children_cpu()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        if seconds < whole:
            try:
                proc.wait(timeout=seconds)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=whole + 30)
    except BaseException:
        stop_process(proc)
        raise
    client_cpu = _children_cpu() - cpu_before
    line = next((ln for ln in out.decode().splitlines() if ln.startswith("HOOKD_WRK ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk failed (exit {proc.returncode}): {err.decode().strip()} {out.decode()[-500:]}"
        )
    data: dict[str, Any] = json.loads(line[len("HOOKD_WRK ") :])
    data["seconds"] = data["duration_us"] / 1e6
    data["client_cpu_s"] = client_cpu
    return data


# =========================================================================== measuring


@dataclass
class Measurement:
    config: str
    rate_limit: int
    scenario: Scenario
    run: int
    wrk: dict[str, Any]
    server_cpu_s: float
    other_cpu_s: float
    db_cpu_s: float
    webhooks_before: int | None = None
    quiet_wait_s: float = 0.0

    @property
    def seconds(self) -> float:
        return float(self.wrk["seconds"])

    @property
    def rps(self) -> float:
        return self.wrk["requests"] / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> int:
        return sum(v for k, v in self.wrk["statuses"].items() if 200 <= int(k) < 300)

    @property
    def failures(self) -> int:
        errors = self.wrk["errors"]
        socket = sum(int(errors[k]) for k in ("connect", "read", "write", "timeout"))
        return socket + (int(self.wrk["requests"]) - self.ok)

    @property
    def cpu_us_per_request(self) -> float:
        """Server CPU (all its threads) per answered request: less sensitive than req/s to
        other processes taking the cores."""
        n = int(self.wrk["requests"])
        return self.server_cpu_s * 1e6 / n if n else math.nan

    def latency_ms(self, key: str) -> float:
        return float(self.wrk["latency_us"][key]) / 1000.0

    def record(self, db: str, baseline: float | None, common: dict[str, Any]) -> dict[str, Any]:
        lat = {k: round(self.latency_ms(k), 3) for k in ("p50", "p90", "p99", "max", "mean")}
        res = Result(
            f"api_throughput {db} {self.config} ({self.scenario.key}) {self.scenario.name}",
            self.rps,
            "req/s",
            baseline,
            extra={
                **common,
                "kind": "run",
                "db": db,
                "config": self.config,
                "rate_limit": self.rate_limit,
                "scenario": self.scenario.key,
                "route": self.scenario.name,
                "run": self.run,
                "seconds": round(self.seconds, 3),
                "requests": self.wrk["requests"],
                "ok": self.ok,
                "failures": self.failures,
                "statuses": self.wrk["statuses"],
                "socket_errors": self.wrk["errors"],
                "latency_ms": lat,
                "server_cpu_util": round(self.server_cpu_s / self.seconds, 3),
                "client_cpu_util": round(self.wrk["client_cpu_s"] / self.seconds, 3),
                "other_cpu_util": round(self.other_cpu_s / self.seconds, 3),
                "db_backend_cpu_util": round(self.db_cpu_s / self.seconds, 3),
                "server_cpu_us_per_request": round(self.cpu_us_per_request, 1),
                "quiet_wait_s": self.quiet_wait_s,
                "webhooks_in_org_before": self.webhooks_before,
            },
        )
        return res.as_dict()


class Bench:
    def __init__(self, args: argparse.Namespace, wrk: str, tmp: Path, db: Database) -> None:
        self.args = args
        self.wrk = wrk
        self.tmp = tmp
        self.db = db
        self.server: Server | None = None
        self.keys: dict[str, str] = {}
        self.webhook_id = ""
        self.scripts: dict[str, Path] = {}
        self.bench_webhooks = 0  # webhooks of the org "bench", kept up to date

    # ------------------------------------------------------------------ set-up

    def use_server(self, config: str) -> Server:
        if self.server is not None and self.server.label == config:
            return self.server
        if self.server is not None:
            self.server.stop()
        self.server = Server(self.db.url, CONFIGS[config], self.tmp, config)
        self.server.start()
        return self.server

    def prepare(self, first_config: str) -> None:
        server = self.use_server(first_config)
        self.keys["default"] = server.bootstrap_key()
        server.cli("orgs", "create", "bench", "--webhook-limit", str(BENCH_WEBHOOK_LIMIT))
        self.keys["bench"] = server.cli("keys", "create", "bench", "--name", "bench")
        status, made = server.request("POST", "/v2/webhooks", self.keys["bench"], WEBHOOK_BODY)
        if status != 200:
            raise RuntimeError(f"creating the webhook of (b) answered {status}: {made}")
        self.webhook_id = made["id"]
        self.bench_webhooks = 1
        # Every route answers 2xx once before any load (a clear message if not).
        for sc in SCENARIOS:
            status, answer = server.request(sc.method, self.path(sc), self.key(sc), sc.body)
            if not 200 <= status < 300:
                raise RuntimeError(f"{sc.method} {self.path(sc)} answered {status}: {answer}")
            if sc.key == "c":
                self.bench_webhooks += 1
        for sc in SCENARIOS:
            script = self.tmp / f"wrk-{sc.key}.lua"
            script.write_text(lua_script(sc.method, self.path(sc), self.key(sc), sc.body))
            self.scripts[sc.key] = script

    def path(self, sc: Scenario) -> str:
        return sc.path.replace("{webhook_id}", self.webhook_id)

    def key(self, sc: Scenario) -> str | None:
        return None if sc.auth is None else self.keys[sc.auth]

    # ------------------------------------------------------------------ measuring

    def measure(self, config: str, sc: Scenario, run: int, seconds: float) -> Measurement:
        server = self.use_server(config)
        url = server.base + self.path(sc)
        script = self.scripts[sc.key]
        waited = self.wait_for_quiet(server)
        if self.args.warmup > 0:
            warm = run_wrk(self.wrk, url, script, self.args.warmup, self.args.connections)
            if sc.key == "c":
                self.bench_webhooks += warm["statuses"].get("200", 0)
        before_webhooks = self.bench_webhooks
        db_before = self.db.backend_cpu()
        cpu_before = cpu_seconds(server.pid)
        busy_before = _system_busy_seconds()
        result = run_wrk(self.wrk, url, script, seconds, self.args.connections)
        server_cpu = cpu_seconds(server.pid) - cpu_before
        busy = _system_busy_seconds() - busy_before
        db_after = self.db.backend_cpu()
        db_cpu = sum(cpu - db_before.get(pid, 0.0) for pid, cpu in db_after.items())
        # What the rest of the machine used meanwhile (other sessions' tests and databases).
        other_cpu = busy - server_cpu - result["client_cpu_s"] - db_cpu
        if sc.key == "c":
            self.bench_webhooks += result["statuses"].get("200", 0)
        return Measurement(
            config,
            CONFIGS[config],
            sc,
            run,
            result,
            server_cpu,
            max(0.0, other_cpu),
            db_cpu,
            before_webhooks if sc.key == "c" else None,
            round(waited, 1),
        )

    def wait_for_quiet(self, server: Server) -> float:
        """Wait (at most ``--quiet-wait`` s) until other processes leave the cores alone:
        a 0.5 s window in which everything but the idle server used under
        ``--quiet-threshold`` of one core. Returns the seconds waited."""
        budget = self.args.quiet_wait
        if budget <= 0:
            return 0.0
        started = time.monotonic()
        while True:
            busy, cpu = _system_busy_seconds(), cpu_seconds(server.pid)
            time.sleep(0.5)
            rest = (_system_busy_seconds() - busy) - (cpu_seconds(server.pid) - cpu)
            waited = time.monotonic() - started
            if rest / 0.5 < self.args.quiet_threshold or waited >= budget:
                return waited

    def profile(self, config: str, out_dir: Path, seconds: float) -> None:
        """py-spy each route under load (a separate pass: not saved, not in the table)."""
        pyspy = Path(sys.executable).with_name("py-spy")
        if not pyspy.exists():
            pyspy = Path(shutil.which("py-spy") or "py-spy")
        out_dir.mkdir(parents=True, exist_ok=True)
        server = self.use_server(config)
        whole = max(1, math.ceil(seconds))
        for sc in SCENARIOS:
            stem = out_dir / f"{self.db.kind}-{sc.key}"
            raw = stem.with_suffix(".txt")
            spy = start_process(
                [
                    str(pyspy),
                    "record",
                    "--pid",
                    str(server.pid),
                    "--duration",
                    str(whole),
                    "--threads",
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "-o",
                    str(raw),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                time.sleep(0.3)  # let py-spy attach
                run_wrk(
                    self.wrk,
                    server.base + self.path(sc),
                    self.scripts[sc.key],
                    whole + 0.5,
                    self.args.connections,
                )
                code = spy.wait(timeout=whole + 30)
            finally:
                stop_process(spy)
            if code != 0 or not raw.exists():
                print(f"py-spy failed for {sc.name}", file=sys.stderr)
                continue
            print(f"\nprofile of {sc.name} ({self.db.kind}, {config}): {raw}")
            print(summarise_profile(raw.read_text(), top=self.args.profile_top))


def summarise_profile(collapsed: str, top: int = 15) -> str:
    """The event loop thread's busiest functions in py-spy's raw output (``--threads``):
    by own samples, and by samples with the function anywhere on the stack (leaving out
    the frames on nearly every stack: uvicorn, the middleware chain, the router)."""
    threads: collections.Counter[str] = collections.Counter()
    self_n: collections.Counter[str] = collections.Counter()
    incl_n: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith("thread ") else "?"
        threads[thread.split(": ", 1)[-1]] += count
        if "MainThread" not in thread:
            continue
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_n[_frame_name(frames[-1])] += count
        for name in {_frame_name(f) for f in frames}:
            incl_n[name] += count
    if not total:
        return "(no samples of the main thread)"
    lines = [
        "samples by thread: " + ", ".join(f"{k} {v}" for k, v in threads.most_common()),
        f"main thread (the event loop), {total} samples; own time:",
    ]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in self_n.most_common(top)]
    lines.append("on the stack (frames on >85% of stacks left out):")
    shown = [(k, n) for k, n in incl_n.most_common() if n / total <= 0.85][:top]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in shown]
    return "\n".join(lines)


def _frame_name(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)" with a short path
    func, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{func} ({path})"


# =========================================================================== reporting


def hookd_source(cwd: Path) -> dict[str, Any]:
    """Which hookd ``python -m hookd`` runs (PYTHONPATH may point at another checkout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKD_")}
    out = subprocess.run(
        [sys.executable, "-c", "import hookd; print(hookd.__version__); print(hookd.__file__)"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    info: dict[str, Any] = {"version": out[0], "path": str(Path(out[1]).parent)}
    git = shutil.which("git")
    if git:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            info["commit"] = subprocess.run(
                [git, "-C", info["path"], "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            info["dirty"] = bool(
                subprocess.run(
                    [git, "-C", info["path"], "status", "--porcelain", "--", "."],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=True,
                ).stdout.strip()
            )
    return info


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def summarise(measurements: list[Measurement], config: str) -> list[dict[str, Any]]:
    """Per scenario: medians over the runs, and the median of the per-run ratios to (a)."""
    mine = [m for m in measurements if m.config == config]
    healthz = {m.run: m.rps for m in mine if m.scenario.key == "a"}
    cpu_a = {m.run: m.cpu_us_per_request for m in mine if m.scenario.key == "a"}
    rows = []
    for sc in SCENARIOS:
        ms = [m for m in mine if m.scenario.key == sc.key]
        if not ms:
            continue
        ratios = [m.rps / healthz[m.run] for m in ms if healthz.get(m.run)]
        rows.append(
            {
                "scenario": sc.key,
                "route": sc.name,
                "config": config,
                "runs": len(ms),
                "rps": [round(m.rps, 1) for m in ms],
                "median_rps": _median([m.rps for m in ms]),
                "median_p50_ms": _median([m.latency_ms("p50") for m in ms]),
                "median_p99_ms": _median([m.latency_ms("p99") for m in ms]),
                "ratios": [round(r, 4) for r in ratios],
                "median_ratio": _median(ratios) if sc.key != "a" else 1.0,
                "server_cpu_util": _median([m.server_cpu_s / m.seconds for m in ms]),
                "client_cpu_util": _median([m.wrk["client_cpu_s"] / m.seconds for m in ms]),
                "other_cpu_util": _median([m.other_cpu_s / m.seconds for m in ms]),
                "db_cpu_util": _median([m.db_cpu_s / m.seconds for m in ms]),
                "median_cpu_us_per_request": _median([m.cpu_us_per_request for m in ms]),
                "cpu_ratios": [
                    round(cpu_a[m.run] / m.cpu_us_per_request, 4) for m in ms if cpu_a.get(m.run)
                ],
                "failures": sum(m.failures for m in ms),
            }
        )
    return rows


def print_summary(rows: list[dict[str, Any]], title: str) -> None:
    """Medians per route: rate, latency, the ratio to (a) by rate and by server CPU per
    request, and where the CPU went (the server, wrk, PostgreSQL's backends, the rest)."""
    header = (
        "route",
        "req/s",
        "p50 ms",
        "p99 ms",
        "vs (a) req/s (runs)",
        "CPU-us/req",
        "vs (a) CPU",
        "CPU server/wrk/PG/rest",
    )
    body = [
        (
            f"({r['scenario']}) {r['route']}",
            f"{r['median_rps']:,.0f}",
            f"{r['median_p50_ms']:.2f}",
            f"{r['median_p99_ms']:.2f}",
            "-"
            if r["scenario"] == "a"
            else f"{r['median_ratio']:.2f}x ({', '.join(f'{x:.2f}' for x in r['ratios'])})",
            f"{r['median_cpu_us_per_request']:.0f}",
            "-" if r["scenario"] == "a" else f"{_median(r['cpu_ratios']):.2f}x",
            "/".join(
                f"{100 * r[k]:.0f}"
                for k in ("server_cpu_util", "client_cpu_util", "db_cpu_util", "other_cpu_util")
            )
            + " %",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    print(title)
    for n, row in enumerate([header, *body]):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()


def write_run_all_summary(path: Path, db: str, rows: dict[str, dict[str, Any]], ok: bool) -> None:
    """The headline figures for ``run_all.py``: (b)-(d) against (a) (rate limiter off);
    the ratio is the median of the per-run ratios. The issue's target is on (d), publish:
    >= 0.5x (a) on SQLite."""
    out = []
    base = rows.get("a", {}).get("median_rps")
    for key, r in rows.items():
        target = f">= {TARGET_RATIO}x (a)" if key == "d" and db == "sqlite" else None
        ratio = None if key == "a" else r["median_ratio"]
        result = Result(
            f"api {db}: ({key}) {r['route']}, 32 clients",
            r["median_rps"],
            "req/s",
            None if key == "a" else base,
            extra={
                "target": target,
                "met": None if target is None else r["median_ratio"] >= TARGET_RATIO,
                "cpu_us_per_request": r["median_cpu_us_per_request"],
            },
            paired_ratio=ratio,
        )
        out.append(result.as_dict())
    path.write_text(json.dumps({"benchmark": "api_throughput", "ok": ok, "rows": out}))


def _rotated(items: Sequence[Scenario], by: int) -> list[Scenario]:
    by %= len(items)
    return list(items[by:]) + list(items[:by])


def _plan(configs: list[str], runs: int, smoke: bool) -> Iterator[tuple[int, str, Scenario]]:
    """Runs in order; configs alternate per run (A B, B A, ...) to save server restarts."""
    for run in range(1, runs + 1):
        order = configs if run % 2 == 1 else list(reversed(configs))
        for config in order:
            scenarios = SCENARIOS
            if smoke and CONFIGS[config] != 0:
                scenarios = tuple(s for s in SCENARIOS if s.key in ("a", "b"))
            for sc in _rotated(scenarios, run - 1):
                yield run, config, sc


# =========================================================================== CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="hookd API throughput: (b)-(d) as a ratio of GET /healthz, with wrk"
    )
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--pg-admin-url",
        default=DEFAULT_PG_ADMIN_URL,
        help="where to CREATE/DROP the benchmark database (loopback only)",
    )
    parser.add_argument("--seconds", type=float, help=f"timed part (default {DEFAULT_SECONDS})")
    parser.add_argument("--warmup", type=float, help=f"warm-up (default {DEFAULT_WARMUP})")
    parser.add_argument(
        "--runs", type=int, help=f"interleaved repetitions (default {DEFAULT_RUNS})"
    )
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument(
        "--no-limiter-run",
        action="store_true",
        help=f"skip the HOOKD_RATE_LIMIT={HIGH_RATE_LIMIT} server",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"one run of {SMOKE_SECONDS} s each, no warm-up, nothing saved",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="S",
        help="before each measurement wait up to S s for the machine to be quiet (default 0)",
    )
    parser.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.25,
        metavar="CORES",
        help="quiet: other processes use less than this many cores (default 0.25)",
    )
    parser.add_argument("--label", help="free text stored with the results (e.g. the commit)")
    parser.add_argument("--no-save", action="store_true", help="do not append to results/")
    parser.add_argument("--summary-file", type=Path, help=argparse.SUPPRESS)  # for run_all.py
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="afterwards, py-spy the server under each route's load into DIR",
    )
    parser.add_argument("--profile-top", type=int, default=15)
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (server logs, Lua scripts)",
    )
    args = parser.parse_args(argv)

    if args.smoke:
        args.seconds = args.seconds or SMOKE_SECONDS
        args.warmup = 0.0 if args.warmup is None else args.warmup
        args.runs = args.runs or 1
    args.seconds = min(max(0.1, args.seconds or DEFAULT_SECONDS), MAX_SECONDS)
    args.warmup = min(max(0.0, DEFAULT_WARMUP if args.warmup is None else args.warmup), 60.0)
    args.runs = max(1, min(args.runs or DEFAULT_RUNS, 20))
    args.quiet_wait = min(max(0.0, args.quiet_wait), 600.0)
    if not 1 <= args.connections <= 1024:
        parser.error("--connections must be within 1..1024")
    try:
        _check_loopback(args.pg_admin_url)
    except ValueError as exc:
        parser.error(str(exc))
    wrk = find_wrk()
    if wrk is None:
        print("wrk not found (apt-get install wrk, or set HOOKD_BENCH_WRK)", file=sys.stderr)
        if not args.smoke:
            return 2
        # A smoke run checks the benchmark where it can run; without wrk it cannot, and
        # says so in run_all's table instead of failing the test command of a machine
        # that has only Python and the databases.
        print("api_throughput: smoke run skipped, wrk is not installed", flush=True)
        if args.summary_file:
            args.summary_file.write_text(
                json.dumps(
                    {
                        "benchmark": "api_throughput",
                        "ok": True,
                        "rows": [{"name": "api: skipped (wrk not installed)", "value": None}],
                    }
                )
            )
        return 0
    save = not (args.smoke or args.no_save)
    configs = list(CONFIGS)[:1] if args.no_limiter_run else list(CONFIGS)

    tmp = Path(tempfile.mkdtemp(prefix="hookd-bench-api-"))
    source = hookd_source(tmp)
    print(
        f"hookd {source['version']} from {source['path']}"
        f"{'' if not source.get('commit') else ' at ' + source['commit'][:10]}"
        f"{' (with uncommitted changes)' if source.get('dirty') else ''}",
        flush=True,
    )
    db = Database(args.db, tmp, args.pg_admin_url)
    measurements: list[Measurement] = []
    bench = Bench(args, wrk, tmp, db)
    started = time.monotonic()
    try:
        db.create()
        bench.prepare(configs[0])
        for run, config, sc in _plan(configs, args.runs, args.smoke):
            m = bench.measure(config, sc, run, args.seconds)
            measurements.append(m)
            note = f", {m.webhooks_before:,} webhooks in org" if m.webhooks_before else ""
            print(
                f"run {run} {config:<22} ({sc.key}) {sc.name:<32} {m.rps:>9,.0f} req/s  "
                f"p50 {m.latency_ms('p50'):6.2f} ms  p99 {m.latency_ms('p99'):6.2f} ms  "
                f"server CPU {m.server_cpu_s / m.seconds:4.0%}  "
                f"wrk CPU {m.wrk['client_cpu_s'] / m.seconds:4.0%}  "
                f"{f'PG {m.db_cpu_s / m.seconds:4.0%}  ' if m.db_cpu_s else ''}"
                f"rest {m.other_cpu_s / m.seconds:4.0%}  "
                f"{m.cpu_us_per_request:5.0f} CPU-us/req"
                f"{f'  (waited {m.quiet_wait_s:.0f} s for quiet)' if m.quiet_wait_s >= 1 else ''}"
                f"{'' if not m.failures else f'  FAILURES {m.failures} {m.wrk}'}{note}",
                flush=True,
            )
        if args.profile:
            bench.profile(configs[0], Path(args.profile), max(args.seconds, 3.0))
    finally:
        with contextlib.suppress(Exception):
            if bench.server is not None:
                bench.server.stop()
        try:
            db.drop()
        finally:
            if args.keep:
                print(f"kept {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)

    common = {
        "invocation": secrets.token_hex(4),
        "hookd": source,
        "connections": args.connections,
        "seconds_each": args.seconds,
        "warmup": args.warmup,
        "runs": args.runs,
        "label": args.label,
        "quiet_wait": args.quiet_wait,
        "quiet_threshold": args.quiet_threshold,
        "load_generator": f"wrk -t1 -c{args.connections} (Lua: auth header, body, statuses)",
    }
    summaries: list[dict[str, Any]] = []
    for config in configs:
        per_run = [m for m in measurements if m.config == config]
        healthz = {m.run: m.rps for m in per_run if m.scenario.key == "a"}
        results = [
            Result(
                f"run {m.run} ({m.scenario.key}) {m.scenario.name}",
                m.rps,
                "req/s",
                None if m.scenario.key == "a" else healthz.get(m.run),
            )
            for m in sorted(per_run, key=lambda m: (m.scenario.key, m.run))
        ]
        print()
        print_table(results, title=f"{args.db}, {config}: every run (vs (a) of the same run)")
        rows = summarise(measurements, config)
        print()
        print_summary(
            rows,
            f"{args.db}, {config}: medians of {args.runs} run(s), "
            f"{args.seconds:g} s each, {args.connections} connections",
        )
        summaries.extend(rows)
        if save:
            for m in per_run:
                base = None if m.scenario.key == "a" else healthz.get(m.run)
                append_jsonl(RESULTS_NAME, m.record(args.db, base, common))
    limited = {r["scenario"]: r for r in summaries if r["config"] != "rate_limit=0"}
    unlimited = {r["scenario"]: r for r in summaries if r["config"] == "rate_limit=0"}
    if limited:
        print(
            f"\nthe rate limiter's cost (HOOKD_RATE_LIMIT={HIGH_RATE_LIMIT} against 0, medians): "
            "req/s ratio, and server CPU per request ratio"
        )
        for key, r in limited.items():
            if key in unlimited and key != "a":
                off = unlimited[key]
                print(
                    f"  ({key}) {r['route']}: {r['median_rps'] / off['median_rps']:.2f}x req/s, "
                    f"{r['median_cpu_us_per_request'] / off['median_cpu_us_per_request']:.2f}x "
                    "CPU per request"
                )
    if save:
        for r in summaries:
            append_jsonl(
                RESULTS_NAME,
                {
                    "name": f"api_throughput {args.db} summary",
                    "kind": "summary",
                    "db": args.db,
                    **common,
                    **r,
                },
            )
    b = unlimited.get("b")
    if b is not None:
        verdict = "met" if b["median_ratio"] >= TARGET_RATIO else "MISSED"
        by_cpu = _median(b["cpu_ratios"])
        print(
            f"\ntarget ({args.db}): GET /v2/webhooks/{{id}} >= {TARGET_RATIO}x GET /healthz: "
            f"{verdict} ({b['median_ratio']:.2f}x by req/s, median of the runs' ratios; "
            f"{by_cpu:.2f}x by server CPU per request)"
        )
        busy = _median([r["other_cpu_util"] for r in summaries])
        if busy > 0.5:
            print(
                f"note: other processes used {busy:.0%} of a core (median) while measuring; "
                "req/s are then unreliable, the CPU-per-request ratio much less so"
            )
    print(f"took {time.monotonic() - started:.1f} s")

    failed = [m for m in measurements if m.failures or m.wrk["requests"] == 0]
    if args.summary_file:
        write_run_all_summary(args.summary_file, args.db, unlimited, not failed)
    if failed:
        for m in failed:
            print(
                f"FAILED: run {m.run} {m.config} ({m.scenario.key}) {m.scenario.name}: "
                f"{m.wrk['requests']} requests, statuses {m.wrk['statuses']}, "
                f"socket errors {m.wrk['errors']}, first non-2xx: {m.wrk.get('first_bad')}",
                file=sys.stderr,
            )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
