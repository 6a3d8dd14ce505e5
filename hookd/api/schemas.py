"""The API's request and response models, and the shared schemas of ``/openapi.json``.

Request models validate input (strict types, unknown fields refused). A field that may be
left out but takes no ``null`` is typed ``X | MISSING``, so that its JSON Schema is exactly
``X`` (neither nullable nor with a ``null`` default); only ``description`` takes ``null``.
Every text rule is a pattern of :mod:`hookd.api.validation`, stated as is in the schema.

Response models document the objects in ``/openapi.json``; responses themselves are rendered
by :mod:`hookd.api.render` for speed, and the schemathesis test checks they agree.

Enums and other shared schemas are components (:data:`COMPONENTS`) that every model and
parameter refers to by ``$ref`` (:func:`ref`), so that generated clients get one type each.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    MISSING,
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic.config import JsonDict, JsonValue

from hookd.api.validation import (
    HEADER_NAME_PATTERN,
    HEADER_VALUE_PATTERN,
    MAX_HEADERS,
    MAX_URL_LENGTH,
    MULTILINE_TEXT_PATTERN,
    NAME_PATTERN,
    TEXT_PATTERN,
    anchored,
    check_header_map,
    check_name,
    check_publish_topic,
    check_text,
    check_topic,
    check_url,
    integral,
    url_pattern,
)
from hookd.errors import ERROR_CODES, error_type_for_status
from hookd.settings import API_VERSIONS, DEFAULT_API_VERSION
from hookd.store.records import DeliveryStatus
from hookd.topics import ALL_TOPICS, CONVERSATION_TOPIC_PREFIXES, TOPICS

__all__ = [
    "COMPONENTS",
    "AttemptOut",
    "DeliveryDetailOut",
    "DeliveryList",
    "DeliveryOut",
    "ErrorOut",
    "EventDetailOut",
    "EventIn",
    "EventList",
    "EventOut",
    "NotificationEvent",
    "RecoveryOut",
    "SecretRefresh",
    "StatusOut",
    "TopicIn",
    "WebhookCreate",
    "WebhookDeleted",
    "WebhookList",
    "WebhookOut",
    "WebhookUpdate",
    "component",
    "ref",
    "resolve_components",
    "url_component",
]


def ref(name: str) -> dict[str, Any]:
    """A JSON Schema reference to the component ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def component(name: str, **siblings: Any) -> dict[str, Any]:
    """A reference to the component ``name`` inside a pydantic or FastAPI schema
    (``WithJsonSchema``): a placeholder that :func:`resolve_components` turns into the
    ``$ref``, because pydantic resolves every ``$ref`` it meets among its own definitions."""
    return {"x-component": name, **siblings}


def resolve_components(schema: Any) -> Any:
    """``schema`` with every :func:`component` placeholder made a ``$ref`` (titles dropped:
    the component names itself)."""
    if isinstance(schema, dict):
        if "x-component" in schema:
            rest = {k: v for k, v in schema.items() if k not in ("x-component", "title")}
            return {**ref(schema["x-component"]), **resolve_components(rest)}
        return {k: resolve_components(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [resolve_components(v) for v in schema]
    return schema


WEBHOOK_STATUSES = ("active", "paused", "suspended")
SETTABLE_WEBHOOK_STATUSES = ("active", "paused")
_CONVERSATION_TOPICS: list[JsonValue] = [
    t for t in TOPICS if t.startswith(CONVERSATION_TOPIC_PREFIXES)
]
_TOPIC_ALTERNATIVES = "|".join(re.escape(t) for t in ALL_TOPICS)
#: A comma-separated list of topics (the event stream's ``topics``).
TOPICS_LIST_PATTERN = f"^({_TOPIC_ALTERNATIVES})(,({_TOPIC_ALTERNATIVES}))*$"
_ERROR_STATUSES = sorted({status for status, _ in ERROR_CODES.values()})

#: Shared schemas, referred to by name (``ref``) from models, parameters and headers.
COMPONENTS: dict[str, dict[str, Any]] = {
    "Topic": {
        "type": "string",
        "enum": list(ALL_TOPICS),
        "description": "An event topic: Featurebase's 27, and hookd's operational topics "
        "`webhook.suspended` and `delivery.failed`, which only hookd publishes.",
    },
    "PublishTopic": {
        "type": "string",
        "enum": list(TOPICS),
        "description": "A topic that an application may publish (Featurebase's 27): the "
        "operational topics are hookd's own (400 topic_reserved).",
    },
    "WebhookStatus": {"type": "string", "enum": list(WEBHOOK_STATUSES)},
    "WebhookStatusUpdate": {
        "type": "string",
        "enum": list(SETTABLE_WEBHOOK_STATUSES),
        "description": "The statuses a client may set: `suspended` is hookd's to set.",
    },
    "DeliveryStatus": {"type": "string", "enum": list(get_args(DeliveryStatus))},
    "ApiVersion": {
        "type": "string",
        "enum": [DEFAULT_API_VERSION],
        "description": "The API versions in which these endpoints exist. Leave the header out "
        "to use the organization's default version.",
    },
    "ResolvedApiVersion": {
        "type": "string",
        "enum": list(API_VERSIONS),
        "description": "The version a request was answered in: the one it asked for, or the "
        "organization's default (an answer in 2025-12-12.clover is the error "
        "api_version_unsupported).",
    },
    "ErrorType": {
        "type": "string",
        "enum": sorted({error_type_for_status(s) for s in _ERROR_STATUSES}),
    },
    "ErrorCode": {
        "type": "string",
        "enum": list(ERROR_CODES),
        "description": "\n".join(
            f"- `{code}` ({status}): {meaning}" for code, (status, meaning) in ERROR_CODES.items()
        ),
    },
    "ObjectId": {
        "type": "string",
        "pattern": "^[0-9a-f]{24}$",
        "description": "A 24-character lowercase hex id that sorts by creation time.",
    },
    "EventId": {
        "type": "string",
        "pattern": "^notif_[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
        "description": "`notif_` and a UUIDv7.",
    },
    "Timestamp": {
        "type": "string",
        "format": "date-time",
        "description": "UTC with milliseconds, e.g. 2025-01-15T10:30:00.000Z.",
    },
    "DateTime": {
        "type": "string",
        "format": "date-time",
        "description": "An RFC 3339 date-time with a timezone, e.g. 2025-01-15T10:30:00Z.",
    },
    "ConversationUrl": {
        "type": "string",
        "maxLength": MAX_URL_LENGTH,
        "pattern": anchored(url_pattern(allow_http=False)),
        "description": "An absolute https:// URL.",
    },
}


def url_component(*, allow_http: bool) -> dict[str, Any]:
    """The schema of a webhook ``url`` on a server that does (not) allow ``http://``."""
    http = (
        "; http:// is allowed on this server (HOOKD_ALLOW_HTTP)"
        if allow_http
        else "; http:// needs HOOKD_ALLOW_HTTP"
    )
    return {
        "type": "string",
        "maxLength": MAX_URL_LENGTH,
        "pattern": anchored(url_pattern(allow_http=allow_http)),
        "description": "An absolute https:// URL with an ASCII host name (an internationalized "
        "one in its xn-- form) or an IP address (IPv6 in brackets), an optional port "
        f"1-65535, and no user name or password; at most {MAX_URL_LENGTH} characters{http}.",
    }


def _schema(name: str) -> WithJsonSchema:
    return WithJsonSchema(component(name))


# Shared field types.

TopicIn = Annotated[str, AfterValidator(check_topic), _schema("Topic")]
TopicOut = Annotated[str, _schema("Topic")]
PublishTopicIn = Annotated[str, AfterValidator(check_publish_topic), _schema("PublishTopic")]
Timestamp = Annotated[str, _schema("Timestamp")]
ObjectId = Annotated[str, _schema("ObjectId")]
EventId = Annotated[str, _schema("EventId")]
Count = Annotated[int, WithJsonSchema({"type": "integer", "minimum": 0})]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


MAX_GRACE_PERIOD_SECONDS = 604_800  # 7 days


GracePeriodSeconds = Annotated[
    int,
    BeforeValidator(integral),
    Field(ge=0, le=MAX_GRACE_PERIOD_SECONDS),
    WithJsonSchema(
        {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_GRACE_PERIOD_SECONDS,
            "description": "Seconds the replaced secret keeps signing beside the new one "
            "(at most 7 days; 0 ends every earlier grace period at once).",
        }
    ),
]


class SecretRefresh(_In):
    """hookd makes the new secret. Without ``gracePeriodSeconds`` (Featurebase's refresh) or
    with ``0``, only the new secret signs from now on."""

    gracePeriodSeconds: GracePeriodSeconds | MISSING = MISSING


Name = Annotated[
    str,
    AfterValidator(check_name),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": anchored(NAME_PATTERN),
            "description": "1 to 100 characters after trimming spaces (which hookd trims), "
            "no control characters.",
        }
    ),
]
Description = Annotated[
    str,
    Field(max_length=500),
    AfterValidator(lambda v: check_text(v, multiline=True)),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 500,
            "pattern": anchored(MULTILINE_TEXT_PATTERN),
            "description": "At most 500 characters; no control characters but tabs and line breaks.",
        }
    ),
]
Url = Annotated[str, _schema("WebhookUrl")]
Topics = Annotated[
    list[TopicIn],
    Field(min_length=1),
    WithJsonSchema(
        {
            "type": "array",
            "items": component("Topic"),
            "minItems": 1,
            "description": "Duplicates are removed, order kept.",
        }
    ),
]
TimeoutMs = Annotated[
    int,
    BeforeValidator(integral),
    Field(ge=1000, le=30000),
    WithJsonSchema(
        {
            "type": "integer",
            "minimum": 1000,
            "maximum": 30000,
            "description": "Milliseconds; 5000 when a new webhook leaves it out. An integral "
            "number such as 3000.0 is taken as the integer.",
        }
    ),
]
HeaderMap = Annotated[
    dict[str, str],
    AfterValidator(check_header_map),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": MAX_HEADERS,
            "propertyNames": {"pattern": anchored(HEADER_NAME_PATTERN)},
            "additionalProperties": {"type": "string", "pattern": anchored(HEADER_VALUE_PATTERN)},
            "description": "Custom headers sent with every delivery, at most 10: names are HTTP "
            "tokens of at most 256 characters, given once each whatever their case, and not "
            "Content-Type, Content-Length, Host, User-Agent, Transfer-Encoding, Connection, "
            "X-Webhook-* or webhook-* (hookd sets those); values are printable ASCII without "
            "line breaks, at most 1024 characters. Given, it replaces the whole map; {} "
            "removes every header.",
        }
    ),
]


class RequestConfigIn(_In):
    timeoutMs: TimeoutMs | MISSING = MISSING
    headers: HeaderMap | MISSING = MISSING


class _UrlChecked(_In):
    @field_validator("url", check_fields=False)
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        allow_http = bool((info.context or {}).get("allow_http"))
        return check_url(value, allow_http=allow_http)


class WebhookCreate(_UrlChecked):
    name: Name
    url: Url
    description: Description | MISSING | None = MISSING
    topics: Topics
    requestConfig: RequestConfigIn | MISSING = MISSING


class WebhookUpdate(_UrlChecked):
    """Only the fields given change; `{}` changes nothing."""

    name: Name | MISSING = MISSING
    url: Url | MISSING = MISSING
    description: Description | MISSING | None = MISSING
    topics: Topics | MISSING = MISSING
    status: Annotated[Literal["active", "paused"], _schema("WebhookStatusUpdate")] | MISSING = (
        MISSING
    )
    requestConfig: RequestConfigIn | MISSING = MISSING


class Change(_In):
    field: Annotated[str, Field(min_length=1, max_length=200)]
    oldValue: Any = None
    newValue: Any = None


class EventData(_In):
    item: dict[str, Any]
    changes: list[Change] = Field(default_factory=list)


_ONLY_FOR_CONVERSATIONS: JsonDict = {
    # conversationId and conversationUrl only with a conversation topic (SPEC §4).
    "if": {"properties": {"topic": {"not": {"enum": _CONVERSATION_TOPICS}}}},
    "then": {"properties": {"conversationId": False, "conversationUrl": False}},
}


class EventIn(_In):
    model_config = ConfigDict(json_schema_extra=_ONLY_FOR_CONVERSATIONS)

    topic: PublishTopicIn
    data: EventData
    conversationId: (
        Annotated[
            str,
            Field(min_length=1, max_length=255),
            AfterValidator(check_text),
            WithJsonSchema(
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 255,
                    "pattern": anchored(TEXT_PATTERN),
                    "description": "Only with conversation.* and conversation_part.* topics.",
                }
            ),
        ]
        | MISSING
    ) = MISSING
    conversationUrl: (
        Annotated[
            str,
            AfterValidator(lambda v: check_url(v, allow_http=False)),
            WithJsonSchema(
                component(
                    "ConversationUrl",
                    description="Only with conversation.* and conversation_part.* topics.",
                )
            ),
        ]
        | MISSING
    ) = MISSING


# Response models (documentation).


class LastStatusOut(BaseModel):
    code: Annotated[
        int,
        WithJsonSchema(
            {
                "type": "integer",
                "minimum": 0,
                "description": "HTTP status, or 0 without a response.",
            }
        ),
    ]
    message: str
    timestamp: Timestamp


class HealthOut(BaseModel):
    avgResponseTime: Count
    consecutiveFailures: Count
    errorsSinceLastSuccess: Count
    lastResponseTime: Count
    lastSuccessAt: Timestamp | None


class RequestConfigOut(BaseModel):
    timeoutMs: int
    headers: dict[str, str]


class WebhookOut(BaseModel):
    object: Literal["webhook"]
    id: ObjectId
    name: str
    url: str
    description: str | None
    topics: list[TopicOut]
    status: Annotated[str, _schema("WebhookStatus")]
    requestConfig: RequestConfigOut
    lastStatus: LastStatusOut | None
    health: HealthOut
    secret: str
    createdAt: Timestamp
    updatedAt: Timestamp
    version: str


class WebhookList(BaseModel):
    object: Literal["list"]
    data: list[WebhookOut]
    nextCursor: str | None


class WebhookDeleted(BaseModel):
    id: ObjectId
    object: Literal["webhook"]
    deleted: Literal[True]


class EventOut(BaseModel):
    object: Literal["event"]
    id: EventId
    topic: TopicOut
    createdAt: Timestamp


class EventList(BaseModel):
    object: Literal["list"]
    data: list[EventOut]
    nextCursor: str | None


class ChangeOut(BaseModel):
    field: str
    oldValue: Any
    newValue: Any


class EventDataOut(BaseModel):
    item: dict[str, Any]
    changes: list[ChangeOut]


class StatusOut(BaseModel):
    status: str


class ErrorDetail(BaseModel):
    type: Annotated[str, _schema("ErrorType")]
    code: Annotated[str, _schema("ErrorCode")]
    message: str
    param: str | None
    status: Annotated[int, WithJsonSchema({"type": "integer", "enum": _ERROR_STATUSES})]


class ErrorOut(BaseModel):
    object: Literal["error"]
    error: ErrorDetail


class DeliveryOut(BaseModel):
    object: Literal["webhook_delivery"]
    id: ObjectId
    webhookId: ObjectId
    eventId: EventId
    topic: TopicOut
    status: Annotated[str, _schema("DeliveryStatus")]
    attemptCount: Count
    nextAttemptAt: Timestamp | None
    lastAttemptAt: Timestamp | None
    lastStatus: LastStatusOut | None
    createdAt: Timestamp


class DeliveryList(BaseModel):
    object: Literal["list"]
    data: list[DeliveryOut]
    nextCursor: str | None


class AttemptOut(BaseModel):
    object: Literal["webhook_delivery_attempt"]
    id: ObjectId
    attemptNumber: Annotated[int, WithJsonSchema({"type": "integer", "minimum": 1})]
    attemptedAt: Timestamp
    succeeded: bool
    statusCode: int | None
    responseTimeMs: Count
    responseBody: str | None
    error: str | None


class NotificationEventData(BaseModel):
    object: Literal["notification_event_data"]
    item: dict[str, Any]
    changes: list[ChangeOut]


class NotificationEvent(BaseModel):
    """The body of every delivery request (SPEC §5)."""

    object: Literal["notification_event"]
    id: EventId
    topic: TopicOut
    organizationId: ObjectId
    webhookId: ObjectId
    createdAt: Timestamp
    deliveryStatus: Literal["pending", "retrying"]
    conversationId: str | MISSING = MISSING
    conversationUrl: str | MISSING = MISSING
    data: NotificationEventData


class DeliveryDetailOut(DeliveryOut):
    payload: NotificationEvent
    attempts: list[AttemptOut]


class EventDetailOut(EventOut):
    conversationId: str | MISSING = Field(
        default=MISSING, description="Present when the event was published with one"
    )
    conversationUrl: str | MISSING = Field(
        default=MISSING, description="Present when the event was published with one"
    )
    data: EventDataOut
    deliveries: list[DeliveryOut] = Field(
        description="Every delivery of the event to the organization's webhooks, oldest first"
    )


class StreamEventOut(BaseModel):
    """One Server-Sent Event of ``GET /v2/events/stream``: ``ready`` first (``data``: the
    stream's organization and topics), then one per event (``id``: the event id, ``data``:
    the delivery envelope with ``webhookId: null``), ``error`` before hookd ends the stream
    (``data``: an error object). Heartbeats are comment lines."""

    event: str | MISSING = MISSING
    data: str | MISSING = MISSING
    id: str | MISSING = MISSING
    retry: int | MISSING = MISSING


class RecoveryOut(BaseModel):
    object: Literal["recovery"]
    queued: Count
