"""Provider webhooks through func.HttpRequest: authenticity first, then parsing, then the relay queue."""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import azure.functions as func
import pytest
from twilio.request_validator import RequestValidator

from channels.simulator import sign_webhook
from contracts import ChannelStatus
from tests.conftest import CUSTOMER, OUR_NUMBER, RelayQueues
from tests.doubles import app_function
from tests.fakes.azurite import Azurite
from usecases.composition import Services

PUBLIC = "https://sms.example.org"
ACCOUNT_SID = "AC" + "5" * 32


class Secrets:
    def __init__(self) -> None:
        self.twilio = secrets.token_hex(16)
        self.acs = secrets.token_urlsafe(16)
        self.simulator = secrets.token_urlsafe(16)


@pytest.fixture
def keys() -> Secrets:
    return Secrets()


@pytest.fixture
async def services(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch, keys: Secrets
) -> AsyncIterator[Services]:
    for name, value in {
        "AzureWebJobsStorage": azurite.connection_string,
        "SMS_PROVIDER": "twilio",
        # webhooks are served for the providers the app sends through
        "SENDER_ROUTES": "+14155550100=twilio,+14155550180=acs,+14155550181=simulator",
        "PUBLIC_BASE_URL": PUBLIC,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": keys.twilio,
        "ACS_CONNECTION_STRING": "endpoint=https://contoso.communication.azure.com/;accesskey=a2V5",
        "ACS_WEBHOOK_SECRET": keys.acs,
        "SIMULATOR_WEBHOOK_SECRET": keys.simulator,
    }.items():
        monkeypatch.setenv(name, value)
    built = Services()
    yield built
    await built.aclose()


def call(
    services: Services,
    provider: str,
    kind: str,
    body: bytes,
    *,
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    name = "delivery_reports" if kind == "delivery-reports" else "inbound"
    url = f"http://localhost:7071/api/providers/{provider}/{kind}" + (f"?{urlencode(query)}" if query else "")
    request = func.HttpRequest(
        "POST", url, body=body, headers=headers or {}, params=query or {}, route_params={"provider": provider}
    )
    return app_function(services, name)(request)


# -- Twilio ------------------------------------------------------------------------------------


def twilio_callback(status: str = "delivered", **extra: str) -> dict[str, str]:
    return {
        "MessageSid": "SM" + uuid.uuid4().hex,
        "SmsSid": "SMx",
        "MessageStatus": status,
        "SmsStatus": status,
        "AccountSid": ACCOUNT_SID,
        "From": OUR_NUMBER,
        "To": CUSTOMER,
        "ApiVersion": "2010-04-01",
        **extra,
    }


async def post_twilio(
    services: Services,
    keys: Secrets,
    params: dict[str, str],
    *,
    kind: str = "delivery-reports",
    query: dict[str, str] | None = None,
    sign_url: str | None = None,
    signature: str | None = None,
) -> Any:
    public_url = f"{PUBLIC}/api/providers/twilio/{kind}" + (f"?{urlencode(query)}" if query else "")
    if signature is None:
        signature = RequestValidator(keys.twilio).compute_signature(sign_url or public_url, params)
    return await call(
        services,
        "twilio",
        kind,
        urlencode(params).encode(),
        query=query,
        headers={"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"},
    )


async def test_twilio_report_signed_by_the_sdk_is_queued(
    services: Services, keys: Secrets, relay_queues: RelayQueues
) -> None:
    reference = f"{uuid.uuid4()}/req-7"
    params = twilio_callback("undelivered", ErrorCode="30003")
    response = await post_twilio(services, keys, params, query={"ref": reference})
    assert response.status_code == 200
    [job] = relay_queues.visible_jobs(relay_queues.jobs)
    assert (job.kind, job.provider, job.message_id, job.status) == (
        "notification",
        "twilio",
        params["MessageSid"],
        ChannelStatus.NOT_DELIVERED,
    )
    assert (job.provider_status, job.error_code, job.reason, job.correlation) == (
        "undelivered",
        "30003",
        "Unreachable",
        reference,
    )


async def test_twilio_intermediate_status_is_acknowledged_not_queued(
    services: Services, keys: Secrets, relay_queues: RelayQueues
) -> None:
    for status in ("queued", "sent", "accepted"):
        assert (await post_twilio(services, keys, twilio_callback(status))).status_code == 200
    assert relay_queues.count(relay_queues.jobs) == 0


async def test_twilio_forged_tampered_wrong_url_and_missing_signatures_are_refused(
    services: Services, keys: Secrets, relay_queues: RelayQueues, caplog: pytest.LogCaptureFixture
) -> None:
    params = twilio_callback()
    forged = await post_twilio(services, keys, params, signature="bm90IGEgc2lnbmF0dXJl")
    tampered_params = dict(params)
    good = RequestValidator(keys.twilio).compute_signature(
        f"{PUBLIC}/api/providers/twilio/delivery-reports", params
    )
    tampered_params["MessageStatus"] = "failed"
    tampered = await post_twilio(services, keys, tampered_params, signature=good)
    wrong_url = await post_twilio(
        services, keys, params, sign_url="http://localhost:7071/api/providers/twilio/delivery-reports"
    )
    other_secret = RequestValidator("0" * 32).compute_signature(
        f"{PUBLIC}/api/providers/twilio/delivery-reports", params
    )
    wrong_key = await post_twilio(services, keys, params, signature=other_secret)
    missing = await call(services, "twilio", "delivery-reports", urlencode(params).encode())

    assert [r.status_code for r in (forged, tampered, wrong_url, wrong_key, missing)] == [
        403,
        403,
        403,
        403,
        401,
    ]
    assert relay_queues.count(relay_queues.jobs) == 0
    assert "webhook refused" in caplog.text and keys.twilio not in caplog.text


async def test_twilio_signature_with_default_port_is_accepted(
    services: Services, keys: Secrets, relay_queues: RelayQueues
) -> None:
    params = twilio_callback()
    response = await post_twilio(
        services, keys, params, sign_url="https://sms.example.org:443/api/providers/twilio/delivery-reports"
    )
    assert response.status_code == 200 and relay_queues.count(relay_queues.jobs) == 1


async def test_twilio_inbound_answers_empty_twiml_and_is_queued(
    services: Services, keys: Secrets, relay_queues: RelayQueues
) -> None:
    params = {
        "MessageSid": "SM" + uuid.uuid4().hex,
        "AccountSid": ACCOUNT_SID,
        "From": CUSTOMER,
        "To": OUR_NUMBER,
        "Body": "STOP",
        "NumMedia": "0",
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
    }
    response = await post_twilio(services, keys, params, kind="inbound")
    assert response.status_code == 200 and response.mimetype == "text/xml"
    assert response.get_body().decode().endswith("<Response/>")
    [job] = relay_queues.visible_jobs(relay_queues.jobs)
    assert (job.kind, job.customer, job.our_number, job.text) == ("inbound", CUSTOMER, OUR_NUMBER, "STOP")


async def test_twilio_report_without_message_sid_is_400(
    services: Services, keys: Secrets, relay_queues: RelayQueues
) -> None:
    response = await post_twilio(services, keys, {"MessageStatus": "delivered"})
    assert response.status_code == 400 and relay_queues.count(relay_queues.jobs) == 0


# -- Azure Communication Services (Event Grid) ---------------------------------------------------


def event(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "topic": "/subscriptions/x/resourceGroups/y/providers/Microsoft.Communication/"
        "communicationServices/z",
        "subject": f"/phonenumber/{OUR_NUMBER}",
        "eventType": event_type,
        "data": data,
        "dataVersion": "1.0",
        "metadataVersion": "1",
        "eventTime": "2026-11-27T10:00:00Z",
    }


async def test_event_grid_subscription_validation_handshake(
    services: Services, keys: Secrets, relay_queues: RelayQueues
) -> None:
    body = json.dumps(
        [
            event(
                "Microsoft.EventGrid.SubscriptionValidationEvent",
                {
                    "validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
                    "validationUrl": "https://rp-eastus2.eventgrid.azure.net/api/subscriptions/x",
                },
            )
        ]
    )
    response = await call(
        services,
        "acs",
        "delivery-reports",
        body.encode(),
        query={"secret": keys.acs},
        headers={"aeg-event-type": "SubscriptionValidation"},
    )
    assert response.status_code == 200
    assert json.loads(response.get_body()) == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}
    assert relay_queues.count(relay_queues.jobs) == 0


async def test_event_grid_without_the_secret_is_refused(
    services: Services, keys: Secrets, relay_queues: RelayQueues
) -> None:
    body = json.dumps(
        [
            event(
                "Microsoft.Communication.SMSDeliveryReportReceived",
                {"messageId": "Outgoing_1", "deliveryStatus": "Delivered"},
            )
        ]
    ).encode()
    missing = await call(services, "acs", "delivery-reports", body)
    wrong = await call(services, "acs", "delivery-reports", body, headers={"X-Webhook-Secret": "guess"})
    assert (missing.status_code, wrong.status_code) == (401, 403)
    assert relay_queues.count(relay_queues.jobs) == 0


async def test_acs_delivery_reports_are_parsed_case_blind(
    services: Services, keys: Secrets, relay_queues: RelayQueues
) -> None:
    definition = uuid.uuid4()
    body = json.dumps(
        [
            event(
                "Microsoft.Communication.SMSDeliveryReportReceived",
                {
                    "messageId": "Outgoing_a",
                    "from": OUR_NUMBER,
                    "to": CUSTOMER,
                    "deliveryStatus": "Delivered",
                    "deliveryStatusDetails": "No error.",
                    "tag": f"{definition}/req-a",
                },
            ),
            event(
                "Microsoft.Communication.SMSDeliveryReportReceived",
                {
                    "MessageId": "Outgoing_b",
                    "From": OUR_NUMBER,
                    "To": CUSTOMER,
                    "DeliveryStatus": "Failed",
                    "DeliveryStatusDetails": "Message expired before delivery.",
                },
            ),
        ]
    ).encode()
    response = await call(services, "acs", "delivery-reports", body, headers={"X-Webhook-Secret": keys.acs})
    assert response.status_code == 200
    jobs = {job.message_id: job for job in relay_queues.visible_jobs(relay_queues.jobs)}
    assert jobs["Outgoing_a"].status is ChannelStatus.DELIVERED
    assert jobs["Outgoing_a"].correlation == f"{definition}/req-a"
    assert (jobs["Outgoing_b"].status, jobs["Outgoing_b"].reason) == (ChannelStatus.NOT_DELIVERED, "Expired")


async def test_acs_inbound(services: Services, keys: Secrets, relay_queues: RelayQueues) -> None:
    body = json.dumps(
        [
            event(
                "Microsoft.Communication.SMSReceived",
                {
                    "messageId": "Incoming_1",
                    "from": CUSTOMER.lstrip("+"),
                    "to": OUR_NUMBER,
                    "message": "Hello 👋",
                    "receivedTimestamp": "2026-11-27T10:00:00Z",
                },
            )
        ]
    ).encode()
    response = await call(services, "acs", "inbound", body, query={"secret": keys.acs})
    assert response.status_code == 200
    [job] = relay_queues.visible_jobs(relay_queues.jobs)
    assert (job.kind, job.customer, job.our_number, job.text) == (
        "inbound",
        CUSTOMER.lstrip("+"),
        OUR_NUMBER,
        "Hello 👋",
    )


# -- Simulator ------------------------------------------------------------------------------------


async def test_simulator_signature_valid_forged_and_stale(
    services: Services, keys: Secrets, relay_queues: RelayQueues
) -> None:
    body = json.dumps({"MessageId": "SMsim1", "Status": "delivered"}).encode()
    valid = await call(
        services, "simulator", "delivery-reports", body, headers=sign_webhook(keys.simulator, body)
    )
    forged = await call(
        services, "simulator", "delivery-reports", body, headers=sign_webhook("not-the-secret", body)
    )
    stale = await call(
        services,
        "simulator",
        "delivery-reports",
        body,
        headers=sign_webhook(keys.simulator, body, timestamp=int(time.time()) - 600),
    )
    assert [r.status_code for r in (valid, forged, stale)] == [200, 403, 403]
    assert relay_queues.count(relay_queues.jobs) == 1


async def test_unknown_provider_is_404(services: Services) -> None:
    assert (await call(services, "carrier-pigeon", "inbound", b"{}")).status_code == 404


async def test_queue_unreachable_asks_the_provider_to_retry(
    keys: Secrets, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(
        "AzureWebJobsStorage",
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=a2V5;QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;",
    )
    monkeypatch.setenv("SIMULATOR_WEBHOOK_SECRET", keys.simulator)
    services = Services()
    body = json.dumps({"MessageId": "SMsim2", "Status": "failed"}).encode()
    caplog.set_level(logging.INFO)
    response = await call(
        services, "simulator", "delivery-reports", body, headers=sign_webhook(keys.simulator, body)
    )
    await services.aclose()
    assert response.status_code == 503 and "Retry-After" in response.headers


async def test_twilio_shared_key_hmac_sha256_signature(
    services: Services, keys: Secrets, relay_queues: RelayQueues, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared_key = secrets.token_urlsafe(24)
    monkeypatch.setenv("TWILIO_WEBHOOK_SHARED_KEY", shared_key)
    fresh = Services()
    params = twilio_callback()
    url = f"{PUBLIC}/api/providers/twilio/delivery-reports"
    signature = RequestValidator(shared_key).compute_signature(url, params, "HMAC_SHA256")
    settings_header = "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"
    headers = {"X-Twilio-Signature": signature, "X-Twilio-Webhooks-Signature-Settings": settings_header}
    accepted = await call(fresh, "twilio", "delivery-reports", urlencode(params).encode(), headers=headers)
    auth_token_signed = RequestValidator(keys.twilio).compute_signature(url, params, "HMAC_SHA256")
    refused = await call(
        fresh,
        "twilio",
        "delivery-reports",
        urlencode(params).encode(),
        headers={**headers, "X-Twilio-Signature": auth_token_signed},
    )
    unknown = await call(
        fresh,
        "twilio",
        "delivery-reports",
        urlencode(params).encode(),
        headers={**headers, "X-Twilio-Webhooks-Signature-Settings": "algorithm=HMAC_MD5"},
    )
    await fresh.aclose()
    assert [accepted.status_code, refused.status_code, unknown.status_code] == [200, 403, 403]
    assert relay_queues.count(relay_queues.jobs) == 1


async def test_twilio_json_body_signed_with_body_sha256(
    services: Services, keys: Secrets, relay_queues: RelayQueues
) -> None:
    body = json.dumps({"MessageSid": "SMjson", "MessageStatus": "delivered"})
    digest = RequestValidator(keys.twilio).compute_hash(body)
    url = f"{PUBLIC}/api/providers/twilio/delivery-reports?bodySHA256={digest}"
    signature = RequestValidator(keys.twilio).compute_signature(url, {})
    assert RequestValidator(keys.twilio).validate(url, body, signature)  # the SDK agrees
    headers = {"X-Twilio-Signature": signature, "Content-Type": "application/json"}
    valid = await call(
        services, "twilio", "delivery-reports", body.encode(), query={"bodySHA256": digest}, headers=headers
    )
    tampered = await call(
        services,
        "twilio",
        "delivery-reports",
        body.replace("delivered", "failed").encode(),
        query={"bodySHA256": digest},
        headers=headers,
    )
    assert tampered.status_code == 403
    # authentic, then refused as a delivery report: Twilio's SMS status callbacks are forms
    assert valid.status_code == 400 and json.loads(valid.get_body())["error"]["code"] == "InvalidWebhook"


async def test_twilio_signature_on_a_non_default_port(
    keys: Secrets, azurite: Azurite, relay_queues: RelayQueues, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://sms.example.org:8443")
    monkeypatch.setenv("SMS_PROVIDER", "twilio")
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", keys.twilio)
    fresh = Services()
    params = twilio_callback()
    for url in (
        "https://sms.example.org:8443/api/providers/twilio/delivery-reports",
        "https://sms.example.org/api/providers/twilio/delivery-reports",
    ):
        signature = RequestValidator(keys.twilio).compute_signature(url, params)
        assert RequestValidator(keys.twilio).validate(
            "https://sms.example.org:8443/api/providers/twilio/delivery-reports", params, signature
        )
        response = await call(
            fresh,
            "twilio",
            "delivery-reports",
            urlencode(params).encode(),
            headers={"X-Twilio-Signature": signature},
        )
        assert response.status_code == 200, url
    await fresh.aclose()


async def test_unreadable_and_oversized_bodies_are_4xx(services: Services, keys: Secrets) -> None:
    not_utf8 = await call(
        services, "twilio", "delivery-reports", b"MessageSid=\xff\xfe", headers={"X-Twilio-Signature": "x"}
    )
    huge = await call(
        services, "twilio", "inbound", b"a=" + b"x" * 70_000, headers={"X-Twilio-Signature": "x"}
    )
    body = b"{}"
    overflow = await call(
        services,
        "simulator",
        "delivery-reports",
        body,
        headers={"X-Simulator-Timestamp": "9" * 400, "X-Simulator-Signature": "00"},
    )
    assert [not_utf8.status_code, huge.status_code, overflow.status_code] == [400, 413, 403]


async def test_unconfigured_provider_reveals_no_setting_names(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("SMS_PROVIDER", "twilio")
    fresh = Services()  # Twilio chosen, but none of its settings
    response = await call(
        fresh, "twilio", "delivery-reports", b"MessageSid=SM1", headers={"X-Twilio-Signature": "x"}
    )
    await fresh.aclose()
    assert response.status_code == 503 and "TWILIO" not in response.get_body().decode()


async def test_providers_not_in_use_serve_no_webhooks(
    azurite: Azurite, keys: Secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("SMS_PROVIDER", "twilio")
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", keys.twilio)
    monkeypatch.setenv("SIMULATOR_WEBHOOK_SECRET", keys.simulator)  # left over, must open nothing
    fresh = Services()
    body = json.dumps({"MessageId": "SMx", "Status": "delivered"}).encode()
    response = await call(
        fresh, "simulator", "delivery-reports", body, headers=sign_webhook(keys.simulator, body)
    )
    await fresh.aclose()
    assert response.status_code == 404


def test_plivo_v3_that_fails_is_not_rescued_by_a_valid_v2() -> None:
    from pydantic import SecretStr

    from channels.events import WebhookRejected, WebhookRequest
    from channels.plivo import PlivoAdapter, PlivoSettings, plivo_signature_v2

    token = secrets.token_hex(20)
    channel = PlivoAdapter(PlivoSettings(auth_id="MA" + "7" * 18, auth_token=SecretStr(token)))
    url = f"{PUBLIC}/api/providers/plivo/delivery-reports"
    nonce = "12345"
    request = WebhookRequest(
        method="POST",
        public_url=url,
        query={},
        body=b"MessageUUID=u1&Status=delivered",
        headers={
            "x-plivo-signature-v3": "forged",
            "x-plivo-signature-v3-nonce": nonce,
            "x-plivo-signature-v2": plivo_signature_v2(token, url, nonce),
            "x-plivo-signature-v2-nonce": nonce,
        },
    )
    with pytest.raises(WebhookRejected) as refused:
        channel.verify_webhook(request)
    assert refused.value.status_code == 403
    without_v3 = WebhookRequest(
        method="POST",
        public_url=url,
        query={},
        body=request.body,
        headers={k: v for k, v in request.headers.items() if "v3" not in k},
    )
    channel.verify_webhook(without_v3)  # the same V2 signature alone is accepted
