"""Every provider the app can send through, by the name used in SMS_PROVIDER and webhook routes."""

from __future__ import annotations

from collections.abc import Callable

from channels.acs import AcsChannel
from channels.base import SmsChannel
from channels.plivo import PlivoChannel
from channels.simulator import SimulatorChannel
from channels.telnyx import TelnyxChannel
from channels.twilio import TwilioChannel
from channels.vonage import VonageChannel
from core.settings import AppSettings, ConfigurationError

ChannelFactory = Callable[[AppSettings], SmsChannel]

PROVIDERS: dict[str, ChannelFactory] = {
    SimulatorChannel.name: SimulatorChannel.from_settings,
    TwilioChannel.name: TwilioChannel.from_settings,
    AcsChannel.name: AcsChannel.from_settings,
    TelnyxChannel.name: TelnyxChannel.from_settings,
    PlivoChannel.name: PlivoChannel.from_settings,
    VonageChannel.name: VonageChannel.from_settings,
}


def build_channel(settings: AppSettings) -> SmsChannel:
    factory = PROVIDERS.get(settings.sms_provider.strip().lower())
    if factory is None:
        raise ConfigurationError.single(
            "SMS_PROVIDER", f"unknown provider; choose one of {', '.join(sorted(PROVIDERS))}"
        )
    return factory(settings)
