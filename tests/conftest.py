from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from channels.acs import AcsSettings
from channels.simulator import SimulatorSettings
from channels.twilio import TwilioSettings
from core.ledger import SendLedger
from core.settings import AppSettings
from tests.fakes.azurite import Azurite, start_azurite
from tests.fakes.tls import LocalCA, make_local_ca

#: Fictional numbers: NANPA reserves 555-0100 to 555-0199 for fiction; never real subscribers.
CUSTOMER = "+14155550123"
OUR_NUMBER = "+14155550100"


def _setting_names() -> set[str]:
    names = {"AZUREWEBJOBSSTORAGE"}
    for cls in (AppSettings, SimulatorSettings, TwilioSettings, AcsSettings):
        prefix = cls.model_config.get("env_prefix", "")
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            names.add(alias.upper() if isinstance(alias, str) else f"{prefix}{name}".upper())
    return names


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the environment: no test sees another's, or the developer's shell's."""
    names = _setting_names()
    for key in list(os.environ):
        if key.upper() in names:
            monkeypatch.delenv(key)


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
    store.close()


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
