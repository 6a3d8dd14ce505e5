"""Secret rotation with a grace period (SPEC §3), on SQLite and PostgreSQL: what a receiver
on the old or the new secret sees during and after the grace, with the unmodified
``standardwebhooks`` and ``svix`` libraries and ``hookd.verify``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import standardwebhooks
import structlog
import svix.webhooks

import hookd
from hookd.signing import Signer
from tests.conftest import Api
from tests.receiver import Received, Receiver
from tests.test_delivery import webhook


async def default_org(api: Api) -> str:
    org = await api.store.find_organization("default")
    assert org is not None
    return org.id


async def rotate(api: Api, webhook_id: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    kw: dict[str, Any] = {} if body is None else {"json": body}
    response = await api.post(f"/v2/webhooks/{webhook_id}/secret", **kw)
    assert response.status_code == 200, response.text
    refreshed: dict[str, Any] = response.json()
    return refreshed


async def delivered(api: Api, receiver: Receiver, count: int) -> Received:
    """Publish one event and return the request the receiver got for it."""
    await api.publish()
    return (await receiver.wait_for(count, timeout=15))[-1]


def signatures(request: Received) -> list[str]:
    header = request.header("webhook-signature")
    assert header is not None, request.headers
    return header.split(" ")


def assert_verifies(request: Received, secret: str, label: str) -> None:
    for name, check in (
        (
            "standardwebhooks",
            lambda: standardwebhooks.Webhook(secret).verify(request.body, request.headers),
        ),
        ("svix", lambda: svix.webhooks.Webhook(secret).verify(request.body, request.headers)),
        ("hookd.verify", lambda: hookd.verify(request.body, request.headers, secret)),
    ):
        try:
            check()
        except Exception as exc:
            raise AssertionError(
                f"expected {name} to verify with the {label} secret: {exc}"
            ) from exc


def assert_refused(request: Received, secret: str, label: str) -> None:
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(request.body, request.headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        svix.webhooks.Webhook(secret).verify(request.body, request.headers)
    with pytest.raises(hookd.VerificationError):
        hookd.verify(request.body, request.headers, secret)


def featurebase_secret(request: Received, *candidates: str) -> str:
    """Which of ``candidates`` made X-Webhook-Signature."""
    ts = int(request.header("X-Webhook-Timestamp") or 0)
    signature = request.header("X-Webhook-Signature")
    found = [s for s in candidates if Signer(s).featurebase(ts, request.body) == signature]
    assert len(found) == 1, f"expected exactly one secret to make X-Webhook-Signature: {found}"
    return found[0]


async def test_during_the_grace_both_secrets_verify_and_after_it_only_the_new(
    delivering: Api, receiver: Receiver
) -> None:
    api = delivering
    hook = await webhook(api, receiver)
    old = hook["secret"]
    with structlog.testing.capture_logs() as logs:
        refreshed = await rotate(api, hook["id"], {"gracePeriodSeconds": 1})
    new = refreshed["secret"]
    assert new != old, "expected a new secret"
    rotated_at = time.monotonic()
    assert [line for line in logs if line["event"] == "secret.refreshed"] == [
        {
            "event": "secret.refreshed",
            "log_level": "info",
            "organization": await default_org(api),
            "webhook": hook["id"],
            "grace_period_seconds": 1,
            "previous_secrets_live": 1,
        }
    ], logs

    during = await delivered(api, receiver, 1)
    assert len(signatures(during)) == 2, "expected one v1 signature per live secret"
    assert signatures(during)[0] == Signer(new).standard(
        during.header("webhook-id") or "", int(during.header("webhook-timestamp") or 0), during.body
    ), "expected the newest secret's signature first"
    assert_verifies(during, old, "old")
    assert_verifies(during, new, "new")
    assert featurebase_secret(during, old, new) == new, (
        "expected X-Webhook-Signature to use the newest secret only"
    )

    await asyncio.sleep(max(0.0, 1.05 - (time.monotonic() - rotated_at)))
    after = await delivered(api, receiver, 2)
    assert len(signatures(after)) == 1, "expected the old secret to stop signing after its grace"
    assert_verifies(after, new, "new")
    assert_refused(after, old, "old")


async def test_at_most_ten_previous_secrets_and_zero_ends_every_grace(
    delivering: Api, receiver: Receiver
) -> None:
    api = delivering
    hook = await webhook(api, receiver)
    made = [hook["secret"]]
    for _ in range(11):
        made.append((await rotate(api, hook["id"], {"gracePeriodSeconds": 3600}))["secret"])
    request = await delivered(api, receiver, 1)
    assert len(signatures(request)) == 11, "expected the new secret and 10 previous ones"
    # made[0] was replaced first: the 11th previous secret, the oldest, dropped.
    for secret in made[1:]:
        assert_verifies(request, secret, "a live")
    assert_refused(request, made[0], "the oldest (dropped) previous")

    ended = await rotate(api, hook["id"], {"gracePeriodSeconds": 0})
    request = await delivered(api, receiver, 2)
    assert signatures(request) and len(signatures(request)) == 1, (
        "expected gracePeriodSeconds 0 to end every earlier grace period at once"
    )
    assert_verifies(request, ended["secret"], "new")
    for secret in made:
        assert_refused(request, secret, "an earlier")


async def test_a_refresh_without_a_body_is_immediate(delivering: Api, receiver: Receiver) -> None:
    api = delivering
    hook = await webhook(api, receiver)
    first = await rotate(api, hook["id"], {"gracePeriodSeconds": 600})
    second = await rotate(api, hook["id"])
    request = await delivered(api, receiver, 1)
    assert len(signatures(request)) == 1, "expected a refresh without a body to end every grace"
    assert_verifies(request, second["secret"], "new")
    for secret in (hook["secret"], first["secret"]):
        assert_refused(request, secret, "an earlier")


async def test_grace_shows_nowhere_in_the_webhook_object(api: Api) -> None:
    hook = await api.create_webhook()
    refreshed = await rotate(api, hook["id"], {"gracePeriodSeconds": 604800})
    assert set(refreshed) == set(hook), (
        "expected the webhook object's fields to stay the reference's"
    )
    assert refreshed["secret"] != hook["secret"]
    assert refreshed["updatedAt"] > hook["updatedAt"]
    listed = (await api.get("/v2/webhooks")).json()["data"][0]
    assert listed == refreshed


async def test_expired_previous_secrets_are_purged(api: Api) -> None:
    hook = await api.create_webhook()
    await rotate(api, hook["id"], {"gracePeriodSeconds": 1})
    await rotate(api, hook["id"], {"gracePeriodSeconds": 3600})
    org = await default_org(api)
    stored = await api.store.get_webhook(org, hook["id"])
    assert stored is not None and len(stored.previous_secrets) == 2
    assert await api.store.purge_expired_secrets() == 0, "expected nothing to purge yet"
    await asyncio.sleep(1.05)
    assert await api.store.purge_expired_secrets() == 1
    stored = await api.store.get_webhook(org, hook["id"])
    assert stored is not None
    assert len(stored.previous_secrets) == 1, "expected one previous secret to stay stored"
    assert hook["secret"] not in [s for s, _at in stored.previous_secrets], (
        "expected the secret whose grace ended to be gone from the database"
    )


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (-1, "parameter_out_of_range"),
        (604_801, "parameter_out_of_range"),
        ("60", "parameter_invalid_type"),
        (1.5, "parameter_invalid_type"),
        (True, "parameter_invalid_type"),
        (None, "parameter_invalid_type"),
    ],
)
async def test_grace_period_validation(api: Api, value: Any, code: str) -> None:
    hook = await api.create_webhook()
    response = await api.post(
        f"/v2/webhooks/{hook['id']}/secret", json={"gracePeriodSeconds": value}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, "gracePeriodSeconds"), error
    after = (await api.get(f"/v2/webhooks/{hook['id']}")).json()
    assert after["secret"] == hook["secret"], "expected a refused refresh to change nothing"


async def test_the_longest_grace_is_accepted(api: Api) -> None:
    hook = await api.create_webhook()
    refreshed = await rotate(api, hook["id"], {"gracePeriodSeconds": 604_800})
    assert refreshed["secret"] != hook["secret"]
