"""Every provider the app can send through, by the name used in SMS_PROVIDER and webhook routes."""

from __future__ import annotations

from collections.abc import Callable

from channels.acs import AcsChannel
from channels.base import SmsChannel
from channels.infobip import InfobipChannel
from channels.plivo import PlivoChannel
from channels.simulator import SimulatorChannel
from channels.telnyx import TelnyxChannel
from channels.twilio import TwilioChannel
from channels.vonage import VonageChannel
from core.settings import AppSettings, ConfigurationError

#: (app settings, account name or None) -> adapter
ChannelFactory = Callable[[AppSettings, str | None], SmsChannel]

PROVIDERS: dict[str, ChannelFactory] = {
    SimulatorChannel.name: SimulatorChannel.from_settings,
    TwilioChannel.name: TwilioChannel.from_settings,
    AcsChannel.name: AcsChannel.from_settings,
    TelnyxChannel.name: TelnyxChannel.from_settings,
    PlivoChannel.name: PlivoChannel.from_settings,
    VonageChannel.name: VonageChannel.from_settings,
    InfobipChannel.name: InfobipChannel.from_settings,
}


def build_channel(
    settings: AppSettings, provider: str | None = None, account: str | None = None
) -> SmsChannel:
    """The adapter of ``provider`` (default: SMS_PROVIDER), with ``account``'s settings if named."""
    name = (provider or settings.sms_provider).strip().lower()
    factory = PROVIDERS.get(name)
    if factory is None:
        setting = "SENDER_ROUTES" if provider else "SMS_PROVIDER"
        raise ConfigurationError.single(
            setting, f"unknown provider {name[:20]!r}; choose one of {', '.join(sorted(PROVIDERS))}"
        )
    return factory(settings, account)
