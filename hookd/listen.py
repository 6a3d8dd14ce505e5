"""``hookd listen``: a hookd server's events, forwarded to a URL on this machine (SPEC §10).

One outgoing HTTP connection reads ``GET /v2/events/stream`` (Server-Sent Events), so it
works from a laptop behind NAT. Each event is POSTed to the ``--forward-to`` URL as a webhook
delivery request of SPEC §5 (the envelope with ``webhookId: null``, every header, both
signature schemes) signed with a secret printed at start; one line per event says what the
local receiver answered. When the stream ends (the server restarts, the network drops, the
server drops a listener that fell behind) it reconnects with ``Last-Event-ID`` and gets what
it missed. It creates no webhook and no delivery.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from hookd.clock import Clock, iso_ms, system_clock
from hookd.delivery.envelope import USER_AGENT, request_headers
from hookd.ids import SECRET_PREFIX

__all__ = ["Forwarder", "ListenError", "SseMessage", "SseParser", "listen_secret", "run"]

# A message bigger than this is not hookd's (events are at most 256 KiB of JSON).
MAX_MESSAGE = 4 * 1024 * 1024
# hookd sends a heartbeat every 15 s: a silence this long means the connection is dead.
READ_TIMEOUT = 45.0
FORWARD_TIMEOUT = 30.0
BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)


def listen_secret(api_key: str) -> str:
    """The signing secret of ``hookd listen`` for an API key: the same on every run with that
    key (a receiver's configuration survives restarts), and telling nothing about the key."""
    digest = hmac.new(api_key.encode(), b"hookd listen signing secret", hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(digest).decode("ascii")


@dataclass
class SseMessage:
    """One Server-Sent Events message (``event`` is ``message`` when the server named none)."""

    event: str = "message"
    data: bytes = b""
    id: str | None = None


@dataclass
class SseParser:
    """Incremental parser of a ``text/event-stream`` (any of CRLF, LF or CR ending lines)."""

    _buffer: bytes = b""
    _current: SseMessage = field(default_factory=SseMessage)
    _data: list[bytes] = field(default_factory=list)
    _size: int = 0

    def feed(self, chunk: bytes) -> list[SseMessage]:
        """The messages completed by ``chunk``.

        Raises:
            ValueError: a message grows past :data:`MAX_MESSAGE`.
        """
        self._buffer += chunk
        lines = self._buffer.splitlines(keepends=True)
        self._buffer = b""
        # The last line may be unfinished, or a CR whose LF is still on its way.
        if lines and (not lines[-1].endswith((b"\n", b"\r")) or lines[-1].endswith(b"\r")):
            self._buffer = lines.pop()
        if len(self._buffer) > MAX_MESSAGE:
            raise ValueError("an event-stream line is too long")
        done = []
        for raw in lines:
            line = raw.rstrip(b"\r\n")
            if not line:
                if self._data or self._current.event != "message":
                    self._current.data = b"\n".join(self._data)
                    done.append(self._current)
                self._current, self._data, self._size = SseMessage(), [], 0
                continue
            if line.startswith(b":"):
                continue  # a comment: hookd's heartbeat
            name, _, value = line.partition(b":")
            value = value.removeprefix(b" ")
            if name == b"data":
                self._size += len(value)
                if self._size > MAX_MESSAGE:
                    raise ValueError("an event-stream message is too long")
                self._data.append(value)
            elif name == b"event":
                self._current.event = value.decode("utf-8", "replace")
            elif name == b"id" and b"\0" not in value:
                self._current.id = value.decode("utf-8", "replace")
        return done


class ListenError(Exception):
    """The server refused the stream for a reason that reconnecting does not fix."""


Print = Callable[[str], None]


class Forwarder:
    """Reads the stream, forwards each event, reconnects; :meth:`run` until cancelled."""

    def __init__(
        self,
        server: str,
        api_key: str,
        forward_to: str,
        topics: list[str] | None = None,
        *,
        out: Print = print,
        clock: Clock = system_clock,
    ) -> None:
        self.server = server.rstrip("/")
        self.api_key = api_key
        self.forward_to = forward_to
        self.topics = topics
        self.secret = listen_secret(api_key)
        self.out = out
        self.clock = clock
        self.last_event_id: str | None = None
        self._connected_once = False

    async def run(self) -> None:
        """Stream and forward until cancelled; raises :class:`ListenError` if the server
        refuses the stream for good (a bad key or bad topics)."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=READ_TIMEOUT)
        async with (
            aiohttp.ClientSession(timeout=timeout) as stream_session,
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT),
                skip_auto_headers=("Accept", "Accept-Encoding"),
                auto_decompress=False,
            ) as forward_session,
        ):
            failures = 0
            while True:
                wait = BACKOFF[min(failures, len(BACKOFF) - 1)]
                try:
                    if await self._stream(stream_session, forward_session):
                        failures = 0
                        wait = BACKOFF[0]
                    else:
                        failures += 1
                except _RetryAfter as later:
                    wait = later.seconds
                    failures += 1
                except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
                    self.out(f"hookd listen: connection to {self.server} lost ({_reason(exc)})")
                    failures += 1
                self.out(f"hookd listen: reconnecting in {wait:g} s")
                await asyncio.sleep(wait)

    async def _stream(
        self, session: aiohttp.ClientSession, forward: aiohttp.ClientSession
    ) -> bool:
        """One connection's stream; True if it got as far as ``ready``."""
        headers = {
            "Authorization": f"Bearer {self.api_key}",
            "Accept": "text/event-stream",
            "User-Agent": USER_AGENT,
        }
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        params = {"topics": ",".join(self.topics)} if self.topics else {}
        url = f"{self.server}/v2/events/stream"
        async with session.get(url, headers=headers, params=params) as response:
            if response.status != 200:
                await self._refused(response)
                return False
            parser = SseParser()
            ready = False
            async for chunk in response.content.iter_any():
                for message in parser.feed(chunk):
                    if message.event == "ready":
                        ready = True
                        # Resume from the moment of subscribing, if no event came yet.
                        self.last_event_id = self.last_event_id or message.id
                        self._ready(orjson.loads(message.data))
                    elif message.event == "error":
                        error = orjson.loads(message.data)
                        self.out(f"hookd listen: the server ended the stream: {error['message']}")
                        return ready
                    elif message.event == "message" and message.id:
                        await self._forward(forward, message.id, message.data)
            self.out("hookd listen: the server closed the stream")
            return ready

    def _ready(self, info: dict[str, Any]) -> None:
        if self._connected_once:
            self.out("hookd listen: reconnected; sending what was published meanwhile")
            return
        self._connected_once = True
        topics = ", ".join(info.get("topics") or []) or "every topic"
        self.out(
            f"hookd listen: ready: forwarding events of organization {info['organizationId']} "
            f"({topics}) to {self.forward_to} (Ctrl-C to stop)"
        )

    async def _refused(self, response: aiohttp.ClientResponse) -> None:
        try:
            error = (await response.json(content_type=None))["error"]
            message = f"{error['message']} ({error['code']})"
        except Exception:
            message = f"HTTP {response.status}"
        if response.status == 429:
            retry = response.headers.get("Retry-After", "")
            self.out(f"hookd listen: {message}")
            raise _RetryAfter(float(retry) if retry.isdigit() else BACKOFF[-1])
        if response.status in (400, 401, 403, 404):
            raise ListenError(f"{self.server} refused the stream: {message}")
        self.out(f"hookd listen: {self.server} answered {response.status}: {message}")

    async def _forward(self, session: aiohttp.ClientSession, event_id: str, body: bytes) -> None:
        envelope = orjson.loads(body)
        topic = envelope.get("topic", "?")
        now = self.clock()
        headers = request_headers([self.secret], event_id, topic, 1, body, now // 1000)
        started = time.perf_counter()
        try:
            async with session.post(
                self.forward_to, data=body, headers=headers, allow_redirects=False
            ) as answer:
                await answer.read()
                outcome = str(answer.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            outcome = f"failed: {_reason(exc)}"
        elapsed = round((time.perf_counter() - started) * 1000)
        self.last_event_id = event_id
        self.out(f"{iso_ms(now)}  {topic:<32} {event_id}  -> {outcome} ({elapsed} ms)")


class _RetryAfter(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"could not connect to {exc.host}:{exc.port}: {exc.strerror or exc.os_error}"
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def run(forwarder: Forwarder) -> int:
    """Run ``forwarder`` until Ctrl-C or SIGTERM (exit 0) or a refusal (exit 1)."""

    async def main() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await forwarder.run()
        except ListenError as exc:
            forwarder.out(f"hookd listen: {exc}")
            return 1
        except asyncio.CancelledError:
            forwarder.out("hookd listen: stopped")
            return 0
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
        return 0

    return asyncio.run(main())
