"""Tests for hookd.delivery.guard: the refusal table, literal parsing, and real loopback deliveries.

Only DNS answers are faked (StaticDnsBackend or a small backend defined here);
the guard, aiohttp and the sockets are real. The network tests connect only to
127.0.0.0/8 and ::1: every name the fake DNS answers for points there, and the
refused cases are refused before any connection is attempted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from yarl import URL

from hookd.delivery.guard import (
    AddressGuard,
    DnsBackend,
    IPAddress,
    StaticDnsBackend,
    literal_address,
    parse_networks,
    refusal_from,
)
from hookd.delivery.transport import HttpTransport
from hookd.errors import AddressRefused

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


def ip(text: str) -> IPAddress:
    parsed = literal_address(text)
    assert parsed is not None, text
    return parsed


def guard_for(allowed: str = "", dns: DnsBackend | None = None) -> AddressGuard:
    return AddressGuard(parse_networks(allowed), dns=dns if dns is not None else StaticDnsBackend())


# --- the refusal table -------------------------------------------------------------------------

REFUSALS: list[tuple[str, str | None]] = [
    # loopback
    ("127.0.0.1", "a loopback address"),
    ("127.255.255.254", "a loopback address"),
    ("::1", "a loopback address"),
    # RFC 1918, each block, both ends
    ("10.0.0.0", "a private address"),
    ("10.255.255.255", "a private address"),
    ("172.16.0.1", "a private address"),
    ("172.31.255.255", "a private address"),
    ("192.168.0.1", "a private address"),
    ("192.168.255.255", "a private address"),
    # CGNAT
    ("100.64.0.1", "a shared (CGNAT) address"),
    ("100.127.255.255", "a shared (CGNAT) address"),
    # link-local and cloud metadata
    ("169.254.0.1", "a link-local address"),
    ("169.254.169.254", "the cloud metadata address"),
    ("fd00:ec2::254", "the cloud metadata address"),
    ("fe80::1", "a link-local address"),
    ("fe80::1%eth0", "a link-local address"),
    ("febf:ffff::1", "a link-local address"),
    # unspecified and "this network"
    ("0.0.0.0", "an unspecified address"),
    ("0.1.2.3", "a reserved (this-network) address"),
    ("::", "an unspecified address"),
    # ULA, site-local
    ("fc00::1", "a private (unique local) address"),
    ("fd12:3456::1", "a private (unique local) address"),
    ("fec0::1", "a site-local address"),
    # multicast, broadcast, reserved
    ("224.0.0.1", "a multicast address"),
    ("239.255.255.250", "a multicast address"),
    ("ff02::1", "a multicast address"),
    ("ff0e::1", "a multicast address"),
    ("255.255.255.255", "a broadcast address"),
    ("240.0.0.1", "a reserved address"),
    ("255.255.255.254", "a reserved address"),
    ("4000::1", "a reserved address"),
    ("100::1", "a discard-only address"),
    ("5f00::1", "a reserved (SRv6) address"),
    ("192.0.0.9", "a reserved (IETF protocol assignment) address"),
    ("192.88.99.1", "a reserved (6to4 relay anycast) address"),
    ("2001:10::1", "a reserved (IETF protocol assignment) address"),
    # documentation and benchmarking
    ("192.0.2.1", "a documentation address"),
    ("198.51.100.1", "a documentation address"),
    ("203.0.113.1", "a documentation address"),
    ("2001:db8::1", "a documentation address"),
    ("3fff::1", "a documentation address"),
    ("198.18.0.1", "a benchmarking address"),
    ("198.19.255.255", "a benchmarking address"),
    ("2001:2::1", "a benchmarking address"),
    # IPv4-mapped: judged as the IPv4 address
    ("::ffff:127.0.0.1", "an IPv4-mapped loopback address"),
    ("::ffff:10.0.0.1", "an IPv4-mapped private address"),
    ("::ffff:169.254.169.254", "the IPv4-mapped cloud metadata address"),
    ("::ffff:0.0.0.0", "an IPv4-mapped unspecified address"),
    ("::ffff:93.184.216.34", None),
    # IPv4-compatible (deprecated): judged by the embedded address
    ("::127.0.0.1", "an IPv4-compatible loopback address"),
    ("::192.168.1.1", "an IPv4-compatible private address"),
    ("::93.184.216.34", None),
    # NAT64
    ("64:ff9b::127.0.0.1", "a NAT64 loopback address"),
    ("64:ff9b::a9fe:a9fe", "the NAT64 cloud metadata address"),
    ("64:ff9b::93.184.216.34", None),
    ("64:ff9b:1::1", "a local-use NAT64 address"),
    ("64:ff9b:1:ffff::93.184.216.34", "a local-use NAT64 address"),
    # 6to4: the embedded IPv4 is bits 16..48
    ("2002:7f00:1::1", "a 6to4 loopback address"),
    ("2002:c0a8:101::1", "a 6to4 private address"),
    ("2002:5db8:d822::1", None),
    # Teredo: refused outright, even with public server and client addresses
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "a Teredo address"),
    ("2001:0:5db8:d822::1", "a Teredo address"),
    # public addresses are accepted
    ("93.184.216.34", None),
    ("8.8.8.8", None),
    ("1.1.1.1", None),
    ("172.32.0.1", None),
    ("100.128.0.1", None),
    ("2606:4700::1111", None),
    ("2001:4860:4860::8888", None),
    ("2a00:1450:4001::1", None),
]


@pytest.mark.parametrize(("address", "reason"), REFUSALS)
def test_refusal_reason(address: str, reason: str | None) -> None:
    assert AddressGuard().refusal_reason(ip(address)) == reason


EXEMPTIONS: list[tuple[str, str, str | None]] = [
    ("127.0.0.0/8", "127.0.0.1", None),
    ("127.0.0.0/8", "127.9.9.9", None),
    ("127.0.0.1/32", "127.0.0.2", "a loopback address"),
    # an IPv4 network does not cover IPv6 loopback, and vice versa
    ("127.0.0.0/8", "::1", "a loopback address"),
    ("::1/128", "::1", None),
    ("::1/128", "127.0.0.1", "a loopback address"),
    # IPv4-mapped addresses are the IPv4 destination, so IPv4 networks cover them
    ("127.0.0.0/8", "::ffff:127.0.0.1", None),
    ("::ffff:127.0.0.0/104", "::ffff:127.0.0.1", None),
    ("10.0.0.0/8", "::ffff:10.1.2.3", None),
    # other embeddings travel as IPv6: only an IPv6 network exempts them
    ("127.0.0.0/8", "::127.0.0.1", "an IPv4-compatible loopback address"),
    ("127.0.0.0/8", "64:ff9b::127.0.0.1", "a NAT64 loopback address"),
    ("10.0.0.0/8", "2002:a00:1::1", "a 6to4 private address"),
    ("2002:a00::/24", "2002:a00:1::1", None),
    ("64:ff9b::/96", "64:ff9b::127.0.0.1", None),
    # whatever the class
    ("169.254.169.254/32", "169.254.169.254", None),
    ("0.0.0.0/0", "169.254.169.254", None),
    ("fe80::/10", "fe80::1%eth0", None),
    ("2001::/32", "2001:0:4136:e378:8000:63bf:3fff:fdd2", None),
    ("ff00::/8", "ff02::1", None),
    # other networks leave the rest refused
    ("10.0.0.0/8", "192.168.1.1", "a private address"),
    ("10.0.0.0/8, 192.168.0.0/16", "192.168.1.1", None),
]


@pytest.mark.parametrize(("allowed", "address", "reason"), EXEMPTIONS)
def test_exemptions(allowed: str, address: str, reason: str | None) -> None:
    assert guard_for(allowed).refusal_reason(ip(address)) == reason


# --- literal parsing ---------------------------------------------------------------------------

LITERALS: list[tuple[str, str | None]] = [
    ("127.0.0.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("0X7F.0.0.01", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("017700000001", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("0x0000000007f.1", "127.0.0.1"),
    ("169.16689662", "169.254.169.254"),
    ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
    ("0", "0.0.0.0"),
    ("00", "0.0.0.0"),
    ("0xffffffff", "255.255.255.255"),
    ("037777777777", "255.255.255.255"),
    ("1.0xffffff", "1.255.255.255"),
    ("01.02.03.010", "1.2.3.8"),
    ("[::1]", "::1"),
    ("::1", "::1"),
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
    ("fe80::1%eth0", "fe80::1%eth0"),
    ("[fe80::1%25eth0]", "fe80::1%25eth0"),
    # not literals: names, out of range, bad digits, extra or missing parts
    ("example.com", None),
    ("localhost", None),
    ("0x7f.example", None),
    ("4294967296", None),
    ("040000000000", None),
    ("1.2.3.256", None),
    ("1.2.65536", None),
    ("1.16777216", None),
    ("0x100.1", None),
    ("0400.1", None),
    ("08.0.0.1", None),
    ("09", None),
    ("0x", None),
    ("0x.1", None),
    ("1..2", None),
    ("1.2.3.4.5", None),
    ("127.0.0.1.", None),
    ("", None),
    (" 1.2.3.4", None),
    ("1.2.3.4 ", None),
    ("+1.2.3.4", None),
    ("1_0.0.0.1", None),
    ("١٢٧.0.0.1", None),
    ("[1.2.3.4]", None),
    ("::1.2.3", None),
    ("1::2::3", None),
]


@pytest.mark.parametrize(("host", "expected"), LITERALS)
def test_literal_address(host: str, expected: str | None) -> None:
    parsed = literal_address(host)
    assert (None if parsed is None else str(parsed)) == expected


def numeric_getaddrinfo(host: str) -> str | None:
    try:
        infos = socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return None
    return str(infos[0][4][0])


# Brackets and URL-encoded zones are URL syntax the C library does not take, so they are left out.
@pytest.mark.parametrize(
    "host",
    [host for host, _ in LITERALS if not host.startswith("[") and "%" not in host],
)
def test_literal_address_agrees_with_the_system_resolver(host: str) -> None:
    parsed = literal_address(host)
    assert (None if parsed is None else parsed.compressed) == numeric_getaddrinfo(host)


# --- parse_networks ----------------------------------------------------------------------------


def test_parse_networks() -> None:
    assert parse_networks("") == []
    assert parse_networks("  ") == []
    assert parse_networks("127.0.0.0/8, ::1/128") == [
        ipaddress.IPv4Network("127.0.0.0/8"),
        ipaddress.IPv6Network("::1/128"),
    ]
    assert parse_networks("10.0.0.1,") == [ipaddress.IPv4Network("10.0.0.1/32")]
    assert parse_networks(" 10.0.0.0/8 ,, fd00::/8 ") == [
        ipaddress.IPv4Network("10.0.0.0/8"),
        ipaddress.IPv6Network("fd00::/8"),
    ]


@pytest.mark.parametrize(
    "text", ["nonsense", "10.0.0.0/33", "10.1.2.3/8", "127.0.0.0/8; ::1", "::1/129"]
)
def test_parse_networks_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"HOOKD_ALLOWED_NETWORKS: '.+' is not a network"):
        parse_networks(text)


# --- resolve -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/",
        "http://2130706433:8080/",
        "http://0177.0.0.1:8080/",
        "http://0x7f.1:8080/",
        "http://0x7f000001:8080/",
        "http://127.1:8080/",
        "http://[::ffff:127.0.0.1]:8080/",
        "http://[::1]:8080/",
        "http://0x7F.0.0.1:8080/",
    ],
)
async def test_literal_spellings_in_urls_are_refused_without_dns(url: str) -> None:
    dns = StaticDnsBackend()
    host = URL(url).raw_host
    assert host is not None
    with pytest.raises(AddressRefused, match="loopback address"):
        await guard_for(dns=dns).resolve(host, 8080)
    assert dns.lookups == []
    # ...and allowed when exempted, still without DNS
    allowed = await guard_for("127.0.0.0/8, ::1/128", dns=dns).resolve(host, 8080)
    assert len(allowed) == 1
    assert dns.lookups == []


async def test_refusal_messages() -> None:
    dns = StaticDnsBackend(
        {
            "example.test": ["127.0.0.1"],
            "multi.test": ["10.0.0.1", "::1", "10.0.0.1", "fe80::1"],
            "two.test": ["10.0.0.1", "192.168.0.1"],
        }
    )
    guard = guard_for(dns=dns)

    async def message(host: str) -> str:
        with pytest.raises(AddressRefused) as info:
            await guard.resolve(host, 80)
        return str(info.value)

    assert await message("example.test") == (
        "Refused to connect to 127.0.0.1 (example.test resolves to a loopback address); "
        "to allow it, add 127.0.0.1/32 or its network to "
        "HOOKD_ALLOWED_NETWORKS (a receiver on this machine: hookd serve --dev)."
    )
    assert await message("127.0.0.1") == (
        "Refused to connect to 127.0.0.1 (a loopback address); "
        "to allow it, add 127.0.0.1/32 or its network to "
        "HOOKD_ALLOWED_NETWORKS (a receiver on this machine: hookd serve --dev)."
    )
    assert await message("2130706433") == (
        "Refused to connect to 127.0.0.1 (2130706433 is a loopback address); "
        "to allow it, add 127.0.0.1/32 or its network to "
        "HOOKD_ALLOWED_NETWORKS (a receiver on this machine: hookd serve --dev)."
    )
    assert await message("[::1]") == (
        "Refused to connect to ::1 (a loopback address); "
        "to allow it, add ::1/128 or its network to "
        "HOOKD_ALLOWED_NETWORKS (a receiver on this machine: hookd serve --dev)."
    )
    assert await message("multi.test") == (
        "Refused to connect to 10.0.0.1 (multi.test resolves to a private address, "
        "and to 2 other refused addresses); "
        "to allow it, add 10.0.0.1/32 or its network to HOOKD_ALLOWED_NETWORKS."
    )
    assert "and to 1 other refused address)" in await message("two.test")


async def test_resolve_keeps_only_allowed_answers_in_order() -> None:
    dns = StaticDnsBackend(
        {"mixed.test": ["10.0.0.1", "2606:4700::1111", "::1", "93.184.216.34", "2606:4700::1111"]}
    )
    guard = guard_for(dns=dns)
    assert await guard.resolve("mixed.test", 443) == [ip("2606:4700::1111"), ip("93.184.216.34")]
    assert await guard.resolve("mixed.test", 443, family=socket.AF_INET) == [ip("93.184.216.34")]
    assert dns.lookups == [("mixed.test", 443), ("mixed.test", 443)]
    # the family filter applies before judging, so the refusal names an address of that family
    dns.records["mixed.test"] = ["10.0.0.1", "::1"]
    with pytest.raises(AddressRefused, match=r"to ::1 \(mixed\.test resolves to a loopback"):
        await guard.resolve("mixed.test", 443, family=socket.AF_INET6)


async def test_dns_failure_is_not_a_refusal() -> None:
    guard = guard_for(dns=StaticDnsBackend({"empty.test": []}))
    with pytest.raises(socket.gaierror, match=r"Could not resolve host nowhere\.test") as info:
        await guard.resolve("nowhere.test", 80)
    assert not isinstance(info.value, AddressRefused)
    assert refusal_from(info.value) is None
    with pytest.raises(
        socket.gaierror, match=r"Could not resolve host empty\.test: no usable address"
    ):
        await guard.resolve("empty.test", 80)


async def test_backend_answer_that_is_not_an_address_is_an_error() -> None:
    guard = guard_for(dns=StaticDnsBackend({"bad.test": ["not-an-ip"]}))
    with pytest.raises(ValueError, match="not an IP address"):
        await guard.resolve("bad.test", 80)


def test_check_literal() -> None:
    guard = guard_for("127.0.0.0/8")
    assert guard.check_literal("example.com") is None
    assert guard.check_literal("127.0.0.1") == LOOPBACK
    assert guard.check_literal("0x7f.1") == LOOPBACK
    with pytest.raises(AddressRefused, match="IPv4-mapped private"):
        guard.check_literal("::ffff:10.0.0.1")
    # aiohttp would pass these to the socket layer unresolved, so they must not slip through
    for host in ["1.2.3.4.5", "127.0.0.1.", "08.0.0.1", "1::2::3"]:
        with pytest.raises(AddressRefused, match="looks like an IP address but is not a valid one"):
            guard.check_literal(host)


async def test_system_backend_resolves_localhost_and_the_guard_refuses_it() -> None:
    guard = AddressGuard()  # the real system resolver (localhost comes from /etc/hosts)
    with pytest.raises(AddressRefused, match=r"localhost resolves to a loopback address"):
        await guard.resolve("localhost", 80)
    allowed = await AddressGuard(parse_networks("127.0.0.0/8, ::1/128")).resolve("localhost", 80)
    assert allowed
    assert all(address.is_loopback for address in allowed)


# --- refusal_from ------------------------------------------------------------------------------


def test_refusal_from() -> None:
    refusal = AddressRefused("Refused to connect to 127.0.0.1 (a loopback address)")
    assert refusal_from(refusal) is refusal

    try:
        try:
            raise refusal
        except AddressRefused as exc:
            raise ConnectionError("wrapped") from exc
    except ConnectionError as wrapped:
        assert refusal_from(wrapped) is refusal

    try:
        try:
            raise refusal
        except AddressRefused:
            raise RuntimeError("while handling") from None
    except RuntimeError as suppressed:
        assert refusal_from(suppressed) is None

    group = ExceptionGroup("attempts", [ValueError("x"), refusal])
    assert refusal_from(group) is refusal
    assert refusal_from(OSError("unrelated")) is None


# --- real deliveries on loopback ---------------------------------------------------------------


@dataclass
class Received:
    local: str  # the address the client connected to, as the server's socket saw it
    path: str
    body: bytes


@dataclass
class LoopbackServer:
    """A real aiohttp server on one port of one or more loopback addresses."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        local = str(sockname[0]) if sockname else "?"
        self.received.append(Received(local, request.path, await request.read()))
        if request.path == "/redirect":
            raise web.HTTPTemporaryRedirect(request.query["to"])
        return web.Response(text="ok")

    async def start(self, hosts: Sequence[str]) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        for host in hosts:
            # every address on the same port, so only the DNS answer picks the server
            await web.TCPSite(self.runner, host, self.port).start()
            if not self.port:
                self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def at(self, local: str) -> list[Received]:
        return [item for item in self.received if item.local == local]


@pytest.fixture
async def server() -> AsyncIterator[LoopbackServer]:
    srv = LoopbackServer()
    await srv.start(["127.0.0.1"])
    yield srv
    await srv.stop()


@pytest.fixture
async def two_servers() -> AsyncIterator[LoopbackServer]:
    srv = LoopbackServer()
    await srv.start(["127.0.0.1", "127.0.0.2"])
    yield srv
    await srv.stop()


async def attempt(guard: AddressGuard, url: str) -> int | Exception:
    """POST once with a fresh transport (hookd's client): the status, or the exception."""
    transport = HttpTransport(guard)
    try:
        async with asyncio.timeout(10):
            response = await transport.post(URL(url), {}, b"payload")
        return response.status
    except Exception as exc:
        return exc
    finally:
        await transport.close()


def refused(outcome: int | Exception) -> AddressRefused:
    assert isinstance(outcome, Exception), f"expected a refusal, got HTTP {outcome}"
    refusal = refusal_from(outcome)
    assert refusal is not None, f"expected AddressRefused, got {outcome!r}"
    return refusal


async def test_ip_literal_url_is_refused(server: LoopbackServer) -> None:
    refusal = refused(await attempt(guard_for(), f"http://127.0.0.1:{server.port}/"))
    assert "127.0.0.1" in str(refusal)
    assert "a loopback address" in str(refusal)
    assert server.received == []


async def test_ip_literal_url_is_allowed_when_exempted(server: LoopbackServer) -> None:
    assert await attempt(guard_for("127.0.0.0/8"), f"http://127.0.0.1:{server.port}/hook") == 200
    assert server.received == [Received("127.0.0.1", "/hook", b"payload")]


async def test_name_resolving_to_loopback(server: LoopbackServer) -> None:
    dns = StaticDnsBackend({"hooks.example.test": ["127.0.0.1"]})
    url = f"http://hooks.example.test:{server.port}/hook"

    refusal = refused(await attempt(guard_for(dns=dns), url))
    assert str(refusal) == (
        "Refused to connect to 127.0.0.1 (hooks.example.test resolves to a loopback address); "
        "to allow it, add 127.0.0.1/32 or its network to "
        "HOOKD_ALLOWED_NETWORKS (a receiver on this machine: hookd serve --dev)."
    )
    assert server.received == []

    assert await attempt(guard_for("127.0.0.0/8", dns=dns), url) == 200
    assert server.received == [Received("127.0.0.1", "/hook", b"payload")]
    assert dns.lookups == [("hooks.example.test", server.port)] * 2


async def test_dns_failure_through_the_client_is_a_dns_error(server: LoopbackServer) -> None:
    outcome = await attempt(guard_for(), f"http://nowhere.test:{server.port}/")
    assert isinstance(outcome, socket.gaierror)
    assert refusal_from(outcome) is None
    assert "Could not resolve host nowhere.test" in str(outcome)


@dataclass
class RebindingDns:
    """Answers with the next address on each lookup: the DNS-rebinding attacker."""

    answers: list[str]
    given: list[str] = field(default_factory=list)

    async def lookup(self, host: str, port: int) -> list[str]:
        answer = self.answers[min(len(self.given), len(self.answers) - 1)]
        self.given.append(answer)
        return [answer]


async def test_no_dns_rebinding_window(two_servers: LoopbackServer) -> None:
    # Only 127.0.0.1 is allowed; the name answers 127.0.0.1 once, then 127.0.0.2.
    # A second lookup between check and connect would land on 127.0.0.2.
    dns = RebindingDns(["127.0.0.1", "127.0.0.2"])
    guard = guard_for("127.0.0.1/32", dns=dns)
    url = f"http://rebind.test:{two_servers.port}/hook"
    assert await attempt(guard, url) == 200
    assert dns.given == ["127.0.0.1"]  # one lookup for the connection...
    assert two_servers.at("127.0.0.1") == [Received("127.0.0.1", "/hook", b"payload")]
    assert two_servers.at("127.0.0.2") == []  # ...and it went to the address that was checked

    # the next connection asks again, gets the new answer, and it is judged on its own
    refusal = refused(await attempt(guard, url))
    assert "Refused to connect to 127.0.0.2 (rebind.test resolves to a loopback address)" in str(
        refusal
    )
    assert dns.given == ["127.0.0.1", "127.0.0.2"]
    assert two_servers.at("127.0.0.2") == []


async def test_each_connection_goes_to_the_address_checked_for_it(
    two_servers: LoopbackServer,
) -> None:
    dns = RebindingDns(["127.0.0.1", "127.0.0.2", "127.0.0.1"])
    guard = guard_for("127.0.0.0/8", dns=dns)
    url = URL(f"http://rebind.test:{two_servers.port}/")
    # keepalive=0: no connection is reused, so each request opens (and resolves) anew.
    transport = HttpTransport(guard, keepalive=0)
    try:
        for _ in range(3):
            assert (await transport.post(url, {}, b"x")).status == 200
    finally:
        await transport.close()
    assert dns.given == ["127.0.0.1", "127.0.0.2", "127.0.0.1"]
    assert [item.local for item in two_servers.received] == dns.given


async def test_a_redirect_is_never_followed(two_servers: LoopbackServer) -> None:
    dns = StaticDnsBackend({"internal.test": ["127.0.0.2"]})
    guard = guard_for("127.0.0.1/32", dns=dns)
    target = f"http://internal.test:{two_servers.port}/internal"
    url = URL(f"http://127.0.0.1:{two_servers.port}/redirect").with_query(to=target)
    assert await attempt(guard, str(url)) == 307
    assert dns.lookups == []
    assert [item.path for item in two_servers.at("127.0.0.1")] == ["/redirect"]
    assert two_servers.at("127.0.0.2") == []


@pytest.mark.parametrize("spelling", ["2130706433", "017700000001", "0177.0.0.1", "127.1"])
async def test_decimal_and_octal_spellings(server: LoopbackServer, spelling: str) -> None:
    dns = StaticDnsBackend()
    url = f"http://{spelling}:{server.port}/"
    refusal = refused(await attempt(guard_for(dns=dns), url))
    assert f"Refused to connect to 127.0.0.1 ({spelling} is a loopback address)" in str(refusal)

    # Exempted, the guard lets it through, to the address it judged, without DNS.
    assert await attempt(guard_for("127.0.0.0/8", dns=dns), url) == 200
    assert [item.local for item in server.received] == ["127.0.0.1"]
    assert dns.lookups == []


@pytest.mark.parametrize("spelling", ["0x7f000001", "0x7f.1", "0x7f.0.0.0x1"])
async def test_hex_spellings(server: LoopbackServer, spelling: str) -> None:
    dns = StaticDnsBackend()
    url = f"http://{spelling}:{server.port}/"
    refusal = refused(await attempt(guard_for(dns=dns), url))
    assert f"({spelling} is a loopback address)" in str(refusal)
    assert server.received == []

    # exempted, delivered to the address they spell, without DNS
    assert await attempt(guard_for("127.0.0.0/8", dns=dns), url) == 200
    assert [item.local for item in server.received] == ["127.0.0.1"]
    assert dns.lookups == []


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_ipv6_loopback() -> None:
    # The decision needs no network...
    v6 = ipaddress.IPv6Address("::1")
    assert guard_for().refusal_reason(v6) == "a loopback address"
    assert guard_for("127.0.0.0/8").refusal_reason(v6) == "a loopback address"
    assert await guard_for("::1/128").resolve("[::1]", 80) == [v6]
    # ...and a refusal happens before any connection, so this runs everywhere.
    refusal = refused(await attempt(guard_for("127.0.0.0/8"), "http://[::1]:9/"))
    assert "Refused to connect to ::1 (a loopback address)" in str(refusal)

    if not ipv6_loopback_available():
        return
    srv = LoopbackServer()
    await srv.start(["::1"])
    try:
        url = f"http://[::1]:{srv.port}/v6"
        refused(await attempt(guard_for("127.0.0.0/8"), url))
        assert srv.received == []
        assert await attempt(guard_for("::1/128"), url) == 200
        assert srv.received == [Received("::1", "/v6", b"payload")]
    finally:
        await srv.stop()
