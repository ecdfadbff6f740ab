"""Event Grid (ACS) deliveries: no event lost to a refusal Event Grid never retries (400, 401, 403,
413), both event schemas, the validation handshakes, secret rotation; and what holds for every
provider: a missing verification secret is 503, an event too large for the queue is kept."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import azure.functions as func
import pytest

from channels.simulator import sign_webhook
from contracts import ChannelStatus
from tests.conftest import CUSTOMER, OUR_NUMBER, RelayQueues
from tests.doubles import app_function
from tests.fakes.azurite import Azurite
from tests.test_webhooks import event
from usecases.composition import Services

DELIVERY = "Microsoft.Communication.SMSDeliveryReportReceived"
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


async def test_an_unset_secret_is_503_so_that_event_grid_retries(
    acs: Services, monkeypatch: pytest.MonkeyPatch, relay_queues: RelayQueues
) -> None:
    monkeypatch.delenv("ACS_WEBHOOK_SECRET")
    monkeypatch.delenv("ACS_WEBHOOK_SECRET_PREVIOUS")
    response = await post(Services(), json.dumps([report("Outgoing_1")]).encode(), secret="anything")
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert "ACS_WEBHOOK_SECRET" not in response.get_body().decode()  # anonymous callers learn no names
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
    reasons = sorted(record["last_error"] for record in kept(relay_queues))
    assert reasons == [f"{DELIVERY} without a messageId", "not an event: no eventType or type"]
    assert kept(relay_queues)[0]["provider"] == "acs"


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


async def test_cloudevents_validation_handshake(acs: Services) -> None:
    response = await post(
        acs, b"", method="OPTIONS", secret=None, headers={"WebHook-Request-Origin": "eventgrid.azure.net"}
    )
    assert response.status_code == 200
    assert response.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"


async def test_event_grid_validation_needs_no_secret(acs: Services, relay_queues: RelayQueues) -> None:
    validation = event(
        "Microsoft.EventGrid.SubscriptionValidationEvent",
        {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6", "validationUrl": "https://x"},
    )
    response = await post(acs, json.dumps([validation]).encode(), secret=None)
    assert response.status_code == 200
    assert json.loads(response.get_body()) == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}
    # a validation event does not open the door to events riding along with it
    smuggled = json.dumps([validation, report("Outgoing_smuggled")]).encode()
    assert (await post(acs, smuggled, secret=None)).status_code == 401
    assert relay_queues.count(relay_queues.jobs) == 0


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
    assert record["last_error"] == "too large for a queue message"
    assert record["unrelayable"]["message_id"] == "SMlong"
