"""Telnyx Messaging (API v2): send with a Bearer API key; webhooks signed with Ed25519.

Webhooks: ``telnyx-signature-ed25519`` (base64) over ``"<telnyx-timestamp>|<raw body>"``, checked
with the account's public key (TELNYX_PUBLIC_KEY, base64) and refused when more than 300 seconds
off, so recorded webhooks cannot be replayed.

| event / ``payload.to[0].status``                     | outcome                          |
|------------------------------------------------------|----------------------------------|
| message.sent (queued, sending, sent)                 | intermediate                     |
| message.finalized + delivered                        | Delivered                        |
| message.finalized + sending_failed, delivery_failed  | NotDelivered (errors[0] as reason)|
| message.finalized + expired                          | NotDelivered, Expired            |
| message.finalized + delivery_unconfirmed             | intermediate: the carrier never said; Sent stands |
| message.received                                     | inbound                          |

Send errors (``errors[0].code``, from Telnyx's error reference; unverified against a live
account): 40300 recipient replied STOP -> NotSent RecipientOptedOut; 40310, 40311 invalid
'to' -> NotSent InvalidRecipient; 40305 invalid 'from' -> NotSent InvalidSender; other 4xx ->
NotSent ProviderRejected; 401/403 credentials and 429/503 transient; 500/502/504 ambiguous.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any, ClassVar

import httpx
from pydantic import HttpUrl, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from channels.base import (
    SendReceipt,
    SendRequest,
    common_http_failure,
    provider_client,
    translate_http_error,
)
from channels.errors import AmbiguousSendError, NotSentReason, PermanentSendError
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
from channels.signatures import unix_time, within_tolerance
from channels.tables import (
    Classification,
    ProviderTables,
    classify_delivery,
    log_unknown_status,
    send_failure_reason,
)
from core.settings import AppSettings, ConfigurationError, load

TABLES = ProviderTables(
    # payload.to[0].status of a message.finalized event (a message.sent event is never final)
    final_statuses={
        "delivered": DeliveryOutcome.DELIVERED,
        "sending_failed": DeliveryOutcome.NOT_DELIVERED,
        "delivery_failed": DeliveryOutcome.NOT_DELIVERED,
        "expired": DeliveryOutcome.NOT_DELIVERED,
    },
    # delivery_unconfirmed: the carrier never said; Sent stands
    intermediate_statuses=frozenset({"queued", "sending", "sent", "delivery_unconfirmed"}),
    delivery_failures={},  # errors[0] gives the description; the status gives the reason
    failure_by_status={
        "sending_failed": DeliveryFailure.PROVIDER_ERROR,
        "delivery_failed": DeliveryFailure.UNREACHABLE,
        "expired": DeliveryFailure.EXPIRED,
    },
    fallback_description="telnyx status {status}",
    # errors[0].code of a refused send
    send_failures={
        "40300": NotSentReason.RECIPIENT_OPTED_OUT,
        "40310": NotSentReason.INVALID_RECIPIENT,
        "40311": NotSentReason.INVALID_RECIPIENT,
        "40305": NotSentReason.INVALID_SENDER,
    },
)


class TelnyxSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TELNYX_", extra="ignore", env_ignore_empty=True)

    api_key: SecretStr
    #: The account's Ed25519 public key (base64, from the Mission Control portal), for webhooks.
    public_key: str | None = None
    messaging_profile_id: str | None = None
    api_base_url: HttpUrl = HttpUrl("https://api.telnyx.com")

    @field_validator("public_key")
    @classmethod
    def _ed25519_key(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                raw = base64.b64decode(value, validate=True)
            except ValueError:
                raise ValueError("must be the base64 Ed25519 public key") from None
            if len(raw) != 32:
                raise ValueError("must be a 32-byte Ed25519 public key, base64")
        return value


class TelnyxAdapter:
    name: ClassVar[str] = "telnyx"
    idempotent_resend_window: ClassVar[timedelta | None] = None
    tables: ClassVar[ProviderTables] = TABLES
    max_webhook_bytes: ClassVar[int | None] = None  # MAX_BODY_BYTES

    def __init__(
        self, settings: TelnyxSettings, *, delivery_report_url: str | None = None, timeout: float = 5.0
    ) -> None:
        self.settings = settings
        self.delivery_report_url = delivery_report_url
        self._public_key = base64.b64decode(settings.public_key) if settings.public_key else None
        self._http = provider_client(
            str(settings.api_base_url).rstrip("/") + "/v2",
            timeout=timeout,
            headers={"Authorization": f"Bearer {settings.api_key.get_secret_value()}"},
        )

    @classmethod
    def from_settings(cls, app: AppSettings, account: str | None = None) -> TelnyxAdapter:
        return cls(
            load(TelnyxSettings, account=account),
            delivery_report_url=app.callback_url(webhook_path(cls.name, "delivery-reports")),
            timeout=app.provider_timeout_seconds,
        )

    async def send(self, request: SendRequest) -> SendReceipt:
        body: dict[str, Any] = {"from": request.sender, "to": request.recipient, "text": request.text}
        if self.settings.messaging_profile_id:
            body["messaging_profile_id"] = self.settings.messaging_profile_id
        if self.delivery_report_url:
            body["webhook_url"] = self.delivery_report_url
        try:
            response = await self._http.post("/messages", json=body)
        except httpx.HTTPError as exc:
            raise translate_http_error(self.name, exc) from exc
        if response.is_success:
            data = _json(response).get("data")
            message_id = data.get("id") if isinstance(data, dict) else None
            if not message_id:
                raise AmbiguousSendError("telnyx: accepted answer without a message id")
            return SendReceipt(message_id=str(message_id), provider_status="queued")
        code = _first_error(_json(response)).get("code")
        common = common_http_failure(self.name, response, provider_code=code, credentials="TELNYX_API_KEY")
        if common is not None:
            raise common
        reason = send_failure_reason(TABLES, code)
        raise PermanentSendError(
            reason, f"telnyx: refused with error {code or response.status_code}", provider_code=code
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- webhooks ----------------------------------------------------------------------------

    def verify_webhook(self, request: WebhookRequest) -> None:
        signature = request.header("telnyx-signature-ed25519")
        stamp = request.header("telnyx-timestamp")
        if not signature or not stamp:
            raise WebhookRejected(401, "no telnyx-signature-ed25519 / telnyx-timestamp")
        if self._public_key is None:
            raise ConfigurationError.single("TELNYX_PUBLIC_KEY", "required to verify webhooks")
        when = unix_time(stamp)
        if when is None:
            raise WebhookRejected(403, "telnyx-timestamp is not a Unix time")
        try:
            raw_signature = base64.b64decode(signature, validate=True)
        except ValueError:
            raise WebhookRejected(403, "malformed signature") from None
        if not within_tolerance(when):
            raise WebhookRejected(403, "stale signature")
        # imported here: cryptography is heavy, and only Telnyx webhooks need Ed25519
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self._public_key).verify(
                raw_signature, stamp.encode("ascii") + b"|" + request.body
            )
        except InvalidSignature:
            raise WebhookRejected(403, "telnyx-signature-ed25519 does not match") from None

    def parse_delivery_reports(self, request: WebhookRequest) -> ParsedWebhook:
        event_type, payload = _event(request)
        message_id = payload.get("id")
        if not message_id:
            raise InvalidWebhook("event without payload.id")
        recipients = _recipients(payload)
        status = str(recipients[0].get("status", "")) if recipients else ""
        error = _first_error(payload)
        verdict = Classification(outcome=DeliveryOutcome.INTERMEDIATE)  # message.sent: never final
        if event_type == "message.finalized":
            detail = error.get("title") or error.get("detail")
            verdict = classify_delivery(TABLES, status, error.get("code"), detail=detail)
            if not verdict.known:
                log_unknown_status(self.name, status, str(message_id))
        sender = payload.get("from")
        return ParsedWebhook(
            delivery_events=[
                DeliveryEvent(
                    provider=self.name,
                    message_id=str(message_id),
                    outcome=verdict.outcome,
                    provider_status=status or event_type,
                    error_code=error.get("code"),
                    reason=verdict.reason,
                    description=verdict.description,
                    sender=sender.get("phone_number") if isinstance(sender, dict) else None,
                )
            ]
        )

    def parse_inbound(self, request: WebhookRequest) -> ParsedWebhook:
        event_type, payload = _event(request)
        if event_type != "message.received":
            return ParsedWebhook()
        sender, recipients = payload.get("from"), _recipients(payload)
        customer = sender.get("phone_number") if isinstance(sender, dict) else None
        ours = recipients[0].get("phone_number") if recipients else None
        if not payload.get("id") or not customer or not ours:
            raise InvalidWebhook("message.received without id, from or to")
        return ParsedWebhook(
            inbound=[
                InboundSms(
                    provider=self.name,
                    message_id=str(payload["id"]),
                    sender=str(customer),
                    recipient=str(ours),
                    text=str(payload.get("text") or ""),
                )
            ]
        )

    def acknowledge(self, kind: WebhookKind) -> WebhookAck:
        return WebhookAck()


def _event(request: WebhookRequest) -> tuple[str, dict[str, Any]]:
    document = request.json()
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("payload"), dict):
        raise InvalidWebhook("expected {data: {event_type, payload}}")
    return str(data.get("event_type", "")), data["payload"]


def _recipients(payload: dict[str, Any]) -> list[dict[str, Any]]:
    recipients = payload.get("to")
    if recipients is None:
        return []
    if not isinstance(recipients, list) or not all(isinstance(r, dict) for r in recipients):
        raise InvalidWebhook("payload.to must be a list of recipients")
    return recipients


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _first_error(document: dict[str, Any]) -> dict[str, Any]:
    errors = document.get("errors")
    first = errors[0] if isinstance(errors, list) and errors else {}
    if not isinstance(first, dict):
        return {}
    return {
        k: (str(v) if v is not None else None) for k, v in first.items() if k in ("code", "title", "detail")
    }
