"""The Dataverse client with the real MSAL library against local HTTPS fakes of Entra and Dataverse."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from contracts import ChannelStatus, Details, InboundPayload, NotificationPayload
from core.settings import ConfigurationError, load
from dataverse.auth import MsalTokenProvider
from dataverse.client import DataverseClient, DataversePermanentError, DataverseTransientError
from dataverse.settings import DataverseSettings, IdentitySettings
from tests.conftest import CLIENT_ID, CUSTOMER, OUR_NUMBER, TENANT_ID, DataverseWorld
from tests.fakes.http import Reply

CHANNEL_DEFINITION = uuid.UUID("0b5c9b52-3f0e-4c1b-8a0e-5f4b1f0a9c21")


def notification(
    request_id: str = "req-1", status: ChannelStatus = ChannelStatus.DELIVERED
) -> NotificationPayload:
    return NotificationPayload(
        channel_definition_id=CHANNEL_DEFINITION,
        request_id=request_id,
        message_id="SM1",
        from_=OUR_NUMBER,
        organization_id="org",
        status=status,
        status_details={"ProviderStatus": "delivered"},
        details=Details(reason="Unreachable", message="handset off")
        if status is ChannelStatus.NOT_DELIVERED
        else None,
    )


def make_client(world: DataverseWorld, **settings: object) -> DataverseClient:
    return world.client(**settings)


@pytest.fixture
async def client(dataverse_world: DataverseWorld) -> AsyncIterator[DataverseClient]:
    dataverse = make_client(dataverse_world)
    yield dataverse
    await dataverse.aclose()


async def test_notification_body_headers_and_one_token_for_many_calls(
    client: DataverseClient, dataverse_world: DataverseWorld
) -> None:
    await client.notify(notification("req-0"))  # a lone call: a plain request
    await asyncio.gather(*(client.notify(notification(f"req-{i}")) for i in range(1, 20)))  # batched

    assert len(dataverse_world.entra.token_requests) == 1
    token_request = dataverse_world.entra.token_requests[0]
    assert token_request["scope"] == f"{dataverse_world.dataverse_url}/.default"
    assert token_request["grant_type"] == "client_credentials"
    _, first = dataverse_world.dataverse.calls[0]
    assert first.method == "POST" and first.path == "/api/data/v9.2/msdyn_D365ChannelsNotification"
    for header, value in {
        "accept": "application/json",
        "odata-version": "4.0",
        "odata-maxversion": "4.0",
        "if-none-match": "null",
        "content-type": "application/json",
    }.items():
        assert first.headers[header] == value
    assert first.headers["authorization"].startswith("Bearer ")
    calls = [call for _, call in dataverse_world.dataverse.calls]
    assert all(call.headers["authorization"].startswith("Bearer ") for call in calls)
    assert len(calls) < 20  # the concurrent ones went in $batch requests
    bodies = list(dataverse_world.dataverse.notifications)
    assert first.json() == bodies[0]
    assert all(list(body) == ["notificationPayLoad"] for body in bodies)
    payloads = sorted(
        (json.loads(body["notificationPayLoad"]) for body in bodies), key=lambda p: p["RequestId"]
    )
    assert payloads == sorted(
        [
            {
                "ChannelDefinitionId": str(CHANNEL_DEFINITION),
                "RequestId": f"req-{i}",
                "MessageId": "SM1",
                "From": OUR_NUMBER,
                "OrganizationId": "org",
                "Status": "Delivered",
                "StatusDetails": {"ProviderStatus": "delivered"},
            }
            for i in range(20)
        ],
        key=lambda p: p["RequestId"],
    )


async def test_inbound_body(client: DataverseClient, dataverse_world: DataverseWorld) -> None:
    await client.inbound(
        InboundPayload(
            channel_definition_id=CHANNEL_DEFINITION,
            to=OUR_NUMBER,
            from_=CUSTOMER,
            organization_id="org",
            message={"text": "STOP"},
        )
    )
    _, call = dataverse_world.dataverse.calls[0]
    assert call.path == "/api/data/v9.2/msdyn_D365ChannelsInbound"
    assert json.loads(call.json()["inboundPayLoad"]) == {
        "ChannelDefinitionId": str(CHANNEL_DEFINITION),
        "To": OUR_NUMBER,
        "From": CUSTOMER,
        "OrganizationId": "org",
        "Message": {"text": "STOP"},
    }


async def test_organization_id_from_who_am_i_once(
    client: DataverseClient, dataverse_world: DataverseWorld
) -> None:
    assert await client.organization_id() == dataverse_world.dataverse.organization_id
    assert await client.organization_id() == dataverse_world.dataverse.organization_id
    assert [call.path for _, call in dataverse_world.dataverse.calls] == ["/api/data/v9.2/WhoAmI"]


async def test_organization_id_setting_skips_who_am_i(dataverse_world: DataverseWorld) -> None:
    client = make_client(dataverse_world, organization_id="configured-org")
    assert await client.organization_id() == "configured-org"
    await client.aclose()
    assert dataverse_world.dataverse.calls == []


async def test_channel_definition_lookup_sends_plus_as_2b_and_caches(
    client: DataverseClient, dataverse_world: DataverseWorld
) -> None:
    dataverse_world.dataverse.channel_instances[OUR_NUMBER] = str(CHANNEL_DEFINITION)
    assert await client.channel_definition_for(OUR_NUMBER) == CHANNEL_DEFINITION
    assert await client.channel_definition_for(OUR_NUMBER) == CHANNEL_DEFINITION
    assert await client.channel_definition_for("+14155550199") is None
    targets = [call.target for _, call in dataverse_world.dataverse.calls]
    assert len(targets) == 2 and "%2B14155550100" in targets[0]


async def test_429_holds_every_request_until_retry_after(dataverse_world: DataverseWorld) -> None:
    # one request in flight at a time, so every request after the first is sent knowing of the 429
    client = make_client(dataverse_world, max_concurrency=1)
    await client.organization_id()  # token and connection ready
    dataverse_world.dataverse.faults = [
        Reply(
            429,
            {"error": {"code": "0x80072322", "message": "Number of requests exceeded the limit of 6000"}},
            {"Retry-After": "1"},
        )
    ]
    await asyncio.gather(*(client.notify(notification(f"r{i}")) for i in range(4)))
    await client.aclose()

    calls = dataverse_world.dataverse.calls[1:]
    throttled_at = calls[0][0]
    later = [at for at, _ in calls[1:]]
    assert later and len(dataverse_world.dataverse.notifications) == 4
    assert min(later) - throttled_at >= 0.95  # nothing was sent inside the Retry-After window


async def test_503_for_a_while_then_recovery(
    client: DataverseClient, dataverse_world: DataverseWorld
) -> None:
    dataverse_world.dataverse.faults = [Reply(503, {"error": {"code": "", "message": "unavailable"}})] * 2
    await client.notify(notification())
    assert len(dataverse_world.dataverse.calls) == 3 and len(dataverse_world.dataverse.notifications) == 1


async def test_503_that_outlasts_the_retries_is_transient(dataverse_world: DataverseWorld) -> None:
    dataverse_world.dataverse.faults = [Reply(503, {}, {"Retry-After": "60"})] * 10
    client = make_client(dataverse_world)
    with pytest.raises(DataverseTransientError) as caught:
        await client.notify(notification())
    await client.aclose()
    assert caught.value.retry_after == 60 and len(dataverse_world.dataverse.calls) == 1


async def test_timeout_is_retried(dataverse_world: DataverseWorld) -> None:
    client = make_client(dataverse_world, timeout_seconds=0.5)
    await client.organization_id()
    dataverse_world.dataverse.stall_next = 1.0
    await client.notify(notification())
    await client.aclose()
    notify_calls = [c for _, c in dataverse_world.dataverse.calls if c.path.endswith("Notification")]
    assert len(notify_calls) == 2  # the first timed out on our side, the retry got through
    # Dataverse did receive the first too: after a timeout a relay can reach it twice (README, relay)
    assert len(dataverse_world.dataverse.notifications) == 2


async def test_401_refreshes_the_token_once(client: DataverseClient, dataverse_world: DataverseWorld) -> None:
    await client.notify(notification("before"))
    dataverse_world.entra.revoke_all()
    await client.notify(notification("after"))
    assert len(dataverse_world.entra.token_requests) == 2
    assert [n["RequestId"] for n in dataverse_world.dataverse.notification_payloads()] == ["before", "after"]


async def test_400_is_permanent_and_not_retried(
    client: DataverseClient, dataverse_world: DataverseWorld
) -> None:
    dataverse_world.dataverse.faults = [
        Reply(400, {"error": {"code": "0x80040203", "message": f"Invalid To {CUSTOMER}"}})
    ]
    with pytest.raises(DataversePermanentError) as caught:
        await client.notify(notification())
    assert caught.value.code == "0x80040203" and CUSTOMER not in str(caught.value)
    assert len(dataverse_world.dataverse.calls) == 1


async def test_affinity_cookie_is_not_sent_back(
    client: DataverseClient, dataverse_world: DataverseWorld
) -> None:
    dataverse_world.dataverse.faults = [
        Reply(200, {"OrganizationId": "o"}, {"Set-Cookie": "ARRAffinity=abc; Path=/"})
    ]
    await client.organization_id()
    await client.notify(notification())
    assert "cookie" not in dataverse_world.dataverse.calls[-1][1].headers


async def test_certificate_credential_signs_a_client_assertion(
    dataverse_world: DataverseWorld, tmp_path: Path
) -> None:
    ca = trustme.CA(key_type=trustme.KeyType.RSA)  # Entra takes RSA certificates
    leaf = ca.issue_cert("sms-channel-app", key_type=trustme.KeyType.RSA)
    pem = tmp_path / "app.pem"
    pem.write_bytes(leaf.private_key_pem.bytes() + leaf.cert_chain_pems[0].bytes())
    dataverse_world.entra.client_secret = None
    dataverse_world.entra.certificate_pem = leaf.cert_chain_pems[0].bytes()
    identity = IdentitySettings(
        tenant_id=TENANT_ID,
        client_id=CLIENT_ID,
        client_certificate_path=pem,
        authority_host=dataverse_world.entra_url,
    )  # type: ignore[arg-type]
    client = DataverseClient(
        DataverseSettings(url=dataverse_world.dataverse_url),  # type: ignore[arg-type]
        MsalTokenProvider(identity, dataverse_world.dataverse_url),
    )
    await client.notify(notification())
    await client.aclose()
    assert "client_assertion" in dataverse_world.entra.token_requests[0]
    assert len(dataverse_world.dataverse.notifications) == 1


async def test_managed_identity_when_no_secret_or_certificate(
    dataverse_world: DataverseWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{dataverse_world.entra_url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", dataverse_world.entra.identity_header)
    client = DataverseClient(
        DataverseSettings(url=dataverse_world.dataverse_url),  # type: ignore[arg-type]
        MsalTokenProvider(IdentitySettings(), dataverse_world.dataverse_url),
    )
    for request_id in ("a", "b", "c"):
        await client.notify(notification(request_id))
    await client.aclose()
    assert len(dataverse_world.entra.token_requests) == 1
    assert dataverse_world.entra.token_requests[0]["resource"] == dataverse_world.dataverse_url
    assert len(dataverse_world.dataverse.notifications) == 3


@pytest.mark.parametrize(
    "url, ok",
    [
        ("http://contoso.crm.dynamics.com", False),
        ("http://127.0.0.1:8080", True),
        ("https://contoso.crm.dynamics.com", True),
    ],
)
def test_dataverse_url_must_be_https_except_loopback(
    url: str, ok: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAVERSE_URL", url)
    if ok:
        assert load(DataverseSettings).base_url == url
    else:
        with pytest.raises(ConfigurationError) as caught:
            load(DataverseSettings)
        assert caught.value.problems[0].setting == "DATAVERSE_URL"


@pytest.mark.parametrize(
    "prefix, notification, inbound",
    [
        (None, "msdyn_D365ChannelsNotification", "msdyn_D365ChannelsInbound"),
        ("contoso", "contoso_SmsDeliveryReport", "contoso_SmsInbound"),
    ],
)
def test_the_channel_api_prefix_chooses_the_actions_relays_call(
    prefix: str | None, notification: str, inbound: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if prefix is not None:
        monkeypatch.setenv("DATAVERSE_CHANNEL_API_PREFIX", prefix)
    apis = load(DataverseSettings).channel_apis
    assert (apis.notification, apis.inbound) == (notification, inbound)


@pytest.mark.parametrize("prefix", ["Contoso", "c", "contoso_x", "toolongprefix"])
def test_a_channel_api_prefix_that_is_no_publisher_prefix_is_named(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAVERSE_CHANNEL_API_PREFIX", prefix)
    with pytest.raises(ConfigurationError) as caught:
        load(DataverseSettings)
    assert caught.value.problems[0].setting == "DATAVERSE_CHANNEL_API_PREFIX"


async def test_tokens_and_secrets_are_never_logged(
    dataverse_world: DataverseWorld, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(dataverse_world)
    await client.notify(notification())
    dataverse_world.entra.revoke_all()
    await client.notify(notification("after-refresh"))
    await client.aclose()
    assert len(dataverse_world.entra.token_requests) == 2
    logged = caplog.text
    assert all(token not in logged for token in dataverse_world.entra.issued_ever)
    assert dataverse_world.client_secret not in logged
