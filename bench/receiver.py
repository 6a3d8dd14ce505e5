"""Local HTTP receivers for benchmarks: every request is answered with a fixed status.

Two kinds, both listening on a loopback port only and both started and stopped by the
benchmark itself (by the pid of the process it started, never by name):

``nginx``
    Debian's nginx (``apt-get install nginx-light``) with a throw-away config in a
    temporary prefix directory: ``return <status>;``, no access log, keep-alive without a
    request limit. The fastest receiver, so it measures the sender and not itself. It can
    report the total number of requests (``stub_status``), but not which ones.

``python``
    A raw :mod:`asyncio` protocol on uvloop with httptools' HTTP parser (both come with
    hookd's ``uvicorn[standard]`` dependency), in a subprocess. Slower than nginx, but it
    can answer with a delay (``delay_ms``, e.g. longer than the sender's timeout), change
    its status and delay while running, and count what arrived: requests, methods, the
    ``webhook-id`` header values and the top-level ``"id"`` of JSON bodies. Counts are
    served on ``GET /_control/stats`` and written to a JSON file when it stops.

Typical use::

    with Receiver.start(kind="python", status=500) as r:
        run_sender(r.url)
        print(r.stats()["requests"], len(set(r.stats()["webhook_ids"])))

``kind="auto"`` picks nginx when it is installed and python otherwise. The nginx binary is
looked up as ``$HOOKD_BENCH_NGINX``, then ``nginx`` on ``PATH``, then ``/usr/sbin/nginx``.

Run as a script it starts a receiver and waits for Ctrl-C (``run``), measures a receiver's
capacity with ``wrk`` (``capacity``), or is the python receiver's server process
(``serve``, used internally)::

    python bench/receiver.py run --kind nginx --port 8099
    python bench/receiver.py capacity --kind nginx --workers 1 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Literal, cast

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    LOOPBACK,
    cpu_seconds,
    free_port,
    start_process,
    stop_process,
    wait_for_port,
)

__all__ = [
    "CONTROL_PREFIX",
    "Kind",
    "Receiver",
    "find_nginx",
    "find_wrk",
    "measure_capacity",
    "nginx_config",
]

Kind = Literal["nginx", "python", "auto"]
CONTROL_PREFIX = "/_control/"
NGINX_STATUS_PATH = "/_nginx_status"
_REASONS = {
    200: "OK",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    410: "Gone",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
# The control client must never go through a proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def find_nginx() -> str | None:
    """Return the path of the nginx binary, or ``None`` if it is not installed.

    Order: ``$HOOKD_BENCH_NGINX``, ``nginx`` on ``PATH``, then the usual sbin paths (which
    are not on a normal user's ``PATH``).
    """
    override = os.environ.get("HOOKD_BENCH_NGINX")
    if override:
        return override if os.access(override, os.X_OK) else None
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in _NGINX_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def receiver_kind(smoke: bool) -> Kind:
    """The receiver a delivery benchmark uses: nginx, so that it measures the sender and not
    the receiver; a smoke run (a check that the benchmark works, not a measurement) takes
    the python receiver where nginx is not installed."""
    if smoke and find_nginx() is None:
        print("nginx not installed: this smoke run uses the python receiver", flush=True)
        return "python"
    return "nginx"


def find_wrk() -> str | None:
    """Return the path of the ``wrk`` load generator (``apt-get install wrk``), if any."""
    return os.environ.get("HOOKD_BENCH_WRK") or shutil.which("wrk")


def nginx_config(
    workdir: Path,
    port: int,
    *,
    status: int = 204,
    workers: int | Literal["auto"] = 1,
    host: str = LOOPBACK,
) -> str:
    """Return an nginx config that answers everything on *host*:*port* with *status*.

    All of nginx's files (pid, error log, temp dirs) live under *workdir*. The master
    stays in the foreground (``daemon off``) so that the benchmark's child *is* the
    master, and stopping it by its pid stops the workers too.
    """
    if not 200 <= status <= 599:
        raise ValueError(f"nginx receiver status must be 200..599, not {status}")
    w = workdir
    temp_paths = "\n".join(
        f"    {name}_temp_path {w / ('tmp_' + name)};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
# Generated by hookd bench/receiver.py; throw-away.
daemon off;
master_process on;
worker_processes {workers};
pid {w / "nginx.pid"};
error_log {w / "error.log"} warn;
worker_rlimit_nofile 16384;

events {{
    worker_connections 8192;
    multi_accept on;
}}

http {{
    access_log off;
    log_not_found off;
    server_tokens off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_buffer_size 64k;
    client_max_body_size 16m;
{temp_paths}

    server {{
        listen {host}:{port} backlog=4096{" reuseport" if workers != 1 else ""};
        location = {NGINX_STATUS_PATH} {{
            stub_status;
        }}
        location / {{
            return {status};
        }}
    }}
}}
"""


class Receiver:
    """A running local receiver; use :meth:`start` to make one, as a context manager.

    Attributes: ``kind`` (``"nginx"`` or ``"python"``), ``host``, ``port``, ``url``
    (``http://127.0.0.1:<port>/``), ``proc`` (the child process; its pid is the only one
    ever signalled), ``workdir`` (temporary directory, removed on :meth:`stop`) and, once
    stopped, ``final_stats`` (python kind: the counts written at exit).
    """

    def __init__(
        self,
        kind: Literal["nginx", "python"],
        proc: subprocess.Popen[bytes],
        port: int,
        workdir: Path,
        *,
        host: str = LOOPBACK,
        status: int = 204,
        delay_ms: float = 0.0,
    ) -> None:
        self.kind: Literal["nginx", "python"] = kind
        self.proc = proc
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}/"
        self.workdir = workdir
        self.status = status
        self.delay_ms = delay_ms
        self.final_stats: dict[str, Any] | None = None
        self._status_queries = 0
        self._stopped = False

    # ------------------------------------------------------------------ starting

    @classmethod
    def start(
        cls,
        kind: Kind = "auto",
        status: int = 204,
        delay_ms: float = 0.0,
        *,
        workers: int | Literal["auto"] = 1,
        record_ids: bool = True,
        port: int | None = None,
        timeout: float = 10.0,
    ) -> Receiver:
        """Start a receiver and return it once it accepts connections.

        *kind*: ``"nginx"``, ``"python"``, or ``"auto"`` (nginx if installed). *status* is
        the answer to every request; *delay_ms* (python only) holds each answer back that
        long. *workers* is nginx's ``worker_processes``. *record_ids* (python only) keeps
        every ``webhook-id`` header and JSON body ``"id"``. *port* defaults to a free one.
        """
        if kind == "auto":
            kind = "nginx" if find_nginx() and delay_ms <= 0 else "python"
        if kind == "nginx":
            if delay_ms > 0:
                raise ValueError("the nginx receiver cannot delay answers; use kind='python'")
            return cls._start_nginx(status=status, workers=workers, port=port, timeout=timeout)
        if kind == "python":
            return cls._start_python(
                status=status,
                delay_ms=delay_ms,
                record_ids=record_ids,
                port=port,
                timeout=timeout,
            )
        raise ValueError(f"unknown receiver kind {kind!r}")

    @classmethod
    def _start_nginx(
        cls,
        *,
        status: int,
        workers: int | Literal["auto"],
        port: int | None,
        timeout: float,
    ) -> Receiver:
        nginx = find_nginx()
        if nginx is None:
            raise FileNotFoundError(
                "nginx not found (apt-get install nginx-light, or set HOOKD_BENCH_NGINX)"
            )
        workdir = Path(tempfile.mkdtemp(prefix="hookd-bench-nginx-"))
        # Workers run as "nobody" when started by root: let them into the temp dirs.
        workdir.chmod(0o755)
        last_error = ""
        for _attempt in range(5):
            chosen = port if port is not None else free_port()
            conf = workdir / "nginx.conf"
            conf.write_text(nginx_config(workdir, chosen, status=status, workers=workers))
            stderr = (workdir / "stderr.log").open("wb")
            proc = start_process(
                [nginx, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")],
                stderr=stderr,
                stdout=stderr,
            )
            stderr.close()
            try:
                wait_for_port(chosen, timeout=timeout, proc=proc)
            except (RuntimeError, TimeoutError) as exc:
                stop_process(proc)
                last_error = (
                    f"{exc}: {_tail(workdir / 'error.log')} {_tail(workdir / 'stderr.log')}"
                )
                if port is None and "Address already in use" in last_error:
                    continue
                break
            return cls(kind="nginx", proc=proc, port=chosen, workdir=workdir, status=status)
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(f"nginx did not start: {last_error}")

    @classmethod
    def _start_python(
        cls,
        *,
        status: int,
        delay_ms: float,
        record_ids: bool,
        port: int | None,
        timeout: float,
    ) -> Receiver:
        workdir = Path(tempfile.mkdtemp(prefix="hookd-bench-pyrecv-"))
        stats_file = workdir / "stats.json"
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "serve",
            "--port",
            str(port or 0),
            "--status",
            str(status),
            "--delay-ms",
            str(delay_ms),
            "--stats-file",
            str(stats_file),
        ]
        if not record_ids:
            argv.append("--no-record-ids")
        stderr = (workdir / "stderr.log").open("wb")
        proc = start_process(argv, stdout=subprocess.PIPE, stderr=stderr)
        stderr.close()
        assert proc.stdout is not None
        line = b""
        deadline = time.monotonic() + timeout
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.05)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 256)
                if not chunk:
                    break
                line += chunk
            elif proc.poll() is not None:
                break
        match = re.match(rb"LISTENING (\d+)\n", line)
        if not match:
            stop_process(proc)
            proc.stdout.close()
            err = _tail(workdir / "stderr.log")
            shutil.rmtree(workdir, ignore_errors=True)
            raise RuntimeError(f"python receiver did not start: {line!r} {err}")
        proc.stdout.close()
        return cls(
            kind="python",
            proc=proc,
            port=int(match.group(1)),
            workdir=workdir,
            status=status,
            delay_ms=delay_ms,
        )

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Receiver {self.kind} {self.url} pid={self.proc.pid}>"

    # ------------------------------------------------------------------ control

    @property
    def pid(self) -> int:
        """Pid of the receiver process (nginx's master for the nginx kind)."""
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the receiver, workers included."""
        return cpu_seconds(self.proc.pid, tree=True)

    def _get(self, path: str, timeout: float = 10.0) -> bytes:
        with _DIRECT.open(f"http://{self.host}:{self.port}{path}", timeout=timeout) as resp:
            return bytes(resp.read())

    def _post(self, path: str, payload: dict[str, Any], timeout: float = 10.0) -> bytes:
        request = urllib.request.Request(
            f"http://{self.host}:{self.port}{path}",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with _DIRECT.open(request, timeout=timeout) as resp:
            return bytes(resp.read())

    def request_count(self) -> int:
        """Number of requests received so far (control/status queries not counted)."""
        if self.kind == "python":
            return int(self.stats(ids=False)["requests"])
        self._status_queries += 1
        text = self._get(NGINX_STATUS_PATH).decode()
        # "server accepts handled requests\n <accepts> <handled> <requests>"
        requests = int(text.splitlines()[2].split()[2])
        return requests - self._status_queries

    def stats(self, *, ids: bool = True) -> dict[str, Any]:
        """Counts so far.

        python kind: ``requests``, ``responses``, ``bytes``, ``by_method``,
        ``connections``, ``open_connections``, ``status``, ``delay_ms``, ``first_at``,
        ``last_at`` (monotonic seconds of the receiver) and, with *ids*, the lists
        ``webhook_ids`` and ``body_ids`` in arrival order (retries appear more than once),
        and ``targets``: ``"<path> <webhook-id>"`` of each request that had the header (one
        per delivery when each webhook has a path of its own).
        nginx kind: ``requests`` only.
        """
        if self.kind == "nginx":
            return {"requests": self.request_count(), "status": self.status}
        data: dict[str, Any] = json.loads(self._get(f"{CONTROL_PREFIX}stats?ids={int(ids)}"))
        return data

    def reset(self) -> None:
        """Forget all counts so far (python kind only)."""
        self._require_python("reset")
        self._post(f"{CONTROL_PREFIX}reset", {})

    def configure(self, *, status: int | None = None, delay_ms: float | None = None) -> None:
        """Change the status and/or delay of later answers (python kind only)."""
        self._require_python("configure")
        payload: dict[str, Any] = {}
        if status is not None:
            payload["status"] = status
            self.status = status
        if delay_ms is not None:
            payload["delay_ms"] = delay_ms
            self.delay_ms = delay_ms
        self._post(f"{CONTROL_PREFIX}config", payload)

    def _require_python(self, what: str) -> None:
        if self.kind != "python":
            raise NotImplementedError(f"{what} needs the python receiver, not {self.kind}")

    def stop(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """Stop the receiver by its pid and remove its temp dir; idempotent.

        Returns (and keeps as ``final_stats``) the python receiver's counts at exit.
        """
        if self._stopped:
            return self.final_stats
        self._stopped = True
        stop_process(self.proc, sig=signal.SIGTERM, timeout=timeout)
        stats_file = self.workdir / "stats.json"
        if self.kind == "python" and stats_file.exists():
            with contextlib.suppress(ValueError, OSError):
                self.final_stats = json.loads(stats_file.read_text())
        shutil.rmtree(self.workdir, ignore_errors=True)
        return self.final_stats


def _tail(path: Path, limit: int = 600) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return ""


# =========================================================================== capacity


def measure_capacity(
    url: str,
    *,
    seconds: float = 5.0,
    connections: int = 64,
    threads: int = 1,
    body_bytes: int = 1024,
) -> dict[str, Any]:
    """Measure how many POSTs/s a receiver at *url* answers, with ``wrk`` (a C client).

    wrk is many times cheaper per request than any Python client, so the rate it reaches
    is a receiver's capacity on this machine while sharing the CPUs with a load generator.
    Returns ``requests_per_s``, ``requests``, ``errors`` (wrk's socket errors and non-2xx
    answers) and ``seconds``.
    """
    wrk = find_wrk()
    if wrk is None:
        raise FileNotFoundError("wrk not found (apt-get install wrk)")
    _check_loopback(url)
    seconds = max(1, min(round(seconds), 600))
    with tempfile.TemporaryDirectory(prefix="hookd-bench-wrk-") as tmp:
        script = Path(tmp) / "post.lua"
        body = '{"id":"evt_0","pad":"' + "x" * max(0, body_bytes - 22) + '"}'
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(body)}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        out = subprocess.run(
            [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=True,
        ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = sum(int(g) for g in socket_errors.groups()) if socket_errors else 0
    errors += int(non2xx.group(1)) if non2xx else 0
    return {
        "requests_per_s": float(rate.group(1)) if rate else 0.0,
        "requests": int(total.group(1)) if total else 0,
        "errors": errors,
        "seconds": seconds,
        "connections": connections,
        "threads": threads,
        "raw": out,
    }


def _check_loopback(url: str) -> None:
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"benchmarks only target loopback addresses, not {host!r}")


# =========================================================================== python server


class _State:
    """Configuration and counters of the python receiver's server process."""

    def __init__(self, status: int, delay_ms: float, record_ids: bool) -> None:
        self.status = status
        self.delay_ms = delay_ms
        self.record_ids = record_ids
        self.response = _response_bytes(status)
        self.reset()
        self.connections = 0
        self.open_connections = 0

    def reset(self) -> None:
        self.requests = 0
        self.responses = 0
        self.bytes = 0
        self.by_method: collections.Counter[str] = collections.Counter()
        self.webhook_ids: list[str] = []
        self.targets: list[str] = []
        self.body_ids: list[Any] = []
        self.first_at: float | None = None
        self.last_at: float | None = None

    def set_status(self, status: int) -> None:
        self.status = status
        self.response = _response_bytes(status)

    def snapshot(self, ids: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "requests": self.requests,
            "responses": self.responses,
            "bytes": self.bytes,
            "by_method": dict(self.by_method),
            "connections": self.connections,
            "open_connections": self.open_connections,
            "status": self.status,
            "delay_ms": self.delay_ms,
            "record_ids": self.record_ids,
            "first_at": self.first_at,
            "last_at": self.last_at,
        }
        if ids:
            data["webhook_ids"] = self.webhook_ids
            data["targets"] = self.targets
            data["body_ids"] = self.body_ids
        return data


def _response_bytes(status: int, body: bytes = b"", content_type: str = "") -> bytes:
    reason = _REASONS.get(status, "Status")
    head = f"HTTP/1.1 {status} {reason}\r\nServer: hookd-bench\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    if status != 204 and not 100 <= status < 200:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def _body_id(body: bytes) -> Any:
    """Return the top-level ``"id"`` of a JSON object body, or ``None``."""
    if not body.startswith(b"{"):
        return None
    try:
        import orjson

        data = orjson.loads(body)
    except ImportError:
        data = json.loads(body)
    except ValueError:
        return None
    return data.get("id") if isinstance(data, dict) else None


class _HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: parses with httptools, answers in order, maybe late."""

    def __init__(self, state: _State, loop: asyncio.AbstractEventLoop) -> None:
        import httptools

        self.state = state
        self.loop = loop
        self.parser = httptools.HttpRequestParser(self)
        self.parser_error: type[Exception] = httptools.HttpParserError
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.webhook_id: bytes | None = None
        self.body: list[bytes] = []
        self.pending: collections.deque[tuple[float, bytes, bool, bool]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but behave like one.
        self.transport = cast(asyncio.Transport, transport)
        self.state.connections += 1
        self.state.open_connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.open_connections -= 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pending.clear()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except self.parser_error:
            if self.transport is not None:
                self.transport.write(_response_bytes(400))
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.webhook_id = None
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.state.record_ids and len(name) == 10 and name.lower() == b"webhook-id":
            self.webhook_id = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        state = self.state
        keep_alive = bool(self.parser.should_keep_alive())
        method = self.parser.get_method().decode("latin-1")
        if self.url.startswith(CONTROL_PREFIX.encode()):
            self._queue(self._control(method, self.url, b"".join(self.body)), keep_alive, 0.0)
            return
        now = self.loop.time()
        state.requests += 1
        state.by_method[method] += 1
        state.bytes += sum(len(b) for b in self.body)
        if state.first_at is None:
            state.first_at = now
        state.last_at = now
        if state.record_ids:
            if self.webhook_id is not None:
                state.webhook_ids.append(self.webhook_id.decode("latin-1"))
                state.targets.append(
                    self.url.decode("latin-1") + " " + self.webhook_id.decode("latin-1")
                )
            if self.body:
                body_id = _body_id(b"".join(self.body))
                if body_id is not None:
                    state.body_ids.append(body_id)
        self._queue(state.response, keep_alive, state.delay_ms / 1000.0, counted=True)

    # answering
    def _queue(
        self, response: bytes, keep_alive: bool, delay: float, counted: bool = False
    ) -> None:
        """Send *response* now, or after *delay* s and after the answers queued before it."""
        if delay <= 0 and not self.pending:
            self._write(response, keep_alive, counted)
            return
        self.pending.append((self.loop.time() + delay, response, keep_alive, counted))
        if self.timer is None:
            self._arm()

    def _arm(self) -> None:
        self.timer = self.loop.call_at(self.pending[0][0], self._flush)

    def _flush(self) -> None:
        self.timer = None
        now = self.loop.time()
        while self.pending and self.pending[0][0] <= now + 0.0005:
            _due, response, keep_alive, counted = self.pending.popleft()
            if not self._write(response, keep_alive, counted):
                self.pending.clear()
                return
        if self.pending:
            self._arm()

    def _write(self, response: bytes, keep_alive: bool, counted: bool) -> bool:
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(response)
        if counted:
            self.state.responses += 1
        if not keep_alive:
            self.transport.close()
            return False
        return True

    def _control(self, method: str, url: bytes, body: bytes) -> bytes:
        state = self.state
        path, _, query = url.decode("latin-1").partition("?")
        name = path[len(CONTROL_PREFIX) :]
        try:
            if name == "stats" and method == "GET":
                payload = state.snapshot(ids="ids=0" not in query)
            elif name == "reset" and method == "POST":
                state.reset()
                payload = {"ok": True}
            elif name == "config" and method == "POST":
                config = json.loads(body or b"{}")
                if "status" in config:
                    state.set_status(int(config["status"]))
                if "delay_ms" in config:
                    state.delay_ms = float(config["delay_ms"])
                payload = {"ok": True, "status": state.status, "delay_ms": state.delay_ms}
            else:
                return _response_bytes(404, b'{"error":"unknown control"}', "application/json")
        except (ValueError, TypeError) as exc:
            body_out = json.dumps({"error": str(exc)}).encode()
            return _response_bytes(400, body_out, "application/json")
        return _response_bytes(200, json.dumps(payload).encode(), "application/json")


async def _serve(
    port: int,
    status: int,
    delay_ms: float,
    record_ids: bool,
    stats_file: Path | None,
    host: str = LOOPBACK,
) -> None:
    loop = asyncio.get_running_loop()
    state = _State(status, delay_ms, record_ids)
    server = await loop.create_server(
        lambda: _HttpProtocol(state, loop), host, port, backlog=4096, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"LISTENING {bound}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    if stats_file is not None:
        tmp = stats_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.snapshot(ids=True)))
        tmp.replace(stats_file)


def serve(
    port: int = 0,
    status: int = 204,
    delay_ms: float = 0.0,
    record_ids: bool = True,
    stats_file: Path | None = None,
) -> None:
    """Run the python receiver in this process until SIGTERM/SIGINT (uvloop if present)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(port, status, delay_ms, record_ids, stats_file))
    else:
        uvloop.run(_serve(port, status, delay_ms, record_ids, stats_file))


# =========================================================================== CLI


def _workers(value: str) -> int | Literal["auto"]:
    return "auto" if value == "auto" else int(value)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``serve`` (internal), ``run`` or ``capacity``; see the module doc."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p_serve = sub.add_parser("serve", help="be the python receiver (internal)")
    p_serve.add_argument("--port", type=int, default=0)
    p_serve.add_argument("--status", type=int, default=204)
    p_serve.add_argument("--delay-ms", type=float, default=0.0)
    p_serve.add_argument("--stats-file", type=Path)
    p_serve.add_argument("--no-record-ids", action="store_true")

    for name, help_text in (
        ("run", "start a receiver and wait for Ctrl-C"),
        ("capacity", "measure receivers' capacity with wrk"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--kind", choices=["nginx", "python", "auto"], default="auto")
        p.add_argument("--status", type=int, default=204)
        p.add_argument("--workers", type=_workers, default=1)
        if name == "run":
            p.add_argument("--port", type=int)
            p.add_argument("--delay-ms", type=float, default=0.0)
        else:
            p.add_argument("--seconds", type=float, default=5.0)
            p.add_argument("--connections", type=int, default=64)
            p.add_argument("--threads", type=int, default=1)

    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port, args.status, args.delay_ms, not args.no_record_ids, args.stats_file)
        return 0
    if args.command == "run":
        with Receiver.start(
            args.kind, args.status, args.delay_ms, workers=args.workers, port=args.port
        ) as r:
            print(f"{r.kind} receiver on {r.url} (pid {r.pid}); Ctrl-C stops it", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while r.proc.poll() is None:
                    time.sleep(0.5)
            if r.kind == "python":
                print(json.dumps(r.stats(ids=False)) if r.proc.poll() is None else "")
        return 0
    with Receiver.start(args.kind, args.status, workers=args.workers) as r:
        cpu_before = r.cpu_seconds()
        result = measure_capacity(
            r.url, seconds=args.seconds, connections=args.connections, threads=args.threads
        )
        receiver_cpu = r.cpu_seconds() - cpu_before
        counted = r.request_count()
    print(
        f"{r.kind} receiver (workers={args.workers}): {result['requests_per_s']:,.0f} req/s "
        f"with wrk -t{args.threads} -c{args.connections}, {result['errors']} errors, "
        f"receiver CPU {receiver_cpu / result['seconds']:.0%} of one core, "
        f"receiver counted {counted:,} requests"
    )
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
