"""Every provider the app can send through, by the name used in SMS_PROVIDER and webhook routes."""

from __future__ import annotations

from collections.abc import Callable

from channels.acs import AcsAdapter
from channels.base import ProviderAdapter
from channels.infobip import InfobipAdapter
from channels.plivo import PlivoAdapter
from channels.simulator import SimulatorAdapter
from channels.telnyx import TelnyxAdapter
from channels.twilio import TwilioAdapter
from channels.vonage import VonageAdapter
from core.settings import AppSettings, ConfigurationError

#: (app settings, account name or None) -> adapter
AdapterFactory = Callable[[AppSettings, str | None], ProviderAdapter]

PROVIDERS: dict[str, AdapterFactory] = {
    SimulatorAdapter.name: SimulatorAdapter.from_settings,
    TwilioAdapter.name: TwilioAdapter.from_settings,
    AcsAdapter.name: AcsAdapter.from_settings,
    TelnyxAdapter.name: TelnyxAdapter.from_settings,
    PlivoAdapter.name: PlivoAdapter.from_settings,
    VonageAdapter.name: VonageAdapter.from_settings,
    InfobipAdapter.name: InfobipAdapter.from_settings,
}


def build_adapter(
    settings: AppSettings, provider: str | None = None, account: str | None = None
) -> ProviderAdapter:
    """The adapter of ``provider`` (default: SMS_PROVIDER), with ``account``'s settings if named."""
    name = (provider or settings.sms_provider).strip().lower()
    factory = PROVIDERS.get(name)
    if factory is None:
        setting = "SENDER_ROUTES" if provider else "SMS_PROVIDER"
        raise ConfigurationError.single(
            setting, f"unknown provider {name[:20]!r}; choose one of {', '.join(sorted(PROVIDERS))}"
        )
    return factory(settings, account)
