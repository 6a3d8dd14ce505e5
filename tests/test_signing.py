"""Tests for hookd.signing: known answers, interop with the public libraries, rejection."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import standardwebhooks
import svix.webhooks
from hypothesis import given, settings
from hypothesis import strategies as st

from hookd.ids import new_event_id, new_secret
from hookd.signing import Signer, signer_for, verify_featurebase, verify_standard

# The secret whose key bytes are 00 01 02 ... 1f, as new_secret() spells it.
FIXED_SECRET = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
FIXED_ID = "notif_01890a5d-ac96-7bd3-8f3e-4a6b2c1d0e9f"
FIXED_TS = 1700000000
FIXED_BODY = b'{"a":1}'

HEADER_NAMES = {
    "X-Webhook-Timestamp",
    "X-Webhook-Signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
}

LibVerify = Callable[[str, bytes, dict[str, str]], object]


def _std_lib_verify(secret: str, body: bytes, headers: dict[str, str]) -> object:
    return standardwebhooks.Webhook(secret).verify(body, headers, json_parse=False)


def _svix_lib_verify(secret: str, body: bytes, headers: dict[str, str]) -> object:
    svix.webhooks.Webhook(secret).verify(body, headers)
    return None


LIB_VERIFIERS = pytest.mark.parametrize(
    "lib_verify", [_std_lib_verify, _svix_lib_verify], ids=["standardwebhooks", "svix"]
)


def _expected_featurebase(secret: str, timestamp: int, body: bytes) -> str:
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def _expected_standard(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    message = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _now() -> int:
    return int(time.time())


# --- known answers ---------------------------------------------------------------------------


def test_fixed_secret_is_what_new_secret_makes() -> None:
    assert new_secret(lambda n: bytes(range(n))) == FIXED_SECRET


def test_fixed_vector_featurebase() -> None:
    # Computed with `openssl dgst -sha256 -hmac '<whole secret>'` over '1700000000.{"a":1}'.
    expected = "7ca151e4fc23256c89e882261933d6af9a8be1f09f32dd687e83b0e34da7e68f"
    assert Signer(FIXED_SECRET).featurebase(FIXED_TS, FIXED_BODY) == expected


def test_fixed_vector_standard() -> None:
    # Computed with `openssl dgst -sha256 -mac HMAC -macopt hexkey:000102…1f -binary | base64`.
    expected = "v1,DlaWicU/8nrE4zV2ROYOgLwHCbjd+p6zOnWG83Fu4Ks="
    assert Signer(FIXED_SECRET).standard(FIXED_ID, FIXED_TS, FIXED_BODY) == expected


def test_published_svix_vector() -> None:
    # The example from Svix's "verifying manually" documentation (24-byte key, no padding).
    signer = Signer("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signature = signer.standard("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize("body", [b"", b"{}", b"\x00\xff not utf-8 \x80", b"x" * 100_000])
def test_known_answers_against_independent_hmac(body: bytes) -> None:
    secret = new_secret()
    msg_id = new_event_id(FIXED_TS * 1000)
    signer = Signer(secret)
    assert signer.featurebase(FIXED_TS, body) == _expected_featurebase(secret, FIXED_TS, body)
    assert signer.standard(msg_id, FIXED_TS, body) == _expected_standard(
        secret, msg_id, FIXED_TS, body
    )


@pytest.mark.parametrize("openssl", [True, False])
def test_signs_alike_with_or_without_the_openssl_hmac_object(
    openssl: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Signer copies OpenSSL's HMAC object where hmac.HMAC wraps one, and hmac.HMAC
    itself where it does not (here: a digest constructor OpenSSL does not know)."""
    if not openssl:
        python_sha256 = lambda data=b"": hashlib.sha256(data)  # noqa: E731
        monkeypatch.setattr(
            hmac, "new", lambda key, msg=None, digestmod="": hmac.HMAC(key, msg, python_sha256)
        )
    secret = new_secret()
    signer = Signer(secret)
    assert isinstance(signer._standard_mac, hmac.HMAC) is not openssl
    msg_id = new_event_id(FIXED_TS * 1000)
    expected = _expected_featurebase(secret, FIXED_TS, FIXED_BODY)
    assert signer.featurebase(FIXED_TS, FIXED_BODY) == expected
    assert signer.standard(msg_id, FIXED_TS, FIXED_BODY) == _expected_standard(
        secret, msg_id, FIXED_TS, FIXED_BODY
    )


def test_headers_names_and_values() -> None:
    signer = Signer(FIXED_SECRET)
    headers = signer.headers(FIXED_ID, FIXED_TS, FIXED_BODY)
    assert set(headers) == HEADER_NAMES
    assert headers["X-Webhook-Timestamp"] == headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-id"] == FIXED_ID
    assert headers["X-Webhook-Signature"] == signer.featurebase(FIXED_TS, FIXED_BODY)
    assert headers["webhook-signature"] == signer.standard(FIXED_ID, FIXED_TS, FIXED_BODY)
    assert all(isinstance(v, str) for v in headers.values())


def test_featurebase_signature_is_lowercase_hex() -> None:
    signature = Signer(new_secret()).featurebase(FIXED_TS, FIXED_BODY)
    assert len(signature) == 64
    assert set(signature) <= set("0123456789abcdef")


def test_featurebase_verifier_from_featurebase_docs_accepts() -> None:
    # Featurebase's documented receiver: whole secret as key, exact string comparison.
    secret = new_secret()
    headers = Signer(secret).headers(FIXED_ID, FIXED_TS, FIXED_BODY)
    ts = headers["X-Webhook-Timestamp"]
    payload = f"{ts}.{FIXED_BODY.decode('utf-8')}"
    expected = hmac.new(secret.encode("utf-8"), payload.encode("utf-8"), hashlib.sha256)
    assert hmac.compare_digest(expected.hexdigest(), headers["X-Webhook-Signature"])


def test_bytes_like_bodies_sign_like_bytes() -> None:
    signer = Signer(FIXED_SECRET)
    expected = signer.headers(FIXED_ID, FIXED_TS, FIXED_BODY)
    assert signer.headers(FIXED_ID, FIXED_TS, bytearray(FIXED_BODY)) == expected  # type: ignore[arg-type]
    assert signer.headers(FIXED_ID, FIXED_TS, memoryview(FIXED_BODY)) == expected  # type: ignore[arg-type]


# --- the public libraries verify hookd's headers ---------------------------------------------


@LIB_VERIFIERS
def test_libraries_accept_hookd_headers(lib_verify: LibVerify) -> None:
    secret = new_secret()
    body = json.dumps({"topic": "post.created", "data": {"title": "héllo"}}).encode()
    headers = Signer(secret).headers(new_event_id(_now() * 1000), _now(), body)
    lib_verify(secret, body, headers)


def test_standardwebhooks_returns_parsed_json() -> None:
    secret = new_secret()
    body = b'{"id": "notif_x", "n": 1}'
    headers = Signer(secret).headers("notif_x", _now(), body)
    assert standardwebhooks.Webhook(secret).verify(body, headers) == {"id": "notif_x", "n": 1}


@LIB_VERIFIERS
def test_libraries_accept_lowercased_header_names(lib_verify: LibVerify) -> None:
    # HTTP/2 (and many frameworks) hand receivers lowercase names.
    secret = new_secret()
    headers = Signer(secret).headers(FIXED_ID, _now(), FIXED_BODY)
    lib_verify(secret, FIXED_BODY, {k.lower(): v for k, v in headers.items()})


@LIB_VERIFIERS
def test_libraries_reject_tampered_body(lib_verify: LibVerify) -> None:
    secret = new_secret()
    headers = Signer(secret).headers(FIXED_ID, _now(), b'{"amount": 1}')
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        lib_verify(secret, b'{"amount": 9}', headers)


@LIB_VERIFIERS
def test_libraries_reject_wrong_secret(lib_verify: LibVerify) -> None:
    headers = Signer(new_secret()).headers(FIXED_ID, _now(), FIXED_BODY)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        lib_verify(new_secret(), FIXED_BODY, headers)


@LIB_VERIFIERS
@pytest.mark.parametrize("skew", [-600, 600])
def test_libraries_reject_stale_or_future_timestamp(lib_verify: LibVerify, skew: int) -> None:
    secret = new_secret()
    headers = Signer(secret).headers(FIXED_ID, _now() + skew, FIXED_BODY)
    with pytest.raises(standardwebhooks.WebhookVerificationError, match=r"too (old|new)"):
        lib_verify(secret, FIXED_BODY, headers)


def test_svix_error_is_the_standardwebhooks_error() -> None:
    # The parametrised tests above catch one class for both libraries; make sure that is valid.
    assert svix.webhooks.WebhookVerificationError is standardwebhooks.WebhookVerificationError


# --- hookd's own verifiers -------------------------------------------------------------------


def _signed(secret: str, ts: int = FIXED_TS) -> dict[str, str]:
    return Signer(secret).headers(FIXED_ID, ts, FIXED_BODY)


def _verify_both(secret: str, headers: dict[str, str], body: bytes, now: int) -> tuple[bool, bool]:
    fb = verify_featurebase(
        secret, headers["X-Webhook-Timestamp"], body, headers["X-Webhook-Signature"], now=now
    )
    std = verify_standard(
        secret,
        headers["webhook-id"],
        headers["webhook-timestamp"],
        body,
        headers["webhook-signature"],
        now=now,
    )
    return fb, std


def test_own_verifiers_accept() -> None:
    secret = new_secret()
    assert _verify_both(secret, _signed(secret), FIXED_BODY, FIXED_TS) == (True, True)


def test_own_verifiers_reject_tampered_body() -> None:
    secret = new_secret()
    assert _verify_both(secret, _signed(secret), FIXED_BODY + b" ", FIXED_TS) == (False, False)


def test_own_verifiers_reject_wrong_secret() -> None:
    headers = _signed(new_secret())
    assert _verify_both(new_secret(), headers, FIXED_BODY, FIXED_TS) == (False, False)


def test_own_verifiers_compare_every_byte() -> None:
    secret = new_secret()
    h = _signed(secret)
    fb = bytearray.fromhex(h["X-Webhook-Signature"])
    std = bytearray(base64.b64decode(h["webhook-signature"].removeprefix("v1,")))
    fb[-1] ^= 1
    std[-1] ^= 1
    h["X-Webhook-Signature"] = fb.hex()
    h["webhook-signature"] = "v1," + base64.b64encode(std).decode()
    assert _verify_both(secret, h, FIXED_BODY, FIXED_TS) == (False, False)


def test_own_standard_verifier_rejects_other_id() -> None:
    secret = new_secret()
    headers = _signed(secret)
    sig = headers["webhook-signature"]
    assert not verify_standard(secret, "notif_other", "1700000000", FIXED_BODY, sig, now=FIXED_TS)
    assert not verify_standard(secret, "", "1700000000", FIXED_BODY, sig, now=FIXED_TS)


def test_own_verifiers_reject_a_timestamp_swapped_in() -> None:
    # Replaying an old signature with a fresh timestamp header must not work.
    secret = new_secret()
    headers = _signed(secret, FIXED_TS)
    headers["X-Webhook-Timestamp"] = headers["webhook-timestamp"] = str(FIXED_TS + 1000)
    assert _verify_both(secret, headers, FIXED_BODY, FIXED_TS + 1000) == (False, False)


@pytest.mark.parametrize(
    ("skew", "ok"), [(0, True), (300, True), (-300, True), (301, False), (-301, False)]
)
def test_own_verifiers_timestamp_tolerance(skew: int, ok: bool) -> None:
    secret = new_secret()
    headers = _signed(secret, FIXED_TS)
    assert _verify_both(secret, headers, FIXED_BODY, FIXED_TS + skew) == (ok, ok)


def test_own_verifiers_custom_tolerance() -> None:
    secret = new_secret()
    h = _signed(secret, FIXED_TS)
    args = (secret, h["X-Webhook-Timestamp"], FIXED_BODY, h["X-Webhook-Signature"])
    assert verify_featurebase(*args, now=FIXED_TS + 10, tolerance=10)
    assert not verify_featurebase(*args, now=FIXED_TS + 11, tolerance=10)
    with pytest.raises(ValueError, match="tolerance"):
        verify_featurebase(*args, now=FIXED_TS, tolerance=-1)


@pytest.mark.parametrize(
    "bad_ts",
    [
        "",
        "abc",
        "1.7e9",
        "1700000000.0",
        "-1700000000",
        "+1700000000",
        " 1700000000",
        "1700000000 ",
        "1_700_000_000",
        "\u0661\u0667" + "\u0660" * 8,  # Arabic-Indic digits, which int() accepts
        "9" * 5000,  # int() refuses more than 4300 digits by raising
    ],
)
def test_own_verifiers_reject_malformed_timestamps(bad_ts: str) -> None:
    secret = new_secret()
    h = _signed(secret)
    h["X-Webhook-Timestamp"] = h["webhook-timestamp"] = bad_ts
    assert _verify_both(secret, h, FIXED_BODY, FIXED_TS) == (False, False)


def test_featurebase_verifier_signature_forms() -> None:
    secret = new_secret()
    h = _signed(secret)
    sig = h["X-Webhook-Signature"]

    def check(candidate: str) -> bool:
        return verify_featurebase(secret, "1700000000", FIXED_BODY, candidate, now=FIXED_TS)

    assert check(sig)
    assert check(sig.upper())
    for bad in ["", sig[:-1], sig + "0", " " + sig[1:], sig[:-2] + "zz", "é" * 64, "00" * 32]:
        assert not check(bad), bad


def test_standard_verifier_multiple_signatures() -> None:
    secret = new_secret()
    good = _signed(secret)["webhook-signature"]
    other = Signer(new_secret()).standard(FIXED_ID, FIXED_TS, FIXED_BODY)
    good_b64 = good.removeprefix("v1,")

    def check(header: str) -> bool:
        return verify_standard(secret, FIXED_ID, "1700000000", FIXED_BODY, header, now=FIXED_TS)

    assert check(good)
    assert check(f"{other} {good}")
    assert check(f"v1a,{good_b64} {good}")
    assert check(f"garbage v1,!!!! v1  {good}")
    assert not check(other)
    assert not check(f"v2,{good_b64}")
    assert not check(f"v1a,{good_b64}")
    assert not check(good_b64)
    assert not check("")
    assert not check(f"v1,{good_b64[:-1]}")


@LIB_VERIFIERS
def test_libraries_accept_hookd_signature_among_others(lib_verify: LibVerify) -> None:
    secret = new_secret()
    h = Signer(secret).headers(FIXED_ID, _now(), FIXED_BODY)
    other = Signer(new_secret()).standard(FIXED_ID, _now(), FIXED_BODY)
    h["webhook-signature"] = f"{other} {h['webhook-signature']}"
    lib_verify(secret, FIXED_BODY, h)


# --- secret refresh --------------------------------------------------------------------------


def test_secret_refresh_invalidates_old_signatures() -> None:
    old, new = new_secret(), new_secret()
    old_headers = signer_for(old).headers(FIXED_ID, FIXED_TS, FIXED_BODY)
    new_headers = signer_for(new).headers(FIXED_ID, FIXED_TS, FIXED_BODY)
    assert _verify_both(new, old_headers, FIXED_BODY, FIXED_TS) == (False, False)
    assert _verify_both(new, new_headers, FIXED_BODY, FIXED_TS) == (True, True)
    assert old_headers["X-Webhook-Signature"] != new_headers["X-Webhook-Signature"]
    assert old_headers["webhook-signature"] != new_headers["webhook-signature"]


@LIB_VERIFIERS
def test_secret_refresh_invalidates_old_signatures_for_libraries(lib_verify: LibVerify) -> None:
    old, new = new_secret(), new_secret()
    old_headers = signer_for(old).headers(FIXED_ID, _now(), FIXED_BODY)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        lib_verify(new, FIXED_BODY, old_headers)
    lib_verify(new, FIXED_BODY, signer_for(new).headers(FIXED_ID, _now(), FIXED_BODY))


# --- secrets and the cache -------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "whsec_",
        "whsec",
        FIXED_SECRET.removeprefix("whsec_"),  # no prefix
        "WHSEC_" + FIXED_SECRET.removeprefix("whsec_"),  # prefix is case-sensitive
        "whsk_" + FIXED_SECRET.removeprefix("whsec_"),
        FIXED_SECRET.rstrip("="),  # padding missing
        FIXED_SECRET + "=",  # excess padding
        FIXED_SECRET + "\n",
        " " + FIXED_SECRET,
        FIXED_SECRET[:20] + " " + FIXED_SECRET[20:],
        "whsec_" + base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(),  # URL-safe alphabet
        "whsec_AAAA==",  # decodes (to 3 bytes) but is not canonical
        "whsec_AB==",  # non-zero trailing bits: not canonical
        "whsec_!!!!",
        "whsec_ÀÀÀÀ",
        "whsec_" + "A" * 43,
    ],
)
def test_signer_rejects_malformed_secrets(bad: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        Signer(bad)
    with pytest.raises(ValueError):
        signer_for(bad)
    # Error messages may be logged, so they must not carry the secret.
    if len(bad) > len("whsec_"):
        assert bad not in str(excinfo.value)


def test_signer_rejects_non_str_secret() -> None:
    with pytest.raises(TypeError):
        Signer(FIXED_SECRET.encode())  # type: ignore[arg-type]


def test_signer_accepts_other_canonical_key_lengths() -> None:
    # Secrets imported from Svix carry 24-byte keys.
    Signer("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    Signer("whsec_AA==")


def test_verifiers_raise_on_malformed_secret() -> None:
    with pytest.raises(ValueError):
        verify_featurebase("nope", "1700000000", b"", "00" * 32, now=FIXED_TS)
    with pytest.raises(ValueError):
        verify_standard("nope", FIXED_ID, "1700000000", b"", "v1,AA==", now=FIXED_TS)


def test_repr_does_not_leak_secret() -> None:
    secret = new_secret()
    assert secret.removeprefix("whsec_") not in repr(Signer(secret))


def test_signer_for_caches_and_is_bounded() -> None:
    secret = new_secret()
    assert signer_for(secret) is signer_for(secret)
    assert signer_for(secret) is not signer_for(new_secret())
    maxsize = signer_for.cache_info().maxsize
    assert maxsize is not None
    assert 0 < maxsize <= 65536


def test_signer_is_safe_to_share_between_threads() -> None:
    signer = Signer(FIXED_SECRET)
    bodies = [str(i).encode() * 50 for i in range(200)]
    expected = [signer.headers(FIXED_ID, FIXED_TS, b) for b in bodies]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(5):
            got = list(pool.map(lambda b: signer.headers(FIXED_ID, FIXED_TS, b), bodies))
            assert got == expected


# --- properties ------------------------------------------------------------------------------

secrets_st = st.binary(min_size=1, max_size=64).map(
    lambda key: "whsec_" + base64.b64encode(key).decode()
)
ids_st = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=80)
timestamps_st = st.integers(min_value=0, max_value=2**40)


@settings(max_examples=300)
@given(secret=secrets_st, msg_id=ids_st, ts=timestamps_st, body=st.binary(max_size=4096))
def test_property_sign_verify_round_trip(secret: str, msg_id: str, ts: int, body: bytes) -> None:
    signer = signer_for(secret)
    headers = signer.headers(msg_id, ts, body)
    assert headers["X-Webhook-Signature"] == _expected_featurebase(secret, ts, body)
    assert headers["webhook-signature"] == _expected_standard(secret, msg_id, ts, body)
    assert verify_featurebase(
        secret, headers["X-Webhook-Timestamp"], body, headers["X-Webhook-Signature"], now=ts
    )
    assert verify_standard(
        secret, msg_id, headers["webhook-timestamp"], body, headers["webhook-signature"], now=ts
    )
    # Any change to the body breaks both signatures.
    tampered = body + b"\x00"
    assert not verify_featurebase(
        secret, headers["X-Webhook-Timestamp"], tampered, headers["X-Webhook-Signature"], now=ts
    )
    assert not verify_standard(
        secret, msg_id, headers["webhook-timestamp"], tampered, headers["webhook-signature"], now=ts
    )


@settings(max_examples=150)
@given(secret=secrets_st, msg_id=ids_st, text=st.text(max_size=2048))
def test_property_libraries_verify(secret: str, msg_id: str, text: str) -> None:
    # The libraries decode the body as UTF-8 before verifying, so feed them text bodies.
    body = text.encode()
    headers = signer_for(secret).headers(msg_id, _now(), body)
    _std_lib_verify(secret, body, headers)
    _svix_lib_verify(secret, body, headers)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, (1 << 48) - 1), st.binary(min_size=10, max_size=10))
def test_event_ids_are_uuid7_text_exactly_as_the_uuid_module_writes_it(
    now_ms: int, rand: bytes
) -> None:
    event_id = new_event_id(now_ms, lambda n: rand[:n])
    assert event_id.startswith("notif_")
    parsed = uuid.UUID(event_id.removeprefix("notif_"))
    assert str(parsed) == event_id.removeprefix("notif_")
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == now_ms
    # The 74 random bits (12 of rand_a, 62 of rand_b) come from the source, unchanged.
    random_bits = int.from_bytes(rand, "big")
    assert (parsed.int >> 64) & 0xFFF == (random_bits >> 68) & 0xFFF
    assert parsed.int & ((1 << 62) - 1) == random_bits & ((1 << 62) - 1)
