"""The ``hookd`` command (SPEC §7), run as real subprocesses on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from hookd.api import create_app
from hookd.settings import DEFAULT_API_VERSION, database_location
from hookd.store import Store, open_driver
from hookd.store.migrate import head_revision
from tests.conftest import ADMIN_DSN, make_settings
from tests.processes import (
    API_KEY,
    HookdProcesses,
    free_port,
    run_hookd,
)
from tests.receiver import Receiver

OBJECT_ID = re.compile(r"[0-9a-f]{24}")
ISO_MS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
T = TypeVar("T")
WEBHOOK = {"name": "CLI hook", "url": "https://example.com/hook", "topics": ["post.created"]}


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have succeeded."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def one_line_failure(result: subprocess.CompletedProcess[str], *, code: int | None = None) -> str:
    """The single stderr line of a command that must have failed cleanly."""
    detail = f"exit {result.returncode}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    if code is None:
        assert result.returncode not in (0, None), detail
    else:
        assert result.returncode == code, detail
    assert result.returncode > 0, "killed by a signal instead of exiting\n" + detail
    assert "Traceback" not in result.stderr, detail
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, detail
    assert result.stdout == "", detail
    return lines[0]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def in_store(database_url: str, action: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``action`` on a store over ``database_url``, in this process: for setting up and
    checking what the command under test is not about."""

    async def run() -> T:
        store = Store(open_driver(database_url, pool_size=1))
        await store.start()
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(run())


def in_process_client(database_url: str, key: str) -> Callable[..., httpx.Response]:
    """A function making one request with ``key`` on the app over ``database_url``."""

    def request(method: str, path: str, **kw: Any) -> httpx.Response:
        async def call(store: Store) -> httpx.Response:
            app = create_app(make_settings(database_url), store)
            transport = httpx.ASGITransport(app=app)
            headers = {**auth(key), **kw.pop("headers", {})}
            async with httpx.AsyncClient(transport=transport, base_url="http://hookd.test") as c:
                return await c.request(method, path, headers=headers, **kw)

        return in_store(database_url, call)

    return request


def seed(database_url: str, name: str, *labels: str | None) -> tuple[str, list[str]]:
    """An organization with one key per label: its id and the keys."""

    async def create(store: Store) -> tuple[str, list[str]]:
        org = await store.create_organization(name, 10, DEFAULT_API_VERSION)
        keys = [(await store.create_api_key(org.id, label))[1] for label in labels]
        return org.id, keys

    return in_store(database_url, create)


def stored_orgs(database_url: str) -> list[Any]:
    return in_store(database_url, lambda store: store.list_organizations())


def stored_keys(database_url: str, org_id: str) -> list[Any]:
    return in_store(database_url, lambda store: store.list_api_keys(org_id))


def list_keys(database_url: str, org: str) -> list[list[str]]:
    """``hookd keys list ORG``, split into fields."""
    out = ok(run_hookd("keys", "list", org, database_url=database_url))
    return [line.split("\t") for line in out.splitlines()]


# Organizations.


def location(database_url: str) -> str:
    """The database location hookd prints: no password, a SQLite file's absolute path."""
    settings = make_settings(database_url)
    return database_location(settings)


def test_orgs_create_prints_only_the_id(database_url: str) -> None:
    result = run_hookd("orgs", "create", "acme", database_url=database_url)
    out = ok(result)
    assert OBJECT_ID.fullmatch(out.rstrip("\n")), repr(out)
    assert out.count("\n") == 1
    assert result.stderr == f"hookd: database {location(database_url)}\n", (
        "expected only the database used, on stderr"
    )
    [org] = stored_orgs(database_url)
    assert (org.id, org.name, org.webhook_limit, org.default_version) == (
        out.strip(),
        "acme",
        10,
        DEFAULT_API_VERSION,
    )


def test_orgs_create_options_are_used(database_url: str) -> None:
    result = run_hookd(
        "orgs",
        "create",
        "limited",
        "--webhook-limit",
        "1",
        "--default-version",
        "2026-01-01.nova",
        database_url=database_url,
    )
    org_id = ok(result).strip()
    [org] = stored_orgs(database_url)
    assert (org.id, org.webhook_limit, org.default_version) == (org_id, 1, "2026-01-01.nova")
    key = in_store(database_url, lambda store: store.create_api_key(org_id, None))[1]
    call = in_process_client(database_url, key)
    nova = {"Featurebase-Version": "2026-01-01.nova"}
    first = call("POST", "/v2/webhooks", json=WEBHOOK, headers=nova)
    assert first.status_code == 200, first.text
    second = call("POST", "/v2/webhooks", json=WEBHOOK, headers=nova)
    assert second.status_code == 400, second.text
    assert second.json()["error"]["code"] == "webhook_limit_reached"


def test_orgs_create_refuses_a_version_without_webhooks(database_url: str) -> None:
    """An organization defaulting to 2025-12-12.clover would have every request refused."""
    result = run_hookd(
        "orgs", "create", "old", "--default-version", "2025-12-12.clover", database_url=database_url
    )
    assert result.returncode == 2, result.stderr
    assert "2025-12-12.clover has no webhook endpoints" in result.stderr, result.stderr
    assert "2026-01-01.nova" in result.stderr, "expected the version to use instead"
    assert stored_orgs(database_url) == []


def test_orgs_create_defaults_to_the_webhook_limit_setting(database_url: str) -> None:
    env = {"HOOKD_WEBHOOK_LIMIT": "7"}
    ok(run_hookd("orgs", "create", "envlimit", database_url=database_url, env=env))
    [org] = stored_orgs(database_url)
    assert org.webhook_limit == 7


def test_orgs_create_duplicate_name_fails(database_url: str) -> None:
    seed(database_url, "acme")
    line = one_line_failure(run_hookd("orgs", "create", "acme", database_url=database_url))
    assert "acme" in line
    assert "exist" in line
    assert len(stored_orgs(database_url)) == 1


@pytest.mark.parametrize("name", ["", "   ", "x" * 101], ids=["empty", "blank", "too-long"])
def test_orgs_create_refuses_a_bad_name(database_url: str, name: str) -> None:
    line = one_line_failure(run_hookd("orgs", "create", name, database_url=database_url))
    assert "name" in line.lower()
    assert stored_orgs(database_url) == []


def test_orgs_list(database_url: str) -> None:
    assert ok(run_hookd("orgs", "list", database_url=database_url)) == ""
    first, _ = seed(database_url, "first org")
    second, _ = seed(database_url, "second")
    lines = ok(run_hookd("orgs", "list", database_url=database_url)).splitlines()
    assert len(lines) == 2
    rows = {line.split("\t")[0]: line.split("\t") for line in lines}
    assert set(rows) == {first, second}
    assert rows[first][1] == "first org"
    assert rows[second][1] == "second"
    for row in rows.values():
        assert row[2] == "10"
        assert row[3] == DEFAULT_API_VERSION
        assert ISO_MS.fullmatch(row[4]), row


# API keys.


@pytest.mark.parametrize("by", ["id", "name"])
def test_keys_create_prints_only_a_working_key(database_url: str, by: str) -> None:
    org, _ = seed(database_url, "acme")
    other, _ = seed(database_url, "other")
    result = run_hookd(
        "keys", "create", org if by == "id" else "acme", "--name", "ci", database_url=database_url
    )
    out = ok(result)
    key = out.rstrip("\n")
    assert out.count("\n") == 1
    assert API_KEY.fullmatch(key), repr(out)
    assert len(key) - len("sk_") >= 32
    assert result.stderr == f"hookd: database {location(database_url)}\n"
    response = in_process_client(database_url, key)("GET", "/v2/webhooks")
    assert response.status_code == 200, response.text
    # The key belongs to that organization, labelled.
    [stored] = stored_keys(database_url, org)
    assert stored.label == "ci"
    assert stored.revoked_at is None
    assert stored_keys(database_url, other) == []
    # A second key is another key.
    again = ok(run_hookd("keys", "create", "acme", database_url=database_url)).strip()
    assert API_KEY.fullmatch(again)
    assert again != key
    assert len(stored_keys(database_url, org)) == 2


def test_keys_list_shows_no_secret(database_url: str) -> None:
    org, keys = seed(database_url, "acme", "deploy bot", None)
    seed(database_url, "other", "not mine")
    out = ok(run_hookd("keys", "list", "acme", database_url=database_url))
    assert not [key for key in keys if key in out]
    assert "sk_" not in out
    lines = out.splitlines()
    assert len(lines) == 2, out  # one line per key, no header
    rows = [line.split("\t") for line in lines]
    for row in rows:
        assert len(row) == 4, row
        key_id, _label, created, state = row
        assert OBJECT_ID.fullmatch(key_id), row
        assert ISO_MS.fullmatch(created), row
        assert datetime.fromisoformat(created.replace("Z", "+00:00")).tzinfo is not None
        assert state == "active"
    assert sorted(row[1] for row in rows) == ["", "deploy bot"]
    assert {row[0] for row in rows} == {k.id for k in stored_keys(database_url, org)}
    # The same listing by id.
    assert ok(run_hookd("keys", "list", org, database_url=database_url)) == out


def test_keys_revoke_stops_the_key_at_once(tmp_path: Path, database_url: str) -> None:
    org, (kept, revoked) = seed(database_url, "acme", "kept", "revoked")
    ids = {row[1]: row[0] for row in list_keys(database_url, org)}
    with HookdProcesses(tmp_path) as procs:
        server = procs.start("api", database_url=database_url)
        url = server.url("/v2/webhooks")
        assert httpx.get(url, headers=auth(revoked)).status_code == 200
        result = run_hookd("keys", "revoke", ids["revoked"], database_url=database_url)
        ok(result)
        assert revoked not in result.stdout
        response = httpx.get(url, headers=auth(revoked))
        assert response.status_code == 401, response.text
        assert response.json()["error"]["type"] == "authentication_error"
        assert httpx.get(url, headers=auth(kept)).status_code == 200
        states = {row[1]: row[3] for row in list_keys(database_url, org)}
        assert states == {"kept": "active", "revoked": "revoked"}
        assert result.stdout == f"hookd: revoked {ids['revoked']}\n"
        # Revoking again is harmless, keeps it revoked, and says so.
        again = ok(run_hookd("keys", "revoke", ids["revoked"], database_url=database_url))
        assert again == f"hookd: already revoked {ids['revoked']}\n"
        assert httpx.get(url, headers=auth(revoked)).status_code == 401
        server.stop()


@pytest.mark.parametrize(
    "args",
    [
        ("keys", "create", "no-such-org"),
        ("keys", "create", "0123456789abcdef01234567"),
        ("keys", "list", "no-such-org"),
        ("keys", "revoke", "0123456789abcdef01234567"),
        ("keys", "revoke", "not an id"),
    ],
    ids=["create-name", "create-id", "list", "revoke-id", "revoke-garbage"],
)
def test_unknown_org_or_key_fails_clearly(database_url: str, args: tuple[str, ...]) -> None:
    seed(database_url, "acme", "a key")
    line = one_line_failure(run_hookd(*args, database_url=database_url))
    assert args[-1] in line, line
    assert location(database_url) in line, f"expected the database named: {line}"


@pytest.mark.parametrize(
    "args",
    [
        ("orgs", "list"),
        ("orgs", "create", "acme"),
        ("keys", "create", "default"),
        ("keys", "list", "x"),
    ],
    ids=" ".join,
)
def test_orgs_and_keys_refuse_a_missing_database(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Run where there is no hookd.db, orgs and keys say where they looked instead of
    creating an empty database there."""
    line = one_line_failure(run_hookd(*args, cwd=tmp_path))
    assert f"no database at sqlite:///{tmp_path / 'hookd.db'}" in line, line
    assert "hookd migrate" in line and "hookd serve" in line, line
    assert list(tmp_path.iterdir()) == [], "expected nothing created"


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("migrate", "--database-url", "mysql://x"), "--database-url"),
        (("orgs", "list", "--database-url", "sqlite:///"), "--database-url"),
        (("serve", "--host", " "), "--host"),
    ],
    ids=["migrate", "orgs", "serve-host"],
)
def test_a_bad_flag_value_names_the_flag(tmp_path: Path, args: tuple[str, ...], flag: str) -> None:
    line = one_line_failure(run_hookd(*args, cwd=tmp_path), code=2)
    assert line.startswith(f"hookd: {flag}: "), line
    assert "HOOKD_" not in line, line


@pytest.mark.parametrize("group", [(), ("orgs",), ("keys",)], ids=["hookd", "orgs", "keys"])
def test_help_is_never_cut_off(group: tuple[str, ...]) -> None:
    result = run_hookd(*group, "--help", env={"COLUMNS": "80"})
    commands = ok(result).split("Commands:")[1].strip().splitlines()
    assert not [c for c in commands if "..." in c or "\u2026" in c], commands
    assert len(commands) >= 2 and all(line.rstrip().endswith(".") for line in commands), commands


def test_migrate_lock_file_lies_beside_the_database(tmp_path: Path) -> None:
    """The lock that orders concurrent migrations is DATABASE.migrate-lock, beside the
    database, and git ignores it."""
    url = f"sqlite:///{tmp_path / 'data' / 'hookd.db'}"
    ok(run_hookd("migrate", database_url=url, cwd=tmp_path))
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "hookd.db",
        "hookd.db.migrate-lock",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    ignored = (Path(__file__).resolve().parent.parent / ".gitignore").read_text().split()
    assert "*.migrate-lock" in ignored


# Migrations.


def _sqlite_schema(path: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
    conn.close()
    return [(str(t), str(n), str(s)) for t, n, s in rows]


def test_migrate_creates_the_sqlite_schema_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "hookd.db"
    url = f"sqlite:///{path}"
    first = run_hookd("migrate", database_url=url)
    ok(first)
    assert path.exists()
    schema = _sqlite_schema(path)
    tables = {name for kind, name, _ in schema if kind == "table"}
    assert {
        "alembic_version",
        "organizations",
        "api_keys",
        "webhooks",
        "events",
        "deliveries",
        "attempts",
    } <= tables
    with sqlite3.connect(path) as conn:
        (version,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    conn.close()
    assert version == head_revision()
    second = run_hookd("migrate", database_url=url)
    assert ok(second) == first.stdout
    assert _sqlite_schema(path) == schema
    # And the migrated database is usable.
    seed(url, "after-migrate", "key")
    assert [org.name for org in stored_orgs(url)] == ["after-migrate"]


def test_migrate_on_a_migrated_database_changes_nothing(database_url: str) -> None:
    ok(run_hookd("migrate", database_url=database_url))
    org, _ = seed(database_url, "kept")
    ok(run_hookd("migrate", database_url=database_url))
    assert [o.id for o in stored_orgs(database_url)] == [org]


@pytest.mark.parametrize("engine", ["postgres"])
def test_postgres_url_parameters_are_accepted(engine: str, request: pytest.FixtureRequest) -> None:
    """libpq's URL parameters (``?sslmode=...``, which managed PostgreSQL services require)
    work for every command, as they do for the store's own connections."""
    database_url = str(request.getfixturevalue("database_url"))
    url = database_url + "?sslmode=prefer&application_name=hookd-test"
    ok(run_hookd("migrate", database_url=url))
    ok(run_hookd("orgs", "create", "tls", database_url=url))
    assert [o.name for o in stored_orgs(database_url)] == ["tls"]


# hookd serve, api and worker.


def _serve_database(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A never-used SQLite file, or the fixture's (migrated, empty) PostgreSQL database."""
    if engine == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh' / 'hookd.db'}"
    return str(request.getfixturevalue("database_url"))


def test_serve_prints_one_key_on_first_start_only(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = _serve_database(engine, request, tmp_path)
    with HookdProcesses(tmp_path / "logs") as procs:
        first = procs.start("serve", database_url=url)
        key = first.api_key()
        assert key in first.stdout()
        assert key not in first.stderr(), "the key must not go to the logs"
        # The banner gives the server's real URL and database, not placeholders.
        assert f"HOOKD={first.base_url}" in first.stdout(), first.stdout()
        assert "HOST:PORT" not in first.stdout()
        assert f"API at {first.base_url}" in first.stdout(), first.stdout()
        assert f"database {location(url)}" in first.stdout(), first.stdout()
        response = httpx.get(first.url("/v2/webhooks"), headers=auth(key))
        assert response.status_code == 200, response.text
        assert response.json() == {"object": "list", "data": [], "nextCursor": None}
        created = httpx.post(first.url("/v2/webhooks"), headers=auth(key), json=WEBHOOK)
        assert created.status_code == 200, created.text
        first.stop()

        second = procs.start("serve", database_url=url)
        assert second.api_keys() == [], second.describe()
        listed = httpx.get(second.url("/v2/webhooks"), headers=auth(key))
        assert listed.status_code == 200, listed.text
        assert [w["id"] for w in listed.json()["data"]] == [created.json()["id"]]
        second.stop()
        assert second.api_keys() == []
    [org] = stored_orgs(url)
    assert org.name == "default"
    [stored] = stored_keys(url, org.id)
    assert stored.revoked_at is None


@pytest.mark.parametrize("command", ["serve", "api", "worker"])
def test_sigterm_exits_zero(tmp_path: Path, database_url: str, command: str) -> None:
    with HookdProcesses(tmp_path / "logs") as procs:
        process = procs.start(command, database_url=database_url)
        if process.port is not None:
            assert httpx.get(process.url("/readyz")).status_code == 200
        code = process.stop()
        assert code == 0, process.describe()
        assert "Traceback" not in process.stderr(), process.describe()


@pytest.mark.parametrize("engine", ["postgres"])  # several API processes: PostgreSQL (SPEC §7)
def test_two_api_processes_share_one_postgres_database(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> None:
    database_url = str(request.getfixturevalue("database_url"))
    _, (key,) = seed(database_url, "shared", "shared")
    with HookdProcesses(tmp_path) as procs:
        a = procs.start("api", database_url=database_url)
        b = procs.start("api", database_url=database_url)
        assert a.port != b.port
        for process in (a, b):
            response = httpx.get(process.url("/v2/webhooks"), headers=auth(key))
            assert response.status_code == 200, response.text
        created = httpx.post(a.url("/v2/webhooks"), headers=auth(key), json=WEBHOOK)
        assert created.status_code == 200, created.text
        webhook = created.json()
        seen = httpx.get(b.url(f"/v2/webhooks/{webhook['id']}"), headers=auth(key))
        assert seen.status_code == 200, seen.text
        assert seen.json() == webhook
        listed = httpx.get(b.url("/v2/webhooks"), headers=auth(key)).json()
        assert [w["id"] for w in listed["data"]] == [webhook["id"]]
        patched = httpx.patch(
            b.url(f"/v2/webhooks/{webhook['id']}"), headers=auth(key), json={"name": "renamed"}
        )
        assert patched.status_code == 200, patched.text
        again = httpx.get(a.url(f"/v2/webhooks/{webhook['id']}"), headers=auth(key))
        assert again.json()["name"] == "renamed"
        deleted = httpx.delete(a.url(f"/v2/webhooks/{webhook['id']}"), headers=auth(key))
        assert deleted.status_code == 200, deleted.text
        gone = httpx.get(b.url(f"/v2/webhooks/{webhook['id']}"), headers=auth(key))
        assert gone.status_code == 404, gone.text


# Invalid settings and unreachable databases.

INVALID_SETTINGS = [
    ("HOOKD_PORT", "abc"),
    ("HOOKD_RETRY_SCHEDULE", "1,x"),
    ("HOOKD_ALLOWED_NETWORKS", "nonsense"),
    ("HOOKD_ALLOWED_NETWORKS", "10.0.0.1/8"),
    ("HOOKD_DNS_SERVERS", "dns.example.com"),
    ("HOOKD_LOG_FORMAT", "xml"),
    ("HOOKD_DATABASE_URL", "mysql://x"),
    ("HOOKD_DATABASE_URL", "postgresql://hookd@db:notaport/hookd"),
    ("HOOKD_ALLOW_HTTP", "perhaps"),
    ("HOOKD_SUSPEND_AFTER", "0"),
    ("HOOKD_LOG_LEVEL", "verbose"),
]

COMMANDS: list[tuple[str, ...]] = [
    ("serve",),
    ("api",),
    ("worker",),
    ("migrate",),
    ("orgs", "create", "acme"),
    ("orgs", "list"),
    ("keys", "create", "acme"),
    ("keys", "list", "acme"),
    ("keys", "revoke", "0123456789abcdef01234567"),
]

# Every variable with `serve`, and every other command with one of the variables in turn:
# all commands read the settings the same way, so the full matrix would only cost time.
INVALID_RUNS = [(("serve",), variable, value) for variable, value in INVALID_SETTINGS] + [
    (command, *INVALID_SETTINGS[i % len(INVALID_SETTINGS)])
    for i, command in enumerate(COMMANDS[1:])
]


@pytest.mark.parametrize(
    ("args", "variable", "value"),
    INVALID_RUNS,
    ids=[f"{' '.join(a[:2])}-{v}={value}" for a, v, value in INVALID_RUNS],
)
def test_an_invalid_setting_stops_every_command(
    tmp_path: Path, args: tuple[str, ...], variable: str, value: str
) -> None:
    path = tmp_path / "untouched.db"
    env = {"HOOKD_DATABASE_URL": f"sqlite:///{path}", "HOOKD_PORT": str(free_port())}
    env[variable] = value
    result = run_hookd(*args, env=env, cwd=tmp_path, timeout=60)
    line = one_line_failure(result, code=2)
    assert variable in line, line
    assert not path.exists(), "nothing may touch the database after an invalid setting"


def _closed_port_url(user: str = "postgres") -> str:
    return f"postgresql://{user}@127.0.0.1:{free_port()}/hookd"


@pytest.mark.parametrize(
    "args", [("serve",), ("api",), ("worker",), ("migrate",), ("orgs", "list")], ids=" ".join
)
def test_unreachable_postgres_fails_with_one_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    url = _closed_port_url()
    result = run_hookd(*args, database_url=url, cwd=tmp_path, timeout=60)
    line = one_line_failure(result)
    assert "database" in line, line
    assert url.rsplit("@", 1)[-1] in line, line


def test_unreachable_postgres_message_hides_the_password(tmp_path: Path) -> None:
    url = _closed_port_url("postgres:hunter2-secret")
    result = run_hookd("serve", database_url=url, cwd=tmp_path, timeout=60)
    one_line_failure(result)
    assert "hunter2-secret" not in result.stderr + result.stdout


@pytest.mark.parametrize("engine", ["postgres"])
@pytest.mark.parametrize("args", [("serve",), ("migrate",), ("orgs", "list")], ids=" ".join)
def test_missing_postgres_database_fails_with_one_line(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest, args: tuple[str, ...]
) -> None:
    """A reachable server without the named database: also one clear line, no traceback."""
    request.getfixturevalue("postgres_template")  # fails (CI) or skips when PostgreSQL is not there

    base = ADMIN_DSN.rpartition("/")[0]
    url = f"{base}/hookd_missing_{uuid.uuid4().hex[:12]}"
    line = one_line_failure(run_hookd(*args, database_url=url, cwd=tmp_path, timeout=60))
    assert "database" in line, line
    assert url.rsplit("/", 1)[-1] in line, line


# hookd serve --dev


async def test_serve_dev_delivers_to_a_local_http_receiver(
    tmp_path: Path, receiver: Receiver
) -> None:
    """--dev is what a first try on one's own machine needs: an http:// receiver on
    loopback, with nothing else to set, and a banner that says what it allows."""
    url = f"sqlite:///{tmp_path / 'hookd.db'}"
    with HookdProcesses(tmp_path / "logs") as procs:
        server = procs.start("serve", database_url=url, args=["--dev"])
        assert "DEVELOPMENT MODE (--dev)" in server.stdout(), server.describe()
        key = server.api_key()
        async with httpx.AsyncClient(base_url=server.base_url, headers=auth(key)) as client:
            created = await client.post(
                "/v2/webhooks",
                json={"name": "local", "url": receiver.url("/local"), "topics": ["post.created"]},
            )
            assert created.status_code == 200, created.text
            published = await client.post(
                "/v2/events", json={"topic": "post.created", "data": {"item": {"id": "p1"}}}
            )
            assert published.status_code == 202, published.text
            [got] = await receiver.wait_for(1)
            assert got.json()["id"] == published.json()["id"]
        server.stop()


def test_serve_without_dev_names_the_setting_for_http(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hookd.db'}"
    with HookdProcesses(tmp_path / "logs") as procs:
        server = procs.start("serve", database_url=url)
        assert "DEVELOPMENT MODE" not in server.stdout()
        response = httpx.post(
            server.url("/v2/webhooks"),
            headers=auth(server.api_key()),
            json={"name": "local", "url": "http://127.0.0.1:9/x", "topics": ["post.created"]},
        )
        assert response.status_code == 400, response.text
        assert "HOOKD_ALLOW_HTTP" in response.json()["error"]["message"]
        server.stop()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::"])
def test_serve_dev_listens_on_loopback_only(tmp_path: Path, host: str) -> None:
    result = run_hookd("serve", "--dev", "--host", host, cwd=tmp_path)
    line = one_line_failure(result, code=2)
    assert "--dev listens on loopback only" in line and host in line, line
    assert list(tmp_path.iterdir()) == [], "expected nothing started or created"
