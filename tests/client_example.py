"""A typed example flow through the Python client that openapi-python-client generates from
hookd's ``/openapi.json``: what a user of a generated client writes. ``tests/test_client.py``
generates the client (package ``hookd_client``), checks this file with ``mypy --strict``
and runs it against a live ``hookd serve --dev`` with a receiver on 127.0.0.1.

Environment: ``HOOKD`` (the server's URL), ``KEY`` (an API key), ``RECEIVER_URL`` (where the
receiver listens, answering 2xx).
"""

from __future__ import annotations

import os
import time
from typing import TypeVar

from hookd_client import AuthenticatedClient
from hookd_client.api.delivery_log import (
    get_delivery,
    list_deliveries,
    retry_delivery,
    send_test_event,
)
from hookd_client.api.events import publish_event
from hookd_client.api.webhooks import create_webhook, get_webhook, list_webhooks, update_webhook
from hookd_client.models import (
    DeliveryDetailOut,
    DeliveryList,
    DeliveryOut,
    DeliveryStatus,
    ErrorCode,
    ErrorOut,
    ErrorType,
    EventData,
    EventDataItem,
    EventIn,
    EventOut,
    PublishTopic,
    RequestConfigIn,
    RequestConfigInHeaders,
    TestIn,
    Topic,
    WebhookCreate,
    WebhookList,
    WebhookOut,
    WebhookStatus,
    WebhookStatusUpdate,
    WebhookUpdate,
)

T = TypeVar("T")


def expect(value: object, kind: type[T]) -> T:
    """``value`` as ``kind``: the success model, or an error with what the server said."""
    if not isinstance(value, kind):
        raise AssertionError(f"expected a {kind.__name__}, got {value!r}")
    return value


def new_webhook(client: AuthenticatedClient, name: str, url: str) -> WebhookOut:
    headers = RequestConfigInHeaders()
    headers["X-Team"] = "growth"
    body = WebhookCreate(
        name=name,
        url=url,
        topics=[Topic.POST_CREATED, Topic.COMMENT_CREATED],
        request_config=RequestConfigIn(timeout_ms=5000, headers=headers),
    )
    return expect(create_webhook.sync(client=client, body=body), WebhookOut)


def wait_for_delivery(client: AuthenticatedClient, webhook_id: str) -> DeliveryOut:
    """The webhook's newest delivery, once it is no longer pending (bounded wait)."""
    for _ in range(100):
        page = expect(list_deliveries.sync(webhook_id, client=client, limit=1), DeliveryList)
        if page.data and page.data[0].status != DeliveryStatus.PENDING:
            return page.data[0]
        time.sleep(0.1)
    raise AssertionError(f"no delivery of {webhook_id} settled")


def main() -> None:
    client = AuthenticatedClient(base_url=os.environ["HOOKD"], token=os.environ["KEY"])
    receiver = os.environ["RECEIVER_URL"]

    # Create three webhooks and page through them, two at a time.
    made = [new_webhook(client, f"client example {n}", receiver) for n in range(3)]
    assert all(w.status == WebhookStatus.ACTIVE for w in made)
    first = expect(list_webhooks.sync(client=client, limit=2), WebhookList)
    assert isinstance(first.next_cursor, str), "expected a second page"
    second = expect(
        list_webhooks.sync(client=client, limit=2, cursor=first.next_cursor), WebhookList
    )
    seen = [w.id for w in first.data + second.data]
    assert seen == [w.id for w in reversed(made)], seen
    assert second.next_cursor is None

    # PATCH one field: the timeout changes, the custom headers stay.
    target, paused, _ = made
    update = WebhookUpdate(request_config=RequestConfigIn(timeout_ms=3000))
    patched = expect(update_webhook.sync(target.id, client=client, body=update), WebhookOut)
    assert patched.request_config.timeout_ms == 3000
    assert patched.request_config.headers.to_dict() == {"X-Team": "growth"}

    # Pause another: it gets no deliveries.
    pause = WebhookUpdate(status=WebhookStatusUpdate.PAUSED)
    now_paused = expect(update_webhook.sync(paused.id, client=client, body=pause), WebhookOut)
    assert now_paused.status == WebhookStatus.PAUSED

    # Publish an event; the active webhooks receive it.
    item = EventDataItem.from_dict({"id": "post_1", "title": "Typed"})
    event = expect(
        publish_event.sync(
            client=client,
            body=EventIn(topic=PublishTopic.POST_CREATED, data=EventData(item=item)),
            idempotency_key="client-example-post-1",
        ),
        EventOut,
    )
    delivered = wait_for_delivery(client, target.id)
    assert delivered.event_id == event.id and delivered.status == DeliveryStatus.SUCCEEDED
    nothing = expect(list_deliveries.sync(paused.id, client=client), DeliveryList)
    assert nothing.data == [], "a paused webhook gets no delivery"

    # The delivery with its payload (the envelope, typed) and attempts; then a retry.
    detail = expect(get_delivery.sync(target.id, delivered.id, client=client), DeliveryDetailOut)
    assert detail.payload.id == event.id and detail.payload.topic == Topic.POST_CREATED
    assert detail.payload.data.item.to_dict() == {"id": "post_1", "title": "Typed"}
    assert [a.succeeded for a in detail.attempts] == [True]
    retried = expect(retry_delivery.sync(target.id, delivered.id, client=client), DeliveryOut)
    assert retried.id == delivered.id

    # A test event on the paused webhook is sent all the same.
    test = expect(
        send_test_event.sync(paused.id, client=client, body=TestIn(topic=Topic.COMMENT_CREATED)),
        DeliveryOut,
    )
    assert test.topic == Topic.COMMENT_CREATED

    # Errors are typed too: the code is an enum member.
    missing = expect(get_webhook.sync("0" * 24, client=client), ErrorOut)
    assert missing.error.code == ErrorCode.RESOURCE_MISSING
    assert missing.error.type_ == ErrorType.INVALID_REQUEST_ERROR
    bad = WebhookCreate(name="bad", url="ftp://example.com/hook", topics=[Topic.POST_CREATED])
    refused = expect(create_webhook.sync(client=client, body=bad), ErrorOut)
    assert refused.error.code == ErrorCode.URL_SCHEME_INVALID and refused.error.param == "url"
    print("client example: ok")


if __name__ == "__main__":
    main()
