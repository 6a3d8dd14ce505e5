"""A tiny authoritative DNS server over UDP for tests and benchmarks, on a loopback port.

It answers ``A`` and ``AAAA`` questions for the names it is given, answers ``NXDOMAIN``
for every other name, and never answers the names it is told to black-hole (as a name
server that has gone away would): enough to point ``HOOKD_DNS_SERVERS`` at it and see how
hookd behaves when one tenant's DNS never answers. It counts the questions it gets per
name.

In a process of its own::

    python bench/dns_server.py --port 5353 --answer hooks.test=127.0.0.1 --blackhole dead.test

or in-process, on the running event loop::

    server = await DnsServer.start({"hooks.test": ["127.0.0.1"]}, blackholed={"dead.test"})
    ...
    server.close()
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import signal
import struct
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import cast

__all__ = ["DnsServer", "main"]

_TYPE_A = 1
_TYPE_AAAA = 28
_CLASS_IN = 1
_NXDOMAIN = 3
_FORMERR = 1


def _question(packet: bytes) -> tuple[str, int, int] | None:
    """(lower-case name, qtype, end offset of the question) of a query, or None."""
    if len(packet) < 12 or struct.unpack_from("!H", packet, 4)[0] != 1:
        return None
    labels: list[str] = []
    offset = 12
    while True:
        if offset >= len(packet):
            return None
        length = packet[offset]
        offset += 1
        if length == 0:
            break
        if length > 63 or offset + length > len(packet):
            return None  # compression pointers never appear in a question we need to read
        labels.append(packet[offset : offset + length].decode("ascii", "replace").lower())
        offset += length
    if offset + 4 > len(packet):
        return None
    qtype = struct.unpack_from("!H", packet, offset)[0]
    return ".".join(labels), qtype, offset + 4


class DnsServer(asyncio.DatagramProtocol):
    """See the module docstring. ``records`` maps a name to its addresses (IPv4 and IPv6
    mixed); ``ttl`` is the TTL of every answer."""

    def __init__(
        self,
        records: Mapping[str, Sequence[str]],
        blackholed: Iterable[str] = (),
        ttl: int = 300,
    ) -> None:
        self.records = {name.lower().rstrip("."): list(ips) for name, ips in records.items()}
        self.blackholed = {name.lower().rstrip(".") for name in blackholed}
        self.ttl = ttl
        self.questions: Counter[str] = Counter()
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    @classmethod
    async def start(
        cls,
        records: Mapping[str, Sequence[str]],
        blackholed: Iterable[str] = (),
        *,
        ttl: int = 300,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> DnsServer:
        """Listen on ``host:port`` (a free port by default; see :attr:`address`)."""
        loop = asyncio.get_running_loop()
        server = cls(records, blackholed, ttl)
        await loop.create_datagram_endpoint(lambda: server, local_addr=(host, port))
        return server

    @property
    def address(self) -> str:
        """``host:port``, as ``HOOKD_DNS_SERVERS`` takes it."""
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return f"{host}:{port}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not a subclass of asyncio.DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        assert self.transport is not None
        parsed = _question(data)
        if parsed is None:
            if len(data) >= 2:
                self.transport.sendto(
                    data[:2] + struct.pack("!HHHHH", 0x8000 | _FORMERR, 0, 0, 0, 0), addr
                )
            return
        name, qtype, end = parsed
        self.questions[name] += 1
        if name in self.blackholed:
            return
        answers = self.records.get(name)
        rcode = _NXDOMAIN if answers is None else 0
        records = []
        for text in answers or ():
            ip = ipaddress.ip_address(text)
            rtype = _TYPE_A if ip.version == 4 else _TYPE_AAAA
            if rtype != qtype:
                continue
            records.append(
                struct.pack("!HHHIH", 0xC00C, rtype, _CLASS_IN, self.ttl, len(ip.packed))
                + ip.packed
            )
        # QR, the query's RD bit, RA; one question, the answers, nothing else.
        flags = 0x8080 | (struct.unpack_from("!H", data, 2)[0] & 0x0100) | rcode
        header = data[:2] + struct.pack("!HHHHH", flags, 1, len(records), 0, 0)
        self.transport.sendto(header + data[12:end] + b"".join(records), addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _pairs(values: Sequence[str]) -> dict[str, list[str]]:
    records: dict[str, list[str]] = {}
    for value in values:
        name, _, ips = value.partition("=")
        records.setdefault(name, []).extend(ip for ip in ips.split(",") if ip)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a tiny DNS server on a loopback port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--answer", action="append", default=[], metavar="NAME=IP[,IP]")
    parser.add_argument("--blackhole", action="append", default=[], metavar="NAME")
    parser.add_argument("--ttl", type=int, default=300)
    args = parser.parse_args(argv)
    if not ipaddress.ip_address(args.host).is_loopback:
        parser.error("--host must be a loopback address")

    async def serve() -> None:
        server = await DnsServer.start(
            _pairs(args.answer), args.blackhole, ttl=args.ttl, host=args.host, port=args.port
        )
        # The address on stdout, for the process that started this one.
        print(server.address, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
