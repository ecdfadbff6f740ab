"""What providers post back: the request as received, and the events parsed from it.

Verification runs before parsing. A provider's ``verify_webhook`` raises :class:`WebhookRejected`
(401 when credentials are missing, 403 when they are wrong or stale); ``parse_*`` raise
:class:`InvalidWebhook` (400) for bodies that cannot be read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal
from urllib.parse import parse_qsl

from contracts import ChannelStatus
from core.enums import StrEnum

__all__ = [
    "ROUTE_PREFIX",
    "WEBHOOK_ROUTE",
    "DeliveryEvent",
    "DeliveryFailure",
    "DeliveryOutcome",
    "InboundSms",
    "InvalidWebhook",
    "ParsedWebhook",
    "WebhookAck",
    "WebhookKind",
    "WebhookRejected",
    "WebhookRequest",
    "webhook_path",
    "webhook_route",
]


WebhookKind = Literal["delivery-reports", "inbound"]

#: The Functions HTTP route of provider webhooks, served under ROUTE_PREFIX.
WEBHOOK_ROUTE = "providers/{provider}/{kind}"
#: The host's HTTP routePrefix (host.json ``extensions.http.routePrefix``).
ROUTE_PREFIX = "api"


def webhook_route(kind: WebhookKind) -> str:
    """The route template of one kind of webhook, e.g. ``providers/{provider}/inbound``."""
    return WEBHOOK_ROUTE.format(provider="{provider}", kind=kind)


def webhook_path(provider: str, kind: WebhookKind) -> str:
    """The URL path a provider calls, e.g. ``/api/providers/twilio/delivery-reports``."""
    return f"/{ROUTE_PREFIX}/" + WEBHOOK_ROUTE.format(provider=provider, kind=kind)


class WebhookRejected(Exception):
    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason


class InvalidWebhook(ValueError):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookRequest:
    method: str
    #: The URL the provider called, rebuilt from PUBLIC_BASE_URL (what providers sign).
    public_url: str
    headers: dict[str, str]
    query: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def form(self) -> list[tuple[str, str]]:
        try:
            return parse_qsl(self.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise InvalidWebhook("the form body is not UTF-8") from None

    def form_dict(self) -> dict[str, str]:
        return dict(self.form())

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise InvalidWebhook("the body is not JSON") from None


class DeliveryFailure(StrEnum):
    """Closed vocabulary for Details.Reason of a NotDelivered notification."""

    UNREACHABLE = "Unreachable"
    UNKNOWN_NUMBER = "UnknownNumber"
    LANDLINE = "Landline"
    BLOCKED = "Blocked"
    FILTERED = "FilteredByCarrier"
    OPTED_OUT = "RecipientOptedOut"
    EXPIRED = "Expired"
    CANCELED = "Canceled"
    PROVIDER_ERROR = "ProviderError"
    UNKNOWN = "Unknown"


class DeliveryOutcome(Enum):
    DELIVERED = ChannelStatus.DELIVERED
    NOT_DELIVERED = ChannelStatus.NOT_DELIVERED
    #: queued, sent, …: acknowledged, never relayed (Sent was already answered at send time).
    INTERMEDIATE = "Intermediate"

    @property
    def is_final(self) -> bool:
        return self is not DeliveryOutcome.INTERMEDIATE


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryEvent:
    provider: str
    message_id: str
    outcome: DeliveryOutcome
    #: The provider's own status and error code, kept for StatusDetails.
    provider_status: str
    error_code: str | None = None
    #: Normalized failure reason and its description, for Details {Reason, Message}.
    reason: str | None = None
    description: str | None = None
    #: Our sender number as the provider reports it.
    sender: str | None = None
    #: "<ChannelDefinitionId>/<RequestId>" when the provider echoes what we sent with the message.
    correlation: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundSms:
    provider: str
    message_id: str
    #: The customer's number.
    sender: str
    #: Our number (the channel instance's contact point).
    recipient: str
    text: str
    #: For one part of a concatenated message: its reference, the number of parts and its position.
    concat_ref: str | None = None
    concat_total: int | None = None
    concat_part: int | None = None


@dataclass(frozen=True, slots=True)
class WebhookAck:
    """What to answer the provider (after the events are safely queued)."""

    body: str = ""
    status_code: int = 200
    mimetype: str = "text/plain"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ParsedWebhook:
    delivery_events: list[DeliveryEvent] = field(default_factory=list)
    inbound: list[InboundSms] = field(default_factory=list)
    #: Set when the provider only wants an answer (e.g. Event Grid's validation handshake).
    handshake: WebhookAck | None = None
    #: Events of an authentic delivery that cannot be read, each as received with why: kept for an
    #: operator while the readable ones are relayed (a provider never re-sends what was accepted).
    unreadable: list[tuple[Any, str]] = field(default_factory=list)
