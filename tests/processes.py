"""Running real ``hookd`` processes in tests.

Everything here is synchronous and works from plain or async tests alike. A typical test::

    from tests.processes import HookdProcesses, run_hookd

    def test_something(tmp_path, database_url):
        with HookdProcesses(tmp_path) as procs:
            server = procs.start("serve", database_url=database_url, env={"HOOKD_RATE_LIMIT": "0"})
            key = server.api_key()                      # the key `serve` printed on first start
            httpx.get(server.url("/v2/webhooks"), headers={"Authorization": f"Bearer {key}"})
            assert server.stop() == 0                   # SIGTERM, then SIGKILL after a grace period
        # leaving the block stops whatever is still running

    result = run_hookd("orgs", "list", database_url=database_url)   # a one-shot command
    assert result.returncode == 0, result.stderr

What the module gives:

- :func:`free_port` — a TCP port on 127.0.0.1 that nothing listens on right now.
- :func:`hookd_command` — the argv prefix that runs ``hookd`` (the venv's console script).
- :func:`hookd_env` — an environment for a child: this process's environment without any
  ``HOOKD_*`` variable (so a developer's shell cannot change a test), plus the given ones.
- :func:`run_hookd` — run a one-shot command (``migrate``, ``orgs``, ``keys``...) to completion.
- :class:`HookdProcess` — one long-running ``hookd serve`` / ``api`` / ``worker``: its port and
  URL, its captured stdout/stderr (files, readable while it runs), readiness, stop and kill.
- :class:`HookdProcesses` — starts processes and stops every one of them on exit.
- :func:`api_keys_in` / :data:`API_KEY` — find the API keys a process printed.

Processes are stopped only by their own pid (never by name). Output goes to files in the
directory given (usually ``tmp_path``), named after the command and a counter, so that a
failing test can show them; :meth:`HookdProcess.describe` formats both for assertion messages.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

__all__ = [
    "API_KEY",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "WORKER_SETTLE",
    "HookdProcess",
    "HookdProcesses",
    "ProcessFailed",
    "api_keys_in",
    "free_port",
    "hookd_command",
    "hookd_env",
    "run_hookd",
]

#: An API key as hookd prints it: ``sk_`` and at least 32 URL-safe characters (SPEC §1).
API_KEY = re.compile(r"\bsk_[A-Za-z0-9_-]{32,}")

#: Seconds a process gets to become ready, and to exit after SIGTERM, by default.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
#: Seconds a quiet worker (log level warning or error) must stay up to count as ready.
WORKER_SETTLE = 1.5

_counter = itertools.count(1)


class ProcessFailed(AssertionError):
    """A hookd process exited, or did not become ready, when the test needed it running."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free at the time of the call.

    The kernel picks it; another process may in principle take it before hookd binds it.
    :meth:`HookdProcesses.start` retries on a fresh port when that happens.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def hookd_command() -> list[str]:
    """The argv prefix that runs ``hookd``: the console script next to this Python, else
    ``python -m hookd``."""
    script = Path(sys.executable).parent / "hookd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "hookd"]


def hookd_env(
    env: Mapping[str, str] | None = None, *, database_url: str | None = None
) -> dict[str, str]:
    """The environment for a hookd child process.

    Starts from ``os.environ`` without any ``HOOKD_*`` variable, then sets
    ``HOOKD_DATABASE_URL`` (if ``database_url`` is given) and ``env`` on top. Output is
    unbuffered so that what the process printed can be read while it runs.
    """
    child = {k: v for k, v in os.environ.items() if not k.upper().startswith("HOOKD_")}
    child["PYTHONUNBUFFERED"] = "1"
    if database_url is not None:
        child["HOOKD_DATABASE_URL"] = database_url
    child.update(env or {})
    return child


def run_hookd(
    *args: str,
    database_url: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``hookd ARGS...`` to completion; stdout and stderr are captured as text.

    ``cwd`` defaults to a directory that is not the repository's, so that a command falling
    back to the default ``sqlite:///hookd.db`` never writes into the working tree.
    """
    if cwd is None:
        cwd = Path(tempfile.gettempdir())
    return subprocess.run(
        [*hookd_command(), *args],
        env=hookd_env(env, database_url=database_url),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def api_keys_in(text: str) -> list[str]:
    """Every API key in ``text`` (e.g. what ``hookd serve`` printed), in order."""
    return API_KEY.findall(text)


class HookdProcess:
    """One running ``hookd serve``, ``hookd api`` or ``hookd worker``.

    Create it with :meth:`HookdProcesses.start` (or :meth:`launch` and manage it yourself).
    ``port`` is ``None`` for ``worker``, which serves no HTTP.
    """

    def __init__(
        self,
        command: str,
        *,
        directory: Path,
        env: Mapping[str, str],
        args: Sequence[str] = (),
        port: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.command = command
        self.args = list(args)
        self.env = dict(env)
        self.host = host
        self.port = port
        self.directory = directory
        name = f"hookd-{command}-{next(_counter)}"
        self.stdout_path = directory / f"{name}.stdout"
        self.stderr_path = directory / f"{name}.stderr"
        self.popen: subprocess.Popen[bytes] | None = None
        self._launched_at = 0.0

    # Starting.

    def launch(self) -> HookdProcess:
        """Start the process (output appended to :attr:`stdout_path`/:attr:`stderr_path`)."""
        env = dict(self.env)
        if self.port is not None:
            env["HOOKD_HOST"] = self.host
            env["HOOKD_PORT"] = str(self.port)
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.popen = subprocess.Popen(
                [*hookd_command(), self.command, *self.args],
                env=env,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        self._launched_at = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, "the process was not launched"
        return self.popen.pid

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (not for ``worker``)."""
        assert self.port is not None, f"hookd {self.command} serves no HTTP"
        return f"http://{self.host}:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.base_url + path

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the process is ready, or raise :class:`ProcessFailed` (with its output).

        With a port: until ``GET /healthz`` answers ``200``. A worker: until it logs
        ``worker started`` (or, with ``HOOKD_LOG_LEVEL`` warning or error, which hide that
        line, once it has run for :data:`WORKER_SETTLE` seconds without exiting).
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.returncode is not None:
                raise ProcessFailed(
                    f"hookd {self.command} exited with {self.returncode}\n" + self.describe()
                )
            if self._ready():
                return
            if time.monotonic() > deadline:
                raise ProcessFailed(
                    f"hookd {self.command} not ready after {timeout} s\n" + self.describe()
                )
            time.sleep(0.05)

    def _ready(self) -> bool:
        if self.port is None:
            if self.env.get("HOOKD_LOG_LEVEL", "info").lower() in ("warning", "error"):
                # The "worker started" line is not logged at these levels: settle instead.
                return time.monotonic() - self._launched_at > WORKER_SETTLE
            return "worker started" in self.stderr()
        try:
            return httpx.get(self.url("/healthz"), timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_for_output(
        self, text: str, *, stream: str = "stderr", timeout: float = START_TIMEOUT
    ) -> str:
        """Wait until ``text`` appears in the process's ``stream`` (``"stdout"`` or
        ``"stderr"``); that output so far. Raises :class:`ProcessFailed` if the process
        exits or the time runs out first."""
        read = self.stdout if stream == "stdout" else self.stderr
        deadline = time.monotonic() + timeout
        while True:
            output = read()
            if text in output:
                return output
            if self.returncode is not None or time.monotonic() > deadline:
                state = "exited" if self.returncode is not None else f"waited {timeout} s"
                raise ProcessFailed(f"{text!r} not in {stream} ({state})\n" + self.describe())
            time.sleep(0.05)

    # Output.

    def stdout(self) -> str:
        """Everything the process wrote to stdout so far."""
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        """Everything the process wrote to stderr so far (hookd's logs go there)."""
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def api_keys(self) -> list[str]:
        """The API keys the process printed on stdout (``serve`` prints one on first start)."""
        return api_keys_in(self.stdout())

    def api_key(self) -> str:
        """The one API key the process printed; fails the test if there is not exactly one."""
        keys = self.api_keys()
        if len(keys) != 1:
            raise ProcessFailed(f"expected one API key, found {len(keys)}\n" + self.describe())
        return keys[0]

    def describe(self) -> str:
        """The command, its state and both outputs, for assertion messages."""
        state = "running" if self.returncode is None else f"exit code {self.returncode}"
        return (
            f"--- hookd {self.command} {' '.join(self.args)} (port {self.port}, {state})\n"
            f"--- stdout ({self.stdout_path}):\n{self.stdout()}\n"
            f"--- stderr ({self.stderr_path}):\n{self.stderr()}"
        )

    # Stopping.

    @property
    def returncode(self) -> int | None:
        """``None`` while running; else the exit code (``-N`` when killed by signal ``N``)."""
        return None if self.popen is None else self.popen.poll()

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to exit on its own; its exit code."""
        assert self.popen is not None
        return self.popen.wait(timeout)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to this process (by pid) if it still runs."""
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, sig)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; its exit code.

        A process that needed SIGKILL reports ``-9``. Safe to call more than once.
        """
        if self.popen is None:
            raise ProcessFailed(f"hookd {self.command} was never launched")
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.popen.wait()

    def kill(self) -> int:
        """SIGKILL (as ``kill -9``); its exit code."""
        assert self.popen is not None
        self.signal(signal.SIGKILL)
        return self.popen.wait()

    def __repr__(self) -> str:
        pid = None if self.popen is None else self.popen.pid
        return f"<HookdProcess {self.command} pid={pid} port={self.port}>"


class HookdProcesses:
    """Starts hookd processes whose output goes to ``directory``; stops them all on exit.

    Use as a context manager (or call :meth:`stop_all` yourself, e.g. in a fixture's
    teardown). ``env`` is applied to every process it starts, under each call's own ``env``.
    """

    def __init__(self, directory: Path | str, env: Mapping[str, str] | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.env = dict(env or {})
        self.processes: list[HookdProcess] = []

    def start(
        self,
        command: str = "serve",
        *,
        database_url: str | None = None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        port: int | None = None,
        wait: bool = True,
        timeout: float = START_TIMEOUT,
    ) -> HookdProcess:
        """Start ``hookd COMMAND ARGS...``; with ``wait``, return once it is ready.

        ``serve`` and ``api`` get ``HOOKD_HOST=127.0.0.1`` and ``HOOKD_PORT`` = ``port`` or a
        free port. If that port turns out to be taken (the process exits with "address
        already in use") it starts again on another one, appending to the same output
        files, so :meth:`HookdProcess.api_key` still finds a key printed before the retry.
        """
        serves_http = command in ("serve", "api")
        attempts = 3 if serves_http and port is None and wait else 1
        merged = hookd_env({**self.env, **(env or {})}, database_url=database_url)
        if command == "worker":
            # Workers of parallel tests would all want HOOKD_METRICS_PORT's default, 9090.
            merged.setdefault("HOOKD_METRICS_PORT", "0")
        process = HookdProcess(
            command,
            directory=self.directory,
            env=merged,
            args=args,
            port=(port or free_port()) if serves_http else None,
        )
        self.processes.append(process)
        for attempt in range(attempts):
            process.launch()
            if not wait:
                return process
            try:
                process.wait_ready(timeout)
                return process
            except ProcessFailed:
                in_use = "address already in use" in process.stderr().lower()
                if not in_use or attempt == attempts - 1:
                    process.stop()
                    raise
                process.stop()
                process.port = free_port()
        raise AssertionError("unreachable")

    def stop_all(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop every process started here that still runs (newest first)."""
        for process in reversed(self.processes):
            if process.popen is not None and process.returncode is None:
                process.stop(timeout)

    def __iter__(self) -> Iterator[HookdProcess]:
        return iter(self.processes)

    def __enter__(self) -> HookdProcesses:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
