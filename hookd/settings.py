"""Every HOOKD_* setting, typed and validated once at start-up.

An invalid value stops hookd with one line naming the variable (see :func:`load_settings`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from hookd.errors import SettingsError

__all__ = [
    "API_VERSIONS",
    "DEFAULT_API_VERSION",
    "WEBHOOKS_SINCE",
    "Settings",
    "database_location",
    "database_problem",
    "load_settings",
    "parse_dns_server",
    "parse_network",
]

DEFAULT_API_VERSION = "2026-01-01.nova"
API_VERSIONS = ("2026-01-01.nova", "2025-12-12.clover")
# The webhook endpoints exist from this version on (Featurebase's reference).
WEBHOOKS_SINCE = "2026-01-01.nova"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# A CSP host source: scheme://host[:port], the host possibly starting with *.
_FRAME_SOURCE = re.compile(r"https?://(\*\.)?[A-Za-z0-9.-]+(:[0-9]{1,5})?")

_SECRET_FIELDS = ("database_url", "metrics_token")
_BEARER_TOKEN = re.compile(r"(?=.{1,256}\Z)[A-Za-z0-9._~+/-]+=*")


def parse_network(entry: str) -> Network:
    """One ``HOOKD_ALLOWED_NETWORKS`` entry: a CIDR network, or a bare address (``/32``,
    ``/128``). Raises :class:`ValueError` naming the entry. A network with host bits set
    (``10.0.0.1/8``) is refused rather than widened: the operator may have meant the one
    address or the whole network, and guessing wrong exempts far more than was written."""
    try:
        return ipaddress.ip_network(entry, strict=True)
    except ValueError:
        pass
    try:
        widened = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise ValueError(
            f"{entry!r} is not a network in CIDR notation (like 10.0.0.0/8 or fd00::/8)"
        ) from None
    address = entry.partition("/")[0]
    raise ValueError(
        f"{entry!r} is not a network: it has host bits set; write {widened} for the whole "
        f"network or {address}/{widened.max_prefixlen} for the one address"
    )


def parse_dns_server(entry: str) -> str:
    """One ``HOOKD_DNS_SERVERS`` entry, ``address[:port]`` (``[v6]:port`` for IPv6), as
    ``address:port`` with the port made explicit (53 by default). Raises :class:`ValueError`
    naming the entry. Only addresses: a name server given by name would need a resolver."""
    host, port_text = entry, ""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                host = ""
            port_text = rest[1:]
    elif entry.count(":") == 1:
        host, _, port_text = entry.partition(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{entry!r} is not a name server address; use address[:port], e.g. "
            "10.0.0.2, 127.0.0.1:5353 or [fd00::53]:53"
        ) from None
    port = 53
    if port_text or entry.endswith(":"):
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{entry!r} has an invalid port; use a port from 1 to 65535")
        port = int(port_text)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


class Settings(BaseSettings):
    """hookd's configuration, read from the environment (``HOOKD_`` + the field name)."""

    model_config = SettingsConfigDict(env_prefix="HOOKD_", extra="ignore", frozen=True)

    database_url: str = "sqlite:///hookd.db"
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    retry_schedule: Annotated[tuple[float, ...], NoDecode] = (60.0, 3600.0, 21600.0)
    suspend_after: int = Field(10, ge=1, le=1_000_000)
    webhook_limit: int = Field(10, ge=0, le=1_000_000)
    max_in_flight_per_webhook: int = Field(10, ge=1, le=10_000)
    max_in_flight_per_org: int = Field(100, ge=1, le=1_000_000)
    allow_http: bool = False
    allowed_networks: Annotated[tuple[Network, ...], NoDecode] = ()
    dns_servers: Annotated[tuple[str, ...], NoDecode] = ()
    retention_days: int = Field(30, ge=1, le=36_500)
    rate_limit: int = Field(2000, ge=0, le=100_000_000)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    # Prometheus metrics (SPEC §8; hookd/metrics.py).
    metrics: bool = True
    metrics_port: int = Field(9090, ge=0, le=65535)
    metrics_token: str = ""
    metrics_webhook_labels: bool = False
    # Operational knobs beyond SPEC §7, documented in the README's settings table.
    worker_concurrency: int = Field(256, ge=1, le=100_000)
    poll_interval: float = Field(1.0, gt=0, le=3600)
    # None: the engine's default (hookd.server.batch_wait).
    batch_wait_ms: float | None = Field(None, ge=0, le=10_000)
    lease_margin: float = Field(30.0, ge=0.1, le=86_400)
    worker_timeout: float = Field(10.0, ge=1.0, le=3600)
    db_pool_size: int = Field(10, ge=1, le=1000)
    sqlite_synchronous: Literal["normal", "full"] = "normal"
    # The dashboard and customer portal (SPEC §9; hookd.dashboard).
    dashboard: bool = True
    public_url: str | None = None
    portal_frame_ancestors: str = ""

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if value.startswith("sqlite:///"):
            if len(value) == len("sqlite:///"):
                raise ValueError("sqlite:/// needs a file path, e.g. sqlite:///hookd.db")
            return value
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        try:
            port = urllib.parse.urlsplit(value).port
        except ValueError:
            port = -1
        if port is not None and not 0 < port < 65536:
            raise ValueError("has an invalid port; use postgresql://user@host:5432/database")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a host name or address, e.g. 127.0.0.1 or 0.0.0.0")
        return value.strip()

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token(cls, value: str) -> str:
        # What a bearer token may hold (RFC 6750's b64token), so that it fits the header.
        if value and not _BEARER_TOKEN.fullmatch(value):
            raise ValueError(
                "must be 1-256 characters of A-Z a-z 0-9 - . _ ~ + / (then = padding), "
                "e.g. the output of: openssl rand -hex 32"
            )
        return value

    @field_validator("log_level", "log_format", "sqlite_synchronous", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _schedule(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            try:
                delays = tuple(float(p) for p in parts)
            except ValueError:
                raise ValueError(
                    "must be comma-separated delays in seconds, e.g. 60,3600,21600"
                ) from None
            value = delays
        for delay in value:
            if not 0 < float(delay) <= 30 * 86_400:
                raise ValueError("each delay must be more than 0 and at most 30 days (in seconds)")
        return value

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(parse_network(part) for part in _entries(value))
        return value

    @field_validator("dns_servers", mode="before")
    @classmethod
    def _dns_servers(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(parse_dns_server(part) for part in _entries(value))
        return tuple(parse_dns_server(str(part)) for part in value)

    @field_validator("public_url", mode="before")
    @classmethod
    def _public_url(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        url = value.strip().rstrip("/")
        if not url:
            return None
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise ValueError(
                "must be the absolute http(s) URL hookd is reached at, e.g. https://hooks.example.com"
            )
        return url

    @field_validator("portal_frame_ancestors", mode="before")
    @classmethod
    def _frame_ancestors(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        sources = value.replace(",", " ").split()
        for source in sources:
            if source not in ("'self'", "'none'") and not _FRAME_SOURCE.fullmatch(source):
                raise ValueError(
                    f"{source!r} is not a CSP source; give space-separated origins such as "
                    "https://app.example.com or 'self'"
                )
        return " ".join(sources)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite:")

    @property
    def sqlite_path(self) -> str:
        return self.database_url[len("sqlite:///") :]


def database_location(settings: Settings) -> str:
    """Where the database is, for messages: a SQLite file's absolute path, or a PostgreSQL
    URL without its password."""
    if settings.is_sqlite:
        return "sqlite:///" + os.path.abspath(settings.sqlite_path)
    scheme, _, rest = settings.database_url.partition("://")
    credentials, at, place = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user}{at}{place}"


def _entries(text: str) -> list[str]:
    """The non-blank entries of a comma-separated setting."""
    return [part.strip() for part in text.split(",") if part.strip()]


def database_problem(settings: Settings, exc: BaseException) -> str:
    """One line saying why the database cannot be used, without the URL's password."""
    where = settings.database_url.split("@")[-1]
    reason = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
    return f"cannot use the database {where}: {reason}"


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment, with ``overrides`` (CLI flags) on top.

    Raises :class:`SettingsError` whose message is one line naming the variable.
    """
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        message = str(err["msg"]).removeprefix("Value error, ")
        raw = err.get("input")
        # A database URL may hold a password, and a token is a secret: never repeat them.
        shown = (
            f" (got {raw!r})"
            if isinstance(raw, str | int | float) and field not in _SECRET_FIELDS
            else ""
        )
        raise SettingsError(f"HOOKD_{field.upper()}: {message}{shown}") from None
