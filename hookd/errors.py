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
    └── AddressRefused            a webhook URL resolved to an address hookd will not deliver to
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "AddressRefused",
    "ApiError",
    "DatabaseUnavailable",
    "HookdError",
    "SettingsError",
    "StoreError",
    "error_type_for_status",
]

_TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    401: "authentication_error",
    429: "rate_limit_error",
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
