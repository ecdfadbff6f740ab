"""End to end: the local host serving function_app over HTTP, Azurite, and a fake Twilio over sockets."""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import CUSTOMER, OUR_NUMBER, ROOT, payload_json
from tests.e2e import client, free_port, local_host, wait_for
from tests.fakes.azurite import Azurite, start_azurite
from tests.fakes.http import FakeHttpServer
from tests.fakes.providers import FakeTwilio

ACCOUNT_SID = "AC" + "7" * 32


@pytest.fixture(scope="module")
def twilio_token() -> str:
    return secrets.token_hex(16)


@pytest.fixture(scope="module")
def fake_twilio(twilio_token: str) -> Iterator[FakeHttpServer]:
    twilio = FakeTwilio(ACCOUNT_SID, twilio_token)
    with FakeHttpServer(twilio) as server:
        yield server
        twilio.release.set()


@pytest.fixture(scope="module")
def host_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("host") / "host.log"


@pytest.fixture(scope="module")
def twilio_app(
    azurite: Azurite, fake_twilio: FakeHttpServer, twilio_token: str, host_log: Path
) -> Iterator[str]:
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        "SMS_PROVIDER": "twilio",
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": twilio_token,
        "TWILIO_API_BASE_URL": fake_twilio.url,
        "PUBLIC_BASE_URL": "https://sms.example.org",
        "SEND_BUDGET_SECONDS": "2",
        "PROVIDER_TIMEOUT_SECONDS": "9",
        "SENDER_ROUTES": f"{OUR_NUMBER}=twilio",
    }
    with local_host(env, log=host_log) as base:
        yield base


def test_outbound_reaches_twilio_and_answers_the_contract(
    twilio_app: str, fake_twilio: FakeHttpServer
) -> None:
    channel_definition_id = uuid.uuid4()
    before = len(fake_twilio.requests)
    with client(twilio_app) as http:
        response = http.post("/api/outbound", json=payload_json(channel_definition_id, "e2e-1"))
    assert response.status_code == 200
    answer = response.json()
    assert answer["Status"] == "Sent" and answer["RequestId"] == "e2e-1"
    assert answer["ChannelDefinitionId"] == str(channel_definition_id)
    sent = fake_twilio.requests[before:]
    assert len(sent) == 1
    form = sent[0].form()
    assert form == {
        "To": CUSTOMER,
        "From": OUR_NUMBER,
        "Body": "Your appointment is tomorrow at 10:00",
        "StatusCallback": "https://sms.example.org/api/providers/twilio/delivery-reports"
        f"?ref={channel_definition_id}%2Fe2e-1",
    }
    assert answer["MessageId"].startswith("SM")


def test_concurrent_duplicates_over_http_send_once(twilio_app: str, fake_twilio: FakeHttpServer) -> None:
    body = payload_json(uuid.uuid4(), "e2e-dup")
    before = len(fake_twilio.requests)
    with client(twilio_app) as http, ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: http.post("/api/outbound", json=body), range(16)))
    assert [r.status_code for r in responses] == [200] * 16
    assert len({r.json()["MessageId"] for r in responses}) == 1
    assert len(fake_twilio.requests) - before == 1


def test_a_retry_with_the_same_idempotency_id_sends_nothing_and_echoes_its_own_request_id(
    twilio_app: str, fake_twilio: FakeHttpServer
) -> None:
    channel_definition_id = uuid.uuid4()
    before = len(fake_twilio.requests)
    with client(twilio_app) as http:
        first = http.post(
            "/api/outbound", json=payload_json(channel_definition_id, "attempt-1", IdempotencyId="msg-e2e")
        ).json()
        retry = http.post(
            "/api/outbound", json=payload_json(channel_definition_id, "attempt-2", IdempotencyId="msg-e2e")
        ).json()
    assert len(fake_twilio.requests) - before == 1
    assert first["Status"] == retry["Status"] == "Sent"
    assert retry["MessageId"] == first["MessageId"]
    assert (first["RequestId"], retry["RequestId"]) == ("attempt-1", "attempt-2")
    callback = fake_twilio.requests[-1].form()["StatusCallback"]
    assert callback.endswith(f"?ref={channel_definition_id}%3Amsg-e2e")


def test_six_overlapping_attempts_at_one_message_send_one_sms(
    twilio_app: str, fake_twilio: FakeHttpServer
) -> None:
    channel_definition_id = uuid.uuid4()
    bodies = [
        payload_json(channel_definition_id, f"overlap-{n}", IdempotencyId="msg-overlap") for n in range(6)
    ]
    before = len(fake_twilio.requests)
    with client(twilio_app) as http, ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda body: http.post("/api/outbound", json=body), bodies))
    assert [r.status_code for r in responses] == [200] * 6
    assert len({r.json()["MessageId"] for r in responses}) == 1
    assert sorted(r.json()["RequestId"] for r in responses) == [f"overlap-{n}" for n in range(6)]
    assert len(fake_twilio.requests) - before == 1


def test_distinct_idempotency_ids_with_the_same_text_send_twice(
    twilio_app: str, fake_twilio: FakeHttpServer
) -> None:
    channel_definition_id = uuid.uuid4()
    before = len(fake_twilio.requests)
    with client(twilio_app) as http:
        answers = [
            http.post(
                "/api/outbound",
                json=payload_json(channel_definition_id, f"twin-{n}", IdempotencyId=f"twin-{n}"),
            ).json()
            for n in range(2)
        ]
    assert len(fake_twilio.requests) - before == 2
    assert answers[0]["MessageId"] != answers[1]["MessageId"]


def test_every_refusal_class_answers_its_own_reason(twilio_app: str, fake_twilio: FakeHttpServer) -> None:
    definition = uuid.uuid4()
    refusals = {
        "InvalidRecipient": payload_json(definition, "no-number", to="12"),
        "EmptyMessage": payload_json(definition, "empty", text="  "),
        "TooManySegments": payload_json(definition, "long", text="x" * 1600),
        "InvalidSender": payload_json(definition, "unrouted", From="ContosoNoRoute"),
        "RecipientOptedOut": payload_json(definition, "opted-out", to="+14155550610"),
        "ProviderRejected": payload_json(definition, "refused", to="+14155550400"),
    }
    with client(twilio_app) as http:
        answers = {reason: http.post("/api/outbound", json=body) for reason, body in refusals.items()}
        # an id reused for another message while its first message is still at the provider
        hanging = payload_json(definition, "held", to="+14155550408", IdempotencyId="held-msg")
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(http.post, "/api/outbound", json=hanging)
            wait_for(lambda: fake_twilio.requests[-1].form().get("To") == "+14155550408")
            answers["IdempotencyIdReused"] = http.post(
                "/api/outbound", json={**hanging, "RequestId": "held-2", "Message": {"text": "Another"}}
            )
            held.result()

    for reason, response in answers.items():
        assert response.status_code == 200, reason
        answer = response.json()
        assert answer["Status"] == "NotSent", reason
        assert answer["Details"]["Reason"] == reason
        message = answer["Details"]["Message"]
        assert message.endswith(".") and len(message) < 120, reason
        assert not re.search(r"\d{7}", message), f"{reason}: no phone number in {message!r}"
    assert answers["ProviderRejected"].json()["Details"]["Message"] == (
        "The SMS provider refused the message (twilio code 21408)."
    )


def test_a_provider_that_never_answers_is_answered_inside_the_budget(
    twilio_app: str, fake_twilio: FakeHttpServer
) -> None:
    """SEND_BUDGET_SECONDS is 2 and PROVIDER_TIMEOUT_SECONDS 9: the budget decides."""
    body = payload_json(uuid.uuid4(), "stuck-1", to="+14155550408", IdempotencyId="stuck")
    before = len(fake_twilio.requests)
    with client(twilio_app) as http:
        started = time.monotonic()
        response = http.post("/api/outbound", json=body)
        elapsed = time.monotonic() - started
        retry = http.post("/api/outbound", json={**body, "RequestId": "stuck-2"})
    assert response.status_code == 200 and response.json() == {
        "ChannelDefinitionId": body["ChannelDefinitionId"],
        "RequestId": "stuck-1",
        "Status": "Sent",  # ambiguous: the provider may have it, so it is never sent again
    }
    assert elapsed < 2 + 2  # the budget, plus the host and storage on a busy 2-core machine
    assert retry.json()["Status"] == "Sent" and retry.json()["RequestId"] == "stuck-2"
    assert len(fake_twilio.requests) - before == 1


def test_custom_api_envelope_over_http(twilio_app: str) -> None:
    body = payload_json(uuid.uuid4(), "e2e-envelope")
    with client(twilio_app) as http:
        response = http.post("/api/outbound", json={"payload": json.dumps(body)})
    inner = json.loads(response.json()["response"])
    assert inner["Status"] == "Sent" and inner["RequestId"] == "e2e-envelope"


def test_opted_out_recipient_is_not_sent(twilio_app: str) -> None:
    with client(twilio_app) as http:
        response = http.post(
            "/api/outbound", json=payload_json(uuid.uuid4(), "e2e-optout", to="+14155550610")
        )
    assert response.status_code == 200 and response.json()["Status"] == "NotSent"


def test_throttled_provider_gets_503_and_the_caller_may_retry(
    twilio_app: str, fake_twilio: FakeHttpServer
) -> None:
    body = payload_json(uuid.uuid4(), "e2e-throttled", to="+14155550429")
    with client(twilio_app) as http:
        response = http.post("/api/outbound", json=body)
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert response.json()["error"]["requestId"] == "e2e-throttled"


def test_malformed_input_is_400_never_a_stack_trace(twilio_app: str) -> None:
    with client(twilio_app) as http:
        response = http.post(
            "/api/outbound", content=b'{"RequestId": 1}', headers={"Content-Type": "application/json"}
        )
        wrong_method = http.get("/api/outbound")
        unknown = http.get("/api/nothing-here")
    assert response.status_code == 400
    assert {f["field"] for f in response.json()["error"]["fields"]} >= {
        "ChannelDefinitionId",
        "RequestId",
        "To",
    }
    assert "Traceback" not in response.text
    assert (wrong_method.status_code, unknown.status_code) == (405, 404)


def test_health_over_http(twilio_app: str) -> None:
    with client(twilio_app) as http:
        response = http.get("/api/health")
    assert response.json() == {
        "status": "ok",
        "provider": "twilio",
        "storage": "reachable",
        "dataverse": "dry-run",
        "problems": [],
    }


def test_logs_hold_no_phone_numbers_or_secrets(twilio_app: str, host_log: Path, twilio_token: str) -> None:
    with client(twilio_app) as http:
        http.post("/api/outbound", json=payload_json(uuid.uuid4(), "e2e-logs"))
    text = host_log.read_text(encoding="utf-8")
    assert "RequestId=e2e-logs" in text
    assert CUSTOMER not in text and twilio_token not in text


def readme_curl() -> tuple[dict[str, str], bytes]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(
        r"curl -s -X POST http://localhost:7071/api/outbound[^\n]*\\\n\s*-H '([^']+)' \\\n\s*-d '([^']+)'",
        readme,
    )
    assert match, "README must show the curl call of /api/outbound"
    name, value = match.group(1).split(": ", 1)
    return {name: value}, match.group(2).encode()


@pytest.fixture
def own_azurite() -> Iterator[Azurite]:
    """Storage of its own, as `scripts/run` gives a user: the module's Twilio host is still running
    on the session's Azurite, and its queue worker would take this test's relay jobs."""
    server = start_azurite()
    yield server
    server.stop()


def test_readme_flow_outbound_delivery_report_and_relay(own_azurite: Azurite, tmp_path: Path) -> None:
    """What the README shows after `scripts/run`: the curl call answers Sent, the simulator posts its
    delivery report back, it is queued, relayed, and the notification lands in the dry-run sink."""
    azurite = own_azurite
    headers, body = readme_curl()
    settings = json.loads((ROOT / "local.settings.json.example").read_text(encoding="utf-8"))["Values"]
    port = free_port()
    sink = tmp_path / "dataverse-dry-run.jsonl"
    settings.update(
        {
            "AzureWebJobsStorage": azurite.connection_string,
            "PUBLIC_BASE_URL": f"http://localhost:{port}",
            "DATAVERSE_DRY_RUN_FILE": str(sink),
            "SIMULATOR_DELIVERY_DELAY_SECONDS": "0.2",
        }
    )
    with local_host(settings, port=port) as base, client(base) as http:
        response = http.post("/api/outbound", content=body, headers=headers)
        wait_for(lambda: sink.exists() and "readme-1" in sink.read_text())
    assert response.status_code == 200
    answer = response.json()
    assert answer["Status"] == "Sent" and answer["MessageId"].startswith("SM")
    [line] = [json.loads(line) for line in sink.read_text().splitlines()]
    assert line["api"] == "msdyn_D365ChannelsNotification"
    notification = json.loads(line["body"]["notificationPayLoad"])
    assert notification["RequestId"] == "readme-1" and notification["Status"] == "Delivered"
    assert notification["MessageId"] == answer["MessageId"]
    assert notification["ChannelDefinitionId"] == json.loads(body)["ChannelDefinitionId"]
