from __future__ import annotations

import base64
import importlib
import os
import pkgutil
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.data.tables.aio import TableClient
from azure.storage.queue import QueueClient
from pydantic import AliasChoices, SecretStr
from pydantic_settings import BaseSettings

from dataverse.auth import MsalTokenProvider
from dataverse.client import DataverseClient
from dataverse.settings import DataverseSettings, IdentitySettings
from storage.clients import StorageAccess
from storage.ledger import SendLedger
from storage.relay_queue import POISON_QUEUE, RELAY_QUEUE, RelayJob, RelayQueue, decode_job
from tests.fakes.azurite import Azurite, start_azurite
from tests.fakes.dataverse import FakeDataverse, FakeEntra
from tests.fakes.http import FakeHttpServer
from tests.fakes.tls import LocalCA, make_local_ca

#: Fictional numbers: NANPA reserves 555-0100 to 555-0199 for fiction; never real subscribers.
CUSTOMER = "+14155550123"
OUR_NUMBER = "+14155550100"


SETTINGS_PACKAGES = ("core", "channels", "dataverse", "storage", "usecases", "provisioning")


def settings_classes() -> list[type[BaseSettings]]:
    """Every settings class the app defines, found by walking its packages."""
    found: list[type[BaseSettings]] = []
    for package in SETTINGS_PACKAGES:
        for info in pkgutil.iter_modules(importlib.import_module(package).__path__, f"{package}."):
            module = importlib.import_module(info.name)
            found += [
                value
                for value in vars(module).values()
                if isinstance(value, type)
                and issubclass(value, BaseSettings)
                and value.__module__ == module.__name__
            ]
    return found


def _setting_names() -> tuple[set[str], tuple[str, ...]]:
    """Exact variable names, and the prefixes (``TWILIO_`` covers ``TWILIO_EU_*`` accounts too)."""
    names = {"AZUREWEBJOBSSTORAGE", "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET"}
    prefixes: set[str] = set()
    for cls in settings_classes():
        prefix = str(cls.model_config.get("env_prefix", "")).upper()
        if prefix:
            prefixes.add(prefix)
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            if isinstance(alias, str):
                names.add(alias.upper())
            elif isinstance(alias, AliasChoices):
                names.update(str(choice).upper() for choice in alias.choices)
            else:
                names.add(f"{prefix}{name}".upper())
    return names, tuple(sorted(prefixes))


_SETTING_NAMES = _setting_names()


def clear_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    names, prefixes = _SETTING_NAMES
    for key in list(os.environ):
        if key.upper() in names or key.upper().startswith(prefixes):
            monkeypatch.delenv(key)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the environment: no test sees another's, or the developer's shell's."""
    clear_settings(monkeypatch)


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    server = start_azurite()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return make_local_ca(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def trust_test_ca(test_ca: LocalCA, monkeypatch: pytest.MonkeyPatch) -> LocalCA:
    monkeypatch.setenv("SSL_CERT_FILE", str(test_ca.bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(test_ca.bundle))
    return test_ca


@pytest.fixture
async def ledger(azurite: Azurite) -> AsyncIterator[SendLedger]:
    store = SendLedger(azurite.connection_string, retention=timedelta(days=30))
    yield store
    await store.aclose()


@pytest.fixture
async def table(azurite: Azurite) -> AsyncIterator[TableClient]:
    """A table of its own on the session's Azurite, through the app's storage clients (no retries)."""
    access = StorageAccess(azurite.connection_string)
    service = access.table_service(connection_timeout=3, read_timeout=5, retry_total=0)
    client = service.get_table_client("scratch" + uuid.uuid4().hex[:8])
    await client.create_table()
    yield client
    await client.delete_table()
    await client.close()
    await service.close()
    await access.aclose()


@pytest.fixture
async def queue(azurite: Azurite, relay_queues: RelayQueues) -> AsyncIterator[RelayQueue]:
    """The app's relay queue client, on the session's Azurite (cleared by ``relay_queues``)."""
    relay_queue = RelayQueue(azurite.connection_string)
    yield relay_queue
    await relay_queue.aclose()


@pytest.fixture
def channel_definition_id() -> uuid.UUID:
    return uuid.uuid4()


def payload_json(
    channel_definition_id: uuid.UUID,
    request_id: str | None = None,
    *,
    to: str = CUSTOMER,
    text: str = "Your appointment is tomorrow at 10:00",
    **extra: object,
) -> dict[str, object]:
    body: dict[str, object] = {
        "ChannelDefinitionId": str(channel_definition_id),
        "RequestId": request_id or str(uuid.uuid4()),
        "From": OUR_NUMBER,
        "To": to,
        "Message": {"text": text},
    }
    body.update(extra)
    return body


ROOT = Path(__file__).resolve().parents[1]


# -- Entra and Dataverse -------------------------------------------------------------------------

TENANT_ID = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "66666666-7777-8888-9999-000000000000"


@dataclass
class DataverseWorld:
    entra: FakeEntra
    dataverse: FakeDataverse
    entra_url: str
    dataverse_url: str
    client_secret: str

    def client(self, **settings: Any) -> DataverseClient:
        """A real DataverseClient (real MSAL) pointed at these fakes."""
        identity = IdentitySettings(
            tenant_id=TENANT_ID,
            client_id=CLIENT_ID,
            client_secret=SecretStr(self.client_secret),
            authority_host=self.entra_url,  # type: ignore[arg-type]
        )
        return DataverseClient(
            DataverseSettings(url=self.dataverse_url, **settings),  # type: ignore[arg-type]
            MsalTokenProvider(identity, self.dataverse_url),
        )

    def env(self) -> dict[str, str]:
        return {
            "DATAVERSE_URL": self.dataverse_url,
            "AZURE_TENANT_ID": TENANT_ID,
            "AZURE_CLIENT_ID": CLIENT_ID,
            "AZURE_CLIENT_SECRET": self.client_secret,
            "AZURE_AUTHORITY_HOST": self.entra_url,
        }


@pytest.fixture
def dataverse_world(trust_test_ca: LocalCA) -> Iterator[DataverseWorld]:
    secret = secrets.token_urlsafe(16)
    entra = FakeEntra(TENANT_ID, CLIENT_ID, client_secret=secret)
    dataverse = FakeDataverse(entra)
    with (
        FakeHttpServer(entra, tls=trust_test_ca.server_context()) as entra_server,
        FakeHttpServer(dataverse, tls=trust_test_ca.server_context()) as dataverse_server,
    ):
        yield DataverseWorld(entra, dataverse, entra_server.url, dataverse_server.url, secret)


@dataclass
class RelayQueues:
    jobs: QueueClient
    poison: QueueClient

    def clear(self) -> None:
        for queue in (self.jobs, self.poison):
            try:
                queue.create_queue()
            except ResourceExistsError:
                queue.clear_messages()

    def count(self, queue: QueueClient) -> int:
        return int(queue.get_queue_properties().approximate_message_count)

    def visible_jobs(self, queue: QueueClient) -> list[RelayJob]:
        return [decode_job(base64.b64decode(m.content)) for m in queue.peek_messages(max_messages=32)]


@pytest.fixture
def relay_queues(azurite: Azurite) -> Iterator[RelayQueues]:
    queues = RelayQueues(
        QueueClient.from_connection_string(azurite.connection_string, RELAY_QUEUE),
        QueueClient.from_connection_string(azurite.connection_string, POISON_QUEUE),
    )
    queues.clear()
    yield queues
    queues.clear()  # leave nothing for a later test's local host to relay
    queues.jobs.close()
    queues.poison.close()
