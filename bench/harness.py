"""Running hookd for the delivery benchmarks: deployments, webhooks, publishing, draining.

Used by ``drain.py``, ``latency.py``, ``backlog.py``, ``failure.py`` and ``listing.py``.
Nothing here is timed by itself; the benchmarks decide what to measure.

* :class:`Deployment` runs ``hookd serve`` (``mode="serve"``, SQLite or PostgreSQL), or
  ``hookd api`` plus N ``hookd worker`` processes (``mode="split"``, PostgreSQL only), on
  a fresh :class:`bench.api_throughput.Database`, each on a free loopback port, with
  ``HOOKD_ALLOW_HTTP=true``, ``HOOKD_ALLOWED_NETWORKS=127.0.0.0/8``,
  ``HOOKD_RATE_LIMIT=0`` and ``HOOKD_LOG_LEVEL=warning`` (every other ``HOOKD_*`` variable
  of the environment is dropped). It knows its processes' pids, CPU seconds and peak RSS,
  and stops only them, by pid.
* :func:`run_publisher` publishes events from a separate process (``bench/publisher.py``:
  aiohttp + uvloop, N concurrent keep-alive clients).
* :func:`measure_drain` publishes a batch and waits until a receiver counted every
  delivery: publish rate, end-to-end delivery rate, hookd's CPU per delivery and peak RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api_throughput import Database, hookd_source
from bench.common import (
    BENCH_DIR,
    DEFAULT_PG_ADMIN_URL,
    LOOPBACK,
    Result,
    cpu_times,
    free_port,
    read_printed_key,
    run_hookd_cli,
    start_process,
    stop_process,
    thread_cpu_seconds,
    wait_for_port,
)
from bench.receiver import Receiver

__all__ = [
    "DEFAULT_PG_ADMIN_URL",
    "Database",
    "Deployment",
    "DrainResult",
    "Mode",
    "finish",
    "hookd_commit",
    "hookd_source",
    "measure_drain",
    "median",
    "proc_status_kib",
    "run_publisher",
    "wait_for_count",
    "write_summary",
]

Mode = Literal["serve", "split"]
SERVER_START_TIMEOUT = 60.0
# In split mode a worker that starts next to a live one takes its fair share of the caps once
# the other has shrunk its share, at its next heartbeat (hookd/delivery/worker.py: every
# HOOKD_WORKER_TIMEOUT / 10 = 1 s). Measurements wait a little longer after the workers start.
SPLIT_SETTLE_SECONDS = 2.5
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def median(values: Sequence[float]) -> float:
    """The median, or nan for no values."""
    return statistics.median(values) if values else float("nan")


def proc_status_kib(pid: int, field_name: str) -> int:
    """A ``kB`` field (``VmHWM``, ``VmRSS``) of ``/proc/<pid>/status``; 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def hookd_commit() -> str:
    """Which hookd the benchmarks run, for their output and results.

    ``$HOOKD_BENCH_COMMIT`` when set (``run_all.py --snapshot`` sets it next to
    ``PYTHONPATH``), else the short commit of the checkout that ``python -m hookd`` imports,
    with ``+dirty`` if its ``hookd/`` has uncommitted changes, else ``?``.
    """
    override = os.environ.get("HOOKD_BENCH_COMMIT")
    if override:
        return override
    with contextlib.suppress(subprocess.SubprocessError, OSError, ValueError, IndexError):
        info = hookd_source(Path(tempfile.gettempdir()))
        if info.get("commit"):
            return str(info["commit"])[:7] + ("+dirty" if info.get("dirty") else "")
    return "?"


# =========================================================================== deployments


@dataclass
class _Child:
    role: str  # "serve", "api", "worker-1", ...
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path


class Deployment:
    """hookd on a fresh database: ``serve``, or ``api`` + ``workers`` ``worker`` processes.

    Use as a context manager (stops everything it started, drops the PostgreSQL database
    unless ``keep_db``). ``extra_env`` adds or overrides ``HOOKD_*`` settings.
    """

    def __init__(
        self,
        db_kind: str,
        tmp: Path,
        *,
        mode: Mode = "serve",
        workers: int = 2,
        extra_env: dict[str, str] | None = None,
        pg_admin_url: str = DEFAULT_PG_ADMIN_URL,
        webhook_limit: int = 10,
    ) -> None:
        if mode == "split" and db_kind != "postgres":
            raise ValueError("split mode (hookd api + hookd worker) needs --db postgres")
        self.db_kind = db_kind
        self.tmp = tmp
        self.mode: Mode = mode
        self.n_workers = workers if mode == "split" else 0
        self.db = Database(db_kind, tmp, pg_admin_url)
        self.port = 0
        self.key = ""
        self.webhook_limit = max(10, webhook_limit)
        self.extra_env = dict(extra_env or {})
        self.children: list[_Child] = []
        self.workers_started_at = 0.0
        self._db_created = False

    # ------------------------------------------------------------------ environment

    @property
    def base(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKD_")}
        env.update(
            HOOKD_DATABASE_URL=self.db.url,
            HOOKD_HOST=LOOPBACK,
            HOOKD_PORT=str(self.port),
            HOOKD_RATE_LIMIT="0",
            HOOKD_LOG_LEVEL="warning",
            HOOKD_ALLOW_HTTP="true",
            HOOKD_ALLOWED_NETWORKS="127.0.0.0/8",
            HOOKD_WEBHOOK_LIMIT=str(self.webhook_limit),
        )
        env.update(self.extra_env)
        return env

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_db(self) -> None:
        if not self._db_created:
            self.db.create()
            self._db_created = True

    def start(self) -> Deployment:
        """Create the database (first time), start the processes, get an API key."""
        self.create_db()
        if self.mode == "serve":
            child = self._start_server("serve")
            if not self.key:
                self.key = self._bootstrap_key(child)
        else:
            if not self.key:
                self.cli("migrate")
                self.cli("orgs", "create", "bench", "--webhook-limit", str(self.webhook_limit))
                self.key = self.cli("keys", "create", "bench", "--name", "bench")
            self._start_server("api")
            for n in range(self.n_workers):
                self._spawn(f"worker-{n + 1}", "worker")
            self.workers_started_at = time.monotonic()
        return self

    def settle(self) -> None:
        """Split mode: wait until every worker has taken its share of the per-webhook cap."""
        if self.mode == "split":
            left = self.workers_started_at + SPLIT_SETTLE_SECONDS - time.monotonic()
            if left > 0:
                time.sleep(left)
            self.check_alive()

    def _spawn(self, role: str, command: str) -> _Child:
        out = self.tmp / f"hookd-{role}.out"
        err = self.tmp / f"hookd-{role}.err"
        with out.open("ab") as o, err.open("ab") as e:
            proc = start_process(
                [sys.executable, "-m", "hookd", command],
                env=self.env(),
                cwd=self.tmp,
                stdout=o,
                stderr=e,
            )
        child = _Child(role, proc, out, err)
        self.children.append(child)
        return child

    def _start_server(self, command: str) -> _Child:
        for attempt in range(3):
            self.port = free_port()
            child = self._spawn(command, command)
            try:
                wait_for_port(self.port, timeout=SERVER_START_TIMEOUT, proc=child.proc)
                return child
            except (RuntimeError, TimeoutError) as exc:
                stop_process(child.proc)
                self.children.remove(child)
                tail = child.stderr.read_bytes()[-2000:].decode(errors="replace")
                if attempt == 2 or "address already in use" not in tail.lower():
                    raise RuntimeError(f"hookd {command} did not start: {exc}\n{tail}") from None
        raise AssertionError("unreachable")

    def _bootstrap_key(self, child: _Child, timeout: float = 10.0) -> str:
        return read_printed_key(child.stdout, timeout)

    def kill(self, role: str) -> None:
        """``kill -9`` the process of ``role`` (by its pid) and reap it."""
        child = next(c for c in self.children if c.role == role)
        child.proc.kill()
        child.proc.wait(timeout=30)
        self.children.remove(child)

    def restart(self, role: str) -> None:
        """Start ``role`` again after :meth:`kill`: ``serve`` and ``api`` (on a new port)
        once they listen, a worker at once."""
        if role in ("serve", "api"):
            self._start_server(role)
        else:
            self._spawn(role, "worker")

    def stop(self) -> None:
        """Stop every hookd process of this deployment (by pid); the database stays."""
        # Workers first, so that they give their leases back while the API still runs.
        for child in sorted(self.children, key=lambda c: c.role == "api"):
            stop_process(child.proc, timeout=40.0)
        self.children.clear()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self._db_created:
                self.db.drop()
                self._db_created = False

    def check_alive(self) -> None:
        for child in self.children:
            if child.proc.poll() is not None:
                tail = child.stderr.read_bytes()[-2000:].decode(errors="replace")
                raise RuntimeError(
                    f"hookd {child.role} exited with {child.proc.returncode}: {tail}"
                )

    def stderr_tail(self, limit: int = 1500) -> str:
        return "\n".join(
            f"[{c.role}] {c.stderr.read_bytes()[-limit:].decode(errors='replace').strip()}"
            for c in self.children
            if c.stderr.exists() and c.stderr.stat().st_size
        )

    # ------------------------------------------------------------------ resources

    @property
    def pids(self) -> dict[str, int]:
        return {c.role: c.proc.pid for c in self.children}

    def cpu_seconds(self) -> float:
        """CPU seconds so far of every hookd process of the deployment (all threads)."""
        return sum(self.cpu_seconds_by_role().values())

    def cpu_seconds_by_role(self) -> dict[str, float]:
        """CPU seconds so far of each hookd process (all threads), by role."""
        return {role: cpu for role, (cpu, _system) in self.cpu_times_by_role().items()}

    def cpu_times_by_role(self) -> dict[str, tuple[float, float]]:
        """:meth:`cpu_seconds_by_role` with the kernel's share: ``(all, system)``, by role."""
        return {c.role: cpu_times(c.proc.pid) for c in self.children}

    def loop_cpu_seconds(self) -> float:
        """CPU seconds so far of the event-loop threads of every hookd process."""
        return sum(thread_cpu_seconds(c.proc.pid) for c in self.children)

    def peak_rss_kib(self) -> dict[str, int]:
        """VmHWM (peak RSS) of each process, by role."""
        return {c.role: proc_status_kib(c.proc.pid, "VmHWM") for c in self.children}

    def rss_kib(self) -> dict[str, int]:
        """VmRSS (current RSS) of each process, by role."""
        return {c.role: proc_status_kib(c.proc.pid, "VmRSS") for c in self.children}

    def sql_rows(self, sql: str) -> list[tuple[Any, ...]]:
        """The rows of ``sql`` on the deployment's database (read behind hookd's back)."""
        if self.db_kind == "sqlite":
            conn = sqlite3.connect(self.db.url[len("sqlite:///") :], timeout=30)
            try:
                return [tuple(r) for r in conn.execute(sql).fetchall()]
            finally:
                conn.close()
        import asyncpg

        async def go() -> list[tuple[Any, ...]]:
            conn = await asyncpg.connect(self.db.url, timeout=10)
            try:
                return [tuple(r) for r in await conn.fetch(sql)]
            finally:
                await conn.close()

        return asyncio.run(go())

    def sql_value(self, sql: str) -> Any:
        """The first column of the first row of ``sql``, or None."""
        rows = self.sql_rows(sql)
        return rows[0][0] if rows else None

    # ------------------------------------------------------------------ API and CLI

    def cli(self, *args: str) -> str:
        """Run ``hookd <args>`` on the same database; return its stdout."""
        return run_hookd_cli(args, self.env(), self.tmp)

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.key}"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with _DIRECT.open(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def create_webhooks(
        self,
        count: int,
        url_of: Callable[[int], str],
        *,
        topics: Sequence[str] = ("post.created",),
        timeout_ms: int = 5000,
    ) -> list[str]:
        """Create ``count`` webhooks (``url_of(i)`` each); returns their ids in order."""
        ids = []
        for i in range(count):
            status, made = self.request(
                "POST",
                "/v2/webhooks",
                {
                    "name": f"bench {i}",
                    "url": url_of(i),
                    "topics": list(topics),
                    "requestConfig": {"timeoutMs": timeout_ms},
                },
            )
            if status != 200:
                raise RuntimeError(f"creating webhook {i} answered {status}: {made}")
            ids.append(str(made["id"]))
        return ids


# =========================================================================== publishing


def run_publisher(
    base: str,
    key: str,
    events: int,
    *,
    clients: int = 32,
    topic: str = "post.created",
    max_seconds: float = 300.0,
    wait: bool = True,
) -> subprocess.Popen[bytes] | dict[str, Any]:
    """Publish ``events`` events from a separate process (``bench/publisher.py``).

    With ``wait`` returns its JSON result (see :func:`bench.publisher.publish`), else the
    running process (read its result with :func:`publisher_result`).
    """
    argv = [
        sys.executable,
        str(BENCH_DIR / "publisher.py"),
        "--url",
        base,
        "--events",
        str(events),
        "--clients",
        str(clients),
        "--topic",
        topic,
        "--max-seconds",
        str(max_seconds),
    ]
    env = dict(os.environ)
    env["HOOKD_BENCH_KEY"] = key  # not on the command line (visible in ps)
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    if not wait:
        return proc
    return publisher_result(proc, max_seconds + 60)


def publisher_result(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """Wait for a publisher started by :func:`run_publisher`; return its JSON result."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        raise RuntimeError("the publisher did not finish in time") from None
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the publisher failed ({proc.returncode}): {err.decode()[-1500:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# =========================================================================== draining


@dataclass
class DrainResult:
    """One publish-and-drain measurement (times are ``time.monotonic``, shared by processes)."""

    events: int
    expected: int
    received: int
    publish: dict[str, Any]
    done_at: float | None
    hookd_cpu_s: float
    db_cpu_s: float
    loop_cpu_s: float
    peak_rss_kib: dict[str, int]
    extra_after: int = 0  # deliveries that arrived after the expected count (duplicates)
    receiver_cpu_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    # hookd_cpu_s split by process role (api, worker-1, …; one "serve" in serve mode)
    cpu_by_role_s: dict[str, float] = field(default_factory=dict)
    # The kernel's share of hookd_cpu_s and of db_cpu_s (system calls: mostly the socket
    # reads and writes of each round trip)
    hookd_system_cpu_s: float = 0.0
    db_system_cpu_s: float = 0.0

    @property
    def complete(self) -> bool:
        return self.done_at is not None and self.received >= self.expected

    @property
    def first_publish(self) -> float:
        return float(self.publish["first_start"])

    @property
    def seconds(self) -> float:
        end = self.done_at if self.done_at is not None else float("nan")
        return end - self.first_publish

    @property
    def delivery_rate(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0

    @property
    def publish_rate(self) -> float:
        span = float(self.publish["last_end"]) - self.first_publish
        return int(self.publish["ok"]) / span if span > 0 else 0.0

    @property
    def cpu_us_per_delivery(self) -> float:
        return self.hookd_cpu_s * 1e6 / self.received if self.received else float("nan")

    def role_cpu_us_per_delivery(self) -> dict[str, float]:
        """hookd's CPU per delivery, by process role."""
        return {
            role: cpu * 1e6 / self.received if self.received else float("nan")
            for role, cpu in self.cpu_by_role_s.items()
        }

    @property
    def system_share(self) -> tuple[float, float]:
        """The kernel's share of hookd's CPU and of PostgreSQL's backends' (0 to 1)."""
        return (
            self.hookd_system_cpu_s / self.hookd_cpu_s if self.hookd_cpu_s else float("nan"),
            self.db_system_cpu_s / self.db_cpu_s if self.db_cpu_s else float("nan"),
        )

    @property
    def loop_cpu_us_per_delivery(self) -> float:
        """The event-loop threads' share: on one core, what bounds ``hookd serve``."""
        return self.loop_cpu_s * 1e6 / self.received if self.received else float("nan")

    def as_dict(self) -> dict[str, Any]:
        lat = self.publish.get("latency_ms", {})
        return {
            "events": self.events,
            "expected_deliveries": self.expected,
            "received": self.received,
            "complete": self.complete,
            "extra_after": self.extra_after,
            "seconds": round(self.seconds, 4),
            "delivery_rate": round(self.delivery_rate, 1),
            "publish_rate": round(self.publish_rate, 1),
            "publish_ok": self.publish.get("ok"),
            "publish_errors": self.publish.get("errors"),
            "publish_statuses": self.publish.get("statuses"),
            "publish_latency_ms": lat,
            "hookd_cpu_s": round(self.hookd_cpu_s, 3),
            "hookd_cpu_us_per_delivery": round(self.cpu_us_per_delivery, 1),
            "hookd_loop_cpu_us_per_delivery": round(self.loop_cpu_us_per_delivery, 1),
            "hookd_cpu_us_per_delivery_by_role": {
                role: round(us, 1) for role, us in self.role_cpu_us_per_delivery().items()
            },
            "hookd_system_cpu_s": round(self.hookd_system_cpu_s, 3),
            "db_backend_cpu_s": round(self.db_cpu_s, 3),
            "db_backend_system_cpu_s": round(self.db_system_cpu_s, 3),
            "receiver_cpu_s": round(self.receiver_cpu_s, 3),
            "hookd_peak_rss_kib": self.peak_rss_kib,
            **self.extra,
        }


def measure_drain(
    dep: Deployment,
    receiver: Receiver,
    events: int,
    expected: int,
    *,
    clients: int = 32,
    timeout: float = 300.0,
    poll: float = 0.005,
    settle: float = 0.3,
) -> DrainResult:
    """Publish ``events`` events and wait until ``receiver`` counted ``expected`` more requests.

    The delivery rate runs from the start of the first publish request (stamped by the
    publisher) to the poll of the receiver's count that first saw every delivery (polled
    every ``poll`` s, so the end is late by at most that plus one status request). CPU is
    counted from just before the publisher starts to that moment. Afterwards the receiver
    is counted once more after ``settle`` s, to catch duplicates.
    """
    dep.check_alive()
    before = receiver.request_count()
    cpu_before = dep.cpu_times_by_role()
    loop_before = dep.loop_cpu_seconds()
    db_before = dep.db.backend_cpu_split()
    recv_cpu_before = receiver.cpu_seconds()
    proc = run_publisher(dep.base, dep.key, events, clients=clients, wait=False)
    assert isinstance(proc, subprocess.Popen)
    deadline = time.monotonic() + timeout
    done_at: float | None = None
    received = 0
    try:
        while time.monotonic() < deadline:
            received = receiver.request_count() - before
            if received >= expected:
                done_at = time.monotonic()
                break
            if proc.poll() is not None and proc.returncode != 0:
                break
            time.sleep(poll)
        cpu_after = dep.cpu_times_by_role()
        by_role = {r: cpu - cpu_before.get(r, (0.0, 0.0))[0] for r, (cpu, _) in cpu_after.items()}
        hookd_sys = sum(s - cpu_before.get(r, (0.0, 0.0))[1] for r, (_, s) in cpu_after.items())
        loop_cpu = dep.loop_cpu_seconds() - loop_before
        recv_cpu = receiver.cpu_seconds() - recv_cpu_before
        db_after = dep.db.backend_cpu_split()
        published = publisher_result(proc, timeout=max(10.0, deadline - time.monotonic() + 30))
    except BaseException:
        stop_process(proc)
        raise
    db_cpu = sum(cpu - db_before.get(pid, (0.0, 0.0))[0] for pid, (cpu, _) in db_after.items())
    db_sys = sum(s - db_before.get(pid, (0.0, 0.0))[1] for pid, (_, s) in db_after.items())
    if settle > 0 and done_at is not None:
        time.sleep(settle)
    final = receiver.request_count() - before
    return DrainResult(
        events=events,
        expected=expected,
        received=min(received, expected) if done_at is not None else final,
        publish=published,
        done_at=done_at,
        hookd_cpu_s=sum(by_role.values()),
        cpu_by_role_s=by_role,
        hookd_system_cpu_s=hookd_sys,
        db_cpu_s=db_cpu,
        db_system_cpu_s=db_sys,
        loop_cpu_s=loop_cpu,
        peak_rss_kib=dep.peak_rss_kib(),
        extra_after=max(0, final - expected),
        receiver_cpu_s=recv_cpu,
    )


def wait_for_count(
    receiver: Receiver, before: int, expected: int, timeout: float, poll: float = 0.01
) -> int:
    """Wait until ``receiver`` counted ``expected`` requests more than ``before``; returns
    how many it counted (fewer if the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        got = receiver.request_count() - before
        if got >= expected or time.monotonic() > deadline:
            return got
        time.sleep(poll)


def pg_execute(url: str, statements: Sequence[str], timeout: float = 600.0) -> None:
    """Run SQL statements on a PostgreSQL database (loopback only), one after the other."""
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            for sql in statements:
                await conn.execute(sql, timeout=timeout)
        finally:
            await conn.close()

    asyncio.run(go())


def write_summary(path: Path, benchmark: str, results: Sequence[Result], ok: bool) -> None:
    """Write a benchmark's headline figures for ``run_all.py`` (a JSON object)."""
    data = {
        "benchmark": benchmark,
        "ok": ok,
        "rows": [r.as_dict() for r in results],
    }
    path.write_text(json.dumps(data, default=str))


def finish(
    summary_file: Path | None, benchmark: str, results: Sequence[Result], failures: Sequence[str]
) -> int:
    """The end of a benchmark's run: its headline rows for ``run_all.py`` (when it asked for
    them), each failure on stderr, and the exit status (1 if anything failed)."""
    if summary_file:
        write_summary(summary_file, benchmark, results, not failures)
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0
