"""PostgreSQL "as users run it": a throwaway cluster with production-like settings, and
churn counters (``pg_stat_user_tables``, ``pg_stat_statements``) per delivery.

This machine's own PostgreSQL (127.0.0.1:5432) runs with ``autovacuum=off`` and
``shared_buffers=128MB``: fine for tests, unlike what anyone runs hookd on.
:class:`ProdCluster` runs ``initdb`` into a temporary directory and starts ``postgres`` on a
free loopback port (127.0.0.1 only; its unix socket in that directory) with
:data:`PROD_SETTINGS`, and stops it again (``pg_ctl stop -m fast``, then by its own pid).
As root, ``initdb`` and ``postgres`` run as the ``postgres`` OS user (they refuse root).

:data:`PROD_SETTINGS` (printed with every result that used the cluster):

* ``autovacuum=on`` with PostgreSQL's default autovacuum settings otherwise;
* ``shared_buffers``: 25% of RAM (the cgroup's memory limit if lower), at most 4GB;
  ``effective_cache_size``: 75% of RAM (see :data:`SIZING_RULES`);
* ``work_mem=16MB``, ``maintenance_work_mem=256MB``, ``wal_buffers=16MB``,
  ``max_connections=200``;
* ``shared_preload_libraries=pg_stat_statements``, ``pg_stat_statements.track=all``;
  the extension is created in ``template1``, so every benchmark database has it;
* ``fsync=on`` and ``synchronous_commit=on`` (the defaults: hookd itself sets
  ``synchronous_commit=off`` on its worker connections).

Churn: :func:`churn_snapshot` reads ``pg_stat_user_tables`` for :data:`CHURN_TABLES` and,
where the extension is there, ``pg_stat_statements`` of that database;
:func:`churn_report` turns two snapshots into figures per delivery.

Statistics are flushed by each backend on its own (PostgreSQL 15, ``pgstat.c``): at the end
of a transaction if its last flush was at least 1 s ago, else, once the backend is idle, by
a timer of up to 10 s (``PGSTAT_IDLE_INTERVAL``); ``pg_stat_force_next_flush()`` only works
for the calling session. So :func:`settled_snapshot` polls every 0.5 s until, for every
backend of the database, its pending counts must have been flushed: it has been idle for
more than 10.5 s, or it started a statement more than 1 s after the measurement ended (its
next transaction end then flushed whatever was pending) - or until a cap (12 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from bench.common import LOOPBACK, cpu_seconds, free_port, start_process, stop_process

__all__ = [
    "CHURN_TABLES",
    "PROD_SETTINGS",
    "SIZING_RULES",
    "ChurnSnapshot",
    "ProdCluster",
    "churn_report",
    "churn_snapshot",
    "find_pg_bin",
    "format_statements",
    "server_settings",
    "settled_snapshot",
]

_MIB = 1024 * 1024


def _ram_bytes() -> int:
    """Physical memory, or the cgroup (v2 or v1) memory limit when that is lower."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            limit = int(Path(limit_file).read_text().strip())
            if 0 < limit < ram:
                ram = limit
    return int(ram)


RAM_MIB = _ram_bytes() // _MIB
SIZING_RULES: dict[str, str] = {
    "shared_buffers": "25% of RAM (or of the cgroup memory limit if lower), at most 4GB",
    "effective_cache_size": "75% of RAM (or of the cgroup memory limit if lower)",
}
# Every setting the prod cluster runs with, beyond initdb's defaults (and the port, the
# listen address 127.0.0.1 and the unix socket directory, which are per run).
PROD_SETTINGS: dict[str, str] = {
    "autovacuum": "on",
    "shared_buffers": f"{min(4096, max(128, RAM_MIB // 4))}MB",
    "effective_cache_size": f"{max(256, RAM_MIB * 3 // 4)}MB",
    "work_mem": "16MB",
    "maintenance_work_mem": "256MB",
    "wal_buffers": "16MB",
    "max_connections": "200",
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "synchronous_commit": "on",
    "fsync": "on",
}
# What server_settings() reads back from either cluster, so that results state both.
REPORTED_SETTINGS = (
    "server_version",
    "autovacuum",
    "shared_buffers",
    "effective_cache_size",
    "work_mem",
    "maintenance_work_mem",
    "wal_buffers",
    "max_connections",
    "max_wal_size",
    "shared_preload_libraries",
    "synchronous_commit",
    "fsync",
    "autovacuum_naptime",
    "autovacuum_vacuum_scale_factor",
    "autovacuum_vacuum_insert_scale_factor",
    "pg_stat_statements.track",
)
CHURN_TABLES = ("deliveries", "attempts", "events", "webhooks", "webhook_rollups")
TABLE_COUNTERS = (
    "n_tup_ins",
    "n_tup_upd",
    "n_tup_hot_upd",
    "n_tup_del",
    "n_dead_tup",
    "n_live_tup",
    "autovacuum_count",
    "vacuum_count",
    "autoanalyze_count",
)
# Marks the benchmark's own statements, so that pg_stat_statements' diff leaves them out.
_TAG = "/* hookd-bench-churn */"
STATS_IDLE_FLUSH_S = 10.5  # PGSTAT_IDLE_INTERVAL (10 s) and a little
STATS_MIN_INTERVAL_S = 1.0  # PGSTAT_MIN_INTERVAL
STATS_WAIT_CAP_S = 12.0


def find_pg_bin(version: str | None = None) -> Path:
    """The ``bin`` directory of the newest PostgreSQL under ``/usr/lib/postgresql`` (Debian's
    layout) that has ``initdb`` and ``postgres``, or ``$HOOKD_BENCH_PG_BIN``."""
    override = os.environ.get("HOOKD_BENCH_PG_BIN")
    if override:
        return Path(override)
    found = []
    for initdb in glob.glob(f"/usr/lib/postgresql/{version or '*'}/bin/initdb"):
        bin_dir = Path(initdb).parent
        with contextlib.suppress(ValueError):
            if (bin_dir / "postgres").exists():
                found.append((float(bin_dir.parent.name), bin_dir))
    if not found:
        raise FileNotFoundError("no /usr/lib/postgresql/*/bin/initdb (set HOOKD_BENCH_PG_BIN)")
    return max(found)[1]


def _others_can_enter(path: Path) -> bool:
    """Whether a user other than the owner can reach ``path`` (every ancestor o+x)."""
    for p in [path, *path.parents]:
        try:
            if not p.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


class ProdCluster:
    """A PostgreSQL cluster of the benchmark's own, with :data:`PROD_SETTINGS`.

    ``with ProdCluster(tmp) as cluster: Deployment(..., pg_admin_url=cluster.admin_url)``.
    Its files live in a new directory under ``tmp`` (as root, when the ``postgres`` user
    cannot reach ``tmp``, under the system's temporary directory instead) and are removed
    on exit.
    """

    def __init__(
        self,
        tmp: Path,
        settings: Mapping[str, str] | None = None,
        *,
        start_timeout: float = 60.0,
    ) -> None:
        self.tmp = tmp
        self.settings = dict(PROD_SETTINGS if settings is None else settings)
        self.start_timeout = start_timeout
        self.bin_dir = find_pg_bin()
        self.version = self.bin_dir.parent.name
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.base: Path | None = None
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "running as root, and initdb refuses root: needs a 'postgres' OS user"
                ) from None

    # ------------------------------------------------------------------ paths and urls

    @property
    def data_dir(self) -> Path:
        assert self.base is not None
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.base is not None
        return self.base / "socket"

    @property
    def log_file(self) -> Path:
        assert self.base is not None
        return self.base / "postgres.log"

    @property
    def admin_url(self) -> str:
        """Like :data:`bench.common.DEFAULT_PG_ADMIN_URL`, for this cluster."""
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/postgres"

    @property
    def pid(self) -> int:
        """The postmaster's pid."""
        assert self.proc is not None
        return self.proc.pid

    def describe(self) -> dict[str, Any]:
        """What to store with a result: version, settings and the sizing rules."""
        return {
            "cluster": "prod",
            "version": self.version,
            "settings": dict(self.settings),
            "sizing_rules": dict(SIZING_RULES),
            "ram_mib": RAM_MIB,
        }

    def cpu_seconds(self) -> float:
        """CPU seconds so far of the postmaster and every process under it: backends,
        autovacuum, checkpointer, background and WAL writers (live ones only)."""
        return cpu_seconds(self.pid, tree=True) if self.proc is not None else 0.0

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> ProdCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _user_kwargs(self) -> dict[str, Any]:
        if not self._as_postgres:
            return {}
        return {"user": "postgres", "group": "postgres", "extra_groups": []}

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LC_"))}
        env["LC_ALL"] = "C.UTF-8"
        if self._as_postgres:
            env["HOME"] = str(self.base)
            env["USER"] = env["LOGNAME"] = "postgres"
        return env

    def _run(self, argv: Sequence[str], timeout: float = 120.0) -> None:
        out = subprocess.run(
            list(argv),
            env=self._env(),
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
            **self._user_kwargs(),
        )
        if out.returncode != 0:
            raise RuntimeError(
                f"{Path(argv[0]).name} failed ({out.returncode}): {out.stderr.strip()[-2000:]}"
            )

    def start(self) -> ProdCluster:
        parent = self.tmp
        if self._as_postgres and not _others_can_enter(self.tmp):
            parent = Path(tempfile.gettempdir())
        self.base = Path(tempfile.mkdtemp(prefix="hookd-bench-pgcluster-", dir=parent))
        try:
            self.socket_dir.mkdir()
            if self._as_postgres:
                os.chmod(self.base, 0o700)
                for path in (self.base, self.socket_dir):
                    shutil.chown(path, "postgres", "postgres")
            self._run(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    # The files initdb writes are not synced: a throwaway cluster. The
                    # server itself runs with fsync=on.
                    "--no-sync",
                ]
            )
            self._start_server()
            self._execute("template1", ["CREATE EXTENSION IF NOT EXISTS pg_stat_statements"])
        except BaseException:
            self.stop()
            raise
        return self

    def _start_server(self) -> None:
        for attempt in range(3):
            self.port = free_port()
            argv = [
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.data_dir),
                "-c",
                f"port={self.port}",
                "-c",
                f"listen_addresses={LOOPBACK}",
                "-c",
                f"unix_socket_directories={self.socket_dir}",
            ]
            for name, value in self.settings.items():
                argv += ["-c", f"{name}={value}"]
            with self.log_file.open("ab") as log:
                if self._as_postgres:
                    self.proc = subprocess.Popen(
                        argv,
                        env=self._env(),
                        cwd=self.base,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                        start_new_session=True,
                        user="postgres",
                        group="postgres",
                        extra_groups=[],
                    )
                else:
                    self.proc = start_process(
                        argv, env=self._env(), cwd=self.base, stdout=log, stderr=log
                    )
            try:
                self._wait_ready()
                return
            except (RuntimeError, TimeoutError) as exc:
                stop_process(self.proc, sig=2, timeout=30)
                self.proc = None
                tail = self.log_file.read_bytes()[-2000:].decode(errors="replace")
                if attempt == 2 or "could not bind" not in tail.lower():
                    raise RuntimeError(f"postgres did not start: {exc}\n{tail}") from None

    def _wait_ready(self) -> None:
        import asyncpg

        async def ping() -> None:
            conn = await asyncpg.connect(self.admin_url, timeout=5)
            await conn.close()

        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}")
            try:
                asyncio.run(ping())
                return
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"postgres not ready after {self.start_timeout} s: {exc}"
                    ) from None
                time.sleep(0.1)

    def _execute(self, database: str, statements: Sequence[str]) -> None:
        import asyncpg

        url = urlsplit(self.admin_url)._replace(path="/" + database).geturl()

        async def go() -> None:
            conn = await asyncpg.connect(url, timeout=10)
            try:
                for sql in statements:
                    await conn.execute(sql, timeout=60)
            finally:
                await conn.close()

        asyncio.run(go())

    def stop(self) -> None:
        """``pg_ctl stop -m fast`` (it signals the pid in ``postmaster.pid``: this cluster's),
        then SIGINT (fast shutdown) and SIGKILL by the postmaster's pid if it is still up;
        then remove the files."""
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(RuntimeError, subprocess.SubprocessError, OSError):
                    self._run(
                        [
                            str(self.bin_dir / "pg_ctl"),
                            "stop",
                            "-D",
                            str(self.data_dir),
                            "-m",
                            "fast",
                            "-w",
                            "-t",
                            "60",
                        ],
                        timeout=90,
                    )
            stop_process(self.proc, sig=2, timeout=30)
            self.proc = None
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None


# =========================================================================== churn


@dataclass
class ChurnSnapshot:
    """Counters of one database at one moment (``time.monotonic``)."""

    at: float
    tables: dict[str, dict[str, int]]
    # (userid, queryid, toplevel) -> calls, rows, total_exec_time (ms), query; None when
    # pg_stat_statements is not there.
    statements: dict[tuple[int, int, bool], dict[str, Any]] | None
    backends: list[dict[str, Any]] = field(default_factory=list)


async def _snapshot(url: str) -> ChurnSnapshot:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows = await conn.fetch(
            f"{_TAG} SELECT relname, {', '.join(TABLE_COUNTERS)} FROM pg_stat_user_tables "
            "WHERE relname = ANY($1::text[])",
            list(CHURN_TABLES),
        )
        tables = {str(r["relname"]): {c: int(r[c] or 0) for c in TABLE_COUNTERS} for r in rows}
        backends = [
            dict(r)
            for r in await conn.fetch(
                f"{_TAG} SELECT pid, state, "
                "extract(epoch FROM now() - state_change)::float8 AS state_age, "
                "extract(epoch FROM now() - query_start)::float8 AS query_age "
                "FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
        ]
        statements: dict[tuple[int, int, bool], dict[str, Any]] | None = None
        has_ext = await conn.fetchval(
            f"{_TAG} SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'"
        )
        if has_ext:
            try:
                stmts = await conn.fetch(
                    f"{_TAG} SELECT userid, queryid, toplevel, calls, rows, total_exec_time, "
                    "query FROM pg_stat_statements WHERE dbid = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database()) "
                    "AND queryid IS NOT NULL"
                )
            except asyncpg.PostgresError:  # not in shared_preload_libraries
                stmts = None
            if stmts is not None:
                statements = {
                    (int(r["userid"]), int(r["queryid"]), bool(r["toplevel"])): {
                        "calls": int(r["calls"]),
                        "rows": int(r["rows"]),
                        "total_ms": float(r["total_exec_time"]),
                        "query": str(r["query"]),
                    }
                    for r in stmts
                    if _TAG not in str(r["query"])
                }
    finally:
        await conn.close()
    return ChurnSnapshot(time.monotonic(), tables, statements, backends)


def churn_snapshot(url: str) -> ChurnSnapshot:
    """Read the counters of the database at ``url`` (a hookd benchmark database)."""
    return asyncio.run(_snapshot(url))


def settled_snapshot(
    url: str, since: float | None = None, cap: float = STATS_WAIT_CAP_S
) -> tuple[ChurnSnapshot, float]:
    """A snapshot taken once every backend of the database must have flushed what it counted
    before ``since`` (``time.monotonic``, default now); see the module's docstring. Returns
    it and the seconds waited (``cap`` at most)."""
    since = time.monotonic() if since is None else since
    started = time.monotonic()
    while True:
        snap = churn_snapshot(url)
        elapsed = snap.at - since
        if elapsed >= cap or all(
            (b["state"] == "idle" and (b["state_age"] or 0) > STATS_IDLE_FLUSH_S)
            or (b["query_age"] is not None and b["query_age"] < elapsed - STATS_MIN_INTERVAL_S)
            for b in snap.backends
        ):
            return snap, time.monotonic() - started
        time.sleep(0.5)


def _short(query: str, width: int = 110) -> str:
    text = re.sub(r"\s+", " ", query).strip()
    return text if len(text) <= width else text[: width - 3] + "..."


def churn_report(
    before: ChurnSnapshot, after: ChurnSnapshot, deliveries: int, top: int = 15
) -> dict[str, Any]:
    """Counters per delivery between two snapshots.

    * ``tables``: each table's counter changes (``n_dead_tup``/``n_live_tup`` as changes too),
      ``hot_share`` (HOT updates / updates) and updates, inserts and dead tuples made per
      delivery;
    * ``dead_tuples_made_per_delivery``: (updates + deletes) / deliveries over the tables:
      each leaves one dead row version, whether or not pruning or vacuum removed it since;
    * ``n_dead_tup_growth_per_delivery``: the growth of ``n_dead_tup``: what is still there
      (HOT pruning and vacuum lower it);
    * ``statements``: the ``top`` statements by execution time (pg_stat_statements).
    """
    per = max(1, deliveries)
    tables: dict[str, dict[str, Any]] = {}
    made = 0
    growth = 0
    for name in CHURN_TABLES:
        b = before.tables.get(name, {})
        a = after.tables.get(name)
        if a is None:
            continue
        d = {c: a[c] - b.get(c, 0) for c in TABLE_COUNTERS}
        upd = d["n_tup_upd"]
        made += upd + d["n_tup_del"]
        growth += d["n_dead_tup"]
        tables[name] = {
            **d,
            "n_dead_tup_now": a["n_dead_tup"],
            "n_live_tup_now": a["n_live_tup"],
            "hot_share": round(d["n_tup_hot_upd"] / upd, 4) if upd else None,
            "ins_per_delivery": round(d["n_tup_ins"] / per, 4),
            "upd_per_delivery": round(upd / per, 4),
            "dead_made_per_delivery": round((upd + d["n_tup_del"]) / per, 4),
        }
    report: dict[str, Any] = {
        "deliveries": deliveries,
        "stats_seconds": round(after.at - before.at, 2),
        "dead_tuples_made_per_delivery": round(made / per, 4),
        "n_dead_tup_growth_per_delivery": round(growth / per, 4),
        "tables": tables,
        "statements": None,
    }
    if before.statements is not None and after.statements is not None:
        rows = []
        for key, a_row in after.statements.items():
            b_row = before.statements.get(key, {"calls": 0, "rows": 0, "total_ms": 0.0})
            calls = a_row["calls"] - b_row["calls"]
            if calls <= 0:
                continue
            total_ms = a_row["total_ms"] - b_row["total_ms"]
            n_rows = a_row["rows"] - b_row["rows"]
            rows.append(
                {
                    "query": _short(a_row["query"]),
                    "toplevel": key[2],
                    "calls": calls,
                    "rows": n_rows,
                    "total_ms": round(total_ms, 2),
                    "us_per_call": round(total_ms * 1000 / calls, 1),
                    "us_per_row": round(total_ms * 1000 / n_rows, 1) if n_rows else None,
                    "calls_per_delivery": round(calls / per, 4),
                }
            )
        rows.sort(key=lambda r: -float(r["total_ms"]))
        report["statements"] = rows[:top]
        report["statements_total_ms"] = round(sum(float(r["total_ms"]) for r in rows), 1)
        report["statements_us_per_delivery"] = round(
            sum(float(r["total_ms"]) for r in rows if r["toplevel"]) * 1000 / per, 1
        )
    return report


def format_statements(report: Mapping[str, Any]) -> str:
    """The report's statements as an aligned table."""
    rows = report.get("statements")
    if not rows:
        return "(no pg_stat_statements on this cluster)"
    header = ("total ms", "calls", "rows", "us/call", "us/row", "top", "query")
    body = [
        (
            f"{r['total_ms']:,.0f}",
            f"{r['calls']:,}",
            f"{r['rows']:,}",
            f"{r['us_per_call']:,.1f}",
            "-" if r["us_per_row"] is None else f"{r['us_per_row']:,.1f}",
            "y" if r["toplevel"] else "n",
            str(r["query"]),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = []
    for n, row in enumerate([header, *body]):
        cells = [
            f"{c:>{w}}" if i < 5 else f"{c:<{w}}"
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def server_settings(url: str) -> dict[str, str]:
    """The :data:`REPORTED_SETTINGS` as the server at ``url`` has them (``SHOW``)."""
    import asyncpg

    async def go() -> dict[str, str]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            known = {
                str(r["name"])
                for r in await conn.fetch(
                    "SELECT name FROM pg_settings WHERE name = ANY($1::text[])",
                    list(REPORTED_SETTINGS),
                )
            }
            # SHOW gives the units as configured (4GB, not 524288 blocks of 8kB).
            return {
                name: str(await conn.fetchval(f"SHOW {name}"))
                for name in REPORTED_SETTINGS
                if name in known
            }
        finally:
            await conn.close()

    return asyncio.run(go())
