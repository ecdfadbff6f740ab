"""Identity-based storage end to end: the app's tables and queues reached with a managed identity's
bearer token, as in Azure (the storage account there has shared keys disabled).

Azurite serves HTTPS (a certificate from the test CA) with ``--oauth basic``: it checks each bearer
token's issuer (``https://sts.windows.net/...``), audience (``https://storage.azure.com`` or the
account's URL), ``iat``/``nbf``/``exp``, but not its signature. The managed identity endpoint is a
local fake speaking the App Service protocol that azure-identity's ManagedIdentityCredential uses
when IDENTITY_ENDPOINT and IDENTITY_HEADER are set. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import pytest
from azure.storage.queue import QueueClient

from contracts import ChannelStatus
from core.settings import (
    DEVELOPMENT_STORAGE,
    AppSettings,
    ConfigurationError,
    StorageConnectionString,
    StorageIdentity,
    StorageLocation,
    load,
    storage_location_from_environ,
)
from storage.errors import StorageUnavailable
from storage.ledger import SendKey, SendLedger
from storage.relay_queue import RELAY_QUEUE, NotificationJob, RelayQueue, decode_job
from tests.conftest import ROOT, payload_json
from tests.doubles import send_record
from tests.e2e import client, free_port, local_host, wait_for
from tests.fakes.azurite import Azurite, start_azurite
from tests.fakes.http import FakeHttpServer, Recorded, Reply
from tests.fakes.tls import LocalCA

TENANT = "72f988bf-0000-4000-8000-000000000001"
#: The user-assigned identity the app is configured with (AzureWebJobsStorage__clientId).
CLIENT_ID = "0b7c2a9e-1d3f-4e5a-8b6c-7d8e9f0a1b2c"
GOOD_ISSUER = f"https://sts.windows.net/{TENANT}/"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned_jwt(claims: dict[str, object]) -> str:
    """A JWT shaped like Entra's; Azurite's basic OAuth reads the claims and ignores the signature."""
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    return f"{header}.{_b64url(json.dumps(claims).encode())}.{_b64url(secrets.token_bytes(32))}"


@dataclass
class FakeManagedIdentity:
    """The App Service managed identity endpoint: GET ?api-version=2019-08-01&resource=…&client_id=…
    with the X-IDENTITY-HEADER secret; answers access_token, expires_on, resource, token_type."""

    header: str = field(default_factory=lambda: secrets.token_hex(16))
    client_id: str = CLIENT_ID
    #: "good", "wrong-issuer" (a token Azurite refuses) or "refuse" (no token at all).
    mode: str = "good"
    requests: list[dict[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Recorded) -> Reply:
        if request.path != "/msi/token" or request.method != "GET":
            return Reply(404, {"statusCode": 404, "message": "not found"})
        if request.headers.get("x-identity-header") != self.header:
            return Reply(401, {"statusCode": 401, "message": "missing or wrong X-IDENTITY-HEADER"})
        query = {name: values[0] for name, values in request.query.items()}
        with self._lock:
            self.requests.append(query)
        if self.mode == "refuse" or query.get("client_id") != self.client_id:
            return Reply(400, {"statusCode": 400, "message": "no such identity assigned"})
        now = int(time.time())
        issuer = GOOD_ISSUER if self.mode == "good" else "https://issuer.example.org/"
        token = unsigned_jwt(
            {
                "aud": query["resource"],
                "iss": issuer,
                "iat": now,
                "nbf": now - 60,
                "exp": now + 3600,
                "appid": self.client_id,
                "oid": str(uuid.uuid4()),
                "tid": TENANT,
            }
        )
        return Reply(
            200,
            {
                "access_token": token,
                "expires_on": str(now + 3600),
                "resource": query["resource"],
                "token_type": "Bearer",
                "client_id": self.client_id,
            },
        )


@pytest.fixture(scope="module")
def oauth_azurite(test_ca: LocalCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    server = start_azurite(tls=test_ca.server_files(tmp_path_factory.mktemp("azurite-tls")), oauth=True)
    yield server
    server.stop()


@pytest.fixture
def identity() -> Iterator[tuple[FakeManagedIdentity, str]]:
    fake = FakeManagedIdentity()
    with FakeHttpServer(fake) as server:
        yield fake, f"{server.url}/msi/token"


def identity_env(azurite: Azurite, fake: FakeManagedIdentity, endpoint: str) -> dict[str, str]:
    """Only identity-based storage settings: no AzureWebJobsStorage connection string."""
    return {
        "AzureWebJobsStorage__tableServiceUri": azurite.service_url("Table"),
        "AzureWebJobsStorage__queueServiceUri": azurite.service_url("Queue"),
        "AzureWebJobsStorage__credential": "managedidentity",
        "AzureWebJobsStorage__clientId": CLIENT_ID,
        "IDENTITY_ENDPOINT": endpoint,
        "IDENTITY_HEADER": fake.header,
    }


async def test_ledger_and_relay_queue_use_the_managed_identity(
    oauth_azurite: Azurite,
    identity: tuple[FakeManagedIdentity, str],
    trust_test_ca: LocalCA,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, endpoint = identity
    for name, value in identity_env(oauth_azurite, fake, endpoint).items():
        monkeypatch.setenv(name, value)
    location = load(AppSettings).storage_location()
    assert location == StorageIdentity(
        oauth_azurite.service_url("Table"), oauth_azurite.service_url("Queue"), CLIENT_ID
    )

    ledger = SendLedger(location, retention=timedelta(days=1))
    queue = RelayQueue(location)
    try:
        draft = send_record("simulator")
        claimed, record = await ledger.claim(draft)
        assert claimed
        stored = await ledger.get(SendKey(draft.channel_definition_id, draft.request_id))
        assert stored is not None and stored.request_id == draft.request_id and stored.etag == record.etag
        # concurrent claims share a transaction, which goes out with the identity's token too
        definition = uuid.uuid4()
        drafts = [replace(send_record("simulator"), channel_definition_id=definition) for _ in range(4)]
        claims = await asyncio.gather(*(ledger.claim(each) for each in drafts))
        assert all(created for created, _ in claims) and ledger._send_writes.transactions == 1

        job = NotificationJob(
            provider="simulator",
            message_id=f"SM{uuid.uuid4().hex}",
            status=ChannelStatus.DELIVERED,
            provider_status="delivered",
        )
        await queue.put(job)
    finally:
        await queue.aclose()
        await ledger.aclose()

    # the message is base64 JSON, as the Functions host's queue trigger reads it
    with QueueClient.from_connection_string(oauth_azurite.connection_string, RELAY_QUEUE) as reader:
        bodies = [
            base64.b64decode(m.content, validate=True) for m in reader.receive_messages(max_messages=32)
        ]
    assert job in [decode_job(body) for body in bodies]

    # every token came from the identity endpoint, for storage, as the configured identity
    assert fake.requests
    assert {(r["resource"], r["client_id"], r["api-version"]) for r in fake.requests} == {
        ("https://storage.azure.com", CLIENT_ID, "2019-08-01")
    }


async def test_a_token_azurite_refuses_makes_storage_unavailable(
    oauth_azurite: Azurite,
    identity: tuple[FakeManagedIdentity, str],
    trust_test_ca: LocalCA,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The other side of the test above: Azurite really checks the tokens."""
    fake, endpoint = identity
    fake.mode = "wrong-issuer"
    for name, value in identity_env(oauth_azurite, fake, endpoint).items():
        monkeypatch.setenv(name, value)
    ledger = SendLedger(load(AppSettings).storage_location(), retention=timedelta(days=1))
    try:
        with pytest.raises(StorageUnavailable):
            await ledger.ping()
    finally:
        await ledger.aclose()
    assert fake.requests


def test_the_app_runs_on_identity_based_storage_alone(
    oauth_azurite: Azurite,
    identity: tuple[FakeManagedIdentity, str],
    trust_test_ca: LocalCA,
    tmp_path: Path,
) -> None:
    """The local host with only AzureWebJobsStorage__* settings: a send, its delivery report through
    the relay queue (the local queue trigger reads it with the identity too), and a healthy app."""
    fake, endpoint = identity
    port = free_port()
    dry_run = tmp_path / "dry-run.jsonl"
    env = {
        **identity_env(oauth_azurite, fake, endpoint),
        "SMS_PROVIDER": "simulator",
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "SIMULATOR_WEBHOOK_SECRET": secrets.token_hex(16),
        "SIMULATOR_DELIVERY_DELAY_SECONDS": "0.2",
        "DATAVERSE_DRY_RUN_FILE": str(dry_run),
    }
    channel_definition_id = uuid.uuid4()
    with local_host(env, port=port) as base, client(base) as http:
        health = http.get("/api/health")
        assert health.status_code == 200, health.text
        assert health.json()["storage"] == "reachable" and health.json()["problems"] == []

        first = http.post("/api/outbound", json=payload_json(channel_definition_id, "identity-1"))
        assert first.status_code == 200, first.text
        assert first.json()["Status"] == "Sent"
        again = http.post("/api/outbound", json=payload_json(channel_definition_id, "identity-1"))
        assert again.json() == first.json()  # the send state lives in the table reached with the token

        def relayed() -> list[dict[str, object]]:
            lines = dry_run.read_text().splitlines() if dry_run.exists() else []
            return [json.loads(json.loads(line)["body"]["notificationPayLoad"]) for line in lines]

        wait_for(lambda: any(n.get("RequestId") == "identity-1" for n in relayed()))
    [notification] = [n for n in relayed() if n.get("RequestId") == "identity-1"]
    assert notification["Status"] == "Delivered"
    assert {r["client_id"] for r in fake.requests} == {CLIENT_ID}


def test_without_a_usable_token_health_says_storage_unreachable(
    oauth_azurite: Azurite,
    identity: tuple[FakeManagedIdentity, str],
    trust_test_ca: LocalCA,
    tmp_path: Path,
) -> None:
    fake, endpoint = identity
    fake.mode = "refuse"
    log = tmp_path / "host.log"
    with local_host(identity_env(oauth_azurite, fake, endpoint), log=log) as base, client(base) as http:
        for mode in ("refuse", "wrong-issuer"):  # no token at all; then a token Azurite refuses
            fake.mode = mode
            before = len(fake.requests)
            response = http.get("/api/health")
            assert response.status_code == 503
            assert response.json()["storage"] == "unreachable", response.text
            assert response.json()["problems"] == []
            assert len(fake.requests) > before
    assert "Traceback" not in log.read_text(errors="replace")


def test_a_connection_string_never_loads_azure_identity() -> None:
    """Cold start: the identity library is imported on the identity path only."""
    code = (
        "import sys, datetime\n"
        "from storage.ledger import SendLedger\n"
        "from storage.relay_queue import RelayQueue\n"
        "from core.settings import DEVELOPMENT_STORAGE\n"
        "import asyncio\n"
        "asyncio.run(SendLedger(DEVELOPMENT_STORAGE, retention=datetime.timedelta(days=1)).aclose())\n"
        "asyncio.run(RelayQueue(DEVELOPMENT_STORAGE).aclose())\n"
        "import function_app\n"
        "print('azure.identity' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "False"


# --- where storage is, from the settings -------------------------------------------------------------


def location_from(monkeypatch: pytest.MonkeyPatch, **env: str) -> StorageLocation:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load(AppSettings).storage_location()


def refused(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, str]:
    with pytest.raises(ConfigurationError) as exc:
        location_from(monkeypatch, **env)
    return {p.setting: p.message for p in exc.value.problems}


def test_account_name_gives_the_public_cloud_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    assert location_from(
        monkeypatch,
        AzureWebJobsStorage__accountName="stcontoso",
        AzureWebJobsStorage__credential="managedidentity",
    ) == StorageIdentity(
        "https://stcontoso.table.core.windows.net", "https://stcontoso.queue.core.windows.net", None
    )


def test_service_uris_win_over_the_account_name(monkeypatch: pytest.MonkeyPatch) -> None:
    location = location_from(
        monkeypatch,
        AZUREWEBJOBSSTORAGE__ACCOUNTNAME="stcontoso",  # app setting names are matched without regard to case
        AzureWebJobsStorage__tableServiceUri="https://stcontoso.table.core.usgovcloudapi.net/",
        AzureWebJobsStorage__credential="ManagedIdentity",
        AzureWebJobsStorage__clientId=CLIENT_ID,
    )
    assert location == StorageIdentity(
        "https://stcontoso.table.core.usgovcloudapi.net",
        "https://stcontoso.queue.core.windows.net",
        CLIENT_ID,
    )


def test_a_connection_string_wins_as_in_the_functions_host(monkeypatch: pytest.MonkeyPatch) -> None:
    location = location_from(
        monkeypatch,
        AzureWebJobsStorage="UseDevelopmentStorage=true",
        AzureWebJobsStorage__accountName="stcontoso",
    )
    assert location == StorageConnectionString(DEVELOPMENT_STORAGE)
    assert "AccountKey" not in repr(location)


@pytest.mark.parametrize(
    "env, setting",
    [
        ({}, "AzureWebJobsStorage"),
        (
            {"AzureWebJobsStorage__tableServiceUri": "https://st.table.core.windows.net"},
            "AzureWebJobsStorage__queueServiceUri",
        ),
        (
            {
                "AzureWebJobsStorage__accountName": "stcontoso",
                "AzureWebJobsStorage__tableServiceUri": "http://st.table.core.windows.net",
            },
            "AzureWebJobsStorage__tableServiceUri",
        ),
        ({"AzureWebJobsStorage__accountName": "Not_An-Account"}, "AzureWebJobsStorage__accountName"),
        (
            {
                "AzureWebJobsStorage__accountName": "stcontoso",
                "AzureWebJobsStorage__credential": "connectionstring",
            },
            "AzureWebJobsStorage__credential",
        ),
        (
            {"AzureWebJobsStorage__accountName": "stcontoso", "AzureWebJobsStorage__clientId": CLIENT_ID},
            "AzureWebJobsStorage__credential",
        ),
        (
            {
                "AzureWebJobsStorage__accountName": "stcontoso",
                "AzureWebJobsStorage__credential": "managedidentity",
                "AzureWebJobsStorage__clientId": "id-contoso",
            },
            "AzureWebJobsStorage__clientId",
        ),
    ],
)
def test_an_incomplete_or_invalid_combination_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], setting: str
) -> None:
    assert list(refused(monkeypatch, **env)) == [setting]


def test_the_local_host_resolves_a_trigger_connection_the_same_way() -> None:
    environ = {
        "MyStorage__queueServiceUri": "https://st.queue.core.windows.net",
        "mystorage__TABLESERVICEURI": "https://st.table.core.windows.net",
        "MyStorage__credential": "managedidentity",
    }
    assert storage_location_from_environ("MyStorage", environ) == StorageIdentity(
        "https://st.table.core.windows.net", "https://st.queue.core.windows.net"
    )
    assert storage_location_from_environ("MyStorage", {"MyStorage": "UseDevelopmentStorage=true"}) == (
        StorageConnectionString(DEVELOPMENT_STORAGE)
    )
