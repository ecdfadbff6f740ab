"""The autouse fixture clears every setting the app reads: its list is derived, so it must find them."""

from __future__ import annotations

import os

import pytest

from channels.registry import PROVIDERS
from core.settings import AppSettings
from dataverse.settings import DataverseSettings, IdentitySettings
from tests.conftest import clear_settings, settings_classes


def test_every_settings_class_is_found() -> None:
    found = set(settings_classes())
    assert {AppSettings, DataverseSettings, IdentitySettings} <= found
    # one settings class per provider module at least
    provider_modules = {factory.__self__.__module__ for factory in PROVIDERS.values()}  # type: ignore[attr-defined]
    assert provider_modules <= {cls.__module__ for cls in found}


@pytest.mark.parametrize(
    "name", ["SMS_PROVIDER", "TWILIO_AUTH_TOKEN", "TWILIO_EU_AUTH_TOKEN", "DATAVERSE_URL", "AZURE_CLIENT_ID"]
)
def test_a_developers_shell_does_not_leak_into_tests(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, "from the shell")
    clear_settings(monkeypatch)
    assert name not in os.environ
