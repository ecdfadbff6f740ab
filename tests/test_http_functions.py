"""The HTTP functions through func.HttpRequest, as the Functions worker calls them."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import azure.functions as func
import pytest

from channels.base import SendReceipt
from channels.errors import NOT_SENT_MESSAGES, AmbiguousSendError, NotSentReason, TransientSendError
from core.settings import AppSettings
from storage.ledger import SendKey
from tests.conftest import payload_json
from tests.doubles import ScriptedAdapter, app_function
from tests.fakes.azurite import Azurite
from usecases.composition import Services

Handler = Callable[[func.HttpRequest], Any]


def post(body: bytes | str | dict[str, Any]) -> func.HttpRequest:
    raw = (
        json.dumps(body).encode()
        if isinstance(body, dict)
        else body.encode()
        if isinstance(body, str)
        else body
    )
    return func.HttpRequest(
        "POST", "http://localhost/api/outbound", body=raw, headers={"Content-Type": "application/json"}
    )


@pytest.fixture
def channel() -> ScriptedAdapter:
    return ScriptedAdapter(SendReceipt("SM-http"))


@pytest.fixture
async def services(
    azurite: Azurite, channel: ScriptedAdapter, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Services]:
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("MAX_SEGMENTS", "2")
    monkeypatch.setenv("SEND_BUDGET_SECONDS", "0.5")
    built = Services(adapter_factory=lambda *_: channel)
    yield built
    await built.aclose()


@pytest.fixture
def send(services: Services) -> Handler:
    return app_function(services, "outbound")


def answer(response: func.HttpResponse) -> Any:
    return json.loads(response.get_body())


async def test_sent_answers_the_response_contract(send: Handler, channel_definition_id: uuid.UUID) -> None:
    body = payload_json(channel_definition_id, "REQ-1")
    response = await send(post(body))
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert answer(response) == {
        "ChannelDefinitionId": str(channel_definition_id),
        "MessageId": "SM-http",
        "RequestId": "REQ-1",
        "Status": "Sent",
    }


async def test_custom_api_envelope_is_answered_in_the_envelope(
    send: Handler, channel_definition_id: uuid.UUID
) -> None:
    body = payload_json(channel_definition_id, "REQ-2")
    body["ChannelDefinitionId"] = str(channel_definition_id).upper()
    response = await send(post({"payload": json.dumps(body)}))
    assert response.status_code == 200
    envelope = answer(response)
    assert set(envelope) == {"response"} and isinstance(envelope["response"], str)
    assert json.loads(envelope["response"]) == {
        "ChannelDefinitionId": str(channel_definition_id),
        "MessageId": "SM-http",
        "RequestId": "REQ-2",
        "Status": "Sent",
    }


@pytest.mark.parametrize(
    "body, fields",
    [
        (
            {"RequestId": "r", "From": "+14155550100", "To": "+14155550123", "Message": {"text": "x"}},
            ["ChannelDefinitionId"],
        ),
        (
            {
                "ChannelDefinitionId": "nope",
                "RequestId": 5,
                "From": "+14155550100",
                "To": "+14155550123",
                "Message": {"text": "x"},
            },
            ["ChannelDefinitionId", "RequestId"],
        ),
        (
            {
                "ChannelDefinitionId": str(uuid.uuid4()),
                "RequestId": "r",
                "From": "+14155550100",
                "Message": ["x"],
            },
            ["Message", "To"],
        ),
        ({"payload": 42}, ["payload"]),
    ],
)
async def test_malformed_payload_gets_400_naming_each_field(
    send: Handler, channel: ScriptedAdapter, body: dict[str, Any], fields: list[str]
) -> None:
    response = await send(post(body))
    assert response.status_code == 400
    error = answer(response)["error"]
    assert error["code"] == "InvalidPayload"
    assert sorted({f["field"] for f in error["fields"]}) == fields
    assert channel.requests == []


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ("{not json", "the body is not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        ('{"payload": "{broken"}', "payload is not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("[" * 60000, "nested too deeply"),
        ('{"payload": "{\\"To\\": \\"\\ud800\\"}"}', "invalid Unicode"),
        ('{"To": "\\udc00", "Message": {"\\ud800": 1}}', "invalid Unicode"),
    ],
)
async def test_not_json_gets_400(
    send: Handler, channel: ScriptedAdapter, raw: str | bytes, fragment: str
) -> None:
    response = await send(post(raw))
    assert response.status_code == 400
    assert fragment in answer(response)["error"]["message"]
    assert channel.requests == []


async def test_oversized_body_is_refused(
    send: Handler, channel: ScriptedAdapter, channel_definition_id: uuid.UUID
) -> None:
    response = await send(post(payload_json(channel_definition_id, text="x" * 70_000)))
    assert response.status_code == 413
    assert "MAX_BODY_BYTES" in answer(response)["error"]["message"]
    assert channel.requests == []


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"To": "12"}, "InvalidRecipient"),
        ({"Message": {"text": ""}}, "EmptyMessage"),
        ({"Message": {"text": "x" * 400}}, "TooManySegments"),
    ],
)
async def test_business_rejection_is_200_not_sent_with_details(
    send: Handler,
    channel: ScriptedAdapter,
    channel_definition_id: uuid.UUID,
    change: dict[str, Any],
    reason: str,
) -> None:
    body = payload_json(channel_definition_id, "REQ-3")
    body.update(change)
    response = await send(post(body))
    assert response.status_code == 200
    assert answer(response) == {
        "ChannelDefinitionId": str(channel_definition_id),
        "RequestId": "REQ-3",
        "Status": "NotSent",
        "Details": {"Reason": reason, "Message": NOT_SENT_MESSAGES[NotSentReason(reason)]},
    }
    assert channel.requests == []


async def test_transient_failure_gets_503_with_retry_after(
    send: Handler, channel: ScriptedAdapter, channel_definition_id: uuid.UUID
) -> None:
    channel.script = [TransientSendError("HTTP 503", retry_after=7)]
    response = await send(post(payload_json(channel_definition_id, "REQ-4")))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "7"
    assert answer(response)["error"] == {
        "code": "TryAgainLater",
        "requestId": "REQ-4",
        "message": "the SMS provider is unavailable; retry the same RequestId",
    }

    channel.script = [SendReceipt("SM-later")]
    retried = await send(post(payload_json(channel_definition_id, "REQ-4")))
    assert answer(retried)["Status"] == "Sent" and answer(retried)["MessageId"] == "SM-later"


async def test_ambiguous_outcome_answers_sent_without_message_id(
    send: Handler, channel: ScriptedAdapter, channel_definition_id: uuid.UUID
) -> None:
    channel.script = [AmbiguousSendError("read timeout")]
    for _ in range(2):
        response = await send(post(payload_json(channel_definition_id, "REQ-5")))
        assert answer(response) == {
            "ChannelDefinitionId": str(channel_definition_id),
            "RequestId": "REQ-5",
            "Status": "Sent",
        }
    assert len(channel.requests) == 1


async def test_misconfiguration_names_the_setting(
    channel_definition_id: uuid.UUID,
    azurite: Azurite,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("SMS_PROVIDER", "twilio")
    send = app_function(Services(), "outbound")
    response = await send(post(payload_json(channel_definition_id)))
    assert response.status_code == 503
    error = answer(response)["error"]
    assert error["code"] == "Misconfigured"
    assert error["settings"] == [{"setting": "TWILIO_ACCOUNT_SID", "message": "Field required"}]
    assert "TWILIO_ACCOUNT_SID" in caplog.text and "Traceback" not in response.get_body().decode()


async def test_unreachable_storage_gets_503(
    channel: ScriptedAdapter, channel_definition_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AzureWebJobsStorage",
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=a2V5;TableEndpoint=http://127.0.0.1:9/devstoreaccount1;",
    )
    services = Services(adapter_factory=lambda *_: channel)
    send = app_function(services, "outbound")
    response = await send(post(payload_json(channel_definition_id)))
    assert response.status_code == 503 and answer(response)["error"]["code"] == "StorageUnavailable"
    assert "Retry-After" in response.headers
    assert channel.requests == []


async def test_health_reports_provider_and_storage(services: Services) -> None:
    check = app_function(services, "health")
    response = await check(func.HttpRequest("GET", "http://localhost/api/health", body=b""))
    assert response.status_code == 200
    assert answer(response) == {
        "status": "ok",
        "provider": "simulator",
        "storage": "reachable",
        "dataverse": "dry-run",
        "problems": [],
    }


async def test_health_names_bad_settings_without_their_values(
    monkeypatch: pytest.MonkeyPatch, azurite: Azurite
) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("SMS_PROVIDER", "twilio")
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC-not-a-sid-secretish")
    monkeypatch.setenv("MAX_SEGMENTS", "lots")
    services = Services()
    check = app_function(services, "health")
    response = await check(func.HttpRequest("GET", "http://localhost/api/health", body=b""))
    body = answer(response)
    assert response.status_code == 503 and body["status"] == "unhealthy"
    assert [p["setting"] for p in body["problems"]] == ["MAX_SEGMENTS"]
    assert "lots" not in response.get_body().decode()

    monkeypatch.setenv("MAX_SEGMENTS", "5")
    services = Services()
    check = app_function(services, "health")
    body = answer(await check(func.HttpRequest("GET", "http://localhost/api/health", body=b"")))
    assert body["provider"] == "twilio" and body["storage"] == "reachable"
    assert {p["setting"] for p in body["problems"]} == {"TWILIO_ACCOUNT_SID"}
    assert "secretish" not in json.dumps(body)


@pytest.mark.parametrize(
    "setting, value",
    [
        ("AzureWebJobsStorage", "garbage"),
        ("DEFAULT_REGION", "UK"),
        # past what fits Journeys' 20 seconds with the plug-in's timeout (README "Twenty seconds")
        ("SEND_BUDGET_SECONDS", "10"),
        ("PROVIDER_TIMEOUT_SECONDS", "30"),
    ],
)
async def test_bad_settings_are_named_not_a_500(
    monkeypatch: pytest.MonkeyPatch, channel_definition_id: uuid.UUID, setting: str, value: str
) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    monkeypatch.setenv(setting, value)
    services = Services()
    check = app_function(services, "health")
    body = answer(await check(func.HttpRequest("GET", "http://localhost/api/health", body=b"")))
    assert [p["setting"] for p in body["problems"]] == [setting]
    response = await app_function(services, "outbound")(post(payload_json(channel_definition_id)))
    assert response.status_code == 503
    assert [s["setting"] for s in answer(response)["error"]["settings"]] == [setting]


def test_default_region_is_normalized() -> None:
    assert AppSettings(DEFAULT_REGION=" gb ").default_region == "GB"  # type: ignore[call-arg]


async def test_health_reports_unreachable_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AzureWebJobsStorage",
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=a2V5;TableEndpoint=http://127.0.0.1:9/devstoreaccount1;",
    )
    check = app_function(Services(), "health")
    response = await check(func.HttpRequest("GET", "http://localhost/api/health", body=b""))
    assert response.status_code == 503 and answer(response)["storage"] == "unreachable"


def test_function_app_registers_the_documented_routes() -> None:
    import function_app

    # the library registers blueprints again on every get_functions() call: one fresh app per test
    functions = {
        f.get_function_name(): f for f in function_app.create_app(function_app.services).get_functions()
    }
    outbound_trigger = functions["outbound"].get_trigger()
    assert outbound_trigger.route == "outbound"
    assert [str(m.value) for m in outbound_trigger.methods] == ["POST"]
    assert outbound_trigger.auth_level is func.AuthLevel.FUNCTION
    assert functions["health"].get_trigger().auth_level is func.AuthLevel.ANONYMOUS
    assert functions["purge_expired_records"].get_trigger().get_dict_repr()["type"] == "timerTrigger"


async def test_retention_timer_purges_expired_send_state(
    services: Services, send: Handler, channel_definition_id: uuid.UUID
) -> None:
    from datetime import datetime, timedelta, timezone

    await send(post(payload_json(channel_definition_id, "REQ-expired")))
    ledger = services.ledger()
    record = await ledger.get(SendKey(channel_definition_id, "REQ-expired"))
    assert record is not None
    await ledger.replace_if_unchanged(record, expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    await app_function(services, "purge_expired_records")(timer=None)

    assert await ledger.get(SendKey(channel_definition_id, "REQ-expired")) is None
