"""hookd.settings.load_settings: every HOOKD_* variable of SPEC §7 (defaults, valid values,
invalid values), plus the operational knobs hookd adds."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from hookd.errors import SettingsError
from hookd.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No HOOKD_* variable from the developer's shell; run where no .env file could be."""
    for name in list(os.environ):
        if name.upper().startswith("HOOKD_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def load_with(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def settings_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    return str(caught.value)


SPEC_DEFAULTS: dict[str, Any] = {
    "database_url": "sqlite:///hookd.db",
    "host": "127.0.0.1",
    "port": 8080,
    "retry_schedule": (60.0, 3600.0, 21600.0),
    "suspend_after": 10,
    "webhook_limit": 10,
    "max_in_flight_per_webhook": 10,
    "max_in_flight_per_org": 100,
    "allow_http": False,
    "allowed_networks": (),
    "retention_days": 30,
    "rate_limit": 2000,
    "log_level": "info",
    "log_format": "text",
}


@pytest.mark.parametrize(("field", "expected"), SPEC_DEFAULTS.items(), ids=list(SPEC_DEFAULTS))
def test_spec_defaults(field: str, expected: Any) -> None:
    assert getattr(load_settings(), field) == expected


def test_operational_defaults() -> None:
    settings = load_settings()
    assert settings.worker_concurrency == 256
    assert settings.poll_interval == 1.0
    assert settings.batch_wait_ms is None  # the engine's default: hookd.server.batch_wait
    assert settings.lease_margin == 30.0
    assert settings.worker_timeout == 10.0
    assert settings.db_pool_size == 10
    assert settings.sqlite_synchronous == "normal"
    assert settings.is_sqlite
    assert settings.sqlite_path == "hookd.db"


V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network

VALID: list[tuple[str, str, str, Any]] = [
    ("HOOKD_DASHBOARD", "false", "dashboard", False),
    ("HOOKD_DASHBOARD", "true", "dashboard", True),
    ("HOOKD_PUBLIC_URL", "https://hooks.example.com/", "public_url", "https://hooks.example.com"),
    ("HOOKD_PUBLIC_URL", "", "public_url", None),
    (
        "HOOKD_PORTAL_FRAME_ANCESTORS",
        "https://app.example.com 'self'",
        "portal_frame_ancestors",
        "https://app.example.com 'self'",
    ),
    ("HOOKD_DATABASE_URL", "sqlite:///data/hookd.db", "database_url", "sqlite:///data/hookd.db"),
    ("HOOKD_DATABASE_URL", "sqlite:////var/lib/h.db", "database_url", "sqlite:////var/lib/h.db"),
    (
        "HOOKD_DATABASE_URL",
        "postgresql://hookd@db.internal:5432/hookd",
        "database_url",
        "postgresql://hookd@db.internal:5432/hookd",
    ),
    ("HOOKD_DATABASE_URL", "postgres://u@h/db", "database_url", "postgres://u@h/db"),
    ("HOOKD_HOST", "0.0.0.0", "host", "0.0.0.0"),
    ("HOOKD_HOST", "::1", "host", "::1"),
    ("HOOKD_HOST", "localhost", "host", "localhost"),
    ("HOOKD_PORT", "1", "port", 1),
    ("HOOKD_PORT", "9000", "port", 9000),
    ("HOOKD_PORT", "65535", "port", 65535),
    ("HOOKD_RETRY_SCHEDULE", "1,2,3", "retry_schedule", (1.0, 2.0, 3.0)),
    ("HOOKD_RETRY_SCHEDULE", " 60 , 3600 ", "retry_schedule", (60.0, 3600.0)),
    ("HOOKD_RETRY_SCHEDULE", "0.5", "retry_schedule", (0.5,)),
    ("HOOKD_RETRY_SCHEDULE", "2592000", "retry_schedule", (2592000.0,)),  # 30 days
    ("HOOKD_RETRY_SCHEDULE", "", "retry_schedule", ()),  # no retries (README)
    ("HOOKD_SUSPEND_AFTER", "1", "suspend_after", 1),
    ("HOOKD_SUSPEND_AFTER", "25", "suspend_after", 25),
    ("HOOKD_WEBHOOK_LIMIT", "1", "webhook_limit", 1),
    ("HOOKD_WEBHOOK_LIMIT", "500", "webhook_limit", 500),
    ("HOOKD_MAX_IN_FLIGHT_PER_WEBHOOK", "1", "max_in_flight_per_webhook", 1),
    ("HOOKD_MAX_IN_FLIGHT_PER_WEBHOOK", "50", "max_in_flight_per_webhook", 50),
    ("HOOKD_ALLOW_HTTP", "true", "allow_http", True),
    ("HOOKD_ALLOW_HTTP", "TRUE", "allow_http", True),
    ("HOOKD_ALLOW_HTTP", "1", "allow_http", True),
    ("HOOKD_ALLOW_HTTP", "yes", "allow_http", True),
    ("HOOKD_ALLOW_HTTP", "false", "allow_http", False),
    ("HOOKD_ALLOW_HTTP", "0", "allow_http", False),
    ("HOOKD_ALLOW_HTTP", "no", "allow_http", False),
    ("HOOKD_ALLOWED_NETWORKS", "", "allowed_networks", ()),
    ("HOOKD_ALLOWED_NETWORKS", "10.0.0.0/8", "allowed_networks", (V4("10.0.0.0/8"),)),
    (
        "HOOKD_ALLOWED_NETWORKS",
        "10.0.0.0/8, 192.168.1.0/24,fd00::/8",
        "allowed_networks",
        (V4("10.0.0.0/8"), V4("192.168.1.0/24"), V6("fd00::/8")),
    ),
    ("HOOKD_ALLOWED_NETWORKS", "127.0.0.1", "allowed_networks", (V4("127.0.0.1/32"),)),
    ("HOOKD_ALLOWED_NETWORKS", "::1/128", "allowed_networks", (V6("::1/128"),)),
    ("HOOKD_DNS_SERVERS", "", "dns_servers", ()),
    ("HOOKD_DNS_SERVERS", "10.0.0.2", "dns_servers", ("10.0.0.2:53",)),
    (
        "HOOKD_DNS_SERVERS",
        "127.0.0.1:5353, [fd00::53]:5300,::1",
        "dns_servers",
        ("127.0.0.1:5353", "[fd00::53]:5300", "[::1]:53"),
    ),
    ("HOOKD_RETENTION_DAYS", "1", "retention_days", 1),
    ("HOOKD_RETENTION_DAYS", "365", "retention_days", 365),
    ("HOOKD_RATE_LIMIT", "0", "rate_limit", 0),
    ("HOOKD_RATE_LIMIT", "1", "rate_limit", 1),
    ("HOOKD_RATE_LIMIT", "100000", "rate_limit", 100000),
    ("HOOKD_LOG_LEVEL", "debug", "log_level", "debug"),
    ("HOOKD_LOG_LEVEL", "warning", "log_level", "warning"),
    ("HOOKD_LOG_LEVEL", "error", "log_level", "error"),
    ("HOOKD_LOG_LEVEL", "WARNING", "log_level", "warning"),
    ("HOOKD_LOG_FORMAT", "json", "log_format", "json"),
    ("HOOKD_LOG_FORMAT", "JSON", "log_format", "json"),
    ("HOOKD_LOG_FORMAT", "text", "log_format", "text"),
    ("HOOKD_WORKER_CONCURRENCY", "8", "worker_concurrency", 8),
    ("HOOKD_POLL_INTERVAL", "0.25", "poll_interval", 0.25),
    ("HOOKD_BATCH_WAIT_MS", "0", "batch_wait_ms", 0.0),
    ("HOOKD_BATCH_WAIT_MS", "2.5", "batch_wait_ms", 2.5),
    ("HOOKD_LEASE_MARGIN", "5", "lease_margin", 5.0),
    ("HOOKD_MAX_IN_FLIGHT_PER_ORG", "1", "max_in_flight_per_org", 1),
    ("HOOKD_MAX_IN_FLIGHT_PER_ORG", "5000", "max_in_flight_per_org", 5000),
    ("HOOKD_WORKER_TIMEOUT", "2.5", "worker_timeout", 2.5),
    ("HOOKD_WORKER_TIMEOUT", "60", "worker_timeout", 60.0),
    ("HOOKD_METRICS", "false", "metrics", False),
    ("HOOKD_METRICS", "true", "metrics", True),
    ("HOOKD_METRICS_PORT", "0", "metrics_port", 0),
    ("HOOKD_METRICS_PORT", "9100", "metrics_port", 9100),
    ("HOOKD_METRICS_TOKEN", "", "metrics_token", ""),
    (
        "HOOKD_METRICS_TOKEN",
        "a1B2-c3.d4_e5~f6+g7/h8==",
        "metrics_token",
        "a1B2-c3.d4_e5~f6+g7/h8==",
    ),
    ("HOOKD_METRICS_WEBHOOK_LABELS", "true", "metrics_webhook_labels", True),
    ("HOOKD_METRICS_WEBHOOK_LABELS", "0", "metrics_webhook_labels", False),
    ("HOOKD_DB_POOL_SIZE", "3", "db_pool_size", 3),
    ("HOOKD_SQLITE_SYNCHRONOUS", "full", "sqlite_synchronous", "full"),
    ("HOOKD_SQLITE_SYNCHRONOUS", "NORMAL", "sqlite_synchronous", "normal"),
]


@pytest.mark.parametrize(
    ("variable", "raw", "field", "expected"),
    VALID,
    ids=[f"{v}={r!r}" for v, r, _, _ in VALID],
)
def test_valid_values(
    clean_env: pytest.MonkeyPatch, variable: str, raw: str, field: str, expected: Any
) -> None:
    settings = load_with(clean_env, **{variable: raw})
    assert getattr(settings, field) == expected


INVALID: list[tuple[str, str]] = [
    ("HOOKD_DASHBOARD", "maybe"),
    ("HOOKD_PUBLIC_URL", "hooks.example.com"),
    ("HOOKD_PORTAL_FRAME_ANCESTORS", "https://a.example.com; script-src *"),
    ("HOOKD_DATABASE_URL", "mysql://x"),
    ("HOOKD_DATABASE_URL", "http://example.com/db"),
    ("HOOKD_DATABASE_URL", ""),
    ("HOOKD_DATABASE_URL", "sqlite:///"),
    ("HOOKD_DATABASE_URL", "sqlite://relative.db"),
    ("HOOKD_DATABASE_URL", "postgresql://u@h:notaport/db"),
    ("HOOKD_HOST", ""),
    ("HOOKD_HOST", "   "),
    ("HOOKD_PORT", "abc"),
    ("HOOKD_PORT", ""),
    ("HOOKD_PORT", "-1"),
    ("HOOKD_PORT", "65536"),
    ("HOOKD_PORT", "80.5"),
    ("HOOKD_RETRY_SCHEDULE", "1,x"),
    ("HOOKD_RETRY_SCHEDULE", "60;3600"),
    ("HOOKD_RETRY_SCHEDULE", "0"),
    ("HOOKD_RETRY_SCHEDULE", "60,-5"),
    ("HOOKD_RETRY_SCHEDULE", "nan"),
    ("HOOKD_RETRY_SCHEDULE", "inf"),
    ("HOOKD_RETRY_SCHEDULE", "2592001"),
    ("HOOKD_SUSPEND_AFTER", "0"),
    ("HOOKD_SUSPEND_AFTER", "-1"),
    ("HOOKD_SUSPEND_AFTER", "ten"),
    ("HOOKD_SUSPEND_AFTER", "1.5"),
    ("HOOKD_WEBHOOK_LIMIT", "-1"),
    ("HOOKD_WEBHOOK_LIMIT", "many"),
    ("HOOKD_MAX_IN_FLIGHT_PER_WEBHOOK", "0"),
    ("HOOKD_MAX_IN_FLIGHT_PER_WEBHOOK", "-3"),
    ("HOOKD_MAX_IN_FLIGHT_PER_WEBHOOK", "x"),
    ("HOOKD_MAX_IN_FLIGHT_PER_ORG", "0"),
    ("HOOKD_MAX_IN_FLIGHT_PER_ORG", "lots"),
    ("HOOKD_WORKER_TIMEOUT", "0.5"),
    ("HOOKD_WORKER_TIMEOUT", "soon"),
    ("HOOKD_ALLOW_HTTP", "perhaps"),
    ("HOOKD_ALLOW_HTTP", "2"),
    ("HOOKD_ALLOW_HTTP", ""),
    ("HOOKD_ALLOWED_NETWORKS", "nonsense"),
    ("HOOKD_ALLOWED_NETWORKS", "10.0.0.0/33"),
    ("HOOKD_ALLOWED_NETWORKS", "10.0.0.0/8,bogus"),
    ("HOOKD_ALLOWED_NETWORKS", "300.1.1.1/32"),
    ("HOOKD_ALLOWED_NETWORKS", "10.0.0.1/8"),
    ("HOOKD_DNS_SERVERS", "dns.example.com"),
    ("HOOKD_DNS_SERVERS", "127.0.0.1:0"),
    ("HOOKD_DNS_SERVERS", "127.0.0.1:99999"),
    ("HOOKD_DNS_SERVERS", "127.0.0.1:"),
    ("HOOKD_DNS_SERVERS", "[::1]x"),
    ("HOOKD_RETENTION_DAYS", "0"),
    ("HOOKD_RETENTION_DAYS", "-1"),
    ("HOOKD_RETENTION_DAYS", "a week"),
    ("HOOKD_RATE_LIMIT", "-1"),
    ("HOOKD_RATE_LIMIT", "lots"),
    ("HOOKD_RATE_LIMIT", "1.5"),
    ("HOOKD_LOG_LEVEL", "verbose"),
    ("HOOKD_LOG_LEVEL", ""),
    ("HOOKD_LOG_FORMAT", "xml"),
    ("HOOKD_LOG_FORMAT", ""),
    ("HOOKD_WORKER_CONCURRENCY", "0"),
    ("HOOKD_POLL_INTERVAL", "0"),
    ("HOOKD_BATCH_WAIT_MS", "-1"),
    ("HOOKD_BATCH_WAIT_MS", "10001"),
    ("HOOKD_BATCH_WAIT_MS", "soon"),
    ("HOOKD_LEASE_MARGIN", "-1"),
    ("HOOKD_DB_POOL_SIZE", "0"),
    ("HOOKD_SQLITE_SYNCHRONOUS", "off"),
    ("HOOKD_METRICS", "maybe"),
    ("HOOKD_METRICS_PORT", "-1"),
    ("HOOKD_METRICS_PORT", "65536"),
    ("HOOKD_METRICS_PORT", "http"),
    ("HOOKD_METRICS_TOKEN", "has space"),
    ("HOOKD_METRICS_TOKEN", "x" * 257),
    ("HOOKD_METRICS_TOKEN", "line\nbreak"),
    ("HOOKD_METRICS_WEBHOOK_LABELS", "sometimes"),
]


@pytest.mark.parametrize(("variable", "raw"), INVALID, ids=[f"{v}={r!r}" for v, r in INVALID])
def test_invalid_values_name_the_variable(
    clean_env: pytest.MonkeyPatch, variable: str, raw: str
) -> None:
    message = settings_error(clean_env, **{variable: raw})
    assert variable in message, message
    assert "\n" not in message, message
    assert "errors.pydantic.dev" not in message, message
    # Only the variable at fault is named.
    others = {v for v, _ in INVALID} - {variable}
    assert not [other for other in others if other + ":" in message], message


def test_every_setting_is_covered_here() -> None:
    """A new setting needs its valid and invalid values tested in this file."""
    fields = set(Settings.model_fields)
    assert fields == {field for _, _, field, _ in VALID}
    assert {f"HOOKD_{field.upper()}" for field in fields} == {v for v, _ in INVALID}


@pytest.mark.parametrize(
    ("raw", "entry", "hint"),
    [
        ("10.0.0.1/8", "'10.0.0.1/8'", "10.0.0.0/8"),
        ("127.0.0.0/8, 192.168.1.7/16", "'192.168.1.7/16'", "192.168.0.0/16"),
        ("fd00::1/8", "'fd00::1/8'", "fd00::/8"),
    ],
)
def test_an_allowed_network_with_host_bits_set_is_an_error_naming_it(
    clean_env: pytest.MonkeyPatch, raw: str, entry: str, hint: str
) -> None:
    message = settings_error(clean_env, HOOKD_ALLOWED_NETWORKS=raw)
    assert message.startswith("HOOKD_ALLOWED_NETWORKS: "), message
    assert entry in message and "host bits" in message, (
        f"the message names the entry {entry} and says what is wrong: {message}"
    )
    assert hint in message, f"the message suggests {hint}: {message}"


def test_the_first_of_several_invalid_values_is_named(clean_env: pytest.MonkeyPatch) -> None:
    message = settings_error(clean_env, HOOKD_PORT="abc", HOOKD_LOG_FORMAT="xml")
    assert "HOOKD_PORT" in message or "HOOKD_LOG_FORMAT" in message


@pytest.mark.parametrize(
    "url",
    [
        "mysql://hookd:hunter2-secret@db/hookd",
        "postgresql+asyncpg://hookd:hunter2-secret@db/hookd",
        "postgresql://hookd:hunter2-secret@db:notaport/hookd",
    ],
)
def test_an_invalid_database_url_is_not_echoed_with_its_password(
    clean_env: pytest.MonkeyPatch, url: str
) -> None:
    message = settings_error(clean_env, HOOKD_DATABASE_URL=url)
    assert "HOOKD_DATABASE_URL" in message
    assert "hunter2-secret" not in message, message


def test_overrides_take_precedence_and_none_is_ignored(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("HOOKD_PORT", "9000")
    clean_env.setenv("HOOKD_HOST", "0.0.0.0")
    settings = load_settings(port=9001, host=None, database_url=None)
    assert settings.port == 9001
    assert settings.host == "0.0.0.0"
    assert settings.database_url == "sqlite:///hookd.db"


def test_an_invalid_override_names_the_variable(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match="HOOKD_PORT"):
        load_settings(port=70000)
    with pytest.raises(SettingsError, match="HOOKD_DATABASE_URL"):
        load_settings(database_url="mysql://x")


def test_variable_names_are_case_insensitive_and_unknown_ones_ignored(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("hookd_port", "9100")
    clean_env.setenv("HOOKD_NOT_A_SETTING", "whatever")
    assert load_settings().port == 9100


def test_an_invalid_metrics_token_is_not_echoed(clean_env: pytest.MonkeyPatch) -> None:
    message = settings_error(clean_env, HOOKD_METRICS_TOKEN="s3cret with space")
    assert "HOOKD_METRICS_TOKEN" in message and "s3cret" not in message, message


def test_metrics_defaults() -> None:
    settings = load_settings()
    assert settings.metrics is True
    assert settings.metrics_port == 9090  # SPEC §7: hookd worker's metrics port
    assert settings.metrics_token == ""
    assert settings.metrics_webhook_labels is False


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValidationError):
        settings.port = 1  # type: ignore[misc]


def test_derived_properties(clean_env: pytest.MonkeyPatch) -> None:
    sqlite = load_with(clean_env, HOOKD_DATABASE_URL="sqlite:////var/lib/hookd/h.db")
    assert sqlite.is_sqlite
    assert sqlite.sqlite_path == "/var/lib/hookd/h.db"
    pg = load_with(clean_env, HOOKD_DATABASE_URL="postgresql://u@h:5432/db")
    assert not pg.is_sqlite
