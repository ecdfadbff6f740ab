"""End to end on the local host: outbound via Twilio, its status callback and an inbound message
relayed through the queue to a fake Dataverse reached with real MSAL tokens, over real sockets."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import urlencode, urlsplit

import httpx
import pytest
from azure.data.tables import TableServiceClient
from twilio.request_validator import RequestValidator

from contracts import ChannelStatus
from storage.ledger import MESSAGES_TABLE, SendLedger
from storage.relay_queue import NotificationJob, RelayQueue
from tests.conftest import CUSTOMER, OUR_NUMBER, DataverseWorld, RelayQueues, payload_json
from tests.doubles import send_record
from tests.e2e import client, local_host, wait_for
from tests.fakes.azurite import Azurite
from tests.fakes.http import FakeHttpServer
from tests.fakes.providers import FakeTwilio

ACCOUNT_SID = "AC" + "9" * 32
PUBLIC = "https://sms.example.org"


@pytest.fixture
def twilio_token() -> str:
    return secrets.token_hex(16)


@pytest.fixture
def fake_twilio(twilio_token: str) -> Iterator[FakeHttpServer]:
    with FakeHttpServer(FakeTwilio(ACCOUNT_SID, twilio_token)) as server:
        yield server


@pytest.fixture
def app_env(
    azurite: Azurite,
    fake_twilio: FakeHttpServer,
    twilio_token: str,
    dataverse_world: DataverseWorld,
    relay_queues: RelayQueues,
) -> dict[str, str]:
    return {
        "AzureWebJobsStorage": azurite.connection_string,
        "SMS_PROVIDER": "twilio",
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": twilio_token,
        "TWILIO_API_BASE_URL": fake_twilio.url,
        "PUBLIC_BASE_URL": PUBLIC,
        **dataverse_world.env(),
    }


def post_signed(http: httpx.Client, url: str, params: dict[str, str], token: str) -> httpx.Response:
    signature = RequestValidator(token).compute_signature(url, params)
    parts = urlsplit(url)
    return http.post(
        parts.path + (f"?{parts.query}" if parts.query else ""),
        content=urlencode(params),
        headers={"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"},
    )


def test_status_callback_reaches_dataverse_once(
    app_env: dict[str, str],
    azurite: Azurite,
    fake_twilio: FakeHttpServer,
    twilio_token: str,
    dataverse_world: DataverseWorld,
    relay_queues: RelayQueues,
) -> None:
    """The callback URL names the request, so the send stored its message id in its own row only."""
    channel_definition_id = uuid.uuid4()
    fake = dataverse_world.dataverse
    with local_host(app_env) as base, client(base) as http:
        sent = http.post("/api/outbound", json=payload_json(channel_definition_id, "e2e-dlr")).json()
        callback_url = fake_twilio.requests[-1].form()["StatusCallback"]
        callback = {
            "MessageSid": sent["MessageId"],
            "SmsSid": sent["MessageId"],
            "MessageStatus": "delivered",
            "SmsStatus": "delivered",
            "AccountSid": ACCOUNT_SID,
            "From": OUR_NUMBER,
            "To": CUSTOMER,
            "ApiVersion": "2010-04-01",
        }
        first = post_signed(http, callback_url, callback, twilio_token)
        wait_for(lambda: len(fake.notifications) == 1)
        again = post_signed(http, callback_url, callback, twilio_token)  # Twilio retried
        late = post_signed(
            http, callback_url, {**callback, "MessageStatus": "sent", "SmsStatus": "sent"}, twilio_token
        )
        wait_for(lambda: relay_queues.count(relay_queues.jobs) == 0)

    assert [first.status_code, again.status_code, late.status_code] == [200, 200, 200]
    assert fake.notification_payloads() == [
        {
            "ChannelDefinitionId": str(channel_definition_id),
            "RequestId": "e2e-dlr",
            "MessageId": sent["MessageId"],
            "From": OUR_NUMBER,
            "OrganizationId": fake.organization_id,
            "Status": "Delivered",
            "StatusDetails": {"Provider": "twilio", "ProviderStatus": "delivered"},
        }
    ]
    assert len(dataverse_world.entra.token_requests) == 1
    messages = TableServiceClient.from_connection_string(azurite.connection_string).get_table_client(
        MESSAGES_TABLE
    )
    assert list(messages.query_entities(f"RowKey eq '{sent['MessageId']}'")) == []


def test_a_report_after_a_retried_attempt_names_the_latest_attempt_once(
    app_env: dict[str, str],
    fake_twilio: FakeHttpServer,
    twilio_token: str,
    dataverse_world: DataverseWorld,
    relay_queues: RelayQueues,
) -> None:
    """Journeys retried with a new RequestId and the same IdempotencyId: one SMS, and its delivery
    report names the attempt Journeys got the last answer for."""
    channel_definition_id = uuid.uuid4()
    fake = dataverse_world.dataverse
    first = payload_json(channel_definition_id, "journey-attempt-1", IdempotencyId="journey-msg")
    with local_host(app_env) as base, client(base) as http:
        sent = http.post("/api/outbound", json=first).json()
        retried = http.post("/api/outbound", json={**first, "RequestId": "journey-attempt-2"}).json()
        [send] = [r for r in fake_twilio.requests if r.form().get("StatusCallback")]
        callback = {
            "MessageSid": sent["MessageId"],
            "MessageStatus": "delivered",
            "AccountSid": ACCOUNT_SID,
            "From": OUR_NUMBER,
            "To": CUSTOMER,
        }
        url = send.form()["StatusCallback"]
        responses = [post_signed(http, url, callback, twilio_token) for _ in range(2)]
        wait_for(lambda: len(fake.notifications) == 1)
        wait_for(lambda: relay_queues.count(relay_queues.jobs) == 0)

    assert retried == {**sent, "RequestId": "journey-attempt-2"}
    assert [r.status_code for r in responses] == [200, 200]
    assert [(n["RequestId"], n["MessageId"]) for n in fake.notification_payloads()] == [
        ("journey-attempt-2", sent["MessageId"])
    ]


def test_relays_through_the_channels_own_custom_apis(
    app_env: dict[str, str],
    fake_twilio: FakeHttpServer,
    twilio_token: str,
    dataverse_world: DataverseWorld,
    relay_queues: RelayQueues,
) -> None:
    """DATAVERSE_CHANNEL_API_PREFIX=contoso: the delivery report and the reply go to the channel's own
    custom APIs, whose plug-ins pass the payloads on to Journeys' actions unchanged."""
    fake = dataverse_world.dataverse
    fake.channel_apis = {
        "contoso_SmsDeliveryReport": "msdyn_D365ChannelsNotification",
        "contoso_SmsInbound": "msdyn_D365ChannelsInbound",
    }
    definition = uuid.uuid4()
    fake.channel_instances[OUR_NUMBER] = str(definition)
    with local_host({**app_env, "DATAVERSE_CHANNEL_API_PREFIX": "contoso"}) as base, client(base) as http:
        sent = http.post("/api/outbound", json=payload_json(definition, "own-apis")).json()
        callback = {"MessageSid": sent["MessageId"], "MessageStatus": "delivered", "AccountSid": ACCOUNT_SID}
        post_signed(http, fake_twilio.requests[-1].form()["StatusCallback"], callback, twilio_token)
        reply = {"MessageSid": "SM" + uuid.uuid4().hex, "AccountSid": ACCOUNT_SID, "From": CUSTOMER}
        reply |= {"To": OUR_NUMBER, "Body": "Thanks", "NumMedia": "0"}
        post_signed(http, f"{PUBLIC}/api/providers/twilio/inbound", reply, twilio_token)
        wait_for(lambda: len(fake.relayed_via) == 2)
        wait_for(lambda: relay_queues.count(relay_queues.jobs) == 0)

    assert sorted(fake.relayed_via) == ["contoso_SmsDeliveryReport", "contoso_SmsInbound"]
    [notification] = fake.notification_payloads()
    assert (notification["RequestId"], notification["Status"]) == ("own-apis", "Delivered")
    assert fake.inbound_payloads()[0]["Message"] == {"text": "Thanks"}


def test_inbound_reply_reaches_dataverse(
    app_env: dict[str, str], twilio_token: str, dataverse_world: DataverseWorld
) -> None:
    definition = str(uuid.uuid4())
    dataverse_world.dataverse.channel_instances[OUR_NUMBER] = definition
    message = {
        "MessageSid": "SM" + uuid.uuid4().hex,
        "AccountSid": ACCOUNT_SID,
        "From": CUSTOMER,
        "To": OUR_NUMBER,
        "Body": "STOP",
        "NumMedia": "0",
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
    }
    with local_host(app_env) as base, client(base) as http:
        response = post_signed(http, f"{PUBLIC}/api/providers/twilio/inbound", message, twilio_token)
        wait_for(lambda: len(dataverse_world.dataverse.inbound) == 1)
    assert response.status_code == 200 and "<Response/>" in response.text
    assert dataverse_world.dataverse.inbound_payloads() == [
        {
            "ChannelDefinitionId": definition,
            "To": OUR_NUMBER,
            "From": CUSTOMER,
            "OrganizationId": dataverse_world.dataverse.organization_id,
            "Message": {"text": "STOP"},
        }
    ]


def test_job_of_a_worker_killed_after_dequeue_is_relayed_once(
    app_env: dict[str, str], azurite: Azurite, dataverse_world: DataverseWorld, relay_queues: RelayQueues
) -> None:
    async def enqueue() -> str:
        ledger = SendLedger(azurite.connection_string, retention=timedelta(days=1))
        message_id = "SM" + uuid.uuid4().hex
        await ledger.remember_message(send_record("twilio"), message_id)
        await ledger.aclose()
        queue = RelayQueue(azurite.connection_string)
        await queue.put(
            NotificationJob(
                provider="twilio",
                message_id=message_id,
                status=ChannelStatus.DELIVERED,
                provider_status="delivered",
            )
        )
        await queue.aclose()
        return message_id

    message_id = asyncio.run(enqueue())
    # a worker takes the message and dies before relaying it: the message stays invisible for 2 s
    [taken] = list(relay_queues.jobs.receive_messages(visibility_timeout=2, max_messages=1))
    assert taken.dequeue_count == 1
    with local_host(app_env):
        wait_for(lambda: len(dataverse_world.dataverse.notifications) == 1)
        wait_for(lambda: relay_queues.count(relay_queues.jobs) == 0)
    assert [n["MessageId"] for n in dataverse_world.dataverse.notification_payloads()] == [message_id]
