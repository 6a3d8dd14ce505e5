"""Reading and validating request input: JSON bodies, and the rules of SPEC §3 and §4.

Bodies are parsed here, not by FastAPI, so that hookd decides the order of checks
(authentication before the body is looked at) and every failure becomes a ``400`` with
a ``code`` and a dotted ``param``.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from hookd.clock import parse_rfc3339
from hookd.errors import ApiError
from hookd.topics import TOPIC_SET, is_operational_topic

__all__ = [
    "HEADER_NAME_PATTERN",
    "HEADER_VALUE_PATTERN",
    "IDEMPOTENCY_KEY_PATTERN",
    "MAX_BODY_BYTES",
    "MAX_HEADERS",
    "MAX_URL_LENGTH",
    "MULTILINE_TEXT_PATTERN",
    "NAME_PATTERN",
    "TEXT_PATTERN",
    "anchored",
    "check_header_map",
    "check_name",
    "check_publish_topic",
    "check_text",
    "check_topic",
    "check_url",
    "custom_error",
    "full_match",
    "integral",
    "parse_body",
    "parse_time",
    "read_body",
    "url_pattern",
]

M = TypeVar("M", bound=BaseModel)

MAX_BODY_BYTES = 256 * 1024
MAX_HEADERS = 10
MAX_URL_LENGTH = 2048

# The text rules below are regular expressions written in the subset that Python's ``re``,
# ECMA-262 and JSON Schema validators read alike, because each is used twice: hookd's check
# is a full match of the pattern (the error message is chosen after the fact), and
# /openapi.json states the same pattern. What the document says and what the server accepts
# cannot drift apart.

_CONTROL_CHARS = r"\x00-\x1f\x7f-\x9f"
# What Python's str.strip() removes and str.isspace() calls a space.
_SPACE_CHARS = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_NOT_SPACE_OR_CONTROL = rf"[^{_SPACE_CHARS}{_CONTROL_CHARS}]"

#: 1-100 characters after trimming spaces, none of them a control character.
NAME_PATTERN = (
    rf"[{_SPACE_CHARS}]*{_NOT_SPACE_OR_CONTROL}"
    rf"(?:[^{_CONTROL_CHARS}]{{0,98}}{_NOT_SPACE_OR_CONTROL})?[{_SPACE_CHARS}]*"
)
#: Text without control characters (tabs and line breaks allowed when ``multiline``).
TEXT_PATTERN = rf"[^{_CONTROL_CHARS}]*"
MULTILINE_TEXT_PATTERN = r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*"
#: An HTTP token (RFC 9110), not one of the names hookd sets on deliveries itself.
_RESERVED_HEADERS = (
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "transfer-encoding",
    "connection",
)
_RESERVED_PREFIXES = ("x-webhook-", "webhook-")


def _caseless(text: str) -> str:
    """A pattern matching ``text`` in any case (JSON Schema patterns have no flags)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in text)


HEADER_NAME_PATTERN = (
    rf"(?!(?:{'|'.join(map(_caseless, _RESERVED_HEADERS))})$)"
    rf"(?!{'|'.join(map(_caseless, _RESERVED_PREFIXES))})"
    r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}"
)
HEADER_VALUE_PATTERN = r"[\t\x20-\x7e]{0,1024}"
#: 1-255 printable ASCII characters without spaces.
IDEMPOTENCY_KEY_PATTERN = r"[\x21-\x7e]{1,255}"

_DEC_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_DEC_OCTET}(?:\.{_DEC_OCTET}){{3}}"
_H16 = "[0-9A-Fa-f]{1,4}"
_LS32 = rf"(?:{_H16}:{_H16}|{_IPV4})"


def _ipv6() -> str:
    """RFC 3986's IPv6address, the nine forms of where ``::`` stands."""
    forms = [rf"(?:{_H16}:){{6}}{_LS32}", rf"::(?:{_H16}:){{5}}{_LS32}"]
    for before, after in ((0, 4), (1, 3), (2, 2), (3, 1), (4, 0)):
        head = rf"(?:(?:{_H16}:){{0,{before}}}{_H16})?" if before else f"(?:{_H16})?"
        forms.append(rf"{head}::(?:{_H16}:){{{after}}}{_LS32}")
    forms.append(rf"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}")
    forms.append(rf"(?:(?:{_H16}:){{0,6}}{_H16})?::")
    return "(?:" + "|".join(forms) + ")"


_HOST = rf"(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?|\[{_ipv6()}\])"
_PORT = r"(?::(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
_URL_REST = rf"(?:[/?#][^{_SPACE_CHARS}{_CONTROL_CHARS}]*)?"


def url_pattern(*, allow_http: bool) -> str:
    """An absolute https:// URL (http:// too when ``allow_http``) with an ASCII host name or
    IP address, an optional port 1-65535, and no user-info, spaces or control characters."""
    scheme = "[Hh][Tt][Tt][Pp][Ss]?" if allow_http else "[Hh][Tt][Tt][Pp][Ss]"
    return f"{scheme}://{_HOST}{_PORT}{_URL_REST}"


def anchored(pattern: str) -> str:
    """``pattern`` as a JSON Schema ``pattern`` (which searches) that must match whole."""
    return f"^(?:{pattern})$"


_compiled = functools.lru_cache(maxsize=None)(re.compile)


def full_match(pattern: str, value: str) -> bool:
    return _compiled(pattern).fullmatch(value) is not None


_CONTROL = re.compile(f"[{_CONTROL_CHARS}]")
_SPACE_OR_CONTROL = re.compile(f"[{_SPACE_CHARS}{_CONTROL_CHARS}]")


def custom_error(code: str, message: str) -> PydanticCustomError:
    """An error of hookd's own checks, whose ``code`` is the API error code."""
    return _fail(code, message)


def _fail(code: str, message: str, sub: str | None = None) -> PydanticCustomError:
    """An error of hookd's own checks: ``code`` is the API error code; ``sub`` extends the
    dotted param (a header name within requestConfig.headers)."""
    shown = (sub or "").encode("utf-8", "backslashreplace").decode("utf-8")
    return PydanticCustomError(code, message, {"hookd": True, "sub": shown})


def check_text(value: str, *, multiline: bool = False) -> str:
    """Refuse control characters (NUL above all): they break logs, headers and PostgreSQL."""
    if not full_match(MULTILINE_TEXT_PATTERN if multiline else TEXT_PATTERN, value):
        allowed = " (tabs and line breaks are fine)" if multiline else ""
        raise _fail(
            "parameter_invalid", f"must not contain control characters{allowed}; remove them"
        )
    return value


def check_name(value: str) -> str:
    """A webhook's name: 1 to 100 characters after trimming spaces, no control characters;
    the trimmed name."""
    if not full_match(NAME_PATTERN, value):
        trimmed = value.strip()
        if _CONTROL.search(trimmed):
            check_text(trimmed)
        raise _fail(
            "parameter_invalid_length",
            f"must be 1 to 100 characters after trimming spaces, not {len(trimmed)}",
        )
    return value.strip()


def check_topic(value: str) -> str:
    if value not in TOPIC_SET:
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise _fail(
            "topic_unknown",
            f"{shown!r} is not a known topic; use one of the topics listed in the README",
        )
    return value


def check_publish_topic(value: str) -> str:
    """A topic that ``POST /v2/events`` takes: a known topic that is not hookd's own."""
    check_topic(value)
    if is_operational_topic(value):
        raise _fail(
            "topic_reserved",
            f"{value!r} is an operational topic that only hookd publishes; publish one of "
            "Featurebase's topics instead",
        )
    return value


def check_url(value: str, *, allow_http: bool) -> str:
    """An absolute https:// URL with a host and no user-info (http:// if the operator allows):
    a full match of :func:`url_pattern`."""
    if len(value) <= MAX_URL_LENGTH and full_match(url_pattern(allow_http=allow_http), value):
        return value
    # Refused: say why, as precisely as the URL lets us.
    if len(value) > MAX_URL_LENGTH:
        raise _fail("url_invalid", f"must be at most {MAX_URL_LENGTH} characters")
    if _SPACE_OR_CONTROL.search(value):
        raise _fail("url_invalid", "must not contain spaces or control characters")
    scheme, sep, rest = value.partition("://")
    scheme = scheme.lower()
    if scheme == "http" and sep:
        raise _fail(
            "url_scheme_invalid", "must use https:// (http:// needs HOOKD_ALLOW_HTTP on the server)"
        )
    if scheme != "https" or not sep:
        raise _fail(
            "url_scheme_invalid", "must be an absolute https:// URL, e.g. https://example.com/hook"
        )
    authority = re.split("[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        raise _fail("url_invalid", "must not contain a user name or password")
    if authority.startswith("["):
        host, _, after = authority.partition("]")
        has_port, port = after.startswith(":"), after[1:]
    else:
        host, colon, port = authority.partition(":")
        has_port = bool(colon)
    if host in ("", "["):
        raise _fail("url_invalid", "must have a host, e.g. https://example.com/hook")
    if has_port and not (full_match("[1-9][0-9]{0,4}", port) and int(port) <= 65535):
        raise _fail("url_invalid", "has an invalid port; use a number from 1 to 65535")
    raise _fail(
        "url_invalid",
        "has an invalid host; use an ASCII host name (an internationalized one in its xn-- "
        "form) or an IP address, IPv6 in brackets",
    )


# A query string's "+" arrives as a space (form encoding): "10:30:00 02:00" meant "+02:00".
_SPACED_OFFSET = re.compile(r"(?<=\d) (?=\d\d:\d\d\Z)")


def parse_time(value: str, field: str) -> int:
    """Milliseconds for an RFC 3339 date-time with any offset (``Z`` or ``±hh:mm``; a ``+``
    that arrived as a space in a query string is read as ``+``); a ``400`` naming ``field``
    otherwise."""
    try:
        return parse_rfc3339(_SPACED_OFFSET.sub("+", value))
    except (ValueError, OverflowError):
        raise ApiError(
            400,
            "parameter_invalid",
            f"{field} must be an RFC 3339 date-time with a timezone, e.g. 2025-01-15T10:30:00Z.",
            field,
        ) from None


def check_header_map(headers: dict[str, str]) -> dict[str, str]:
    """Custom delivery headers: at most 10 HTTP tokens with printable values, none of the
    names hookd sets itself."""
    if len(headers) > MAX_HEADERS:
        raise _fail("headers_too_many", f"must have at most {MAX_HEADERS} entries; remove some")
    seen: set[str] = set()
    for name, value in headers.items():
        lower = name.lower()
        if not full_match(HEADER_NAME_PATTERN, name):
            if lower in _RESERVED_HEADERS or lower.startswith(_RESERVED_PREFIXES):
                raise _fail(
                    "header_reserved", "is set by hookd itself and cannot be overridden", name
                )
            raise _fail(
                "header_name_invalid",
                "is not a valid HTTP header name (1 to 256 letters, digits and !#$%&'*+-.^_`|~)",
                name,
            )
        if lower in seen:
            raise _fail(
                "header_name_invalid",
                "is given twice (header names are case-insensitive); keep one",
                name,
            )
        seen.add(lower)
        if not full_match(HEADER_VALUE_PATTERN, value):
            raise _fail(
                "header_value_invalid",
                "must be at most 1024 printable ASCII characters without line breaks",
                name,
            )
    return headers


def integral(value: Any) -> Any:
    """A JSON number with an integral value (``3607.0``) as an int: JSON Schema calls it an
    integer, so hookd takes it wherever it takes integers. Anything else is left for the
    field's own check to refuse."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


async def read_body(request: Request) -> bytes:
    """The raw body, after checking its content type (``415``)."""
    body = await request.body()
    if not body:
        return body
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise ApiError(
            415,
            "content_type_unsupported",
            "Send the request body as JSON with the header Content-Type: application/json.",
        )
    return body


def _decode(body: bytes) -> Any:
    if not body:
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        first = exc
    # orjson refuses what the standard library accepts for good reasons (NaN, a BOM) and
    # for one it should accept: integers beyond 64 bits, which the fields' ranges then refuse.
    try:
        data = json.loads(body, parse_constant=_refuse_constant)
        # The standard library lets lone surrogates ("\ud800") through; text that cannot be
        # UTF-8 cannot be stored or sent.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError, UnicodeError):
        raise ApiError(
            400, "json_invalid", f"The request body is not valid JSON: {first}."
        ) from None
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# Location parts pydantic adds for its own machinery, not names the client sent.
_MACHINERY = re.compile(
    r"(function-(after|before|wrap|plain)|json-or-python|lax-or-strict)\[.*\]\Z|\[key\]\Z"
)


def _param(err: ErrorDetails) -> str | None:
    loc = [str(part) for part in err["loc"] if not _MACHINERY.match(str(part))]
    ctx = err.get("ctx") or {}
    if ctx.get("sub"):
        loc.append(str(ctx["sub"]))
    return ".".join(loc) or None


_EXPECTED = {
    "model_type": "a JSON object",
    "model_attributes_type": "a JSON object",
    "dict_type": "a JSON object",
    "list_type": "an array",
    "string_type": "a string",
    "str_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "int_parsing": "an integer",
    "bool_type": "true or false",
}
# How to undo a null where a field takes none.
_NULL_HINTS = {"requestConfig.headers": "; send {} to remove every header"}


def _describe(err: ErrorDetails, param: str | None) -> tuple[str, str]:
    """The code and a one-sentence message (what was wrong, how to fix it) for an error."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    name = param or "The request body"
    raw = err.get("input")
    if ctx.get("hookd"):
        # hookd's own checks (see _fail): the type is the code.
        return kind, f"{name} {err['msg']}."
    if kind == "missing":
        return "parameter_missing", f"{name} is required; add it."
    if kind == "extra_forbidden":
        return "parameter_unknown", f"{name} is not a parameter of this request; remove it."
    if kind in _EXPECTED:
        if isinstance(raw, float) and abs(raw) >= 2**53:
            # A huge integer in the JSON, which the parser turned into a float.
            return "parameter_out_of_range", f"{name} is out of range."
        if raw is None:
            return (
                "parameter_invalid_type",
                f"{name} must be {_EXPECTED[kind]}, not null{_NULL_HINTS.get(name, '')}.",
            )
        return "parameter_invalid_type", f"{name} must be {_EXPECTED[kind]}."
    if kind in ("greater_than_equal", "greater_than"):
        bound = ctx.get("ge", ctx.get("gt"))
        word = "at least" if kind == "greater_than_equal" else "more than"
        return "parameter_out_of_range", f"{name} must be {word} {bound}."
    if kind in ("less_than_equal", "less_than"):
        bound = ctx.get("le", ctx.get("lt"))
        word = "at most" if kind == "less_than_equal" else "less than"
        return "parameter_out_of_range", f"{name} must be {word} {bound}."
    if kind == "string_too_long":
        return "parameter_too_long", f"{name} must be at most {ctx.get('max_length')} characters."
    if kind == "too_long":
        return "parameter_too_long", f"{name} must have at most {ctx.get('max_length')} items."
    if kind == "string_too_short":
        count = ctx.get("min_length")
        return (
            "parameter_too_short",
            f"{name} must be at least {count} character{'s' * (count != 1)}.",
        )
    if kind == "too_short":
        count = ctx.get("min_length")
        return "parameter_too_short", f"{name} must have at least {count} item{'s' * (count != 1)}."
    if kind in ("literal_error", "enum"):
        return "parameter_invalid", f"{name} must be {ctx.get('expected', 'one of its values')}."
    if kind in ("string_unicode", "string_sub_type"):
        return "parameter_invalid", f"{name} must be a string of Unicode text."
    return "parameter_invalid", f"{name} is not a valid value; see /openapi.json for its rule."


def validation_error(exc: ValidationError) -> ApiError:
    """The ``400`` for the first problem pydantic found."""
    err = exc.errors(include_url=False)[0]
    param = _param(err)
    code, message = _describe(err, param)
    return ApiError(400, code, message, param)


def parse_body(body: bytes, model: type[M], context: dict[str, Any] | None = None) -> M:
    """Decode a JSON object body and validate it against ``model``."""
    data = _decode(body)
    if not isinstance(data, dict):
        raise ApiError(400, "body_invalid", "The request body must be a JSON object.")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise validation_error(exc) from None
