"""The API's request and response models.

Request models validate input (strict types, unknown fields refused). Response models
document the objects in ``/openapi.json``; responses themselves are rendered by
:mod:`hookd.api.render` for speed, and the schemathesis test checks they agree.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from hookd.api.validation import check_header_map, check_text, check_topic, check_url, custom_error
from hookd.store.records import DeliveryStatus
from hookd.topics import TOPICS

__all__ = [
    "AttemptOut",
    "DeliveryDetailOut",
    "DeliveryList",
    "DeliveryOut",
    "ErrorOut",
    "EventIn",
    "EventOut",
    "RecoveryOut",
    "SecretRefresh",
    "StatusOut",
    "TopicIn",
    "WebhookCreate",
    "WebhookDeleted",
    "WebhookList",
    "WebhookOut",
    "WebhookUpdate",
]

Topic = Literal[TOPICS]  # type: ignore[valid-type]
TopicIn = Annotated[
    str, AfterValidator(check_topic), Field(json_schema_extra={"enum": list(TOPICS)})
]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SecretRefresh(_In):
    """The refresh endpoint takes no parameters: hookd makes the secret."""


def _name(value: str) -> str:
    value = check_text(value.strip())
    if not 1 <= len(value) <= 100:
        raise custom_error(
            "parameter_invalid_length", "must be 1 to 100 characters (after trimming spaces)"
        )
    return value


Name = Annotated[
    str,
    AfterValidator(_name),
    Field(
        description="1 to 100 characters after trimming spaces", json_schema_extra={"minLength": 1}
    ),
]
Description = Annotated[
    str, Field(max_length=500), AfterValidator(lambda v: check_text(v, multiline=True))
]
Url = Annotated[str, Field(min_length=1, max_length=2048)]


class RequestConfigIn(_In):
    timeoutMs: Annotated[int, Field(ge=1000, le=30000)] | None = None
    headers: dict[str, Annotated[str, Field(max_length=1024)]] | None = Field(
        default=None, description="Custom headers (at most 10); replaces the whole map when given."
    )

    @field_validator("timeoutMs", mode="before")
    @classmethod
    def _timeout_not_null(cls, value: Any) -> Any:
        if value is None:
            raise _null("timeoutMs")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return None if value is None else check_header_map(value)


def _null(field: str) -> Exception:
    return custom_error(
        "parameter_invalid_type", f"must not be null (leave {field} out to keep it)"
    )


class _UrlChecked(_In):
    @field_validator("url", check_fields=False)
    @classmethod
    def _url(cls, value: str | None, info: ValidationInfo) -> str | None:
        allow_http = bool((info.context or {}).get("allow_http"))
        return None if value is None else check_url(value, allow_http=allow_http)


class WebhookCreate(_UrlChecked):
    name: Name
    url: Url
    description: Description | None = None
    topics: Annotated[list[TopicIn], Field(min_length=1)]
    requestConfig: RequestConfigIn | None = None


class WebhookUpdate(_UrlChecked):
    name: Name | None = None
    url: Url | None = None
    description: Description | None = None
    topics: Annotated[list[TopicIn], Field(min_length=1)] | None = None
    status: Literal["active", "paused"] | None = None
    requestConfig: RequestConfigIn | None = None

    @field_validator("name", "url", "topics", "status", "requestConfig", mode="before")
    @classmethod
    def _not_null(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            raise _null(str(info.field_name))
        return value


class Change(_In):
    field: Annotated[str, Field(min_length=1, max_length=200)]
    oldValue: Any = None
    newValue: Any = None


class EventData(_In):
    item: dict[str, Any]
    changes: list[Change] = Field(default_factory=list)


class EventIn(_In):
    topic: TopicIn
    data: EventData
    conversationId: (
        Annotated[str, Field(min_length=1, max_length=255), AfterValidator(check_text)] | None
    ) = None
    conversationUrl: Annotated[str, Field(min_length=1, max_length=2048)] | None = None


# Response models (documentation).


class LastStatusOut(BaseModel):
    code: int
    message: str
    timestamp: str


class HealthOut(BaseModel):
    avgResponseTime: int
    consecutiveFailures: int
    errorsSinceLastSuccess: int
    lastResponseTime: int
    lastSuccessAt: str | None


class RequestConfigOut(BaseModel):
    timeoutMs: int
    headers: dict[str, str]


class WebhookOut(BaseModel):
    object: Literal["webhook"]
    id: str
    name: str
    url: str
    description: str | None
    topics: list[Topic]
    status: Literal["active", "paused", "suspended"]
    requestConfig: RequestConfigOut
    lastStatus: LastStatusOut | None
    health: HealthOut
    secret: str
    createdAt: str
    updatedAt: str
    version: str


class WebhookList(BaseModel):
    object: Literal["list"]
    data: list[WebhookOut]
    nextCursor: str | None


class WebhookDeleted(BaseModel):
    id: str
    object: Literal["webhook"]
    deleted: Literal[True]


class EventOut(BaseModel):
    object: Literal["event"]
    id: str
    topic: Topic
    createdAt: str


class StatusOut(BaseModel):
    status: str


class ErrorDetail(BaseModel):
    type: str
    code: str
    message: str
    param: str | None
    status: int


class ErrorOut(BaseModel):
    object: Literal["error"]
    error: ErrorDetail


class DeliveryOut(BaseModel):
    object: Literal["webhook_delivery"]
    id: str
    webhookId: str
    eventId: str
    topic: Topic
    status: DeliveryStatus
    attemptCount: int
    nextAttemptAt: str | None
    lastAttemptAt: str | None
    lastStatus: LastStatusOut | None
    createdAt: str


class DeliveryList(BaseModel):
    object: Literal["list"]
    data: list[DeliveryOut]
    nextCursor: str | None


class AttemptOut(BaseModel):
    object: Literal["webhook_delivery_attempt"]
    id: str
    attemptNumber: int
    attemptedAt: str
    succeeded: bool
    statusCode: int | None
    responseTimeMs: int
    responseBody: str | None
    error: str | None


class DeliveryDetailOut(DeliveryOut):
    payload: dict[str, Any]
    attempts: list[AttemptOut]


class RecoveryOut(BaseModel):
    object: Literal["recovery"]
    queued: int
