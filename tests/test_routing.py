"""Multi-sender routing: each channel-instance sender through its own provider and account."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from urllib.parse import urlencode

import azure.functions as func
import pytest
from twilio.request_validator import RequestValidator

from core.settings import AppSettings, ConfigurationError, load
from tests.conftest import CUSTOMER, RelayQueues, payload_json
from tests.doubles import app_function
from tests.fakes.azurite import Azurite
from tests.fakes.http import FakeHttpServer
from tests.fakes.providers import FakeTwilio
from usecases.composition import Services

US_SENDER, EU_SENDER, UNROUTED = "+14155550100", "+14155550101", "+14155550102"
MAIN_SID, EU_SID = "AC" + "1" * 32, "AC" + "2" * 32


def test_routes_are_parsed_with_numbers_normalized(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "SENDER_ROUTES", "+1 (415) 555-0100=twilio, +14155550101=Twilio:EU ,ContosoInfo=vonage"
    )
    assert load(AppSettings).sender_routes == {
        US_SENDER: ("twilio", None),
        EU_SENDER: ("twilio", "eu"),
        "ContosoInfo": ("vonage", None),
    }
    monkeypatch.setenv("SENDER_ROUTES", "+14155550100")
    with pytest.raises(ConfigurationError) as caught:
        load(AppSettings)
    assert caught.value.problems[0].setting == "SENDER_ROUTES"


@pytest.fixture
def tokens() -> dict[str, str]:
    return {MAIN_SID: secrets.token_hex(16), EU_SID: secrets.token_hex(16)}


@pytest.fixture
def twilio_accounts(tokens: dict[str, str]) -> Iterator[dict[str, FakeHttpServer]]:
    with (
        FakeHttpServer(FakeTwilio(MAIN_SID, tokens[MAIN_SID])) as main,
        FakeHttpServer(FakeTwilio(EU_SID, tokens[EU_SID])) as eu,
    ):
        yield {MAIN_SID: main, EU_SID: eu}


@pytest.fixture
def routed_env(
    azurite: Azurite,
    monkeypatch: pytest.MonkeyPatch,
    tokens: dict[str, str],
    twilio_accounts: dict[str, FakeHttpServer],
) -> None:
    for name, value in {
        "AzureWebJobsStorage": azurite.connection_string,
        "SMS_PROVIDER": "twilio",
        "PUBLIC_BASE_URL": "https://sms.example.org",
        "SENDER_ROUTES": f"{US_SENDER}=twilio,{EU_SENDER}=twilio:eu",
        "TWILIO_ACCOUNT_SID": MAIN_SID,
        "TWILIO_AUTH_TOKEN": tokens[MAIN_SID],
        "TWILIO_API_BASE_URL": twilio_accounts[MAIN_SID].url,
        "TWILIO_EU_ACCOUNT_SID": EU_SID,
        "TWILIO_EU_AUTH_TOKEN": tokens[EU_SID],
        "TWILIO_EU_API_BASE_URL": twilio_accounts[EU_SID].url,
    }.items():
        monkeypatch.setenv(name, value)


async def test_each_sender_goes_through_its_account_and_unrouted_senders_are_not_sent(
    routed_env: None, twilio_accounts: dict[str, FakeHttpServer]
) -> None:
    services = Services()
    send = app_function(services, "outbound")
    answers = {}
    for sender in (US_SENDER, EU_SENDER, UNROUTED):
        body = payload_json(uuid.uuid4(), f"route-{sender[-4:]}")
        body["From"] = sender
        request = func.HttpRequest("POST", "http://localhost/api/outbound", body=json.dumps(body).encode())
        answers[sender] = json.loads((await send(request)).get_body())
    await services.aclose()

    assert [r.form()["From"] for r in twilio_accounts[MAIN_SID].requests] == [US_SENDER]
    assert [r.form()["From"] for r in twilio_accounts[EU_SID].requests] == [EU_SENDER]
    assert answers[US_SENDER]["Status"] == answers[EU_SENDER]["Status"] == "Sent"
    assert answers[UNROUTED]["Status"] == "NotSent"


async def test_webhooks_are_verified_against_every_account_of_the_provider(
    routed_env: None, tokens: dict[str, str], relay_queues: RelayQueues
) -> None:
    services = Services()
    deliver = app_function(services, "delivery_reports")
    url = "https://sms.example.org/api/providers/twilio/delivery-reports"
    statuses = []
    for token in (tokens[MAIN_SID], tokens[EU_SID], secrets.token_hex(16)):
        params = {"MessageSid": "SM" + uuid.uuid4().hex, "MessageStatus": "delivered", "To": CUSTOMER}
        signature = RequestValidator(token).compute_signature(url, params)
        request = func.HttpRequest(
            "POST",
            "http://localhost/api/providers/twilio/delivery-reports",
            body=urlencode(params).encode(),
            headers={"X-Twilio-Signature": signature},
            route_params={"provider": "twilio"},
        )
        statuses.append((await deliver(request)).status_code)
    await services.aclose()
    assert statuses == [200, 200, 403]
    assert relay_queues.count(relay_queues.jobs) == 2


async def test_a_misconfigured_route_is_named(routed_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWILIO_EU_AUTH_TOKEN")
    monkeypatch.setenv(
        "SENDER_ROUTES", f"{US_SENDER}=twilio,{EU_SENDER}=twilio:eu,+14155550103=carrierpigeon"
    )
    services = Services()
    check = app_function(services, "health")
    body = json.loads(
        (await check(func.HttpRequest("GET", "http://localhost/api/health", body=b""))).get_body()
    )
    await services.aclose()
    assert {p["setting"] for p in body["problems"]} == {"TWILIO_EU_AUTH_TOKEN", "SENDER_ROUTES"}
