"""What providers post back: the request as received, and the events parsed from it.

Verification runs before parsing. A provider's ``verify_webhook`` raises :class:`WebhookRejected`
(401 when credentials are missing, 403 when they are wrong or stale); ``parse_*`` raise
:class:`InvalidWebhook` (400) for bodies that cannot be read and :class:`PayloadTooLarge` (413) for
more than the provider ever sends at once.

A body's shape is bounded where it is read, so that nothing after it depends on the stack: JSON
nested deeper than :data:`MAX_JSON_DEPTH` has its deeper values replaced by :data:`LEFT_OUT` before
it is parsed (``json.loads`` alone would fail, or not, depending on how deep the caller's stack is,
and ``str``, ``repr``, pydantic and ``json.dumps`` recurse over what it returns); a form may have
:data:`MAX_FORM_FIELDS` fields.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum
from itertools import accumulate
from typing import Any, Literal
from urllib.parse import parse_qsl

from contracts import ChannelStatus
from core.enums import StrEnum

__all__ = [
    "LEFT_OUT",
    "MAX_FORM_FIELDS",
    "MAX_JSON_DEPTH",
    "ROUTE_PREFIX",
    "WEBHOOK_ROUTE",
    "DeliveryEvent",
    "DeliveryFailure",
    "DeliveryOutcome",
    "InboundSms",
    "InvalidWebhook",
    "ParsedWebhook",
    "PayloadTooLarge",
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


class PayloadTooLarge(ValueError):
    """More than the provider ever sends in one webhook: bytes, or events of a batch (413)."""


#: Levels of JSON nesting read from a webhook; providers nest about five. Deeper values are
#: replaced by LEFT_OUT, so whatever walks the document recurses at most one level more.
MAX_JSON_DEPTH = 32
#: What stands for a value nested deeper than MAX_JSON_DEPTH: an object, so that it never passes
#: for an id or a text the way a string would.
LEFT_OUT = {"\u2026": f"nested deeper than {MAX_JSON_DEPTH} levels, left out"}
#: Form fields read from a webhook; providers send a few dozen.
MAX_FORM_FIELDS = 1000

_JSON_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
#: Everything of a JSON text but its brackets (a quote that opens no complete string stays).
_NOT_BRACKETS = re.compile(_JSON_STRING + r'|[^\[\]{}"]+', re.DOTALL)
_STRING_OR_BRACKETS = re.compile(_JSON_STRING + r"|[\[{]+|[\]}]+", re.DOTALL)
_NESTING_STEP = {"[": 1, "{": 1, "]": -1, "}": -1, '"': 0}
_LEFT_OUT_JSON = json.dumps(LEFT_OUT)


def _json_nesting(text: str) -> int:
    """How deeply arrays and objects nest in the JSON ``text``, strings skipped, without recursion.

    Exact up to the first syntax error, which is as far as ``json.loads`` reads before it fails."""
    brackets = _NOT_BRACKETS.sub("", text)
    return max(accumulate(map(_NESTING_STEP.__getitem__, brackets)), default=0)


def _within_depth(text: str) -> str:
    """``text`` with every value nested deeper than MAX_JSON_DEPTH replaced by LEFT_OUT."""
    kept: list[str] = []
    depth = resume_at = 0
    for match in _STRING_OR_BRACKETS.finditer(text):  # runs of brackets: "[[[[" is one step
        run, before = match.group(), depth
        if run[0] in "[{":
            depth += len(run)
            if before <= MAX_JSON_DEPTH < depth:  # this run opens the first level too deep
                kept += (text[resume_at : match.start() + MAX_JSON_DEPTH - before], _LEFT_OUT_JSON)
        elif run[0] in "]}":
            depth -= len(run)
            if depth <= MAX_JSON_DEPTH < before:  # and this one closes it
                resume_at = match.start() + before - MAX_JSON_DEPTH
    if depth <= MAX_JSON_DEPTH:  # else a value never closes: the text stays cut, and unreadable
        kept.append(text[resume_at:])
    return "".join(kept)


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
            text = self.body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidWebhook("the form body is not UTF-8") from None
        try:
            return parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
        except ValueError:
            raise InvalidWebhook(f"the form has more than {MAX_FORM_FIELDS} fields") from None

    def form_dict(self) -> dict[str, str]:
        return dict(self.form())

    def json(self) -> Any:
        """The JSON body, values nested deeper than MAX_JSON_DEPTH replaced by LEFT_OUT."""
        try:
            text = self.body.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InvalidWebhook("the body is not JSON") from None
        if _json_nesting(text) > MAX_JSON_DEPTH:
            text = _within_depth(text)
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
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
