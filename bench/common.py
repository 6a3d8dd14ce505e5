"""Small helpers shared by hookd's benchmarks.

Nothing here imports hookd, so the helpers work for the baseline benchmark as well as for
benchmarks of hookd itself. Every helper that starts a process gives back its
:class:`subprocess.Popen`, and every helper that stops one does so by that process's pid
only: benchmarks never signal processes they did not start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BENCH_DIR",
    "DEFAULT_PG_ADMIN_URL",
    "RESULTS_DIR",
    "Result",
    "add_run_arguments",
    "append_jsonl",
    "cpu_seconds",
    "cpu_times",
    "free_port",
    "machine_info",
    "peak_rss_kib",
    "percentile",
    "print_table",
    "python_command",
    "read_printed_key",
    "run_hookd_cli",
    "start_process",
    "stop_process",
    "thread_cpu_seconds",
    "wait_for_port",
]

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
LOOPBACK = "127.0.0.1"
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
# The API key `hookd serve` prints, indented on a line of its own, on its first start.
_KEY_LINE = re.compile(rb"^\s+(sk_[A-Za-z0-9_-]+)\s*$", re.M)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every hookd benchmark takes: --smoke, --pg-admin-url, --label,
    --no-save and run_all.py's --summary-file."""
    parser.add_argument("--smoke", action="store_true", help="small, checked, saves nothing")
    parser.add_argument(
        "--pg-admin-url",
        default=DEFAULT_PG_ADMIN_URL,
        help="database through which PostgreSQL benchmarks create and drop their own",
    )
    parser.add_argument("--label", help="free text stored with the results")
    parser.add_argument("--no-save", action="store_true", help="do not append to results/")
    parser.add_argument("--summary-file", type=Path, help=argparse.SUPPRESS)  # run_all.py


def run_hookd_cli(
    args: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = 120.0
) -> str:
    """Run ``python -m hookd <args>``; return its stdout, or raise with its stderr."""
    out = subprocess.run(
        [sys.executable, "-m", "hookd", *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"hookd {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def python_command(script: str | Path, options: Mapping[str, object], *flags: str) -> list[str]:
    """``python SCRIPT --name value ... FLAGS``: a benchmark re-running itself (or another
    script) in a fresh interpreter, with this one's executable."""
    argv = [sys.executable, str(Path(script).resolve())]
    for name, value in options.items():
        argv += [name, str(value)]
    return [*argv, *flags]


def read_printed_key(stdout: Path, timeout: float = 10.0) -> str:
    """The API key `hookd serve` printed on its first start, read from its stdout file."""
    deadline = time.monotonic() + timeout
    while True:
        found = _KEY_LINE.search(stdout.read_bytes())
        if found:
            return found.group(1).decode()
        if time.monotonic() > deadline:
            raise RuntimeError("hookd serve printed no API key (not a fresh database?)")
        time.sleep(0.05)


# --------------------------------------------------------------------------- ports


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on *host* that was free a moment ago.

    The port is found by binding port 0 and closing the socket again, so another process
    may take it before the caller binds it; callers that can should bind port 0
    themselves, and the others should retry on ``EADDRINUSE``.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int,
    host: str = LOOPBACK,
    timeout: float = 10.0,
    proc: subprocess.Popen[Any] | None = None,
) -> None:
    """Wait until something accepts TCP connections on *host*:*port*.

    Raises :class:`TimeoutError` after *timeout* seconds, or :class:`RuntimeError` at once
    if *proc* (the process expected to listen) exits first.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    """Return the *p*-th percentile (0-100) of *values*, interpolating linearly.

    Matches ``numpy.percentile``'s default method. Returns ``nan`` for no values.
    """
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile must be within 0..100, not {p}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# --------------------------------------------------------------------------- resources


def peak_rss_kib(pid: int | None = None) -> int:
    """Return the peak resident set size in KiB of *pid* (default: this process).

    Reads ``VmHWM`` from ``/proc/<pid>/status``; for this process it falls back to
    :func:`resource.getrusage` where ``/proc`` is missing (``ru_maxrss`` is KiB on Linux
    and bytes on macOS).
    """
    target = "self" if pid is None else str(pid)
    try:
        with open(f"/proc/{target}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        if pid is not None:
            raise
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss // 1024 if sys.platform == "darwin" else maxrss


def _children(pid: int) -> list[int]:
    """Return the pids of the direct children of *pid* (Linux only)."""
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as fh:
                kids.extend(int(k) for k in fh.read().split())
    return kids


def _stat_times(path: str) -> tuple[float, float]:
    """User and system CPU seconds in a ``/proc/.../stat`` file, or zeros if it is gone."""
    try:
        with open(path, encoding="ascii") as fh:
            # The command name (field 2) may contain spaces: split after its ")".
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0, 0.0
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def _stat_cpu_seconds(path: str) -> float:
    """User+system CPU seconds in a ``/proc/.../stat`` file, or 0 if it is gone."""
    return sum(_stat_times(path))


def cpu_times(pid: int) -> tuple[float, float]:
    """:func:`cpu_seconds` of *pid* (all threads) as ``(all, system)`` from one read: the
    second is the kernel's share (system calls, above all the socket reads and writes of
    each round trip). Zeros if the process is gone."""
    user, system = _stat_times(f"/proc/{pid}/stat")
    return user + system, system


def thread_cpu_seconds(pid: int) -> float:
    """User+system CPU seconds used so far by the main thread of *pid* (the thread whose id
    is the pid: in hookd, the event loop), or 0 if the process is gone."""
    return _stat_cpu_seconds(f"/proc/{pid}/task/{pid}/stat")


def cpu_seconds(pid: int | None = None, *, tree: bool = False) -> float:
    """Return user+system CPU seconds used so far by *pid* (default: this process).

    With ``tree=True`` the live descendants of *pid* are added, e.g. nginx's workers under
    its master. Processes that vanish while being read count as zero.
    """
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        total = usage.ru_utime + usage.ru_stime
        if not tree:
            return total
        pid = os.getpid()
        pids = _descendants(pid)
    else:
        total = 0.0
        pids = [pid, *(_descendants(pid) if tree else [])]
    return total + sum(_stat_cpu_seconds(f"/proc/{one}/stat") for one in pids)


def _descendants(pid: int) -> list[int]:
    """Return all live descendants of *pid*, breadth first."""
    found: list[int] = []
    queue = _children(pid)
    while queue:
        kid = queue.pop(0)
        found.append(kid)
        queue.extend(_children(kid))
    return found


def machine_info() -> dict[str, Any]:
    """Return a few facts about this machine worth keeping next to a result."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "load1": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


# --------------------------------------------------------------------------- results


@dataclass
class Result:
    """One measured figure: ``value`` in ``unit``, optionally compared with a baseline.

    ``baseline`` is the same figure measured for the baseline (same unit); the ratio
    printed and stored is ``value / baseline``, unless ``paired_ratio`` is given: the
    ratio to report instead, e.g. the median of per-run ratios when ``value`` and
    ``baseline`` are medians over runs that each measured both.
    """

    name: str
    value: float
    unit: str
    baseline: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    paired_ratio: float | None = None

    @property
    def ratio(self) -> float | None:
        """Return ``paired_ratio`` if set, else ``value / baseline``, or ``None`` without a
        (non-zero) baseline."""
        if self.paired_ratio is not None:
            return self.paired_ratio
        if not self.baseline:
            return None
        return self.value / self.baseline

    def as_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-friendly dict."""
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "ratio": self.ratio,
            **self.extra,
        }


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value != value:  # nan
        return "nan"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:,.2f}"
    return f"{value:.4g}"


def print_table(
    results: Iterable[Result],
    *,
    title: str | None = None,
    file: Any = None,
) -> str:
    """Print *results* as an aligned table (name, figure, unit, ratio) and return it."""
    rows = [
        (r.name, _fmt(r.value), r.unit, "-" if r.ratio is None else f"{r.ratio:.2%}")
        for r in results
    ]
    header = ("benchmark", "figure", "unit", "vs baseline")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = []
    if title:
        lines.append(title)
    for n, row in enumerate([header, *rows]):
        lines.append(
            f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  "
            f"{row[3]:>{widths[3]}}".rstrip()
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    text = "\n".join(lines)
    print(text, file=file if file is not None else sys.stdout, flush=True)
    return text


def append_jsonl(
    name: str,
    record: Mapping[str, Any] | Result,
    *,
    results_dir: Path | None = None,
) -> Path:
    """Append *record* as one JSON line to ``bench/results/<name>.jsonl``; return the path.

    A ``ts`` (Unix time) and ``machine`` (see :func:`machine_info`) are added unless the
    record has them.
    """
    if "/" in name or name.startswith("."):
        raise ValueError(f"bad results name {name!r}")
    data = dict(record.as_dict() if isinstance(record, Result) else record)
    data.setdefault("ts", round(time.time(), 3))
    data.setdefault("machine", machine_info())
    directory = results_dir if results_dir is not None else RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.jsonl"
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(data, sort_keys=True, default=str) + "\n")
    return path


# --------------------------------------------------------------------------- processes


def start_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdout: Any = subprocess.DEVNULL,
    stderr: Any = None,
    stdin: Any = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """Start *argv* as a child process and return its :class:`subprocess.Popen`.

    The child gets a session of its own, so a Ctrl-C at the terminal reaches only the
    benchmark, which then stops the child through :func:`stop_process`.
    """
    return subprocess.Popen(
        list(argv),
        env=None if env is None else dict(env),
        cwd=cwd,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
    )


def stop_process(
    proc: subprocess.Popen[Any],
    *,
    sig: int = signal.SIGTERM,
    timeout: float = 5.0,
) -> int | None:
    """Stop the child *proc* by its pid: *sig*, then ``SIGKILL`` after *timeout* seconds.

    Returns the exit code (negative for a signal), or ``None`` if the process could not be
    reaped. Calling it for a process that already exited just reaps it.
    """
    if proc.poll() is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
