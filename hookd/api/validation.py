"""Reading and validating request input: JSON bodies, and the rules of SPEC §3 and §4.

Bodies are parsed here, not by FastAPI, so that hookd decides the order of checks
(authentication before the body is looked at) and every failure becomes a ``400`` with
a ``code`` and a dotted ``param``.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from hookd.errors import ApiError
from hookd.topics import TOPIC_SET

__all__ = [
    "MAX_BODY_BYTES",
    "check_header_map",
    "check_text",
    "check_topic",
    "check_url",
    "custom_error",
    "parse_body",
    "read_body",
]

M = TypeVar("M", bound=BaseModel)

MAX_BODY_BYTES = 256 * 1024

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*\Z")
_HOST_LABELS = re.compile(r"[A-Za-z0-9._-]+\Z")
_RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "user-agent", "transfer-encoding", "connection"}
)
_RESERVED_PREFIXES = ("x-webhook-", "webhook-")
MAX_HEADERS = 10


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
    if (_CONTROL_MULTILINE if multiline else _CONTROL).search(value):
        raise _fail("parameter_invalid", "must not contain control characters")
    return value


def check_topic(value: str) -> str:
    if value not in TOPIC_SET:
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise _fail(
            "topic_unknown", f"{shown!r} is not a known topic; see the topics in the README"
        )
    return value


def check_url(value: str, *, allow_http: bool) -> str:
    """An absolute https:// URL with a host and no user-info (http:// if the operator allows)."""
    if len(value) > 2048:
        raise _fail("url_invalid", "must be at most 2048 characters")
    if any(c.isspace() for c in value) or _CONTROL.search(value):
        raise _fail("url_invalid", "must not contain spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError:
        raise _fail("url_invalid", "is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme == "http" and not allow_http:
        raise _fail(
            "url_scheme_invalid", "must use https:// (http:// needs HOOKD_ALLOW_HTTP on the server)"
        )
    if scheme not in ("https", "http"):
        raise _fail("url_scheme_invalid", "must be an absolute https:// URL")
    if "@" in parts.netloc:
        raise _fail("url_invalid", "must not contain a user name or password")
    host = parts.hostname or ""
    if not host:
        raise _fail("url_invalid", "must have a host")
    if port == 0:
        raise _fail("url_invalid", "has an invalid port")
    if ":" not in host:  # IPv6 literals were checked by urlsplit's bracket parsing
        try:
            ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
        except UnicodeError:
            raise _fail("url_invalid", "has an invalid host name") from None
        if not _HOST_LABELS.match(ascii_host) or ".." in ascii_host or len(ascii_host) > 253:
            raise _fail("url_invalid", "has an invalid host name")
    return value


def check_header_map(headers: dict[str, str]) -> dict[str, str]:
    """Custom delivery headers: at most 10 HTTP tokens with printable values, none of the
    names hookd sets itself."""
    if len(headers) > MAX_HEADERS:
        raise _fail("headers_too_many", f"must have at most {MAX_HEADERS} entries")
    seen: set[str] = set()
    for name, value in headers.items():
        lower = name.lower()
        if not _TOKEN.match(name) or len(name) > 256:
            raise _fail("header_name_invalid", "is not a valid HTTP header name", name)
        if lower in _RESERVED_HEADERS or lower.startswith(_RESERVED_PREFIXES):
            raise _fail("header_reserved", "is set by hookd itself and cannot be overridden", name)
        if lower in seen:
            raise _fail(
                "header_name_invalid", "is given twice (header names are case-insensitive)", name
            )
        seen.add(lower)
        if len(value) > 1024:
            raise _fail("header_value_invalid", "must be at most 1024 characters", name)
        if not _HEADER_VALUE.match(value):
            raise _fail("header_value_invalid", "must be printable ASCII without line breaks", name)
    return headers


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


def _describe(err: ErrorDetails, param: str | None) -> tuple[str, str]:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    name = param or "The request body"
    if ctx.get("hookd"):
        # hookd's own checks (see _fail): the type is the code.
        return kind, f"{name} {err['msg']}."
    if kind == "missing":
        return "parameter_missing", f"{name} is required."
    if kind == "extra_forbidden":
        return "parameter_unknown", f"{name} is not a parameter of this request; remove it."
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "parameter_invalid_type", f"{name} must be a JSON object."
    if kind == "list_type":
        return "parameter_invalid_type", f"{name} must be an array."
    if kind in ("string_type", "str_type"):
        return "parameter_invalid_type", f"{name} must be a string."
    if kind in ("int_type", "int_from_float", "int_parsing"):
        raw = err.get("input")
        if isinstance(raw, float) and abs(raw) >= 2**53:
            # A huge integer in the JSON, which the parser turned into a float.
            return "parameter_out_of_range", f"{name} is out of range."
        return "parameter_invalid_type", f"{name} must be an integer."
    if kind == "bool_type":
        return "parameter_invalid_type", f"{name} must be true or false."
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return "parameter_out_of_range", f"{name} is out of range: {err['msg'].lower()}."
    if kind in ("string_too_long", "too_long"):
        return "parameter_too_long", f"{name} {err['msg'].lower().removeprefix('string ')}."
    if kind in ("string_too_short", "too_short"):
        return "parameter_too_short", f"{name} {err['msg'].lower().removeprefix('string ')}."
    if kind in ("literal_error", "enum"):
        return "parameter_invalid", f"{name} {err['msg'].lower().replace('input ', '')}."
    if kind in ("string_unicode", "string_sub_type"):
        return "parameter_invalid", f"{name} is not a valid string."
    return "parameter_invalid", f"{name} is invalid: {err['msg']}."


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
