"""The delivery client's tests run on both asyncio's event loop and uvloop: hookd runs on
uvloop, whose transports differ from asyncio's in details the client relies on (when a
closed transport's ``connection_lost`` arrives, what a write to a closing one does)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
