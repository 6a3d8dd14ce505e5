"""Webhook request signing and verification (SPEC §5).

Every delivery carries two independent signatures over the same raw body:

* Featurebase's scheme: ``X-Webhook-Timestamp`` (Unix seconds) and ``X-Webhook-Signature``,
  the lowercase hex HMAC-SHA256 of ``"{timestamp}.{body}"`` keyed with the *whole* secret
  string, ``whsec_`` prefix included, as UTF-8.
* Standard Webhooks: ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature:
  v1,<base64>``, the HMAC-SHA256 of ``"{id}.{timestamp}.{body}"`` keyed with the
  base64-decoded part of the secret after ``whsec_``. The public ``standardwebhooks`` and
  ``svix`` libraries verify these headers unmodified.

During a secret rotation's grace period (SPEC §3) ``webhook-signature`` carries one ``v1,``
signature per live secret, newest first (:func:`signature_headers`); ``X-Webhook-Signature``
is always the newest secret's. :func:`verify` is the receiver's side of both schemes.

The delivery engine signs on its hot path, so :class:`Signer` keys both HMACs once per secret
and only copies the keyed state per message; :func:`signer_for` caches Signers by secret.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from hookd.errors import VerificationError
from hookd.ids import SECRET_PREFIX

__all__ = [
    "DEFAULT_TOLERANCE",
    "FEATUREBASE_SIGNATURE_HEADER",
    "FEATUREBASE_TIMESTAMP_HEADER",
    "STANDARD_ID_HEADER",
    "STANDARD_SIGNATURE_HEADER",
    "STANDARD_TIMESTAMP_HEADER",
    "Signer",
    "signature_headers",
    "signer_for",
    "verify",
    "verify_featurebase",
    "verify_standard",
]

# Featurebase documents these names in this casing; receivers look them up case-insensitively
# anyway, but matching the documentation keeps captured requests recognisable.
FEATUREBASE_TIMESTAMP_HEADER = "X-Webhook-Timestamp"
FEATUREBASE_SIGNATURE_HEADER = "X-Webhook-Signature"
# The Standard Webhooks spec writes its headers in lowercase (HTTP/2 lowercases all names).
STANDARD_ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"

# Five minutes, the window both Featurebase's docs and the Standard Webhooks libraries use.
DEFAULT_TOLERANCE = 300

_SIGNER_CACHE_SIZE = 4096
# A Unix timestamp in seconds has 10 digits until the year 2286; the cap keeps int() away
# from attacker-sized strings (which would otherwise raise past 4300 digits).
_MAX_TIMESTAMP_DIGITS = 20


def _decode_secret(secret: str) -> bytes:
    """The Standard Webhooks key: the base64 after ``whsec_``, which must be canonical.

    Canonical means padded standard base64 that re-encodes to the same text. The libraries
    decode leniently (they append ``==`` and skip stray characters), so only a canonical
    secret is guaranteed to give them the same key as hookd; it also keeps one secret from
    having several spellings whose Featurebase keys differ while their Standard keys agree.
    """
    if not isinstance(secret, str):
        raise TypeError(f"webhook secret must be str, not {type(secret).__name__}")
    # The messages never echo the secret: these errors can end up in logs.
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"webhook secret must start with {SECRET_PREFIX!r}")
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII characters
        raise ValueError(f"webhook secret is not {SECRET_PREFIX!r} + valid base64") from None
    if not key:
        raise ValueError("webhook secret is empty")
    if base64.b64encode(key).decode("ascii") != encoded:
        raise ValueError(f"webhook secret is not {SECRET_PREFIX!r} + canonical padded base64")
    return key


class _Mac(Protocol):
    def copy(self) -> _Mac: ...
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


def _keyed(key: bytes) -> _Mac:
    """An HMAC-SHA256 keyed with ``key``, to be copied per message: OpenSSL's HMAC object
    itself where :mod:`hmac` wraps one. The wrapper's ``copy()`` is Python code that cost
    as much as the HMAC of a whole delivery body (1.1 of 2.4 µs here), twice per delivery."""
    wrapper = hmac.new(key, digestmod=hashlib.sha256)
    mac: _Mac = getattr(wrapper, "_hmac", None) or wrapper
    return mac


class Signer:
    """Signs webhook deliveries with one secret, in both of hookd's schemes.

    Instances are immutable after construction and safe to share between threads: the
    keyed HMAC objects are only ever copied, never updated in place.
    """

    __slots__ = ("_featurebase_mac", "_standard_mac")

    def __init__(self, secret: str) -> None:
        """Key both HMACs for ``secret``.

        Raises:
            ValueError: if ``secret`` is not ``whsec_`` + non-empty canonical base64.
        """
        key = _decode_secret(secret)
        # Keying costs two SHA-256 compressions; doing it here leaves copy() per message.
        self._featurebase_mac = _keyed(secret.encode("utf-8"))
        self._standard_mac = _keyed(key)

    def __repr__(self) -> str:
        # Deliberately without the secret, so a logged Signer leaks nothing.
        return f"<{type(self).__name__}>"

    def _featurebase_digest(self, timestamp: str, body: bytes) -> bytes:
        mac = self._featurebase_mac.copy()
        # Separate update() calls avoid concatenating, i.e. copying, a possibly large body.
        mac.update(f"{timestamp}.".encode("ascii"))
        mac.update(body)
        return mac.digest()

    def _standard_digest(self, msg_id: str, timestamp: str, body: bytes) -> bytes:
        mac = self._standard_mac.copy()
        mac.update(f"{msg_id}.{timestamp}.".encode())
        mac.update(body)
        return mac.digest()

    def featurebase(self, timestamp: int, body: bytes) -> str:
        """The ``X-Webhook-Signature`` value: lowercase hex HMAC-SHA256 of ``"{ts}.{body}"``."""
        return self._featurebase_digest(str(timestamp), body).hex()

    def standard(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``"{id}.{ts}.{body}"``.

        ``msg_id`` must be non-empty, or Standard Webhooks receivers reject the request.
        """
        digest = self._standard_digest(msg_id, str(timestamp), body)
        return "v1," + base64.b64encode(digest).decode("ascii")

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """The five signature headers for one delivery of ``body``.

        Keys: ``X-Webhook-Timestamp``, ``X-Webhook-Signature``, ``webhook-id``,
        ``webhook-timestamp``, ``webhook-signature``. ``timestamp`` is the sending time in
        Unix seconds; ``msg_id`` is the event id (``notif_…``). Callers should apply these
        after any user-configured headers so that those cannot override them.
        """
        ts = str(timestamp)
        standard = base64.b64encode(self._standard_digest(msg_id, ts, body)).decode("ascii")
        return {
            FEATUREBASE_TIMESTAMP_HEADER: ts,
            FEATUREBASE_SIGNATURE_HEADER: self._featurebase_digest(ts, body).hex(),
            STANDARD_ID_HEADER: msg_id,
            STANDARD_TIMESTAMP_HEADER: ts,
            STANDARD_SIGNATURE_HEADER: "v1," + standard,
        }


@functools.lru_cache(maxsize=_SIGNER_CACHE_SIZE)
def signer_for(secret: str) -> Signer:
    """The :class:`Signer` for ``secret``, from a bounded LRU cache.

    Keyed by the secret string itself, so a refreshed secret simply gets a new Signer and the
    old one ages out. Malformed secrets raise ValueError and are not cached.
    """
    return Signer(secret)


def signature_headers(
    secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The five signature headers of :meth:`Signer.headers`, signed with ``secrets`` (the
    live secrets, newest first): ``X-Webhook-Signature`` with the newest only, and
    ``webhook-signature`` with one space-separated ``v1,`` entry per secret, in that order,
    so that a receiver holding any one of them verifies with the Standard Webhooks libraries.
    """
    headers = signer_for(secrets[0]).headers(msg_id, timestamp, body)
    if len(secrets) > 1:
        older = (signer_for(s).standard(msg_id, timestamp, body) for s in secrets[1:])
        headers[STANDARD_SIGNATURE_HEADER] = " ".join([headers[STANDARD_SIGNATURE_HEADER], *older])
    return headers


def _timestamp_seconds(timestamp: str) -> int | None:
    # Only plain ASCII digits: int() would also take signs, spaces, underscores and non-ASCII
    # digits, none of which a sender produces.
    if not (0 < len(timestamp) <= _MAX_TIMESTAMP_DIGITS and timestamp.isascii()):
        return None
    return int(timestamp) if timestamp.isdigit() else None


def _timestamp_is_fresh(timestamp: str, now: int, tolerance: int) -> bool:
    if tolerance < 0:
        raise ValueError("tolerance must not be negative")
    seconds = _timestamp_seconds(timestamp)
    return seconds is not None and abs(now - seconds) <= tolerance


def verify_featurebase(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: int,
    tolerance: int = DEFAULT_TOLERANCE,
) -> bool:
    """Whether ``X-Webhook-Signature: signature`` authenticates ``body`` sent at ``timestamp``.

    ``timestamp`` is the raw ``X-Webhook-Timestamp`` header and is signed as received. It
    must be decimal Unix seconds within ``tolerance`` seconds of ``now`` in either direction.
    The hex signature is accepted in either case and compared in constant time.

    Raises:
        ValueError: if ``secret`` is malformed or ``tolerance`` is negative (caller bugs,
            unlike a bad request, which just returns False).
    """
    signer = signer_for(secret)
    if not _timestamp_is_fresh(timestamp, now, tolerance):
        return False
    # fromhex() would skip whitespace, so the length and ASCII checks come first; a wrong
    # length reveals nothing about the expected value.
    if len(signature) != 2 * hashlib.sha256().digest_size or not signature.isascii():
        return False
    try:
        given = bytes.fromhex(signature)
    except ValueError:
        return False
    expected = signer._featurebase_digest(timestamp, body)
    return hmac.compare_digest(expected, given)


def verify_standard(
    secret: str,
    msg_id: str,
    timestamp: str,
    body: bytes,
    signature_header: str,
    *,
    now: int,
    tolerance: int = DEFAULT_TOLERANCE,
) -> bool:
    """Whether a Standard Webhooks ``webhook-signature`` header authenticates ``body``.

    ``msg_id`` and ``timestamp`` are the raw ``webhook-id`` and ``webhook-timestamp``
    headers. The timestamp must be decimal Unix seconds within ``tolerance`` seconds of
    ``now`` in either direction. ``signature_header`` may list several space-separated
    ``v1,<base64>`` entries (as during secret rotation); any one matching passes. Entries of
    other versions and malformed entries are ignored rather than raising.

    Raises:
        ValueError: if ``secret`` is malformed or ``tolerance`` is negative.
    """
    signer = signer_for(secret)
    if not msg_id or not _timestamp_is_fresh(timestamp, now, tolerance):
        return False
    expected = signer._standard_digest(msg_id, timestamp, body)
    for entry in signature_header.split(" "):
        version, comma, encoded = entry.partition(",")
        if version != "v1" or not comma:
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, given):
            return True
    return False


def verify(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    tolerance: int = DEFAULT_TOLERANCE,
    *,
    now: int | None = None,
) -> None:
    """Check that a request came from hookd, signed with ``secret``; raise if not.

    ``body`` is the raw request body (bytes as received; a str is taken as its UTF-8), and
    ``headers`` the request's headers, any mapping, names in any case. Either scheme passes:
    Standard Webhooks (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``, whose
    several ``v1,`` entries during a secret rotation are each tried) or Featurebase's
    (``X-Webhook-Timestamp``, ``X-Webhook-Signature``). The timestamp must be within
    ``tolerance`` seconds of ``now`` (Unix seconds; default: this machine's clock).

    Raises:
        VerificationError: no signature headers, a signature that matches none of the ones
            sent, or a timestamp outside the tolerance; the message says which.
        ValueError: ``secret`` is not a hookd secret (``whsec_`` + base64), or ``tolerance``
            is negative: a mistake in the receiver, not in the request.
    """
    if isinstance(body, str):
        body = body.encode("utf-8")
    signer_for(secret)  # a malformed secret is the receiver's mistake: ValueError first
    if tolerance < 0:
        raise ValueError("tolerance must not be negative")
    given = {name.lower(): value for name, value in headers.items()}
    now = int(time.time()) if now is None else now
    schemes = []
    if STANDARD_SIGNATURE_HEADER in given and STANDARD_TIMESTAMP_HEADER in given:
        schemes.append((given[STANDARD_TIMESTAMP_HEADER], STANDARD_TIMESTAMP_HEADER))
    featurebase_ts = FEATUREBASE_TIMESTAMP_HEADER.lower()
    if FEATUREBASE_SIGNATURE_HEADER.lower() in given and featurebase_ts in given:
        schemes.append((given[featurebase_ts], FEATUREBASE_TIMESTAMP_HEADER))
    if not schemes:
        raise VerificationError(
            "The request has no hookd signature: expected the headers webhook-id, "
            "webhook-timestamp and webhook-signature, or X-Webhook-Timestamp and "
            "X-Webhook-Signature."
        )
    for timestamp, name in schemes:
        seconds = _timestamp_seconds(timestamp)
        if seconds is None:
            raise VerificationError(f"{name} is not a time in Unix seconds: {timestamp[:30]!r}.")
        if abs(now - seconds) > tolerance:
            raise VerificationError(
                f"{name} is {abs(now - seconds)} s away from this machine's clock, more than "
                f"the tolerance of {tolerance} s: a replayed request, or a clock that is off."
            )
    standard = STANDARD_SIGNATURE_HEADER in given and verify_standard(
        secret,
        given.get(STANDARD_ID_HEADER, ""),
        given.get(STANDARD_TIMESTAMP_HEADER, ""),
        body,
        given[STANDARD_SIGNATURE_HEADER],
        now=now,
        tolerance=tolerance,
    )
    if standard:
        return
    featurebase = FEATUREBASE_SIGNATURE_HEADER.lower() in given and verify_featurebase(
        secret,
        given.get(featurebase_ts, ""),
        body,
        given[FEATUREBASE_SIGNATURE_HEADER.lower()],
        now=now,
        tolerance=tolerance,
    )
    if not featurebase:
        raise VerificationError(
            "The signature does not match this secret: the body was changed on the way, or "
            "the request was signed with another secret (after a refresh, use the new one)."
        )
