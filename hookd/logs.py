"""Logging set-up: structlog rendering for hookd's and uvicorn's stdlib loggers.

``HOOKD_LOG_FORMAT=text`` prints ``key=value`` lines for people, ``json`` one object per
line for machines. Nothing hookd logs carries a secret or an API key.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import sys
import urllib.parse
from collections.abc import Mapping
from typing import Any

import structlog

__all__ = ["MASK", "configure_logging", "get_logger", "masked_settings", "masked_url"]

MASK = "***"
# Settings whose names say they hold a secret (HOOKD_METRICS_TOKEN, an API key, a password):
# logged as MASK whenever they are set.
_SECRET_NAME = re.compile(r"(token|secret|password|passwd|api_key|credential)", re.I)
_SECRET_QUERY = re.compile(r"(password|passwd|secret|token|key)", re.I)

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Route every log record (hookd's, uvicorn's) through one structlog formatter."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.processors.KeyValueRenderer(
            key_order=["timestamp", "level", "event", "logger"]
        )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # aiohttp and asyncpg chatter is not hookd's story.
    logging.getLogger("asyncio").setLevel(max(_LEVELS[level], logging.WARNING))
    logging.getLogger("alembic").setLevel(max(_LEVELS[level], logging.WARNING))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger


def masked_url(url: str) -> str:
    """``url`` with its password (user-info and query parameters like ``password=``) masked."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return MASK
    secret_query = any(
        _SECRET_QUERY.search(name) for name, _v in urllib.parse.parse_qsl(parts.query)
    )
    if password is None and not secret_query:
        return url
    netloc = parts.netloc
    if password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:{MASK}@{host}"
    query = urllib.parse.urlencode(
        [
            (name, MASK if _SECRET_QUERY.search(name) else value)
            for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _plain(value: Any) -> Any:
    """A setting's value as JSON-ready data (networks and tuples as strings and lists)."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def masked_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """Settings (``Settings.model_dump()``) fit for a log line: every secret masked (URLs'
    passwords, tokens, keys), every value plain data."""
    shown: dict[str, Any] = {}
    for name, value in values.items():
        if _SECRET_NAME.search(name):
            shown[name] = MASK if value else value
        elif name.endswith("_url") and isinstance(value, str):
            shown[name] = masked_url(value)
        else:
            shown[name] = _plain(value)
    return shown
