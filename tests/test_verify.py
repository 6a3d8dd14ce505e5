"""``hookd.verify`` (SPEC §10), the receiver's check of either signature scheme, and the
signatures of a secret rotation's grace period (SPEC §3) as receivers see them."""

from __future__ import annotations

import pytest
import standardwebhooks
import svix.webhooks

import hookd
from hookd.errors import HookdError
from hookd.ids import new_secret
from hookd.signing import Signer, signature_headers

# Standard Webhooks' public test vector (the specification's and Svix's documentation).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

EVENT_ID = "notif_01890a5d-ac96-7bd3-8f3e-4a6b2c1d0e9f"
NOW = 1_700_000_000
BODY = b'{"object":"notification_event","id":"notif_01890a5d-ac96-7bd3-8f3e-4a6b2c1d0e9f"}'
FEATUREBASE = ("X-Webhook-Timestamp", "X-Webhook-Signature")
STANDARD = ("webhook-id", "webhook-timestamp", "webhook-signature")


def signed(*secrets: str, ts: int = NOW, body: bytes = BODY) -> dict[str, str]:
    return signature_headers(list(secrets), EVENT_ID, ts, body)


def only(headers: dict[str, str], names: tuple[str, ...]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k in names}


def refused(body: bytes | str, headers: dict[str, str], secret: str, **kw: int) -> str:
    with pytest.raises(hookd.VerificationError) as caught:
        hookd.verify(body, headers, secret, now=kw.pop("now", NOW), **kw)
    return str(caught.value)


def test_public_names_of_the_package() -> None:
    assert sorted(hookd.__all__) == ["HookdError", "VerificationError", "__version__", "verify"]
    namespace: dict[str, object] = {}
    exec("from hookd import *", namespace)
    assert set(hookd.__all__) <= set(namespace), "expected every name of __all__ to import"
    assert issubclass(hookd.VerificationError, HookdError), "expected one exception root"


def test_standard_webhooks_test_vector_through_hookds_signer_and_verify() -> None:
    signer = Signer(VECTOR_SECRET)
    assert signer.standard(VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIGNATURE
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TS),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    hookd.verify(VECTOR_BODY, headers, VECTOR_SECRET, now=VECTOR_TS)
    assert "does not match" in refused(VECTOR_BODY + b" ", headers, VECTOR_SECRET, now=VECTOR_TS)


@pytest.mark.parametrize("scheme", [FEATUREBASE, STANDARD, FEATUREBASE + STANDARD])
def test_either_scheme_alone_verifies(scheme: tuple[str, ...]) -> None:
    secret = new_secret()
    hookd.verify(BODY, only(signed(secret), scheme), secret, now=NOW)


def test_header_names_in_any_case_and_a_str_body() -> None:
    secret = new_secret()
    headers = signed(secret)
    hookd.verify(BODY.decode(), {k.upper(): v for k, v in headers.items()}, secret, now=NOW)
    hookd.verify(BODY, {k.lower(): v for k, v in headers.items()}, secret, now=NOW)
    hookd.verify(BODY, {k.title(): v for k, v in headers.items()}, secret, now=NOW)


def test_missing_headers_are_refused_with_what_was_expected() -> None:
    secret = new_secret()
    message = refused(BODY, {"Content-Type": "application/json"}, secret)
    assert "webhook-signature" in message and "X-Webhook-Signature" in message, message
    # A signature without its timestamp cannot be checked either.
    message = refused(BODY, only(signed(secret), ("X-Webhook-Signature",)), secret)
    assert "no hookd signature" in message, message


@pytest.mark.parametrize("scheme", [FEATUREBASE, STANDARD])
def test_tampered_body_and_wrong_secret_are_refused(scheme: tuple[str, ...]) -> None:
    secret = new_secret()
    headers = only(signed(secret), scheme)
    assert "does not match" in refused(BODY.replace(b"notif", b"notiF"), headers, secret)
    assert "does not match" in refused(BODY, headers, new_secret())


@pytest.mark.parametrize("skew", [301, -301, 86_400])
@pytest.mark.parametrize("scheme", [FEATUREBASE, STANDARD])
def test_stale_and_future_timestamps_are_refused(scheme: tuple[str, ...], skew: int) -> None:
    secret = new_secret()
    headers = only(signed(secret, ts=NOW - skew), scheme)
    message = refused(BODY, headers, secret)
    assert "tolerance of 300 s" in message and f"{abs(skew)} s away" in message, message
    hookd.verify(BODY, only(signed(secret, ts=NOW - 300), scheme), secret, now=NOW)
    hookd.verify(BODY, headers, secret, abs(skew), now=NOW)


def test_a_timestamp_that_is_not_unix_seconds_is_refused() -> None:
    secret = new_secret()
    headers = signed(secret)
    headers["webhook-timestamp"] = headers["X-Webhook-Timestamp"] = "-1700000000"
    assert "not a time in Unix seconds" in refused(BODY, headers, secret)


def test_receiver_mistakes_are_value_errors_not_verification_errors() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        hookd.verify(BODY, signed(new_secret()), "not-a-secret", now=NOW)
    with pytest.raises(ValueError, match="tolerance"):
        hookd.verify(BODY, signed(new_secret()), new_secret(), -1, now=NOW)


def test_verify_uses_the_clock_by_default() -> None:
    import time

    secret = new_secret()
    hookd.verify(BODY, signed(secret, ts=int(time.time())), secret)
    with pytest.raises(hookd.VerificationError):
        hookd.verify(BODY, signed(secret, ts=NOW), secret)


# --- the signatures of a grace period ----------------------------------------------------------


def test_grace_period_headers_carry_every_live_secret_newest_first() -> None:
    new, old, older = new_secret(), new_secret(), new_secret()
    headers = signed(new, old, older)
    entries = headers["webhook-signature"].split(" ")
    assert entries == [Signer(s).standard(EVENT_ID, NOW, BODY) for s in (new, old, older)], (
        "expected one v1 signature per live secret, newest first, separated by single spaces"
    )
    assert headers["X-Webhook-Signature"] == Signer(new).featurebase(NOW, BODY), (
        "expected X-Webhook-Signature to use the newest secret only"
    )
    for secret in (new, old, older):
        hookd.verify(BODY, headers, secret, now=NOW)
    assert "does not match" in refused(BODY, headers, new_secret())
    # Featurebase's scheme alone verifies only with the newest secret.
    hookd.verify(BODY, only(headers, FEATUREBASE), new, now=NOW)
    assert "does not match" in refused(BODY, only(headers, FEATUREBASE), old)


@pytest.mark.parametrize("library", ["standardwebhooks", "svix"])
def test_libraries_verify_grace_period_headers_with_each_live_secret(library: str) -> None:
    import time

    new, old = new_secret(), new_secret()
    ts = int(time.time())
    headers = signature_headers([new, old], EVENT_ID, ts, BODY)
    for secret in (new, old):
        if library == "svix":
            svix.webhooks.Webhook(secret).verify(BODY, headers)
        else:
            standardwebhooks.Webhook(secret).verify(BODY, headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new_secret()).verify(BODY, headers)
