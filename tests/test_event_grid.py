"""Event Grid (ACS) deliveries: no event lost to a refusal Event Grid never retries (400, 401, 403,
413), both event schemas, the validation handshakes (only with the secret), secret rotation, a
delivery's unrelayable events kept as one bounded poison record, bodies of any depth and width
answered in bounded time; and what holds for every provider: a missing verification secret is
503, an event too large for the queue is kept."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import azure.functions as func
import pytest

from channels.acs import MAX_EVENTS_PER_DELIVERY
from channels.events import LEFT_OUT
from channels.simulator import sign_webhook
from contracts import ChannelStatus
from storage.relay_queue import MAX_MESSAGE_BYTES, unrelayable_record
from tests.conftest import CUSTOMER, OUR_NUMBER, RelayQueues
from tests.doubles import app_function
from tests.fakes.azurite import Azurite
from tests.test_webhooks import event
from usecases.composition import Services

DELIVERY = "Microsoft.Communication.SMSDeliveryReportReceived"
VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
CODE = "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"
SOURCE = "/subscriptions/x/resourceGroups/y/providers/Microsoft.Communication/communicationServices/c"
SECRET, PREVIOUS = "current-" + uuid.uuid4().hex, "previous-" + uuid.uuid4().hex


@pytest.fixture
async def acs(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Services]:
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("SMS_PROVIDER", "acs")
    monkeypatch.setenv(
        "ACS_CONNECTION_STRING", "endpoint=https://contoso.communication.azure.com/;accesskey=a2V5"
    )
    monkeypatch.setenv("ACS_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("ACS_WEBHOOK_SECRET_PREVIOUS", PREVIOUS)
    services = Services()
    yield services
    await services.aclose()


async def post(
    services: Services,
    body: bytes,
    *,
    secret: str | None = SECRET,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    provider: str = "acs",
    kind: str = "delivery-reports",
) -> Any:
    query = {"secret": secret} if secret else {}
    url = f"https://sms.example.org/api/providers/{provider}/{kind}" + (f"?secret={secret}" if secret else "")
    request = func.HttpRequest(
        method, url, body=body, headers=headers or {}, params=query, route_params={"provider": provider}
    )
    return await app_function(services, "delivery_reports" if kind == "delivery-reports" else "inbound")(
        request
    )


def report(message_id: str, status: str = "Delivered", **extra: Any) -> dict[str, Any]:
    return event(
        DELIVERY,
        {"messageId": message_id, "from": OUR_NUMBER, "to": CUSTOMER, "deliveryStatus": status, **extra},
    )


def cloud_event(data: dict[str, Any], event_type: str = DELIVERY) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "type": event_type,
        "source": SOURCE,
        "id": str(uuid.uuid4()),
        "time": "2026-11-27T10:00:00Z",
        "subject": f"/phonenumber/{OUR_NUMBER}",
        "datacontenttype": "application/json",
        "data": data,
    }


def kept(relay_queues: RelayQueues) -> list[dict[str, Any]]:
    """What the poison queue keeps (unrelayable records, not jobs)."""
    return [
        json.loads(base64.b64decode(m.content)) for m in relay_queues.poison.peek_messages(max_messages=32)
    ]


def validation_event() -> list[dict[str, Any]]:
    return [event(VALIDATION, {"validationCode": CODE, "validationUrl": "https://eventgrid.example/v"})]


ORIGIN = {"WebHook-Request-Origin": "eventgrid.azure.net"}


@pytest.mark.parametrize("previous_only", [False, True], ids=["no secret", "only the previous one"])
async def test_an_unset_secret_is_503_so_that_event_grid_retries(
    acs: Services, monkeypatch: pytest.MonkeyPatch, relay_queues: RelayQueues, previous_only: bool
) -> None:
    monkeypatch.delenv("ACS_WEBHOOK_SECRET")
    if not previous_only:
        monkeypatch.delenv("ACS_WEBHOOK_SECRET_PREVIOUS")
    services = Services()
    answers = (
        [
            await post(services, json.dumps([report("Outgoing_1")]).encode(), secret=secret)
            for secret in ("anything", PREVIOUS, None)
        ]
        + [
            await post(services, json.dumps(validation_event()).encode(), secret=secret)
            for secret in (PREVIOUS, None)
        ]
        + [
            await post(services, b"", method="OPTIONS", secret=secret, headers=ORIGIN)
            for secret in (PREVIOUS, None)
        ]
    )
    await services.aclose()
    for response in answers:  # handshakes included, with or without a secret
        assert response.status_code == 503 and response.headers["Retry-After"]
        body = response.get_body().decode()
        assert "ACS_WEBHOOK_SECRET" not in body  # anonymous callers learn no names
        assert CODE not in body and "WebHook-Allowed-Origin" not in response.headers
    assert relay_queues.count(relay_queues.jobs) == 0


async def test_a_missing_verification_secret_is_503_for_every_provider(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch, relay_queues: RelayQueues
) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("SMS_PROVIDER", "simulator")
    body = json.dumps({"MessageId": "SM1", "Status": "delivered"}).encode()
    response = await post(
        Services(), body, secret=None, provider="simulator", headers=sign_webhook("whatever", body)
    )
    assert response.status_code == 503


async def test_the_previous_secret_is_accepted_during_a_rotation(
    acs: Services, relay_queues: RelayQueues
) -> None:
    answers = [
        (await post(acs, json.dumps([report(f"Outgoing_{secret}")]).encode(), secret=secret)).status_code
        for secret in (SECRET, PREVIOUS, "guessed")
    ]
    assert answers == [200, 200, 403]
    assert relay_queues.count(relay_queues.jobs) == 2


async def test_one_malformed_event_does_not_cost_the_others(acs: Services, relay_queues: RelayQueues) -> None:
    broken = event(DELIVERY, {"deliveryStatus": "Delivered"})  # no messageId
    body = json.dumps([report("Outgoing_a"), broken, "not an event", report("Outgoing_b", "Failed")]).encode()
    response = await post(acs, body)
    assert response.status_code == 200
    assert sorted(j.message_id for j in relay_queues.visible_jobs(relay_queues.jobs)) == [
        "Outgoing_a",
        "Outgoing_b",
    ]
    [record] = kept(relay_queues)  # one record for the delivery, however many events it sets aside
    assert (record["provider"], record["webhook"], record["total"], record["left_out"]) == (
        "acs",
        "delivery-reports",
        2,
        0,
    )
    assert record["unrelayable"] == [
        {"reason": f"{DELIVERY} without a messageId", "event": broken},
        {"reason": "not an event: no eventType or type", "event": "not an event"},
    ]
    assert f"{DELIVERY} without a messageId (1)" in record["last_error"]


async def test_a_batch_near_1_mb_is_taken_and_other_providers_keep_their_limit(
    acs: Services, relay_queues: RelayQueues, monkeypatch: pytest.MonkeyPatch
) -> None:
    padding = "x" * 18_000  # 50 events of about 18 KB: a full output batch
    events = [report(f"Outgoing_{i}", "Failed", deliveryStatusDetails=padding) for i in range(50)]
    body = json.dumps(events).encode()
    assert 900_000 < len(body) < 1_048_576
    assert (await post(acs, body)).status_code == 200
    assert relay_queues.count(relay_queues.jobs) == 50
    assert (await post(acs, body + b" " * 200_000)).status_code == 413  # over 1 MB + margin

    monkeypatch.setenv("SMS_PROVIDER", "simulator")
    monkeypatch.setenv("SIMULATOR_WEBHOOK_SECRET", "s")
    big = json.dumps({"MessageId": "SM1", "Status": "delivered", "Pad": "x" * 70_000}).encode()
    answer = await post(Services(), big, secret=None, provider="simulator", headers=sign_webhook("s", big))
    assert answer.status_code == 413  # MAX_BODY_BYTES, 64 KiB by default


async def test_cloudevents_validation_handshake_needs_the_secret(acs: Services) -> None:
    for secret in (SECRET, PREVIOUS):
        response = await post(acs, b"", method="OPTIONS", secret=secret, headers=ORIGIN)
        assert response.status_code == 200
        assert response.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    for secret, status in ((None, 401), ("guessed", 403)):
        response = await post(acs, b"", method="OPTIONS", secret=secret, headers=ORIGIN)
        assert response.status_code == status
        assert "WebHook-Allowed-Origin" not in response.headers


async def test_event_grid_validation_needs_the_secret(acs: Services, relay_queues: RelayQueues) -> None:
    body = json.dumps(validation_event()).encode()
    for secret in (SECRET, PREVIOUS):
        response = await post(acs, body, secret=secret)
        assert response.status_code == 200
        assert json.loads(response.get_body()) == {"validationResponse": CODE}
    for secret, status in ((None, 401), ("guessed", 403)):
        response = await post(acs, body, secret=secret)
        assert response.status_code == status and CODE not in response.get_body().decode()
    header = await post(acs, body, secret=None, headers={"X-Webhook-Secret": SECRET})
    assert json.loads(header.get_body()) == {"validationResponse": CODE}
    # a validation event does not open the door to events riding along with it, nor is it echoed
    smuggled = json.dumps([*validation_event(), report("Outgoing_smuggled")]).encode()
    assert (await post(acs, smuggled, secret=None)).status_code == 401
    assert relay_queues.count(relay_queues.jobs) == 0
    alongside = await post(acs, smuggled)
    assert alongside.status_code == 200 and CODE not in alongside.get_body().decode()
    assert [j.message_id for j in relay_queues.visible_jobs(relay_queues.jobs)] == ["Outgoing_smuggled"]


async def test_cloudevents_schema_single_and_batched(acs: Services, relay_queues: RelayQueues) -> None:
    single = cloud_event({"messageId": "Outgoing_c1", "deliveryStatus": "Delivered", "from": OUR_NUMBER})
    batch = [
        cloud_event(
            {"messageId": "Outgoing_c2", "deliveryStatus": "Failed", "deliveryStatusDetails": "Expired"}
        ),
        cloud_event({"messageId": "Outgoing_c3", "deliveryStatus": "Delivered"}),
    ]
    assert (await post(acs, json.dumps(single).encode())).status_code == 200
    assert (await post(acs, json.dumps(batch).encode())).status_code == 200
    jobs = {j.message_id: j for j in relay_queues.visible_jobs(relay_queues.jobs)}
    assert {k: v.status for k, v in jobs.items()} == {
        "Outgoing_c1": ChannelStatus.DELIVERED,
        "Outgoing_c2": ChannelStatus.NOT_DELIVERED,
        "Outgoing_c3": ChannelStatus.DELIVERED,
    }


async def test_an_undocumented_delivery_status_is_logged_not_relayed(
    acs: Services, relay_queues: RelayQueues, caplog: pytest.LogCaptureFixture
) -> None:
    response = await post(acs, json.dumps([report("Outgoing_q", "Queued")]).encode())
    assert response.status_code == 200
    assert relay_queues.count(relay_queues.jobs) == 0
    assert "Queued" in caplog.text and "unknown" in caplog.text.lower()


async def test_an_event_too_large_for_a_queue_message_is_kept_not_retried_forever(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch, relay_queues: RelayQueues
) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("SMS_PROVIDER", "simulator")
    monkeypatch.setenv("SIMULATOR_WEBHOOK_SECRET", "s")
    text = "Ä" * 50_000  # within MAX_BODY_BYTES as sent, over 64 KiB once base64-encoded on the queue
    body = json.dumps({"MessageId": "SMlong", "From": CUSTOMER, "To": OUR_NUMBER, "Text": text}).encode(
        "utf-8"
    )
    monkeypatch.setenv("MAX_BODY_BYTES", str(len(body) + 1))
    services = Services()
    response = await post(
        services, body, secret=None, provider="simulator", kind="inbound", headers=sign_webhook("s", body)
    )
    await services.aclose()
    assert response.status_code == 200
    assert relay_queues.count(relay_queues.jobs) == 0
    [record] = kept(relay_queues)
    [entry] = record["unrelayable"]
    assert entry["reason"] == "too large for a queue message"
    assert entry["event"]["message_id"] == "SMlong"
    assert entry["event"]["text"].endswith("(50000 characters)")


async def test_deep_nesting_costs_only_the_events_it_makes_unreadable(
    acs: Services, relay_queues: RelayQueues
) -> None:
    """Nesting deeper than any stack inside events of a valid delivery: the events that can still
    be read are relayed, the others kept in one record, and nothing recurses over the depth."""
    deep = "[" * 100_000 + "]" * 100_000
    deep_extra = json.dumps(report("Outgoing_deep_extra", extra="SLOT")).replace('"SLOT"', deep)
    deep_id = json.dumps(report("SLOT")).replace('"SLOT"', deep)
    body = f"[{json.dumps(report('Outgoing_plain'))}, {deep_extra}, {deep_id}, {deep}]".encode()
    started = time.monotonic()
    response = await post(acs, body)
    assert response.status_code == 200 and time.monotonic() - started < 2
    assert sorted(j.message_id for j in relay_queues.visible_jobs(relay_queues.jobs)) == [
        "Outgoing_deep_extra",
        "Outgoing_plain",
    ]
    [record] = kept(relay_queues)
    assert [entry["reason"] for entry in record["unrelayable"]] == [
        f"{DELIVERY} without a messageId",
        "not an event: no eventType or type",
    ]
    # the kept event shows where it was cut: its messageId became LEFT_OUT some levels down
    message_id = record["unrelayable"][0]["event"]["data"]["messageId"]
    assert str(message_id).startswith("[[") and len(json.dumps(record)) < MAX_MESSAGE_BYTES
    assert LEFT_OUT == {"…": "nested deeper than 32 levels, left out"}


async def test_a_wide_delivery_is_answered_quickly_and_kept_as_one_record(
    acs: Services, relay_queues: RelayQueues
) -> None:
    """Event Grid delivers at most 5,000 events at once: a body with more is refused 413 (never
    retried: the same body would only come again), in well under a second; up to 5,000, junk
    among readable events costs one poison record, not one per item."""
    numbers = json.dumps(list(range(30_001))).encode()
    started = time.monotonic()
    refused = await post(acs, numbers)
    assert refused.status_code == 413 and time.monotonic() - started < 1
    assert "5,000" in refused.get_body().decode()

    batch = [report("Outgoing_among_junk"), *range(MAX_EVENTS_PER_DELIVERY - 1)]
    started = time.monotonic()
    response = await post(acs, json.dumps(batch).encode())
    assert response.status_code == 200 and time.monotonic() - started < 2
    assert [j.message_id for j in relay_queues.visible_jobs(relay_queues.jobs)] == ["Outgoing_among_junk"]
    [record] = kept(relay_queues)
    assert record["total"] == MAX_EVENTS_PER_DELIVERY - 1
    shown = len(record["unrelayable"])
    assert shown > 0 and record["left_out"] == record["total"] - shown
    assert record["unrelayable"][0] == {"reason": "not an event: no eventType or type", "event": 0}

    wide = report("Outgoing_wide", **{f"extra{i}": "x" for i in range(50_000)})
    assert (await post(acs, json.dumps([wide]).encode())).status_code == 200
    assert relay_queues.count(relay_queues.jobs) == 2


@pytest.mark.parametrize(
    "events",
    [
        [({"text": "😀" * 100_000, "nested": {"a": [{"b": "\ud800" * 3000}] * 500}}, "huge")] * 300,
        [(list(range(100_000)), "wide")],
        [({f"key{i}" * 500: i for i in range(2_000)}, "long keys")] * 20,
        [(0, f"reason {i} " + "r" * 1000) for i in range(5_000)],
    ],
    ids=["huge strings", "wide array", "long keys", "many reasons"],
)
def test_a_poison_record_is_bounded_whatever_it_keeps(events: list[tuple[Any, str]]) -> None:
    body = unrelayable_record("acs", "inbound", events)
    assert len(base64.b64encode(body)) < MAX_MESSAGE_BYTES  # one queue message
    record = json.loads(body)
    assert record["total"] == len(events) and len(record["last_error"]) <= 500
    assert record["left_out"] == len(events) - len(record["unrelayable"])
    assert record["unrelayable"], "at least the first event is shown, cut"


def test_a_kept_event_is_cut_without_recursion() -> None:
    nested: Any = "bottom"
    for _ in range(100_000):  # built iteratively: deeper than any recursion could walk
        nested = [nested, {"k": 1}]
    [entry] = json.loads(unrelayable_record("acs", "inbound", [(nested, "deep")]))["unrelayable"]
    levels, value = 0, entry["event"]
    while isinstance(value, list):
        value, levels = value[0], levels + 1
    assert levels == 8 and value.startswith("… (list of 2")
