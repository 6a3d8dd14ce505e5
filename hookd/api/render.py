"""The API's objects as JSON-ready dicts, and the response type that sends them."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from hookd.clock import iso_ms, iso_or_none
from hookd.store.records import Webhook

__all__ = ["JSONResponse", "webhook_json"]


class JSONResponse(Response):
    """Compact JSON via orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def webhook_json(w: Webhook) -> dict[str, Any]:
    """The webhook object of the Featurebase reference."""
    return {
        "object": "webhook",
        "id": w.id,
        "name": w.name,
        "url": w.url,
        "description": w.description,
        "topics": list(w.topics),
        "status": w.status,
        "requestConfig": {"timeoutMs": w.timeout_ms, "headers": dict(w.headers)},
        "lastStatus": None
        if w.last_status_at is None
        else {
            "code": w.last_status_code,
            "message": w.last_status_message,
            "timestamp": iso_ms(w.last_status_at),
        },
        "health": {
            "avgResponseTime": round(w.avg_response_time),
            "consecutiveFailures": w.consecutive_failures,
            "errorsSinceLastSuccess": w.errors_since_last_success,
            "lastResponseTime": w.last_response_time,
            "lastSuccessAt": iso_or_none(w.last_success_at),
        },
        "secret": w.secret,
        "createdAt": iso_ms(w.created_at),
        "updatedAt": iso_ms(w.updated_at),
        "version": w.version,
    }
