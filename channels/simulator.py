"""The simulator: a provider that needs no network, for local runs and tests.

Message ids are derived from the request, so the same request always gets the same id. Failures
are injected by recipient number suffix:

| setting                        | recipient ending in a listed suffix gets |
|--------------------------------|------------------------------------------|
| SIMULATOR_REJECT_SUFFIXES      | NotSent, reason InvalidRecipient         |
| SIMULATOR_OPTED_OUT_SUFFIXES   | NotSent, reason RecipientOptedOut        |
| SIMULATOR_TRANSIENT_SUFFIXES   | a transient failure (503 to the caller)  |
| SIMULATOR_AMBIGUOUS_SUFFIXES   | an ambiguous outcome (no answer)         |
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, ClassVar

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from channels.base import SendReceipt, SendRequest
from channels.errors import AmbiguousSendError, NotSentReason, PermanentSendError, TransientSendError
from core.settings import AppSettings, load

MESSAGE_ID_NAMESPACE = uuid.UUID("5b0c3f4e-54d6-4f0e-9a57-6a0f3f2d1c11")

Suffixes = Annotated[tuple[str, ...], NoDecode]


class SimulatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIMULATOR_", extra="ignore", env_ignore_empty=True)

    reject_suffixes: Suffixes = ()
    opted_out_suffixes: Suffixes = ()
    transient_suffixes: Suffixes = ()
    ambiguous_suffixes: Suffixes = ()
    #: Seconds a transient failure asks the caller to wait.
    retry_after_seconds: float = Field(default=1.0, ge=0)

    @field_validator(
        "reject_suffixes",
        "opted_out_suffixes",
        "transient_suffixes",
        "ambiguous_suffixes",
        mode="before",
    )
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value


class SimulatorChannel:
    name: ClassVar[str] = "simulator"
    idempotent_resend_window: ClassVar[timedelta | None] = None

    def __init__(self, settings: SimulatorSettings | None = None) -> None:
        self.settings = settings or SimulatorSettings()

    @classmethod
    def from_settings(cls, app: AppSettings) -> SimulatorChannel:
        return cls(load(SimulatorSettings))

    async def send(self, request: SendRequest) -> SendReceipt:
        recipient, s = request.recipient, self.settings
        if recipient.endswith(s.reject_suffixes):
            raise PermanentSendError(
                NotSentReason.INVALID_RECIPIENT, "simulator: recipient rejected", provider_code="sim-reject"
            )
        if recipient.endswith(s.opted_out_suffixes):
            raise PermanentSendError(
                NotSentReason.RECIPIENT_OPTED_OUT,
                "simulator: recipient opted out",
                provider_code="sim-optout",
            )
        if recipient.endswith(s.transient_suffixes):
            raise TransientSendError("simulator: temporarily unavailable", retry_after=s.retry_after_seconds)
        if recipient.endswith(s.ambiguous_suffixes):
            raise AmbiguousSendError("simulator: no answer after the request was sent")
        message_id = uuid.uuid5(MESSAGE_ID_NAMESPACE, f"{request.channel_definition_id}/{request.request_id}")
        return SendReceipt(message_id=f"SM{message_id.hex}", provider_status="accepted")

    async def aclose(self) -> None:
        return None
