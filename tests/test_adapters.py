"""Twilio and ACS adapters against local fake APIs over real sockets; the official SDKs as oracles."""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone

import pytest
from azure.communication.sms import SmsClient
from pydantic import SecretStr
from twilio.rest import Client as TwilioClient

from channels.acs import AcsAdapter, AcsSettings
from channels.base import SendReceipt, SendRequest
from channels.errors import AmbiguousSendError, NotSentReason, PermanentSendError, TransientSendError
from channels.twilio import TwilioAdapter, TwilioSettings
from tests.conftest import CUSTOMER, OUR_NUMBER
from tests.fakes.http import FakeHttpServer, Reply
from tests.fakes.providers import FakeAcs, FakeTwilio
from tests.fakes.tls import LocalCA

ACCOUNT_SID = "AC" + "1" * 32


def send_request(recipient: str = CUSTOMER, text: str = "Hello from the journey") -> SendRequest:
    request_id, definition = "req-42", uuid.uuid4()
    return SendRequest(
        request_id=request_id,
        channel_definition_id=definition,
        reference=f"{definition}/{request_id}",
        sender=OUR_NUMBER,
        recipient=recipient,
        text=text,
        idempotency_key=uuid.uuid4(),
        first_attempt_at=datetime.now(timezone.utc),
    )


# -- Twilio -----------------------------------------------------------------------------------


@pytest.fixture
def twilio_token() -> str:
    return secrets.token_hex(16)


@pytest.fixture
def fake_twilio(twilio_token: str) -> Iterator[FakeHttpServer]:
    with FakeHttpServer(FakeTwilio(ACCOUNT_SID, twilio_token)) as server:
        yield server


@pytest.fixture
async def twilio(fake_twilio: FakeHttpServer, twilio_token: str) -> AsyncIterator[TwilioAdapter]:
    settings = TwilioSettings(
        account_sid=ACCOUNT_SID, auth_token=SecretStr(twilio_token), api_base_url=fake_twilio.url
    )  # type: ignore[arg-type]
    channel = TwilioAdapter(
        settings, status_callback_url="https://sms.example.org/api/providers/twilio/delivery-reports"
    )
    yield channel
    await channel.aclose()


async def test_twilio_send_posts_what_the_official_sdk_posts(
    twilio: TwilioAdapter, fake_twilio: FakeHttpServer, twilio_token: str
) -> None:
    request = send_request(text="Grüße 👋")
    receipt = await twilio.send(request)

    sdk = TwilioClient(ACCOUNT_SID, twilio_token)
    sdk.api.base_url = fake_twilio.url
    callback = "https://sms.example.org/api/providers/twilio/delivery-reports"
    sdk_message = sdk.messages.create(
        to=CUSTOMER,
        from_=OUR_NUMBER,
        body="Grüße 👋",
        status_callback=f"{callback}?ref={request.channel_definition_id}%2F{request.request_id}",
    )

    ours, theirs = fake_twilio.requests
    # its status callbacks go to the URL that names the request: the send needs no message record
    first = receipt.message_id  # the fake's first sid, the SDK's send got the next one
    assert receipt == SendReceipt(message_id=first, provider_status="queued", reports_carry_reference=True)
    assert len(first) == 34 and first.startswith("SM") and first.endswith("0" * 16)
    assert sdk_message.sid == first[:-1] + "1"
    assert (ours.method, ours.path) == (theirs.method, theirs.path)
    assert ours.form() == theirs.form()
    assert (
        ours.headers["content-type"] == theirs.headers["content-type"] == "application/x-www-form-urlencoded"
    )


async def test_twilio_messaging_service_replaces_from(fake_twilio: FakeHttpServer, twilio_token: str) -> None:
    settings = TwilioSettings(
        account_sid=ACCOUNT_SID,
        auth_token=SecretStr(twilio_token),
        messaging_service_sid="MG" + "2" * 32,
        api_base_url=fake_twilio.url,
    )  # type: ignore[arg-type]
    channel = TwilioAdapter(settings)
    try:
        receipt = await channel.send(send_request())
    finally:
        await channel.aclose()
    form = fake_twilio.requests[0].form()
    assert (
        form["MessagingServiceSid"] == "MG" + "2" * 32 and "From" not in form and "StatusCallback" not in form
    )
    # reports go to the messaging service's callback, which does not name the request
    assert not receipt.reports_carry_reference


async def test_twilio_api_key_auth(fake_twilio: FakeHttpServer) -> None:
    settings = TwilioSettings(
        account_sid=ACCOUNT_SID,
        api_key_sid="SK" + "3" * 32,
        api_key_secret=SecretStr("s"),
        api_base_url=fake_twilio.url,
    )  # type: ignore[arg-type]
    channel = TwilioAdapter(settings)
    try:
        with pytest.raises(TransientSendError, match="credentials refused"):
            await channel.send(send_request())
    finally:
        await channel.aclose()
    assert (
        fake_twilio.requests[0].headers["authorization"]
        == "Basic " + base64.b64encode(f"SK{'3' * 32}:s".encode()).decode()
    )


@pytest.mark.parametrize(
    "suffix, reason, code",
    [
        ("0610", NotSentReason.RECIPIENT_OPTED_OUT, "21610"),
        ("0211", NotSentReason.INVALID_RECIPIENT, "21211"),
    ],
)
async def test_twilio_permanent_rejections(
    twilio: TwilioAdapter, suffix: str, reason: NotSentReason, code: str
) -> None:
    with pytest.raises(PermanentSendError) as caught:
        await twilio.send(send_request(recipient="+1415555" + suffix))
    assert (caught.value.reason, caught.value.provider_code) == (reason, code)
    assert "+1415555" not in str(caught.value)  # Twilio's message quotes the number; ours must not


async def test_twilio_throttling_is_transient_and_a_500_ambiguous(twilio: TwilioAdapter) -> None:
    with pytest.raises(TransientSendError) as throttled:
        await twilio.send(send_request(recipient="+14155550429"))
    assert throttled.value.retry_after == 1.0
    with pytest.raises(AmbiguousSendError):  # Twilio may have created the message before failing
        await twilio.send(send_request(recipient="+14155550500"))


async def test_twilio_unreachable_is_transient_and_no_answer_is_ambiguous(twilio_token: str) -> None:
    closed = TwilioAdapter(
        TwilioSettings(
            account_sid=ACCOUNT_SID, auth_token=SecretStr(twilio_token), api_base_url="http://127.0.0.1:9"
        )
    )  # type: ignore[arg-type]
    with pytest.raises(TransientSendError, match="could not connect"):
        await closed.send(send_request())
    await closed.aclose()

    import threading

    release = threading.Event()

    def never_answers(_: object) -> Reply:
        release.wait(5)
        return Reply(201, {"sid": "SMlate"})

    with FakeHttpServer(never_answers) as slow:
        channel = TwilioAdapter(
            TwilioSettings(
                account_sid=ACCOUNT_SID, auth_token=SecretStr(twilio_token), api_base_url=slow.url
            ),
            timeout=0.3,
        )  # type: ignore[arg-type]
        try:
            with pytest.raises(AmbiguousSendError):
                await channel.send(send_request())
        finally:
            release.set()
            await channel.aclose()


# -- Azure Communication Services --------------------------------------------------------------


@pytest.fixture
def acs_key() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def fake_acs(trust_test_ca: LocalCA, acs_key: bytes) -> Iterator[FakeHttpServer]:
    with FakeHttpServer(FakeAcs(acs_key), tls=trust_test_ca.server_context()) as server:
        yield server


def acs_connection_string(url: str, key: bytes) -> str:
    return f"endpoint={url}/;accesskey={base64.b64encode(key).decode()}"


@pytest.fixture
async def acs(fake_acs: FakeHttpServer, acs_key: bytes) -> AsyncIterator[AcsAdapter]:
    channel = AcsAdapter(
        AcsSettings(connection_string=SecretStr(acs_connection_string(fake_acs.url, acs_key)))
    )
    yield channel
    await channel.aclose()


async def test_acs_send_is_signed_and_shaped_like_the_official_sdk(
    acs: AcsAdapter, fake_acs: FakeHttpServer, acs_key: bytes
) -> None:
    request = send_request()
    receipt = await acs.send(request)

    sdk = SmsClient.from_connection_string(acs_connection_string(fake_acs.url, acs_key))
    [sdk_result] = sdk.send(
        from_=OUR_NUMBER,
        to=CUSTOMER,
        message="Hello from the journey",
        enable_delivery_report=True,
        tag=f"{request.channel_definition_id}/req-42",
    )

    ours, theirs = fake_acs.requests
    assert receipt.message_id.startswith("Outgoing_") and sdk_result.successful  # both passed the HMAC check
    assert ours.target == theirs.target == "/sms?api-version=2021-03-07"
    ours_body, theirs_body = ours.json(), theirs.json()
    for body in (ours_body, theirs_body):
        del (
            body["smsRecipients"][0]["repeatabilityRequestId"],
            body["smsRecipients"][0]["repeatabilityFirstSent"],
        )
    assert ours_body == theirs_body
    assert ours.json()["smsRecipients"][0]["repeatabilityRequestId"] == str(request.idempotency_key)


async def test_acs_resend_of_the_same_request_is_answered_from_the_first(
    acs: AcsAdapter, fake_acs: FakeHttpServer
) -> None:
    request = send_request()
    first, again = await acs.send(request), await acs.send(request)
    assert first == again
    a, b = fake_acs.requests
    assert a.json()["smsRecipients"] == b.json()["smsRecipients"]


async def test_acs_rejected_recipient_is_permanent_and_throttling_transient(acs: AcsAdapter) -> None:
    with pytest.raises(PermanentSendError) as rejected:
        await acs.send(send_request(recipient="+14155550211"))
    assert rejected.value.reason is NotSentReason.INVALID_RECIPIENT
    with pytest.raises(TransientSendError) as throttled:
        await acs.send(send_request(recipient="+14155550429"))
    assert throttled.value.retry_after == 1.0
    with pytest.raises(TransientSendError):
        await acs.send(send_request(recipient="+14155550500"))


async def test_acs_wrong_key_is_refused(fake_acs: FakeHttpServer) -> None:
    channel = AcsAdapter(
        AcsSettings(connection_string=SecretStr(acs_connection_string(fake_acs.url, b"wrong")))
    )
    try:
        with pytest.raises(TransientSendError, match="credentials refused"):
            await channel.send(send_request())
    finally:
        await channel.aclose()


async def test_acs_managed_identity_gets_one_token_from_the_app_service_endpoint(
    trust_test_ca: LocalCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = secrets.token_urlsafe(24)
    identity_secret = secrets.token_hex(8)

    def identity_endpoint(request: object) -> Reply:
        from tests.fakes.http import Recorded

        assert isinstance(request, Recorded)
        if request.headers.get("x-identity-header") != identity_secret:
            return Reply(401, {"error": "unauthorized"})
        return Reply(
            200,
            {
                "access_token": token,
                "expires_on": str(int(datetime.now().timestamp()) + 3600),
                "resource": request.query["resource"][0],
                "token_type": "Bearer",
            },
        )

    with (
        FakeHttpServer(identity_endpoint) as identity,
        FakeHttpServer(FakeAcs(b"", bearer_token=token), tls=trust_test_ca.server_context()) as fake,
    ):
        monkeypatch.setenv("IDENTITY_ENDPOINT", f"{identity.url}/msi/token")
        monkeypatch.setenv("IDENTITY_HEADER", identity_secret)
        channel = AcsAdapter(AcsSettings(endpoint=fake.url))  # type: ignore[arg-type]
        try:
            for _ in range(3):
                await channel.send(send_request())
        finally:
            await channel.aclose()
        assert len(fake.requests) == 3
        assert len(identity.requests) == 1
        assert identity.requests[0].query["resource"] == ["https://communication.azure.com"]
