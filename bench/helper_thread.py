"""Why hookd's SQLite driver runs row-by-row statements on the event loop, not a helper thread.

Python's :mod:`sqlite3` lets go of the interpreter's lock (the GIL) while SQLite's C code
runs a step of a statement, and takes it back after each step: an ``executemany`` of 50
rows takes it back 50 times. On a helper thread, each take waits while the event loop
holds the lock, up to the interpreter's switch interval (5 ms) when the loop is busy. This
benchmark times one transaction of ``--rows`` inserts (``executemany``) into a table with
hookd's deliveries' indexes, in three places:

* on the main thread itself (what hookd does);
* on a helper thread while the main thread waits for it (the loop idle);
* on a helper thread while the main thread runs Python (the loop busy, as in a drain).

It prints each median and the busy case's ratio to the main thread's. The machine's other
load moves the figures, not the order of magnitude between the cases.

    python bench/helper_thread.py                 # 200 transactions of 50 rows, seconds
    python bench/helper_thread.py --smoke
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Result, add_run_arguments, append_jsonl, print_table
from bench.harness import write_summary

__all__ = ["main"]

_SCHEMA = """
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY, webhook_id TEXT NOT NULL, event_id TEXT NOT NULL,
    status TEXT NOT NULL, next_attempt_at INTEGER, lease_until INTEGER, created_at INTEGER
);
CREATE INDEX ix_status ON deliveries (webhook_id, status, id);
CREATE INDEX ix_event ON deliveries (event_id, webhook_id);
CREATE INDEX ix_queue ON deliveries (webhook_id, next_attempt_at)
    WHERE status = 'pending' AND lease_until IS NULL;
"""
_INSERT = "INSERT INTO deliveries VALUES (:id, :webhook_id, :event_id, 'pending', :at, NULL, :at)"


class _Batches:
    """Successive batches of ``rows`` new rows, one transaction each."""

    def __init__(self, conn: sqlite3.Connection, rows: int) -> None:
        self.conn = conn
        self.rows = rows
        self.next = 0

    def write(self) -> None:
        start, self.next = self.next, self.next + self.rows
        batch = [
            {"id": f"d{n:012d}", "webhook_id": f"w{n % 10}", "event_id": f"e{n // 10}", "at": n}
            for n in range(start, self.next)
        ]
        self.conn.execute("BEGIN")
        self.conn.executemany(_INSERT, batch)
        self.conn.execute("COMMIT")


def _timed(write: Callable[[], None], count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        write()
        times.append(time.perf_counter() - started)
    return times


def _on_helper(write: Callable[[], None], count: int, *, busy: bool) -> list[float]:
    """Run ``count`` writes on a helper thread; meanwhile the main thread spins in Python
    (``busy``) or waits for it."""
    times: list[float] = []
    done = threading.Event()

    def helper() -> None:
        times.extend(_timed(write, count))
        done.set()

    thread = threading.Thread(target=helper, name="helper")
    thread.start()
    if busy:
        spins = 0
        while not done.is_set():
            spins += 1  # pure Python: holds the GIL until the switch interval takes it
    thread.join()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--rows", type=int, default=50, help="rows per transaction")
    parser.add_argument("--transactions", type=int, default=200, help="per case")
    args = parser.parse_args(argv)
    if args.smoke:
        args.transactions = 10
    with tempfile.TemporaryDirectory(prefix="hookd-helper-") as tmp:
        conn = sqlite3.connect(Path(tmp) / "h.db", isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        batches = _Batches(conn, args.rows)
        cases = {
            "on the main thread": _timed(batches.write, args.transactions),
            "on a helper thread, main thread waiting": _on_helper(
                batches.write, args.transactions, busy=False
            ),
            "on a helper thread, main thread running Python": _on_helper(
                batches.write, args.transactions, busy=True
            ),
        }
        conn.close()
    medians = {name: statistics.median(times) * 1000 for name, times in cases.items()}
    main_thread = medians["on the main thread"]
    results = [
        Result(
            f"{args.rows}-row executemany + commit, {name}",
            value,
            "ms",
            None if name == "on the main thread" else main_thread,
            {"rows": args.rows, "transactions": args.transactions},
        )
        for name, value in medians.items()
    ]
    print_table(
        results,
        title=f"medians of {args.transactions} transactions; "
        f"switch interval {sys.getswitchinterval() * 1000:g} ms",
    )
    if not args.smoke and not args.no_save:
        for r in results:
            append_jsonl("helper_thread", r)
    if args.summary_file:
        write_summary(args.summary_file, "helper-thread", [] if args.smoke else results, True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
