"""The app's own HTTP answers besides the Journeys contracts: error bodies, the health report, and the
custom API's envelope. Their keys are camelCase (``error``, ``requestId``), unlike the contracts'."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

__all__ = [
    "ErrorAnswer",
    "ErrorBody",
    "FieldProblem",
    "HealthReport",
    "OutboundEnvelope",
    "OutboundEnvelopeAnswer",
    "SettingProblemBody",
]


class _CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class FieldProblem(_CamelModel):
    #: The payload field, dotted for nested ones (``Message.text``), or ``(payload)``.
    field: str
    message: str


class SettingProblemBody(_CamelModel):
    #: The setting's name, never its value.
    setting: str
    message: str


class ErrorBody(_CamelModel):
    #: InvalidJson, InvalidPayload, PayloadTooLarge, TryAgainLater, Misconfigured, StorageUnavailable,
    #: NotAuthenticated, InvalidWebhook, UnknownProvider, NotConfigured.
    code: str
    message: str
    fields: list[FieldProblem] | None = None
    #: Only on the outbound route (its caller holds a function key); webhooks never name settings.
    settings: list[SettingProblemBody] | None = None
    request_id: str | None = None


class ErrorAnswer(_CamelModel):
    """Every 4xx and 5xx the app answers: what is wrong, never a stack trace."""

    error: ErrorBody


class HealthReport(_CamelModel):
    status: Literal["ok", "unhealthy"]
    provider: str | None
    storage: Literal["reachable", "unreachable", "unknown"]
    dataverse: str
    problems: list[SettingProblemBody]


class OutboundEnvelope(BaseModel):
    """The outbound custom API's request as the forwarding plug-in posts it."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    #: The serialized OutboundPayload.
    payload: str


class OutboundEnvelopeAnswer(BaseModel):
    """The answer to an enveloped request: the custom API's output parameter."""

    model_config = ConfigDict(frozen=True)
    #: The serialized OutboundResponse.
    response: str
