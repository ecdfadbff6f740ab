"""The provider adapter seam.

An adapter is one module in ``channels/`` holding, top to bottom: the provider's status and error
tables (``TABLES``, a :class:`channels.tables.ProviderTables`), its settings, and a class implementing
:class:`ProviderAdapter`. It is registered with one line in ``channels/registry.py``. Webhook
verification and parsing of delivery reports and inbound messages belong to the same class (they
share the provider's credentials and vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar, Protocol
from uuid import UUID

import httpx

from channels.errors import AmbiguousSendError, TransientSendError
from channels.events import ParsedWebhook, WebhookAck, WebhookKind, WebhookRequest
from channels.tables import ProviderTables
from core.http_transport import AiohttpTransport
from core.retry_after import parse_retry_after

__all__ = [
    "ProviderAdapter",
    "SendReceipt",
    "SendRequest",
    "common_http_failure",
    "provider_client",
    "translate_http_error",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class SendRequest:
    """One SMS to hand to a provider, already validated and normalized."""

    request_id: str
    channel_definition_id: UUID
    #: Names the send in the provider's reports, where the provider echoes a value we give it:
    #: ``<ChannelDefinitionId>/<RequestId>`` or ``<ChannelDefinitionId>:<IdempotencyId>``.
    reference: str
    sender: str
    recipient: str
    text: str
    #: Stable for every attempt of this request (providers with idempotency keys use it).
    idempotency_key: UUID
    #: When the first attempt of this request started (for providers' repeatability windows).
    first_attempt_at: datetime


@dataclass(frozen=True, slots=True)
class SendReceipt:
    """The provider accepted the message."""

    message_id: str
    provider_status: str | None = None
    #: Providers that send a long text as separately reported parts (Vonage) list every part's
    #: id here; ``message_id`` is then the first part's, the id answered to Journeys.
    part_message_ids: tuple[str, ...] = ()
    #: Parts the provider refused while accepting others: the text arrives incomplete.
    refused_parts: int = 0
    #: Every delivery report of this message will carry the request's ``reference``, by
    #: construction (Twilio reports to the per-message StatusCallback URL that holds it), not merely
    #: because a provider documents echoing a field: reports then find the send's own row, and the
    #: message-id record is not written.
    reports_carry_reference: bool = False

    @property
    def parts(self) -> int:
        """How many separately reported parts the message went out as."""
        return max(len(self.part_message_ids) + self.refused_parts, 1)


class ProviderAdapter(Protocol):
    #: Registry name; also the ``{provider}`` segment of this channel's webhook routes.
    name: ClassVar[str]
    #: How long after the first attempt a re-send with the same idempotency key is deduplicated by
    #: the provider; None when the provider has no such guarantee (then a re-send after an
    #: ambiguous outcome could deliver twice, so it never happens).
    idempotent_resend_window: ClassVar[timedelta | None]
    #: The provider's status and error tables (the module's ``TABLES``).
    tables: ClassVar[ProviderTables]
    #: The largest webhook body the provider may send; None: MAX_BODY_BYTES (64 KiB by default).
    max_webhook_bytes: ClassVar[int | None]

    async def send(self, request: SendRequest) -> SendReceipt:
        """Hand one message to the provider or raise a :mod:`channels.errors` exception."""
        ...

    async def aclose(self) -> None: ...

    def verify_webhook(self, request: WebhookRequest) -> None:
        """Raise WebhookRejected unless the request provably comes from the provider, or
        ConfigurationError when a setting needed to tell is missing (answered 503: retry later)."""
        ...

    def parse_delivery_reports(self, request: WebhookRequest) -> ParsedWebhook: ...

    def parse_inbound(self, request: WebhookRequest) -> ParsedWebhook: ...

    def acknowledge(self, kind: WebhookKind) -> WebhookAck:
        """The answer the provider expects once its webhook's events are queued."""
        ...


def translate_http_error(provider: str, exc: httpx.HTTPError) -> Exception:
    """Map an httpx failure: transient when nothing reached the provider, else ambiguous."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return TransientSendError(f"{provider}: could not connect ({type(exc).__name__})")
    return AmbiguousSendError(
        f"{provider}: no usable answer after the request was sent ({type(exc).__name__})"
    )


def common_http_failure(
    provider: str, response: httpx.Response, *, provider_code: str | None, credentials: str
) -> TransientSendError | AmbiguousSendError | None:
    """The HTTP answers every provider shares.

    429 and 503 say the request was not taken: transient. 500, 502 and 504 may come after the
    provider created the message: ambiguous (re-sent only where the provider deduplicates).
    Refused credentials are an operator's fix away, so they are transient for the caller (503)
    rather than NotSent for the journey. ``credentials`` names the settings to check.
    """
    status = response.status_code
    if status in (429, 503):
        return TransientSendError(
            f"{provider}: HTTP {status}",
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            provider_code=provider_code,
        )
    if status >= 500:
        return AmbiguousSendError(f"{provider}: HTTP {status}", provider_code=provider_code)
    if status in (401, 403):
        return TransientSendError(
            f"{provider}: credentials refused (HTTP {status}); check {credentials}",
            provider_code=provider_code,
        )
    return None


#: Connections kept to one provider, all of them kept alive. Through aiohttp (core.http_transport)
#: the CPU per send at 32 concurrent sends is the same with 4, 8, 16 or 32 connections (bench.per_send,
#: README "Benchmarks"), so the pool is sized for real providers' latency: at 200 ms per API call,
#: 32 connections carry 160 sends/s where 8 would queue sends beyond 40/s.
PROVIDER_CONNECTION_LIMITS = httpx.Limits(max_connections=32, max_keepalive_connections=32)


def provider_client(
    base_url: str,
    *,
    timeout: float,
    headers: dict[str, str] | None = None,
    auth: httpx.Auth | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """The one long-lived HTTP client an adapter keeps for its provider's API.

    Connecting is capped at 3 s: a provider that cannot be reached should fail over to a retry
    while the send budget still has room.
    """
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers={"Accept": "application/json", **(headers or {})},
        auth=auth,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)),
        transport=transport or AiohttpTransport(limits=PROVIDER_CONNECTION_LIMITS),
    )
