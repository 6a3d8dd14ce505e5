"""OpenAPI details shared by the routes, and small request checks that go with them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from hookd.api.schemas import ErrorOut
from hookd.errors import ApiError
from hookd.ids import is_object_id

__all__ = ["BODY_MODELS", "ERRORS", "body_spec", "webhook_id_param"]

_ERROR = {"model": ErrorOut}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {**_ERROR, "description": "Invalid input"},
    401: {**_ERROR, "description": "Missing, unknown or revoked API key"},
    404: {**_ERROR, "description": "No such object"},
    413: {**_ERROR, "description": "Body over 256 KiB"},
    415: {**_ERROR, "description": "Body not sent as application/json"},
    429: {**_ERROR, "description": "Rate limit reached"},
    503: {**_ERROR, "description": "Database unavailable"},
}

# Models of request bodies that hookd parses itself; app.py adds them to the components.
BODY_MODELS: list[type[BaseModel]] = []


def body_spec(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` describing a JSON request body validated by ``model``."""
    if model not in BODY_MODELS:
        BODY_MODELS.append(model)
    return {
        "requestBody": {
            "required": required,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


def webhook_id_param(value: str, kind: str = "webhook") -> str:
    """A path id; a malformed one answers like an unknown one."""
    if not is_object_id(value):
        raise ApiError(404, "resource_missing", f"No {kind} has this id.", "id")
    return value
