"""The exceptions hookd raises on purpose, under one root.

Every error a user can cause maps to an :class:`ApiError` with a stable ``code``;
anything else that escapes to the HTTP layer is a server fault (``500``).

::

    HookdError
    ├── ApiError                  an error answered to an API client (status, code, message, param)
    │   └── DatabaseUnavailable   503 database_unavailable
    ├── SettingsError             an invalid HOOKD_* value; hookd stops at start-up
    ├── StoreError                a database fault that is not the client's doing
    │   └── DatabaseUnavailable   (also an ApiError)
    ├── AddressRefused            a webhook URL resolved to an address hookd will not deliver to
    └── VerificationError         hookd.verify: a request's signature is missing, wrong or stale
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "ERROR_CODES",
    "AddressRefused",
    "ApiError",
    "DatabaseUnavailable",
    "HookdError",
    "SettingsError",
    "StoreError",
    "VerificationError",
    "error_type_for_status",
]

_TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    431: "invalid_request_error",
    401: "authentication_error",
    429: "rate_limit_error",
}


# Every error ``code`` hookd answers, with its HTTP status and when it is answered. The
# README's error table, the ``ErrorCode`` enum of /openapi.json and the test that finds every
# code raised in hookd's source all read this table: a new code is added here first.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "json_invalid": (400, "the body is not valid JSON"),
    "body_invalid": (400, "the body is JSON but not an object"),
    "parameter_missing": (400, "a required field is missing"),
    "parameter_unknown": (400, "a body field or query parameter that the endpoint does not take"),
    "parameter_invalid": (
        400,
        "a value that breaks the field's rule (also a query parameter given twice)",
    ),
    "parameter_invalid_type": (
        400,
        "a value of the wrong JSON type, or null where null is not allowed",
    ),
    "parameter_invalid_length": (400, "a name of 0 or more than 100 characters after trimming"),
    "parameter_out_of_range": (400, "a number outside its range"),
    "parameter_too_long": (400, "a string or array over its maximum length"),
    "parameter_too_short": (400, "a string or array under its minimum length"),
    "topic_unknown": (400, "a topic that is not one of the topics"),
    "topic_reserved": (400, "POST /v2/events: an operational topic, which only hookd publishes"),
    "url_invalid": (400, "a URL that is not an absolute URL with a host and without user-info"),
    "url_scheme_invalid": (400, "a URL that is not https:// (http:// needs HOOKD_ALLOW_HTTP)"),
    "header_name_invalid": (400, "a custom header name that is not an HTTP token, or given twice"),
    "header_value_invalid": (400, "a custom header value with line breaks or over 1024 characters"),
    "header_reserved": (400, "a custom header that hookd sets itself"),
    "headers_too_many": (400, "more than 10 custom headers"),
    "cursor_invalid": (400, "a cursor that is not the nextCursor of a page of this list"),
    "webhook_limit_reached": (400, "the organization has as many webhooks as its limit"),
    "idempotency_key_invalid": (400, "an Idempotency-Key that is not 1-255 printable characters"),
    "api_version_invalid": (400, "a Featurebase-Version that is not a version"),
    "api_version_unsupported": (400, "a version in which the endpoint does not exist"),
    "delivery_cancelled": (400, "a retry of a cancelled delivery"),
    "window_invalid": (400, "a recovery window that is empty or starts in the future"),
    "window_too_long": (400, "a recovery window longer than the retention"),
    "window_outside_retention": (400, "a recovery window that starts before the retention"),
    "organization_exists": (400, "hookd orgs create: an organization of that name exists"),
    "http_error": (400, "a request the HTTP layer refused"),
    "api_key_missing": (401, "no Authorization header"),
    "api_key_invalid": (401, "a malformed or unknown API key"),
    "api_key_revoked": (401, "a revoked API key"),
    "session_missing": (
        401,
        "a dashboard request without a live session (signed out, expired, key revoked)",
    ),
    "csrf_invalid": (403, "a dashboard change without its session's CSRF token"),
    "read_only_session": (403, "a change asked of a read-only portal session"),
    "outside_session_scope": (403, "a portal session limited to some webhooks creating another"),
    "metrics_token_missing": (
        401,
        "/metrics without Authorization while HOOKD_METRICS_TOKEN is set",
    ),
    "metrics_token_invalid": (401, "/metrics with a token that is not HOOKD_METRICS_TOKEN"),
    "resource_missing": (404, "an unknown id, or another organization's"),
    "portal_link_invalid": (404, "a portal link that is unknown, already used or expired"),
    "dashboard_disabled": (404, "the dashboard or portal asked for while HOOKD_DASHBOARD=false"),
    "route_not_found": (404, "a path that is no endpoint"),
    "method_not_allowed": (
        405,
        "a method the path does not take (the Allow header lists those it does)",
    ),
    "request_timeout": (
        408,
        "the request's header block did not arrive within 10 s (the connection is closed)",
    ),
    "body_too_large": (413, "a body over 256 KiB"),
    "content_type_unsupported": (415, "a body that is not sent as application/json"),
    "rate_limited": (429, "the API key's requests of this minute are used up (see Retry-After)"),
    "headers_too_large": (
        431,
        "the request line and headers are over 16 KiB (the connection is closed)",
    ),
    "internal_error": (500, "a fault of hookd (it is logged)"),
    "database_unavailable": (503, "the database cannot be reached; retry shortly"),
    "server_closing": (503, "an event stream asked of a server that is shutting down; reconnect"),
}


def error_type_for_status(status: int) -> str:
    """The Featurebase error ``type`` for an HTTP status (SPEC §2)."""
    return _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


class HookdError(Exception):
    """Root of every exception hookd raises on purpose."""


class ApiError(HookdError):
    """An error answered to an API client in Featurebase's error shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = dict(headers or {})

    @property
    def type(self) -> str:
        return error_type_for_status(self.status)

    def body(self) -> dict[str, Any]:
        return {
            "object": "error",
            "error": {
                "type": self.type,
                "code": self.code,
                "message": self.message,
                "param": self.param,
                "status": self.status,
            },
        }

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r}, param={self.param!r})"


class SettingsError(HookdError):
    """A HOOKD_* setting has an invalid value; the message names the variable."""


class StoreError(HookdError):
    """A database fault that is not caused by the client."""


class DatabaseUnavailable(StoreError, ApiError):
    """The database cannot be reached (or refuses work); answered as ``503``."""

    def __init__(self, detail: str = "") -> None:
        ApiError.__init__(
            self,
            503,
            "database_unavailable",
            "The database is unavailable; retry the request shortly.",
        )
        self.detail = detail


class AddressRefused(HookdError):
    """A webhook's host resolved to an address outside what hookd may connect to."""


class VerificationError(HookdError):
    """:func:`hookd.verify` refused a request: its signature headers are missing, its
    signature matches none of the secrets, or its timestamp is outside the tolerance (a
    replay, or a clock that is off). The message says which; answer such a request 400."""
