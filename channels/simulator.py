"""The simulator: a provider that needs no network, for local runs and tests.

Message ids are derived from the request, so the same request always gets the same id. Failures
are injected by recipient number suffix:

| setting                        | recipient ending in a listed suffix gets |
|--------------------------------|------------------------------------------|
| SIMULATOR_REJECT_SUFFIXES      | NotSent, reason InvalidRecipient         |
| SIMULATOR_OPTED_OUT_SUFFIXES   | NotSent, reason RecipientOptedOut        |
| SIMULATOR_TRANSIENT_SUFFIXES   | a transient failure (503 to the caller)  |
| SIMULATOR_AMBIGUOUS_SUFFIXES   | an ambiguous outcome (no answer)         |
| SIMULATOR_UNDELIVERED_SUFFIXES | Sent, then a "failed" delivery report    |

It closes the loop like a real provider: SIMULATOR_DELIVERY_DELAY_SECONDS after a send it posts a
signed delivery report to the app's own webhook (PUBLIC_BASE_URL), and with SIMULATOR_REPLY_TEXT
set the recipient then "replies" with that text to the inbound webhook.

Webhooks are JSON, signed with SIMULATOR_WEBHOOK_SECRET: ``X-Simulator-Timestamp`` (Unix seconds)
and ``X-Simulator-Signature`` = hex HMAC-SHA256 of ``"<timestamp>." + body``, refused when more
than 300 seconds old. Delivery report: ``{"MessageId", "Status", "ErrorCode"?, "From"?, "Correlation"?}``
with Status ``delivered`` / ``failed`` / ``expired`` (final) or ``sent`` (intermediate); inbound:
``{"MessageId", "From", "To", "Text"}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import timedelta
from typing import Annotated, Any, ClassVar

import httpx
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from channels.base import SendReceipt, SendRequest
from channels.errors import AmbiguousSendError, NotSentReason, PermanentSendError, TransientSendError
from channels.events import (
    DeliveryEvent,
    DeliveryFailure,
    DeliveryOutcome,
    InboundSms,
    InvalidWebhook,
    ParsedWebhook,
    WebhookAck,
    WebhookKind,
    WebhookRejected,
    WebhookRequest,
    webhook_path,
)
from channels.signatures import hmac_sha256_hex, same, unix_time, within_tolerance
from channels.tables import ProviderTables, classify_delivery, log_unknown_status, send_failure_reason
from core.settings import AppSettings, ConfigurationError, load

TABLES = ProviderTables(
    final_statuses={
        "delivered": DeliveryOutcome.DELIVERED,
        "failed": DeliveryOutcome.NOT_DELIVERED,
        "expired": DeliveryOutcome.NOT_DELIVERED,
    },
    intermediate_statuses=frozenset({"sent"}),
    delivery_failures={},  # ErrorCode is kept for StatusDetails; the status alone gives the reason
    failure_by_status={"failed": DeliveryFailure.UNREACHABLE, "expired": DeliveryFailure.EXPIRED},
    fallback_description="simulated {status}",
    send_failures={
        "sim-reject": NotSentReason.INVALID_RECIPIENT,
        "sim-optout": NotSentReason.RECIPIENT_OPTED_OUT,
    },
)

log = logging.getLogger("sms.simulator")

MESSAGE_ID_NAMESPACE = uuid.UUID("5b0c3f4e-54d6-4f0e-9a57-6a0f3f2d1c11")
POST_ATTEMPTS = 4


def sign_webhook(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Headers that authenticate ``body`` as a simulator webhook."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "X-Simulator-Timestamp": stamp,
        "X-Simulator-Signature": hmac_sha256_hex(secret, stamp.encode("ascii") + b"." + body),
    }


Suffixes = Annotated[tuple[str, ...], NoDecode]


class SimulatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIMULATOR_", extra="ignore", env_ignore_empty=True)

    reject_suffixes: Suffixes = ()
    opted_out_suffixes: Suffixes = ()
    transient_suffixes: Suffixes = ()
    ambiguous_suffixes: Suffixes = ()
    #: Recipients whose simulated delivery report says "failed" instead of "delivered".
    undelivered_suffixes: Suffixes = ()
    #: Seconds a transient failure asks the caller to wait.
    retry_after_seconds: float = Field(default=1.0, ge=0)
    webhook_secret: SecretStr | None = None
    #: Seconds after a send at which the simulator posts its delivery report to the app's own
    #: webhook (needs PUBLIC_BASE_URL and SIMULATOR_WEBHOOK_SECRET); negative turns it off.
    delivery_delay_seconds: float = 1.0
    #: When set, the recipient "replies" this text right after the delivery report.
    reply_text: str | None = None

    @field_validator(
        "reject_suffixes",
        "opted_out_suffixes",
        "transient_suffixes",
        "ambiguous_suffixes",
        "undelivered_suffixes",
        mode="before",
    )
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value


class SimulatorAdapter:
    name: ClassVar[str] = "simulator"
    idempotent_resend_window: ClassVar[timedelta | None] = None
    tables: ClassVar[ProviderTables] = TABLES
    max_webhook_bytes: ClassVar[int | None] = None  # MAX_BODY_BYTES

    def __init__(self, settings: SimulatorSettings | None = None, *, app_base_url: str | None = None) -> None:
        self.settings = settings or SimulatorSettings()
        self.app_base_url = app_base_url.rstrip("/") if app_base_url else None
        self._http: httpx.AsyncClient | None = None
        self._pending: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, app: AppSettings, account: str | None = None) -> SimulatorAdapter:
        return cls(
            load(SimulatorSettings, account=account),
            app_base_url=str(app.public_base_url) if app.public_base_url else None,
        )

    async def send(self, request: SendRequest) -> SendReceipt:
        recipient, s = request.recipient, self.settings
        if recipient.endswith(s.reject_suffixes):
            raise PermanentSendError(
                send_failure_reason(TABLES, "sim-reject"),
                "simulator: recipient rejected",
                provider_code="sim-reject",
            )
        if recipient.endswith(s.opted_out_suffixes):
            raise PermanentSendError(
                send_failure_reason(TABLES, "sim-optout"),
                "simulator: recipient opted out",
                provider_code="sim-optout",
            )
        if recipient.endswith(s.transient_suffixes):
            raise TransientSendError("simulator: temporarily unavailable", retry_after=s.retry_after_seconds)
        if recipient.endswith(s.ambiguous_suffixes):
            raise AmbiguousSendError("simulator: no answer after the request was sent")
        message_id = "SM" + uuid.uuid5(MESSAGE_ID_NAMESPACE, request.reference).hex
        if self._closes_the_loop():
            task = asyncio.create_task(self._report_later(request, message_id))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        # its own reports carry the reference (Correlation); reports scripted by hand may not
        return SendReceipt(
            message_id=message_id, provider_status="accepted", reports_carry_reference=self._closes_the_loop()
        )

    async def aclose(self) -> None:
        pending = list(self._pending)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    # -- the simulated provider's side: reports and replies posted back to the app ----------------

    def _closes_the_loop(self) -> bool:
        s = self.settings
        return (
            self.app_base_url is not None and s.webhook_secret is not None and s.delivery_delay_seconds >= 0
        )

    async def _report_later(self, request: SendRequest, message_id: str) -> None:
        await asyncio.sleep(self.settings.delivery_delay_seconds)
        status = "failed" if request.recipient.endswith(self.settings.undelivered_suffixes) else "delivered"
        await self._post(
            "delivery-reports",
            {
                "MessageId": message_id,
                "Status": status,
                "From": request.sender,
                "Correlation": request.reference,
            },
        )
        if self.settings.reply_text:
            await self._post(
                "inbound",
                {
                    "MessageId": f"{message_id}-reply",
                    "From": request.recipient,
                    "To": request.sender,
                    "Text": self.settings.reply_text,
                },
            )

    async def _post(self, kind: WebhookKind, document: dict[str, str]) -> None:
        """Post like a provider does: retried a few times when the app does not take it."""
        assert self.settings.webhook_secret is not None
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=str(self.app_base_url), timeout=10.0)
        body = json.dumps(document).encode()
        outcome = "no answer"
        for attempt in range(POST_ATTEMPTS):
            headers = {
                "Content-Type": "application/json",
                **sign_webhook(self.settings.webhook_secret.get_secret_value(), body),
            }
            try:
                response = await self._http.post(webhook_path(self.name, kind), content=body, headers=headers)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            else:
                if response.is_success:
                    log.info("posted %s for MessageId=%s", kind, document["MessageId"])
                    return
                outcome = f"HTTP {response.status_code}"
            await asyncio.sleep(0.5 * 2**attempt)
        log.warning(
            "the app did not take the %s for MessageId=%s (%s)",
            kind,
            document["MessageId"],
            outcome,
        )

    # -- webhooks ----------------------------------------------------------------------------

    def verify_webhook(self, request: WebhookRequest) -> None:
        stamp, signature = request.header("X-Simulator-Timestamp"), request.header("X-Simulator-Signature")
        if not stamp or not signature:
            raise WebhookRejected(401, "no X-Simulator-Timestamp / X-Simulator-Signature")
        if self.settings.webhook_secret is None:
            raise ConfigurationError.single("SIMULATOR_WEBHOOK_SECRET", "required to verify webhooks")
        when = unix_time(stamp)
        if when is None:
            raise WebhookRejected(403, "X-Simulator-Timestamp is not a Unix time")
        if not within_tolerance(when):
            raise WebhookRejected(403, "stale signature")
        expected = hmac_sha256_hex(
            self.settings.webhook_secret.get_secret_value(), stamp.encode("ascii") + b"." + request.body
        )
        if not same(expected, signature):
            raise WebhookRejected(403, "X-Simulator-Signature does not match")

    def parse_delivery_reports(self, request: WebhookRequest) -> ParsedWebhook:
        body = _object(request)
        message_id, status = body.get("MessageId"), str(body.get("Status", "")).lower()
        if not isinstance(message_id, str) or not message_id or not status:
            raise InvalidWebhook("MessageId and Status are required")
        error_code = _text(body.get("ErrorCode"))
        verdict = classify_delivery(TABLES, status, error_code)
        if not verdict.known:
            log_unknown_status(self.name, status, message_id)
        return ParsedWebhook(
            delivery_events=[
                DeliveryEvent(
                    provider=self.name,
                    message_id=message_id,
                    outcome=verdict.outcome,
                    provider_status=status,
                    error_code=error_code,
                    reason=verdict.reason,
                    description=verdict.description,
                    sender=_text(body.get("From")),
                    correlation=_text(body.get("Correlation")),
                )
            ]
        )

    def parse_inbound(self, request: WebhookRequest) -> ParsedWebhook:
        body = _object(request)
        fields = {name: _text(body.get(name)) for name in ("MessageId", "From", "To")}
        missing = [name for name, value in fields.items() if not value]
        if missing:
            raise InvalidWebhook(f"missing {', '.join(missing)}")
        return ParsedWebhook(
            inbound=[
                InboundSms(
                    provider=self.name,
                    message_id=str(fields["MessageId"]),
                    sender=str(fields["From"]),
                    recipient=str(fields["To"]),
                    text=str(body.get("Text", "")),
                )
            ]
        )

    def acknowledge(self, kind: WebhookKind) -> WebhookAck:
        return WebhookAck()


def _object(request: WebhookRequest) -> dict[str, Any]:
    body = request.json()
    if not isinstance(body, dict):
        raise InvalidWebhook("expected a JSON object")
    return body


def _text(value: object) -> str | None:
    return str(value) if value not in (None, "") else None
