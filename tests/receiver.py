"""A real HTTP receiver on 127.0.0.1 for delivery tests.

Each path can answer with its own status, delay and body; every request is recorded with
its headers and raw body, and the receiver tracks how many requests it handled at once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return orjson.loads(self.body)

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None


@dataclass
class Behaviour:
    status: int = 204
    delay: float = 0.0
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # When set, each request is answered only once this event is set (a receiver that hangs).
    hold: asyncio.Event | None = None


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.behaviours: dict[str, Behaviour] = {}
        self.default = Behaviour()
        self.active = 0
        self.max_active: dict[str, int] = {}
        self.max_active_total = 0  # requests open at once, all paths together
        self._active_by_path: dict[str, int] = {}
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def behave(self, path: str, **kw: Any) -> None:
        self.behaviours[path] = Behaviour(**kw)

    def on(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def __aenter__(self) -> Receiver:
        app = web.Application(client_max_size=1024**2)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A request whose client went away stops at once, as on a real server, so that
        # ``max_active`` counts only requests that a sender still waits on.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        behaviour = self.behaviours.get(path, self.default)
        self._active_by_path[path] = self._active_by_path.get(path, 0) + 1
        self.max_active[path] = max(self.max_active.get(path, 0), self._active_by_path[path])
        self.active += 1
        self.max_active_total = max(self.max_active_total, self.active)
        try:
            body = await request.read()
            self.requests.append(Received(path, dict(request.headers), body, time.monotonic()))
            async with self._arrived:
                self._arrived.notify_all()
            if behaviour.delay:
                await asyncio.sleep(behaviour.delay)
            if behaviour.hold is not None:
                await behaviour.hold.wait()
            return web.Response(
                status=behaviour.status, body=behaviour.body, headers=behaviour.headers
            )
        finally:
            self._active_by_path[path] -= 1
            self.active -= 1

    async def wait_for(
        self, count: int, path: str | None = None, timeout: float = 10.0
    ) -> list[Received]:
        """Wait until ``count`` requests (to ``path``, if given) have arrived."""

        def got() -> list[Received]:
            return self.requests if path is None else self.on(path)

        async with asyncio.timeout(timeout):
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(got()) >= count)
        return got()
