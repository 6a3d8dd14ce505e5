"""The SSRF address guard: which addresses a webhook delivery may connect to.

Before connecting, hookd resolves the webhook's host and judges every address
the answer holds. It connects only to addresses it judged allowed, and it
connects to exactly those addresses: the HTTP client is handed IP addresses,
so nothing resolves the name a second time (no DNS-rebinding window).

Refused (unless inside ``HOOKD_ALLOWED_NETWORKS``), with the phrase used in
messages:

IPv4
    ``0.0.0.0/32`` an unspecified address; rest of ``0.0.0.0/8`` a reserved
    (this-network) address; ``127.0.0.0/8`` a loopback address;
    ``10.0.0.0/8``, ``172.16.0.0/12``, ``192.168.0.0/16`` a private address;
    ``100.64.0.0/10`` a shared (CGNAT) address; ``169.254.169.254`` the cloud
    metadata address; rest of ``169.254.0.0/16`` a link-local address;
    ``192.0.0.0/24`` a reserved (IETF protocol assignment) address;
    ``192.0.2.0/24``, ``198.51.100.0/24``, ``203.0.113.0/24`` a documentation
    address; ``198.18.0.0/15`` a benchmarking address; ``192.88.99.0/24`` a
    reserved (6to4 relay anycast) address; ``224.0.0.0/4`` a multicast
    address; ``255.255.255.255`` a broadcast address; rest of
    ``240.0.0.0/4`` a reserved address.

IPv6
    ``::`` an unspecified address; ``::1`` a loopback address;
    ``fd00:ec2::254`` the cloud metadata address (AWS); ``2001::/32`` a
    Teredo address; ``64:ff9b:1::/48`` a local-use NAT64 address;
    ``2001:2::/48`` a benchmarking address; ``2001:db8::/32`` and
    ``3fff::/20`` a documentation address; rest of ``2001::/23`` a reserved
    (IETF protocol assignment) address; ``100::/64`` a discard-only address;
    ``5f00::/16`` a reserved (SRv6) address; ``fc00::/7`` a private (unique
    local) address; ``fe80::/10`` a link-local address; ``fec0::/10`` a
    site-local address; ``ff00::/8`` a multicast address; anything else
    outside global unicast ``2000::/3`` a reserved address.

IPv6 addresses that carry an IPv4 address are judged by that IPv4 address,
and the phrase says how it was carried ("an IPv4-mapped loopback address"):

- IPv4-mapped ``::ffff:a.b.c.d``: a dual-stack socket sends these as plain
  IPv4, so they *are* the IPv4 destination. They are judged exactly like
  ``a.b.c.d``, exemptions included: allowing ``127.0.0.0/8`` also allows
  ``::ffff:127.0.0.1``.
- IPv4-compatible ``::a.b.c.d`` (other than ``::`` and ``::1``), NAT64
  ``64:ff9b::/96`` and 6to4 ``2002::/16``: refused when the embedded IPv4
  address would be; accepted when it is public. These travel as IPv6 through
  some translator, so they are not the same destination as the IPv4 address
  and IPv4 exemptions do not cover them: allow them with an IPv6 network
  (e.g. ``2002:a00::/24`` for 6to4 to ``10.0.0.0/8``).
- Teredo ``2001::/32`` is refused outright rather than judged: its client
  address is obfuscated and the traffic goes through third-party relays, and
  no real webhook receiver needs it.

Finally, as a safety net for ranges the tables above miss, anything that
Python's :mod:`ipaddress` does not consider globally reachable is refused as
"a reserved address".

Exemptions: an address inside any network of ``HOOKD_ALLOWED_NETWORKS`` is
accepted whatever its class (``0.0.0.0/0`` would allow every IPv4 address,
the metadata address included), plus the IPv4-mapped rule above.

IP literals are parsed the way the C library does (``inet_aton``: 1 to 4
parts, each decimal, octal with a leading ``0`` or hex with ``0x``), so
``http://2130706433/``, ``http://0177.0.0.1/`` and ``http://0x7f.1/`` are all
judged as ``127.0.0.1``, without asking DNS, and delivered to when allowed.
A host that looks numeric but is not a valid address (``1.2.3.4.5``,
``127.0.0.1.``) is refused: a socket library would hand it to the system's
resolver, outside the guard.

hookd's HTTP client (:mod:`hookd.delivery.transport`) resolves every new
connection's host through :meth:`AddressGuard.resolve` and connects to the
addresses it returned, in order; it uses no proxy.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, TypeAlias

from hookd.delivery.resolver import LookupFailed, Resolver
from hookd.errors import AddressRefused
from hookd.settings import parse_network

__all__ = [
    "AddressGuard",
    "DnsBackend",
    "IPAddress",
    "IPNetwork",
    "StaticDnsBackend",
    "literal_address",
    "parse_networks",
    "refusal_from",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# First match wins, so a specific entry must come before the block holding it.
_IPV4_TABLE: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_V4("0.0.0.0/32"), "an unspecified address"),
    (_V4("0.0.0.0/8"), "a reserved (this-network) address"),
    (_V4("127.0.0.0/8"), "a loopback address"),
    (_V4("10.0.0.0/8"), "a private address"),
    (_V4("172.16.0.0/12"), "a private address"),
    (_V4("192.168.0.0/16"), "a private address"),
    (_V4("100.64.0.0/10"), "a shared (CGNAT) address"),
    (_V4("169.254.169.254/32"), "the cloud metadata address"),
    (_V4("169.254.0.0/16"), "a link-local address"),
    (_V4("192.0.0.0/24"), "a reserved (IETF protocol assignment) address"),
    (_V4("192.0.2.0/24"), "a documentation address"),
    (_V4("198.51.100.0/24"), "a documentation address"),
    (_V4("203.0.113.0/24"), "a documentation address"),
    (_V4("198.18.0.0/15"), "a benchmarking address"),
    (_V4("192.88.99.0/24"), "a reserved (6to4 relay anycast) address"),
    (_V4("224.0.0.0/4"), "a multicast address"),
    (_V4("255.255.255.255/32"), "a broadcast address"),
    (_V4("240.0.0.0/4"), "a reserved address"),
)

_IPV6_TABLE: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_V6("::/128"), "an unspecified address"),
    (_V6("::1/128"), "a loopback address"),
    (_V6("fd00:ec2::254/128"), "the cloud metadata address"),
    (_V6("2001::/32"), "a Teredo address"),
    (_V6("64:ff9b:1::/48"), "a local-use NAT64 address"),
    (_V6("2001:2::/48"), "a benchmarking address"),
    (_V6("2001:db8::/32"), "a documentation address"),
    (_V6("3fff::/20"), "a documentation address"),
    (_V6("2001::/23"), "a reserved (IETF protocol assignment) address"),
    (_V6("100::/64"), "a discard-only address"),
    (_V6("5f00::/16"), "a reserved (SRv6) address"),
    (_V6("fc00::/7"), "a private (unique local) address"),
    (_V6("fe80::/10"), "a link-local address"),
    (_V6("fec0::/10"), "a site-local address"),
    (_V6("ff00::/8"), "a multicast address"),
)

_IPV4_COMPATIBLE = _V6("::/96")
_NAT64 = _V6("64:ff9b::/96")
_GLOBAL_UNICAST = _V6("2000::/3")

_DEC = frozenset("0123456789")
_OCT = frozenset("01234567")
_HEX = frozenset("0123456789abcdefABCDEF")


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """Parse ``text`` as glibc's ``inet_aton`` does (without its trailing-garbage leniency)."""
    parts = text.split(".")
    if len(parts) > 4:
        return None
    values: list[int] = []
    for part in parts:
        if part[:2] in ("0x", "0X"):
            digits, base, charset = part[2:], 16, _HEX
        elif len(part) > 1 and part[0] == "0":
            digits, base, charset = part[1:], 8, _OCT
        else:
            digits, base, charset = part, 10, _DEC
        # Explicit character sets, because int() would also take "_", signs,
        # whitespace and non-ASCII digits, which the C library rejects.
        if not digits or not set(digits) <= charset:
            return None
        values.append(int(digits, base))
    *head, last = values
    # The last part fills all the bytes the earlier parts did not: "127.1" is 127.0.0.1.
    if any(value > 0xFF for value in head) or last >= 1 << (8 * (5 - len(values))):
        return None
    packed = 0
    for value in head:
        packed = packed << 8 | value
    return ipaddress.IPv4Address(packed << (8 * (4 - len(head))) | last)


def literal_address(host: str) -> IPAddress | None:
    """The address ``host`` spells, if it is an IP literal; ``None`` for a host name.

    Accepts what the system resolver treats as numeric: dotted quads and the
    other ``inet_aton`` forms (``2130706433``, ``0177.0.0.1``, ``0x7f.1``,
    ``127.1``), and IPv6 with or without brackets, with or without a zone id
    (``[::1]``, ``fe80::1%eth0``). The zone id is kept but plays no part in
    the guard's decision.
    """
    text = host
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        if ":" not in text:
            return None
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            return None
    return _inet_aton(text)


def _looks_numeric(host: str) -> bool:
    # Digits and dots, or a colon: meant as an address, never a name for DNS, so it
    # must parse as one or be refused (a socket library would pass it on unresolved).
    return ":" in host or host.replace(".", "").isdigit()


def parse_networks(text: str) -> list[IPNetwork]:
    """Parse ``HOOKD_ALLOWED_NETWORKS``: comma-separated CIDRs, e.g. ``"127.0.0.0/8, ::1/128"``.

    A bare address means just that address (``/32`` or ``/128``). Blank
    entries are ignored, so ``""`` gives ``[]``. Raises :class:`ValueError`
    naming the bad entry; a network with host bits set (``10.1.2.3/8``) is an
    error rather than silently widened, since it is ambiguous.
    """
    networks: list[IPNetwork] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(parse_network(entry))
        except ValueError as exc:
            raise ValueError(f"HOOKD_ALLOWED_NETWORKS: {exc}") from None
    return networks


def _carried(adjective: str, inner: str) -> str:
    """``("IPv4-mapped", "a loopback address")`` -> ``"an IPv4-mapped loopback address"``."""
    article, _, rest = inner.partition(" ")
    if article != "the":
        article = "an" if adjective.startswith("IPv4") else "a"
    return f"{article} {adjective} {rest}"


def _ipv4_reason(ip: ipaddress.IPv4Address) -> str | None:
    for network, phrase in _IPV4_TABLE:
        if ip in network:
            return phrase
    if not ip.is_global:
        return "a reserved address"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address a translation mechanism would carry ``ip`` to, and the mechanism."""
    if ip in _IPV4_COMPATIBLE:
        return "IPv4-compatible", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    return None


class DnsBackend(Protocol):
    """Where the guard gets DNS answers from: :class:`hookd.delivery.resolver.Resolver`,
    or :class:`StaticDnsBackend` in tests. A backend with an async ``close()`` is closed
    with the guard."""

    async def lookup(self, host: str, port: int) -> list[str]:
        """The IP addresses ``host`` resolves to, as strings.

        Raises :class:`socket.gaierror` when the name does not resolve.
        """
        ...


class StaticDnsBackend:
    """DNS answers from a dict, for tests and for pinning names; records every lookup.

    ``StaticDnsBackend({"hooks.example.test": ["127.0.0.1"]})``. A name not in
    the dict fails like an unknown name does (:class:`socket.gaierror`).
    Assign to :attr:`records` to change the answers between lookups.
    """

    def __init__(self, records: Mapping[str, Sequence[str]] | None = None) -> None:
        self.records: dict[str, list[str]] = {
            name: list(answers) for name, answers in (records or {}).items()
        }
        self.lookups: list[tuple[str, int]] = []

    async def lookup(self, host: str, port: int) -> list[str]:
        """The recorded answers for ``host``; raises :class:`socket.gaierror` if there are none."""
        self.lookups.append((host, port))
        try:
            return list(self.records[host])
        except KeyError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None


_VERDICTS_KEPT = 4096


class AddressGuard:
    """Decides which addresses hookd may deliver to, and resolves hosts to those only.

    See the module docstring for the policy. ``allowed_networks`` usually comes
    from :func:`parse_networks` applied to ``HOOKD_ALLOWED_NETWORKS``.
    """

    def __init__(
        self, allowed_networks: Sequence[IPNetwork] = (), dns: DnsBackend | None = None
    ) -> None:
        self.allowed_networks: tuple[IPNetwork, ...] = tuple(allowed_networks)
        self.dns: DnsBackend = dns if dns is not None else Resolver()
        # check_literal runs before every request (keep-alive ones included); a host's
        # verdict never changes for this guard, so it is worked out once.
        self._verdicts: dict[str, IPAddress | AddressRefused | None] = {}

    async def close(self) -> None:
        """Close the DNS backend, if it has anything to release."""
        close = getattr(self.dns, "close", None)
        if close is not None:
            await close()

    def _exempt(self, ip: IPAddress) -> bool:
        return any(ip in network for network in self.allowed_networks)

    def refusal_reason(self, ip: IPAddress) -> str | None:
        """``None`` if hookd may connect to ``ip``, else why not ("a loopback address")."""
        if self._exempt(ip):
            return None
        if isinstance(ip, ipaddress.IPv4Address):
            return _ipv4_reason(ip)
        mapped = ip.ipv4_mapped
        if mapped is not None:
            inner = self.refusal_reason(mapped)
            return None if inner is None else _carried("IPv4-mapped", inner)
        for network, phrase in _IPV6_TABLE:
            if ip in network:
                return phrase
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            mechanism, v4 = embedded
            # Deliberately without IPv4 exemptions: see the module docstring.
            inner = _ipv4_reason(v4)
            return None if inner is None else _carried(mechanism, inner)
        if ip not in _GLOBAL_UNICAST or not ip.is_global:
            return "a reserved address"
        return None

    def check_literal(self, host: str) -> IPAddress | None:
        """Judge ``host`` if it is an IP literal: its address when allowed, ``None`` for a name.

        Raises :class:`AddressRefused` for a refused literal, and for a host
        that looks numeric but is no valid address (the socket layer would
        resolve such a host itself, outside the guard).
        """
        if host in self._verdicts:
            verdict = self._verdicts[host]
        else:
            try:
                verdict = self._judge_literal(host)
            except AddressRefused as exc:
                verdict = exc
            if len(self._verdicts) >= _VERDICTS_KEPT:
                self._verdicts.clear()
            self._verdicts[host] = verdict
        if isinstance(verdict, AddressRefused):
            raise AddressRefused(str(verdict))
        return verdict

    def _judge_literal(self, host: str) -> IPAddress | None:
        ip = literal_address(host)
        if ip is None:
            if _looks_numeric(host):
                raise AddressRefused(
                    f"Refused to connect to {host}: it looks like an IP address but is not a valid one."
                )
            return None
        reason = self.refusal_reason(ip)
        if reason is not None:
            raise AddressRefused(_refusal_message(host, [(ip, reason)], literal=True))
        return ip

    async def resolve(
        self, host: str, port: int, *, family: int = socket.AF_UNSPEC
    ) -> list[IPAddress]:
        """The addresses of ``host`` that hookd may connect to, in the resolver's order.

        IP literals are judged without asking DNS. Answers that are refused are
        dropped; if nothing is left, raises :class:`AddressRefused` naming the
        first refused address. A name that does not resolve raises
        :class:`socket.gaierror` ("Could not resolve host ..."), never
        :class:`AddressRefused`. ``family`` (``AF_INET``/``AF_INET6``) keeps
        only answers of that family.
        """
        literal = literal_address(host)
        if literal is not None:
            candidates = [literal]
        else:
            try:
                answers = await self.dns.lookup(host, port)
            except LookupFailed:
                raise  # already says what happened, for lastStatus.message
            except socket.gaierror as exc:
                raise socket.gaierror(
                    exc.errno, f"Could not resolve host {host}: {exc.strerror}"
                ) from exc
            candidates = _unique(_parse_answer(host, answer) for answer in answers)
        if family != socket.AF_UNSPEC:
            version = 4 if family == socket.AF_INET else 6
            candidates = [ip for ip in candidates if ip.version == version]
        if not candidates:
            raise socket.gaierror(
                socket.EAI_NONAME, f"Could not resolve host {host}: no usable address"
            )
        allowed: list[IPAddress] = []
        refused: list[tuple[IPAddress, str]] = []
        for ip in candidates:
            reason = self.refusal_reason(ip)
            if reason is None:
                allowed.append(ip)
            else:
                refused.append((ip, reason))
        if not allowed:
            raise AddressRefused(_refusal_message(host, refused, literal=literal is not None))
        return allowed


def _parse_answer(host: str, answer: str) -> IPAddress:
    ip = literal_address(answer)
    if ip is None:
        raise ValueError(f"DNS backend answered {answer!r} for {host}, which is not an IP address")
    return ip


def _unique(addresses: Iterable[IPAddress]) -> list[IPAddress]:
    return list(dict.fromkeys(addresses))


def _refusal_message(host: str, refused: list[tuple[IPAddress, str]], *, literal: bool) -> str:
    ip, reason = refused[0]
    if not literal:
        why = f"{host} resolves to {reason}"
        others = len(refused) - 1
        if others:
            why += f", and to {others} other refused address{'es' if others > 1 else ''}"
    elif host.strip("[]").lower() == str(ip):
        why = reason
    else:
        # Say how it was spelled, so "2130706433" is recognisable as 127.0.0.1.
        why = f"{host} is {reason}"
    # Name the setting (and the value) that would allow it; a loopback receiver is almost
    # always a developer's own machine, where serve --dev is the shorter way.
    dev = " (a receiver on this machine: hookd serve --dev)" if ip.is_loopback else ""
    return (
        f"Refused to connect to {ip} ({why}); to allow it, add {ip}/{ip.max_prefixlen} or its "
        f"network to HOOKD_ALLOWED_NETWORKS{dev}."
    )


def refusal_from(exc: BaseException) -> AddressRefused | None:
    """The :class:`AddressRefused` behind ``exc`` (raised by an attempt), if any.

    Looks at ``exc`` itself, then what it wraps: ``__cause__``, an unsuppressed
    ``__context__`` and exception-group members.
    """
    queue: deque[BaseException] = deque([exc])
    seen: set[int] = set()
    while queue:
        current = queue.popleft()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, AddressRefused):
            return current
        if isinstance(current, BaseExceptionGroup):
            queue.extend(current.exceptions)
        if current.__cause__ is not None:
            queue.append(current.__cause__)
        if current.__context__ is not None and not current.__suppress_context__:
            queue.append(current.__context__)
    return None
