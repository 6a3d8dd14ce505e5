"""Named SQL: loading the ``.sql`` files and the statements that store operations yield.

A store operation is a generator that yields :class:`Statement` objects and receives each
one's result; an engine's driver runs it. The logic of an operation is written once, and
only the SQL text (chosen by name, per engine) differs between SQLite and PostgreSQL.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from hookd.store.records import Conflict, record

__all__ = [
    "EventSink",
    "Op",
    "Query",
    "Statement",
    "announce",
    "drive",
    "load_queries",
    "many",
    "notify",
    "one",
    "rows",
    "run",
    "value",
]

T = TypeVar("T")

Mode = Literal["rows", "one", "value", "run", "many", "notify", "announce"]


@record
class Statement:
    """One SQL statement to run: a query name, its parameters, and what to return.

    ``rows`` → a list of rows, ``one`` → a row or ``None``, ``value`` → the first column of
    the first row or ``None``, ``run`` → the number of rows changed, ``many`` → runs the
    statement once per parameter mapping in ``batch`` and returns ``None``; ``notify`` wakes
    the workers once the transaction commits (PostgreSQL ``NOTIFY``, an in-process signal on
    SQLite); ``announce`` tells the event streams of every API process (SQLite: this one) that
    an event was published, once the transaction commits.
    """

    name: str
    mode: Mode
    params: Mapping[str, Any]
    batch: Sequence[Mapping[str, Any]] = ()


Op = Generator[Statement, Any, T]
"""A store operation: yields statements, receives their results, returns its answer."""


Published = Sequence[tuple[str, str]]
"""Events announced as published: ``(organization_id, event_id)`` pairs."""


class EventSink(Protocol):
    """What hears of published events (the event streams of ``GET /v2/events/stream``).
    Both methods are called on the event loop and must return at once."""

    def events_published(self, published: Published) -> None:
        """These events were committed (in this process, or on PostgreSQL in any)."""

    def events_missed(self) -> None:
        """Announcements may have been lost (the database connection that hears them was
        down): anything published meanwhile must be read back from the database."""


async def drive(
    op: Op[T],
    execute: Callable[[Statement], Awaitable[Any]],
    conflicts: tuple[type[BaseException], ...],
    *,
    first: Statement | None = None,
) -> T:
    """Run ``op``: each statement it yields through ``execute``, its result sent back.

    An engine's constraint violation (one of ``conflicts``) is thrown into the operation as
    :class:`~hookd.store.records.Conflict`. ``first`` is the statement the operation
    already yielded, when the caller started it.
    """
    try:
        statement = next(op) if first is None else first
        while True:
            try:
                result = await execute(statement)
            except conflicts as exc:
                statement = op.throw(Conflict(str(exc)))
                continue
            statement = op.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def rows(name: str, /, **params: Any) -> Statement:
    return Statement(name, "rows", params)


def one(name: str, /, **params: Any) -> Statement:
    return Statement(name, "one", params)


def value(name: str, /, **params: Any) -> Statement:
    return Statement(name, "value", params)


def run(name: str, /, **params: Any) -> Statement:
    return Statement(name, "run", params)


def many(name: str, batch: Sequence[Mapping[str, Any]]) -> Statement:
    return Statement(name, "many", {}, batch)


def notify() -> Statement:
    return Statement("notify_work", "notify", {})


def announce(organization_id: str, event_id: str) -> Statement:
    return Statement(
        "announce_event", "announce", {"organization_id": organization_id, "event_id": event_id}
    )


@dataclass(frozen=True, slots=True)
class Query:
    """A named query in both forms: ``:name`` parameters, and ``$n`` with their order.

    ``columnar`` (a ``-- batch: columns`` line in the file) marks a batch query written to
    take each parameter as an array, one element per row (PostgreSQL's ``unnest``): a
    ``many`` statement then runs it once for the whole batch instead of once per row.
    """

    name: str
    sql: str
    positional_sql: str
    param_order: tuple[str, ...]
    columnar: bool = False


_SQL_DIR = Path(__file__).with_name("sql")
_NAME = re.compile(r"^-- name: ([a-z_0-9]+)\s*$", re.M)
# ``:name`` but not PostgreSQL's ``::type`` casts.
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def _parse(text: str) -> dict[str, tuple[str, bool]]:
    parts = _NAME.split(text)
    found: dict[str, tuple[str, bool]] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        columnar = any(ln.strip() == "-- batch: columns" for ln in body.splitlines())
        lines = [ln for ln in body.splitlines() if not ln.lstrip().startswith("--")]
        sql = "\n".join(lines).strip().rstrip(";").strip()
        if name in found:
            raise ValueError(f"query {name!r} is defined twice in one file")
        found[name] = (sql, columnar)
    return found


def _positional(name: str, sql: str, columnar: bool) -> Query:
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        param = match.group(1)
        if param not in order:
            order.append(param)
        return f"${order.index(param) + 1}"

    return Query(name, sql, _PARAM.sub(number, sql), tuple(order), columnar)


@functools.cache
def load_queries(dialect: Literal["sqlite", "postgresql"]) -> dict[str, Query]:
    """Every named query for ``dialect``: the shared file, then the engine's own on top.

    A part of hookd may keep its queries in files of its own beside them, ``common.PART.sql``
    and ``sqlite.PART.sql``/``postgres.PART.sql``, read with the file they extend."""
    engine = "sqlite" if dialect == "sqlite" else "postgres"
    merged: dict[str, tuple[str, bool]] = {}
    for stem in ("common", engine):
        for path in [_SQL_DIR / f"{stem}.sql", *sorted(_SQL_DIR.glob(f"{stem}.*.sql"))]:
            merged.update(_parse(path.read_text()))
    return {name: _positional(name, sql, columnar) for name, (sql, columnar) in merged.items()}
