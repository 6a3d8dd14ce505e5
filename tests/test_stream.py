"""``GET /v2/events/stream`` (SPEC §10), on SQLite and PostgreSQL, served by a real uvicorn in
this process over the test's store: what a listener receives, resuming with Last-Event-ID,
a listener that cannot keep up, shutdown, validation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import uvicorn

from hookd.api import create_app
from hookd.api.feed import Feed
from hookd.listen import SseMessage, SseParser
from hookd.settings import Settings
from tests.conftest import Api, eventually
from tests.processes import free_port
from tests.test_webhooks_api import assert_error


class Served:
    """A uvicorn server on 127.0.0.1 over the api's store."""

    def __init__(self, api: Api, settings: Settings) -> None:
        self.api = api
        self.app = create_app(settings, api.store)
        self.feed: Feed = self.app.state.feed
        self.feed.heartbeat = 0.2
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            lifespan="off",
            log_config=None,
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def __aenter__(self) -> Served:
        self.task = asyncio.create_task(self.server.serve())
        await eventually(lambda: self.server.started)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.feed.close()
        self.server.should_exit = True
        await self.task
        await self.feed.stop()
        await self.session.close()

    def stream(self, **kw: Any) -> Stream:
        return Stream(self, **kw)


class Stream:
    """One listener: its messages (heartbeats counted apart), read in the background."""

    def __init__(
        self,
        served: Served,
        topics: str | None = None,
        last_event_id: str | None = None,
        key: str | None = None,
        read: bool = True,
    ) -> None:
        self.served = served
        self.headers = {"Authorization": f"Bearer {key or served.api.key}"}
        if last_event_id is not None:
            self.headers["Last-Event-ID"] = last_event_id
        self.params = {} if topics is None else {"topics": topics}
        self.messages: asyncio.Queue[SseMessage] = asyncio.Queue()
        self.heartbeats = 0
        self.reading = asyncio.Event()
        if read:
            self.reading.set()
        self.ended = asyncio.Event()

    async def __aenter__(self) -> Stream:
        self.response = await self.served.session.get(
            self.served.base_url + "/v2/events/stream", headers=self.headers, params=self.params
        )
        assert self.response.status == 200, await self.response.text()
        assert self.response.headers["Content-Type"].startswith("text/event-stream")
        self.task = asyncio.create_task(self._read())
        self.ready = await self.next("ready")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.response.close()

    async def _read(self) -> None:
        parser = SseParser()
        try:
            async for chunk in self.response.content.iter_any():
                self.heartbeats += chunk.count(b": heartbeat\n")
                for message in parser.feed(chunk):
                    self.messages.put_nowait(message)
                # A listener that does not read (after the ready message) lets hookd's
                # sends back up: aiohttp stops reading the socket once its buffer is full.
                await self.reading.wait()
        finally:
            self.ended.set()

    async def next(self, kind: str = "message", timeout: float = 10) -> SseMessage:
        message = await asyncio.wait_for(self.messages.get(), timeout)
        assert message.event == kind, f"expected a {kind!r} message, got {message}"
        return message

    async def events(self, count: int) -> list[dict[str, Any]]:
        got = [await self.next() for _ in range(count)]
        for message in got:
            assert message.id == orjson.loads(message.data)["id"], message
        return [orjson.loads(m.data) for m in got]


@pytest.fixture
async def served(api: Api, settings: Settings) -> AsyncIterator[Served]:
    async with Served(api, settings) as s:
        yield s


async def test_each_event_as_a_delivery_envelope_as_it_is_published(served: Served) -> None:
    api = served.api
    hook = await api.create_webhook(topics=["post.created", "comment.created"])
    async with served.stream() as everything, served.stream(topics="comment.created") as some:
        assert everything.ready.id and everything.ready.id.startswith("notif_")
        ready = orjson.loads(everything.ready.data)
        assert ready["object"] == "stream" and ready["topics"] is None
        assert orjson.loads(some.ready.data)["topics"] == ["comment.created"]
        published = [
            await api.publish("post.created", {"id": "p1"}),
            await api.publish("comment.created", {"id": "c1"}),
        ]
        ok_test = await api.post(f"/v2/webhooks/{hook['id']}/test", json={})
        assert ok_test.status_code == 202
        published.append(await api.publish("post.created", {"id": "p2"}))
        got = await everything.events(3)
        assert [e["id"] for e in got] == [e["id"] for e in published], (
            "expected every published event as it was published, and no test event"
        )
        [only] = await some.events(1)
        assert only["id"] == published[1]["id"], "expected the topics filter to apply"
        # The envelope of SPEC §5, as the webhook's delivery carries it, but to no webhook.
        deliveries = (await api.get(f"/v2/webhooks/{hook['id']}/deliveries?limit=100")).json()
        delivery = next(d for d in deliveries["data"] if d["eventId"] == published[0]["id"])
        detail = (await api.get(f"/v2/webhooks/{hook['id']}/deliveries/{delivery['id']}")).json()
        assert got[0] == {**detail["payload"], "webhookId": None}
        await eventually(lambda: everything.heartbeats >= 2, timeout=5)
        assert everything.messages.empty(), "expected heartbeats to be comments, not messages"


async def test_resuming_with_last_event_id(served: Served) -> None:
    api = served.api
    first = await api.publish(item={"n": 0})
    missed = [await api.publish(item={"n": n}) for n in range(1, 4)]
    other_topic = await api.publish("comment.created")
    async with served.stream(last_event_id=first["id"], topics="post.created") as stream:
        assert orjson.loads(stream.ready.data)["resumedAfter"] == first["id"]
        assert stream.ready.id == first["id"]
        live = await api.publish(item={"n": 4})
        got = await stream.events(4)
        # Oldest first is id order (events of one millisecond have ids in random order).
        assert [e["id"] for e in got] == [*sorted(e["id"] for e in missed), live["id"]], (
            "expected the events after Last-Event-ID, oldest first, then live ones, once each"
        )
        assert other_topic["id"] not in [e["id"] for e in got]
        await asyncio.sleep(0.3)
        assert stream.messages.empty(), "expected no event twice"
    # Resuming from the ready message's id: what was published after the stream began.
    async with served.stream() as stream:
        start = stream.ready.id
    after = await api.publish()
    async with served.stream(last_event_id=start) as stream:
        assert [e["id"] for e in await stream.events(1)] == [after["id"]]


async def test_a_listener_that_cannot_keep_up_is_dropped_and_others_go_on(
    served: Served,
) -> None:
    api = served.api
    served.feed.max_events = 10
    served.feed.max_bytes = 2 * 1024 * 1024
    # Enough to fill the socket buffers between the server and a client that does not read
    # (loopback's may take several MB), after which hookd's queue for it fills up.
    count = 150
    big = {"filler": "x" * 100_000}
    async with served.stream(read=False) as slow, served.stream() as fast:
        published = [await api.publish(item={**big, "n": n}) for n in range(count)]
        got = await fast.events(count)
        assert sorted(e["id"] for e in got) == sorted(e["id"] for e in published), (
            "expected a listener that keeps up to get every event while another lags"
        )
        slow.reading.set()
        received = []
        while True:
            message = await slow.messages.get()
            if message.event == "error":
                break
            received.append(message.id)
        error = orjson.loads(message.data)
        assert error["code"] == "listener_too_slow", error
        assert "Last-Event-ID" in error["message"]
        assert len(received) < count, "expected the slow listener to have been dropped"
        await asyncio.wait_for(slow.ended.wait(), 10)
    # Dropped and disconnected listeners are forgotten.
    await eventually(lambda: served.feed.listeners == 0)
    resume = received[-1] if received else slow.ready.id
    async with served.stream(last_event_id=resume) as again:
        rest = await again.events(count - len(received))
    resumed = received + [e["id"] for e in rest]
    assert sorted(resumed) == sorted(e["id"] for e in published), (
        "expected a dropped listener to resume where it stopped, missing nothing, nothing twice"
    )


async def test_closing_the_feed_ends_every_stream_with_a_reason(served: Served) -> None:
    async with served.stream() as one, served.stream(topics="post.created") as two:
        served.feed.close()
        for stream in (one, two):
            error = orjson.loads((await stream.next("error")).data)
            assert error["code"] == "server_closing", error
            await asyncio.wait_for(stream.ended.wait(), 10)
    # A stream asked for while the server shuts down is refused.
    async with served.session.get(
        served.base_url + "/v2/events/stream",
        headers={"Authorization": f"Bearer {served.api.key}"},
    ) as refused:
        assert refused.status == 503, await refused.text()
        assert (await refused.json())["error"]["code"] == "server_closing"


async def test_missed_notifications_end_streams_so_that_they_resume(served: Served) -> None:
    api = served.api
    async with served.stream() as stream:
        if api.store.dialect == "postgresql":
            # The connection that LISTENs dies: what is published until it is back is missed.
            driver: Any = api.store.driver
            conn = await asyncpg.connect(driver.dsn)
            try:
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN%' AND datname = current_database()"
                )
            finally:
                await conn.close()
        else:
            served.feed.events_missed()
        error = orjson.loads((await stream.next("error", timeout=15)).data)
        assert error["code"] == "events_missed", error
    event = await api.publish()
    resumed = stream.ready.id
    await eventually(lambda: served.feed.listeners == 0)
    async with served.stream(last_event_id=resumed) as again:
        assert [e["id"] for e in await again.events(1)] == [event["id"]]
        live = await api.publish()
        assert [e["id"] for e in await again.events(1)] == [live["id"]]


@pytest.mark.parametrize(
    ("query", "headers", "code", "param"),
    [
        ("topics=post.exploded", {}, "topic_unknown", "topics"),
        ("topics=post.created,", {}, "topic_unknown", "topics"),
        ("topics=", {}, "topic_unknown", "topics"),
        ("", {"Last-Event-ID": "yesterday"}, "parameter_invalid", "Last-Event-ID"),
        ("topic=post.created", {}, "parameter_unknown", "topic"),
    ],
)
async def test_stream_validation(
    api: Api, query: str, headers: dict[str, str], code: str, param: str
) -> None:
    assert_error(await api.get(f"/v2/events/stream?{query}", headers=headers), 400, code, param)


async def test_stream_needs_a_key(api: Api) -> None:
    response = await api.client.get("/v2/events/stream")
    assert_error(response, 401, "api_key_missing")


async def test_another_organizations_events_never_reach_a_stream(served: Served) -> None:
    api = served.api
    other = await api.new_org_key("other")
    async with served.stream() as mine, served.stream(key=other) as theirs:
        own = await api.publish()
        foreign = await api.publish(key=other)
        assert [e["id"] for e in await mine.events(1)] == [own["id"]]
        assert [e["id"] for e in await theirs.events(1)] == [foreign["id"]]
        await asyncio.sleep(0.3)
        assert mine.messages.empty() and theirs.messages.empty()


def test_sse_parser_takes_any_line_ending_and_chunking() -> None:
    stream = (
        b"retry: 2000\r\nid: notif_1\r\nevent: ready\r\ndata: {}\r\n\r\n"
        b": heartbeat\n\n"
        b'id: notif_2\rdata: {"a":\rdata: 1}\r\r'
        b"data:no space\n\n"
    )
    expected = [
        SseMessage("ready", b"{}", "notif_1"),
        SseMessage("message", b'{"a":\n1}', "notif_2"),
        SseMessage("message", b"no space", None),
    ]
    for size in (1, 2, 3, 7, len(stream)):
        parser = SseParser()
        got = [m for i in range(0, len(stream), size) for m in parser.feed(stream[i : i + size])]
        assert got == expected, f"chunks of {size} bytes: {got}"


def test_sse_parser_refuses_a_message_without_end() -> None:
    parser = SseParser()
    with pytest.raises(ValueError, match="too long"):
        for _ in range(100):
            parser.feed(b"data: " + b"x" * 100_000 + b"\n")


def test_notifications_fit_postgres_payloads_and_read_back() -> None:
    from hookd.store.postgres import EVENTS_CHANNEL, _notifications, _published_in

    published = [(f"{n:024x}", f"notif_{n:08x}-0000-7000-8000-000000000000") for n in range(500)]
    channels, payloads = _notifications(True, published)
    assert channels[0] == "hookd_work" and payloads[0] == ""
    assert set(channels[1:]) == {EVENTS_CHANNEL} and len(payloads) > 1
    assert all(len(p.encode()) < 8000 for p in payloads), "NOTIFY payloads stay under 8000 bytes"
    assert [pair for p in payloads[1:] for pair in _published_in(p)] == published
    assert _notifications(False, []) == ([], [])
