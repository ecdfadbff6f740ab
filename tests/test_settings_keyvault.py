"""A Key Vault reference App Service could not resolve leaves its own text in the app setting: such a
setting is refused like any invalid one, named, never shown."""

from __future__ import annotations

import json
import uuid

import azure.functions as func
import pytest

from channels.twilio import TwilioSettings
from core.settings import AppSettings, ConfigurationError, load
from dataverse.settings import IdentitySettings
from tests.conftest import payload_json
from tests.doubles import app_function
from tests.fakes.azurite import Azurite
from usecases.composition import Services

REFERENCE = "@Microsoft.KeyVault(SecretUri=https://kv-contoso.vault.azure.net/secrets/twilio-auth-token/)"
NAMED_REFERENCE = "@Microsoft.KeyVault(VaultName=kv-contoso;SecretName=storage-connection)"
ACCOUNT_SID = "AC" + "5" * 32


def problems(exc: pytest.ExceptionInfo[ConfigurationError]) -> dict[str, str]:
    return {p.setting: p.message for p in exc.value.problems}


def assert_not_shown(exc: pytest.ExceptionInfo[ConfigurationError]) -> None:
    text = str(exc.value) + repr(exc.value.problems)
    assert "@Microsoft.KeyVault" not in text and "kv-contoso" not in text


@pytest.mark.parametrize(
    "setting, value",
    [
        ("AzureWebJobsStorage", NAMED_REFERENCE),
        ("PUBLIC_BASE_URL", REFERENCE),  # a URL field: the reference is named, not "invalid URL"
        ("MAX_SEGMENTS", f"  {REFERENCE}"),  # an int field, with leading blanks
        ("AzureWebJobsStorage__clientId", REFERENCE.lower()),
    ],
)
def test_an_app_setting_left_as_a_reference_is_refused(
    monkeypatch: pytest.MonkeyPatch, setting: str, value: str
) -> None:
    monkeypatch.setenv(setting, value)
    with pytest.raises(ConfigurationError) as exc:
        load(AppSettings)
    assert list(problems(exc)) == [setting]
    assert "unresolved Key Vault reference" in problems(exc)[setting]
    assert_not_shown(exc)


def test_a_provider_secret_left_as_a_reference_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", REFERENCE)
    with pytest.raises(ConfigurationError) as exc:
        load(TwilioSettings)
    assert list(problems(exc)) == ["TWILIO_AUTH_TOKEN"]
    assert_not_shown(exc)

    # a SENDER_ROUTES account's secret is named with its account
    monkeypatch.setenv("TWILIO_EU_ACCOUNT_SID", ACCOUNT_SID)
    monkeypatch.setenv("TWILIO_EU_AUTH_TOKEN", REFERENCE)
    with pytest.raises(ConfigurationError) as exc:
        load(TwilioSettings, account="eu")
    assert list(problems(exc)) == ["TWILIO_EU_AUTH_TOKEN"]
    assert_not_shown(exc)


def test_a_reference_is_named_alongside_other_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_CLIENT_SECRET", REFERENCE)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", "not a url")
    with pytest.raises(ConfigurationError) as exc:
        load(IdentitySettings)
    assert set(problems(exc)) == {"AZURE_CLIENT_SECRET", "AZURE_AUTHORITY_HOST"}
    assert_not_shown(exc)


def test_settings_resolved_from_key_vault_load_as_usual(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "a-resolved-secret-mentioning-@Microsoft.KeyVault(")
    settings = load(TwilioSettings)
    assert settings.auth_token is not None


async def test_health_and_outbound_report_an_unresolved_reference(
    monkeypatch: pytest.MonkeyPatch, azurite: Azurite
) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("SMS_PROVIDER", "twilio")
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", REFERENCE)
    services = Services()
    health = await app_function(services, "health")(
        func.HttpRequest("GET", "http://localhost/api/health", body=b"")
    )
    body = json.loads(health.get_body())
    assert health.status_code == 503 and body["status"] == "unhealthy"
    assert [p["setting"] for p in body["problems"]] == ["TWILIO_AUTH_TOKEN"]
    assert body["storage"] == "reachable"

    outbound = await app_function(services, "outbound")(
        func.HttpRequest(
            "POST",
            "http://localhost/api/outbound",
            body=json.dumps(payload_json(uuid.uuid4())).encode(),
            headers={"Content-Type": "application/json"},
        )
    )
    answer = json.loads(outbound.get_body())
    assert outbound.status_code == 503 and answer["error"]["code"] == "Misconfigured"
    assert [s["setting"] for s in answer["error"]["settings"]] == ["TWILIO_AUTH_TOKEN"]
    for response in (health, outbound):
        assert (
            "KeyVault" not in response.get_body().decode()
            and "kv-contoso" not in response.get_body().decode()
        )
