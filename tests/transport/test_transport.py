"""hookd's HTTP/1.1 client for attempts (hookd.delivery.transport), against raw TCP servers
on 127.0.0.1 that answer byte for byte what each test needs: keep-alive and its end, the
receiver closing an idle connection, capped and endless bodies, bodies that end with the
connection, 1xx answers, broken answers, the connection limit and idle expiry."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import pytest
from yarl import URL

from hookd.delivery.guard import AddressGuard, StaticDnsBackend, parse_networks
from hookd.delivery.sender import Sender
from hookd.delivery.transport import (
    BadResponse,
    ConnectFailed,
    HttpTransport,
    ServerDisconnected,
    interleaved,
)
from tests.test_isolation import _claimed

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Seen:
    """What the server saw: each request's head and body, per connection in order."""

    connections: list[list[tuple[bytes, bytes]]] = field(default_factory=list)
    open_now: int = 0
    most_open: int = 0
    closed_by_client: int = 0
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def requests(self) -> list[tuple[bytes, bytes]]:
        return [r for conn in self.connections for r in conn]


Answer = Callable[[int, bytes, asyncio.StreamWriter], Awaitable[bool]]
"""Writes the answer to request ``n`` (0-based, on its connection); False closes it."""


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


@asynccontextmanager
async def raw_server(answer: Answer) -> AsyncIterator[tuple[URL, Seen]]:
    seen = Seen()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mine: list[tuple[bytes, bytes]] = []
        seen.connections.append(mine)
        seen.open_now += 1
        seen.most_open = max(seen.most_open, seen.open_now)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    seen.closed_by_client += 1
                    seen.client_closed.set()
                    return
                mine.append(request)
                if not await answer(len(mine) - 1, request[0], writer):
                    return
                await writer.drain()
        except ConnectionError:
            return
        finally:
            seen.open_now -= 1
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield URL(f"http://127.0.0.1:{port}/hook?x=1"), seen
    finally:
        server.close()


def transport(**kwargs: Any) -> HttpTransport:
    return HttpTransport(AddressGuard(parse_networks("127.0.0.0/8")), **kwargs)


@asynccontextmanager
async def used(client: HttpTransport) -> AsyncIterator[HttpTransport]:
    """``client``, closed on the way out."""
    try:
        yield client
    finally:
        await client.close()


async def always_ok(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(OK)
    return True


async def test_keeps_one_connection_alive_and_sends_exactly_the_request() -> None:
    async with raw_server(always_ok) as (url, seen), used(transport()) as client:
        for n in range(20):
            response = await client.post(url, {"X-Test": str(n)}, b'{"n":%d}' % n)
            assert (response.status, response.reason, response.body) == (200, "OK", b"ok")
    assert len(seen.connections) == 1, "every request on one kept-alive connection"
    head, body = seen.requests[3]
    port = url.port
    assert port is not None
    assert head == (
        b"POST /hook?x=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 7\r\n"
        b"X-Test: 3\r\n\r\n" % port
    )
    assert body == b'{"n":3}'


async def test_connection_close_is_honoured() -> None:
    async def closing(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        return True  # the client must be the one to stop using it

    async with raw_server(closing) as (url, seen), used(transport()) as client:
        for _ in range(3):
            assert (await client.post(url, {}, b"x")).status == 204
        assert client.open_connections == 0
    assert [len(c) for c in seen.connections] == [1, 1, 1]


async def test_an_idle_connection_the_receiver_dropped_is_retried_once_on_a_new_one() -> None:
    async def drops_second(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        if n == 1:
            return False  # closes without answering, as a server ending an idle connection
        writer.write(OK)
        return True

    async with raw_server(drops_second) as (url, seen), used(transport()) as client:
        assert (await client.post(url, {}, b"1")).status == 200
        assert (await client.post(url, {}, b"2")).status == 200
    assert [[b for _, b in c] for c in seen.connections] == [[b"1", b"2"], [b"2"]]


async def test_a_new_connection_that_ends_without_an_answer_is_an_error() -> None:
    async def never(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        return False

    async with raw_server(never) as (url, seen), used(transport()) as client:
        with pytest.raises(ServerDisconnected):
            await client.post(url, {}, b"x")
        assert client.open_connections == 0
    assert len(seen.requests) == 1, "no retry on a connection made for the request"


async def test_a_long_body_is_cut_at_the_cap_and_its_connection_closed() -> None:
    async def big(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 500 Oops\r\nContent-Length: 1000000\r\n\r\n" + b"a" * 1_000_000)
        return True

    async with raw_server(big) as (url, seen), used(transport(max_body=4096)) as client:
        response = await client.post(url, {}, b"x")
        assert (response.status, response.reason, response.body) == (500, "Oops", b"a" * 4096)
        await client.post(url, {}, b"x")
    assert len(seen.connections) == 2, "a connection with unread body is not reused"


async def test_an_endless_body_ends_the_attempt_at_the_cap() -> None:
    async def endless(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"400\r\n" + b"b" * 1024 + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)

    async with raw_server(endless) as (url, _), used(transport(max_body=4096)) as client:
        async with asyncio.timeout(5):
            response = await client.post(url, {}, b"x")
        assert response.status == 200 and response.body == b"b" * 4096
        assert client.open_connections == 0


async def test_a_body_that_ends_with_the_connection() -> None:
    async def until_close(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.0 202 Accepted\r\n\r\nall of it")
        return False

    async with raw_server(until_close) as (url, _), used(transport()) as client:
        response = await client.post(url, {}, b"x")
    assert (response.status, response.body) == (202, b"all of it")


async def test_chunked_body_and_informational_answers() -> None:
    async def chunked(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 429 Too Many\r\nRetry-After: 120\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        return True

    async with raw_server(chunked) as (url, seen), used(transport()) as client:
        first = await client.post(url, {}, b"x")
        second = await client.post(url, {}, b"y")
    assert (first.status, first.reason, first.retry_after, first.body) == (
        429,
        "Too Many",
        "120",
        b"abcde",
    )
    assert second.status == 429 and len(seen.connections) == 1


async def test_bytes_after_the_answer_spoil_the_connection() -> None:
    async def two_answers(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        # An answer to a request not yet made: the next request must not read it as its own.
        writer.write(OK + b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        return True

    async with raw_server(two_answers) as (url, seen), used(transport()) as client:
        first = await client.post(url, {}, b"1")
        second = await client.post(url, {}, b"2")
    assert (first.status, second.status) == (200, 200)
    assert len(seen.connections) == 2


async def test_endless_headers_end_the_attempt() -> None:
    async def endless(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nX-Big: ")
        while True:
            writer.write(b"a" * 4096)
            await writer.drain()
            await asyncio.sleep(0)

    async with raw_server(endless) as (url, _), used(transport()) as client:
        async with asyncio.timeout(5):
            with pytest.raises(BadResponse, match="headers exceed 65536 bytes"):
                await client.post(url, {}, b"x")
        assert client.open_connections == 0


async def test_an_answer_that_is_not_http_is_a_bad_response() -> None:
    async def garbage(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        return True

    async with raw_server(garbage) as (url, _), used(transport()) as client:
        with pytest.raises(BadResponse, match="invalid HTTP response"):
            await client.post(url, {}, b"x")
        assert client.open_connections == 0


async def test_no_more_connections_than_the_limit() -> None:
    async def slow(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.1)
        writer.write(OK)
        return True

    async with raw_server(slow) as (url, seen), used(transport(limit=2)) as client:
        results = await asyncio.gather(*(client.post(url, {}, b"x") for _ in range(7)))
    assert [r.status for r in results] == [200] * 7
    assert seen.most_open == 2 and len(seen.requests) == 7


async def test_the_limit_closes_an_idle_connection_to_another_host() -> None:
    async with raw_server(always_ok) as (one, seen_one), raw_server(always_ok) as (two, _):
        async with used(transport(limit=1)) as client:
            await client.post(one, {}, b"x")
            await client.post(two, {}, b"x")
            assert client.open_connections == 1
        await asyncio.wait_for(seen_one.client_closed.wait(), 2)
    assert seen_one.closed_by_client == 1


async def test_idle_connections_expire() -> None:
    async with raw_server(always_ok) as (url, seen), used(transport(keepalive=0.2)) as client:
        await client.post(url, {}, b"x")
        assert client.open_connections == 1
        await asyncio.wait_for(seen.client_closed.wait(), 3)
        assert client.open_connections == 0
    assert seen.closed_by_client == 1


async def test_a_timed_out_request_closes_its_connection() -> None:
    async def mute(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(5)
        return False

    async with raw_server(mute) as (url, _), used(transport()) as client:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await client.post(url, {}, b"x")
        assert client.open_connections == 0


async def test_the_deadline_ends_a_request_on_a_reused_connection() -> None:
    async def first_then_mute(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        if n == 0:
            writer.write(OK)
            return True
        await asyncio.sleep(5)
        return False

    loop = asyncio.get_running_loop()
    async with raw_server(first_then_mute) as (url, seen), used(transport()) as client:
        # Answered in time: the deadline's timer is gone with the answer, and the connection
        # stays open and reusable after the deadline has passed.
        await client.post(url, {}, b"x", deadline=loop.time() + 0.1)
        await asyncio.sleep(0.2)
        assert client.open_connections == 1
        started = loop.time()
        with pytest.raises(TimeoutError):
            await client.post(url, {}, b"y", deadline=started + 0.2)
        elapsed = loop.time() - started
        assert client.open_connections == 0
    assert 0.15 <= elapsed < 1.0, f"the request ended after {elapsed:.2f} s"
    assert [len(conn) for conn in seen.connections] == [2]


async def test_the_deadline_covers_connecting() -> None:
    loop = asyncio.get_running_loop()
    with hanging_address() as port:
        async with used(transport_resolving(["127.0.0.3"])) as client:
            started = loop.time()
            with pytest.raises(TimeoutError):
                await client.post(URL(f"http://two.test:{port}/"), {}, b"x", started + 0.3)
            elapsed = loop.time() - started
            assert client.open_connections == 0
    assert 0.25 <= elapsed < 1.5, f"the attempt ended after {elapsed:.2f} s"


@pytest.mark.parametrize("bad", [("X-A", "1\r\nX-B: 2"), ("X-A\nX-B", "1"), ("X-A", "1\0")])
async def test_a_header_that_would_split_the_request_is_refused(bad: tuple[str, str]) -> None:
    async with raw_server(always_ok) as (url, seen), used(transport()) as client:
        with pytest.raises(ValueError, match="line break or NUL"):
            await client.post(url, dict([bad]), b"x")
    assert seen.requests == []


async def test_the_senders_messages_for_what_the_client_raises() -> None:
    async def never(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        return False

    async def garbage(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"nonsense\r\n\r\n")
        return True

    sender = Sender(AddressGuard(parse_networks("127.0.0.0/8")))
    await sender.start()
    try:
        async with raw_server(never) as (url, _):
            dropped = await sender.send(_claimed(str(url), 2000))
        async with raw_server(garbage) as (url, _):
            broken = await sender.send(_claimed(str(url), 2000))
        refused = await sender.send(_claimed(f"http://127.0.0.1:{url.port}/", 2000))
    finally:
        await sender.close()
    assert dropped.message == "The server closed the connection without answering"
    assert dropped.outcome == "connect"
    assert broken.message.startswith("Request failed: invalid HTTP response")
    assert refused.message.startswith("Connection failed: ") and refused.outcome == "connect"


@contextmanager
def hanging_address() -> Iterator[int]:
    """A port on 127.0.0.3 where connecting hangs: a listener whose backlog is full (the
    kernel drops further SYNs), as an unreachable route does."""
    listener = socket.socket()
    listener.bind(("127.0.0.3", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with suppress(BlockingIOError):
            filler.connect(("127.0.0.3", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for sock in (*fillers, listener):
            sock.close()


def transport_resolving(answers: list[str], **kwargs: Any) -> HttpTransport:
    dns = StaticDnsBackend({"two.test": answers})
    return HttpTransport(AddressGuard(parse_networks("127.0.0.0/8"), dns=dns), **kwargs)


async def test_an_address_that_refuses_gives_way_to_the_next() -> None:
    resolving = transport_resolving(["127.0.0.2", "127.0.0.1"])
    async with raw_server(always_ok) as (url, seen), used(resolving) as client:
        response = await client.post(url.with_host("two.test"), {}, b"x")
    assert response.status == 200 and len(seen.connections) == 1
    assert seen.requests[0][0].startswith(b"POST /hook?x=1 HTTP/1.1\r\nHost: two.test:")


async def test_every_address_refusing_is_a_failed_connection() -> None:
    async with used(transport_resolving(["127.0.0.2", "127.0.0.4"])) as client:
        with pytest.raises(ConnectFailed) as failed:
            await client.post(URL("http://two.test:9/"), {}, b"x")
    assert failed.value.host == "two.test" and client.open_connections == 0


async def test_an_address_that_never_answers_costs_a_quarter_second() -> None:
    loop = asyncio.get_running_loop()
    with hanging_address() as port, socket.socket() as listener:
        # The second address listens on the same port, on 127.0.0.1.
        listener.bind(("127.0.0.1", port))
        listener.listen(8)
        listener.setblocking(False)
        async with used(transport_resolving(["127.0.0.3", "127.0.0.1"])) as client:
            async with asyncio.timeout(3):
                started = loop.time()
                sending = asyncio.ensure_future(
                    client.post(URL(f"http://two.test:{port}/"), {}, b"x")
                )
                accepted, _ = await loop.sock_accept(listener)
                elapsed = loop.time() - started
                accepted.close()  # no answer: the attempt fails, which is not the point
                with pytest.raises(ServerDisconnected):
                    await sending
    assert 0.2 <= elapsed < 1.0, f"the second address started after {elapsed:.2f} s"
    assert client.open_connections == 0


def test_addresses_are_tried_with_the_families_taking_turns() -> None:
    ip = ipaddress.ip_address
    v6 = [ip("2001:db8::1"), ip("2001:db8::2"), ip("2001:db8::3")]
    v4 = [ip("192.0.2.1"), ip("192.0.2.2")]
    assert interleaved([*v6, *v4]) == [v6[0], v4[0], v6[1], v4[1], v6[2]]
    assert interleaved([v4[0], *v6, v4[1]]) == [v4[0], v6[0], v4[1], v6[1], v6[2]]
    assert interleaved(v4) == v4
    assert interleaved([]) == []


async def test_the_other_family_is_tried_second() -> None:
    """The resolver lists two IPv4 addresses, then ::1; the first IPv4 address hangs. The
    second one tried is ::1 (families take turns), not the second IPv4 address, although
    both accept."""
    loop = asyncio.get_running_loop()
    with hanging_address() as port, socket.socket() as v4, socket.socket(socket.AF_INET6) as v6:
        for listener, address in ((v4, "127.0.0.4"), (v6, "::1")):
            listener.bind((address, port))
            listener.listen(8)
            listener.setblocking(False)
        dns = StaticDnsBackend({"two.test": ["127.0.0.3", "127.0.0.4", "::1"]})
        guard = AddressGuard(parse_networks("127.0.0.0/8,::1/128"), dns=dns)
        async with used(HttpTransport(guard)) as client:
            async with asyncio.timeout(3):
                sending = asyncio.ensure_future(
                    client.post(URL(f"http://two.test:{port}/"), {}, b"x")
                )
                accepted, _ = await loop.sock_accept(v6)
                accepted.close()
                with pytest.raises(ServerDisconnected):
                    await sending
        with pytest.raises(BlockingIOError):
            v4.accept()  # the second IPv4 address was not tried
