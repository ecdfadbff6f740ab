"""Twilio Programmable Messaging (Messages API, form-encoded, HTTP Basic auth).

Send errors by Twilio error code (https://www.twilio.com/docs/api/errors):

| code  | meaning                                       | outcome                       |
|-------|-----------------------------------------------|-------------------------------|
| 21211 | invalid 'To' number                           | NotSent InvalidRecipient      |
| 21214 | 'To' number cannot be reached                 | NotSent InvalidRecipient      |
| 21612 | 'To' not reachable via SMS from this sender   | NotSent InvalidRecipient      |
| 21614 | 'To' is not a mobile number                   | NotSent InvalidRecipient      |
| 21610 | recipient replied STOP (unsubscribed)         | NotSent RecipientOptedOut     |
| 21212 | invalid 'From' number                         | NotSent InvalidSender         |
| 21606 | 'From' is not a message-capable Twilio number | NotSent InvalidSender         |
| 21602 | body required                                 | NotSent EmptyMessage          |
| 21617 | body over 1600 characters                     | NotSent TooManySegments       |
| other | any other 4xx                                 | NotSent ProviderRejected      |
| 401/403 | credentials refused                         | transient (503) until fixed   |
| 429, 503 | throttled or unavailable                   | transient, Retry-After kept   |
| 500/502/504 | may have created the message            | ambiguous: never re-sent      |
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any, ClassVar
from urllib.parse import urlencode

import httpx
from pydantic import Field, HttpUrl, SecretStr, model_validator
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
from channels.signatures import TWILIO_ALGORITHMS, same, twilio_signature, url_port_variants
from channels.tables import ProviderTables, classify_delivery, log_unknown_status, send_failure_reason
from core.settings import AppSettings, ConfigurationError, load

TABLES = ProviderTables(
    # Status callback MessageStatus (the SDK's MessageInstance.Status, every value).
    final_statuses={
        "delivered": DeliveryOutcome.DELIVERED,
        "read": DeliveryOutcome.DELIVERED,
        "undelivered": DeliveryOutcome.NOT_DELIVERED,
        "failed": DeliveryOutcome.NOT_DELIVERED,
        "canceled": DeliveryOutcome.NOT_DELIVERED,
    },
    # partially_delivered (in the SDK's enum, not SMS-typical) stays intermediate: Sent stands
    intermediate_statuses=frozenset(
        {"queued", "accepted", "scheduled", "sending", "sent", "receiving", "received", "partially_delivered"}
    ),
    # Delivery ErrorCode (https://www.twilio.com/docs/api/errors).
    delivery_failures={
        "30001": (DeliveryFailure.PROVIDER_ERROR, "Queue overflow"),
        "30002": (DeliveryFailure.PROVIDER_ERROR, "Account suspended"),
        "30003": (DeliveryFailure.UNREACHABLE, "Unreachable destination handset"),
        "30004": (DeliveryFailure.BLOCKED, "Message blocked"),
        "30005": (DeliveryFailure.UNKNOWN_NUMBER, "Unknown destination handset"),
        "30006": (DeliveryFailure.LANDLINE, "Landline or unreachable carrier"),
        "30007": (DeliveryFailure.FILTERED, "Message filtered by the carrier"),
        "30008": (DeliveryFailure.UNKNOWN, "Unknown error"),
        "30010": (DeliveryFailure.PROVIDER_ERROR, "Message price exceeds max price"),
        "30034": (DeliveryFailure.FILTERED, "Message from an unregistered number"),
        "21610": (DeliveryFailure.OPTED_OUT, "Recipient unsubscribed (replied STOP)"),
    },
    failure_by_status={"canceled": DeliveryFailure.CANCELED},
    description_by_status={"canceled": "Canceled before sending"},
    fallback_description="Twilio status {status}",
    # The send answer's ``code`` (the table in the module docstring).
    send_failures={
        "21211": NotSentReason.INVALID_RECIPIENT,
        "21214": NotSentReason.INVALID_RECIPIENT,
        "21612": NotSentReason.INVALID_RECIPIENT,
        "21614": NotSentReason.INVALID_RECIPIENT,
        "21610": NotSentReason.RECIPIENT_OPTED_OUT,
        "21212": NotSentReason.INVALID_SENDER,
        "21606": NotSentReason.INVALID_SENDER,
        "21602": NotSentReason.EMPTY_MESSAGE,
        "21617": NotSentReason.TOO_MANY_SEGMENTS,
    },
)

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


class TwilioSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TWILIO_", extra="ignore", env_ignore_empty=True)

    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    auth_token: SecretStr | None = None
    api_key_sid: str | None = Field(default=None, pattern=r"^SK[0-9a-fA-F]{32}$")
    api_key_secret: SecretStr | None = None
    #: Send through a Messaging Service (its sender pool) instead of the payload's From.
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-fA-F]{32}$")
    api_base_url: HttpUrl = HttpUrl("https://api.twilio.com")
    #: The secret of a Webhooks SharedKey, for webhooks Twilio signs with HMAC-SHA256
    #: (X-Twilio-Webhooks-Signature-Settings); without that header the Auth Token signs.
    webhook_shared_key: SecretStr | None = None

    @model_validator(mode="after")
    def _one_credential(self) -> TwilioSettings:
        if self.api_key_sid or self.api_key_secret:
            if not (self.api_key_sid and self.api_key_secret):
                raise ValueError("TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET go together")
        elif self.auth_token is None:
            raise ValueError("set TWILIO_AUTH_TOKEN, or TWILIO_API_KEY_SID with TWILIO_API_KEY_SECRET")
        return self

    def basic_auth(self) -> httpx.BasicAuth:
        if self.api_key_sid and self.api_key_secret:
            return httpx.BasicAuth(self.api_key_sid, self.api_key_secret.get_secret_value())
        assert self.auth_token is not None
        return httpx.BasicAuth(self.account_sid, self.auth_token.get_secret_value())


class TwilioAdapter:
    name: ClassVar[str] = "twilio"
    idempotent_resend_window: ClassVar[timedelta | None] = None
    tables: ClassVar[ProviderTables] = TABLES
    max_webhook_bytes: ClassVar[int | None] = None  # MAX_BODY_BYTES

    def __init__(
        self,
        settings: TwilioSettings,
        *,
        status_callback_url: str | None = None,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.status_callback_url = status_callback_url
        self._http = provider_client(
            str(settings.api_base_url).rstrip("/") + "/2010-04-01",
            timeout=timeout,
            auth=settings.basic_auth(),
            transport=transport,
        )

    @classmethod
    def from_settings(cls, app: AppSettings, account: str | None = None) -> TwilioAdapter:
        return cls(
            load(TwilioSettings, account=account),
            status_callback_url=app.callback_url(webhook_path(cls.name, "delivery-reports")),
            timeout=app.provider_timeout_seconds,
        )

    async def send(self, request: SendRequest) -> SendReceipt:
        form = {"To": request.recipient, "Body": request.text}
        if self.settings.messaging_service_sid:
            form["MessagingServiceSid"] = self.settings.messaging_service_sid
        else:
            form["From"] = request.sender
        if self.status_callback_url:
            # the reference comes back with the callback, even if our send answer was lost
            reference = urlencode({"ref": request.reference})
            form["StatusCallback"] = f"{self.status_callback_url}?{reference}"
        try:
            response = await self._http.post(
                f"/Accounts/{self.settings.account_sid}/Messages.json", data=form
            )
        except httpx.HTTPError as exc:
            raise translate_http_error(self.name, exc) from exc
        if response.status_code in (200, 201):
            body = _json(response)
            sid = body.get("sid")
            if not isinstance(sid, str) or not sid:
                raise AmbiguousSendError("twilio: accepted answer without a message sid")
            return SendReceipt(
                message_id=sid,
                provider_status=body.get("status"),
                reports_carry_reference=bool(self.status_callback_url),
            )
        raise _failure(response)

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- webhooks ----------------------------------------------------------------------------

    def verify_webhook(self, request: WebhookRequest) -> None:
        signature = request.header("X-Twilio-Signature")
        if not signature:
            raise WebhookRejected(401, "no X-Twilio-Signature")
        algorithm, secret = self._signing(request.header("X-Twilio-Webhooks-Signature-Settings"))
        params: list[tuple[str, str]] = []
        body_hash = request.query.get("bodySHA256")
        if body_hash is not None:  # a JSON body: the URL is signed and the body's hash is in it
            if not same(hashlib.sha256(request.body).hexdigest(), body_hash):
                raise WebhookRejected(403, "bodySHA256 does not match the body")
        else:
            params = request.form()
        if not any(
            same(twilio_signature(secret, url, params, algorithm), signature)
            for url in url_port_variants(request.public_url)
        ):
            raise WebhookRejected(403, "X-Twilio-Signature does not match")

    def _signing(self, settings_header: str | None) -> tuple[str, str]:
        """The algorithm and key named by X-Twilio-Webhooks-Signature-Settings (none: the Auth Token)."""
        algorithm = "HMAC_SHA1"
        for part in (settings_header or "").split(","):
            name, sep, value = part.partition("=")
            if sep and name.strip() == "algorithm" and value.strip():
                algorithm = value.strip().upper()
        if algorithm == "HMAC_SHA1":
            if self.settings.auth_token is None:
                raise ConfigurationError.single("TWILIO_AUTH_TOKEN", "required to verify Twilio's signatures")
            return algorithm, self.settings.auth_token.get_secret_value()
        if algorithm not in TWILIO_ALGORITHMS:
            raise WebhookRejected(403, f"unsupported signature algorithm {algorithm[:20]}")
        if self.settings.webhook_shared_key is None:
            raise ConfigurationError.single(
                "TWILIO_WEBHOOK_SHARED_KEY", "required for SharedKey-signed webhooks"
            )
        return algorithm, self.settings.webhook_shared_key.get_secret_value()

    def parse_delivery_reports(self, request: WebhookRequest) -> ParsedWebhook:
        form = request.form_dict()
        message_id = form.get("MessageSid") or form.get("SmsSid")
        status = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
        if not message_id or not status:
            raise InvalidWebhook("MessageSid and MessageStatus are required")
        error_code = form.get("ErrorCode") or None
        verdict = classify_delivery(TABLES, status, error_code)
        if not verdict.known:
            log_unknown_status(self.name, status, message_id)
        event = DeliveryEvent(
            provider=self.name,
            message_id=message_id,
            outcome=verdict.outcome,
            provider_status=status,
            error_code=error_code,
            reason=verdict.reason,
            description=verdict.description,
            sender=form.get("From"),
            correlation=request.query.get("ref"),
        )
        return ParsedWebhook(delivery_events=[event])

    def parse_inbound(self, request: WebhookRequest) -> ParsedWebhook:
        form = request.form_dict()
        missing = [name for name in ("MessageSid", "From", "To") if not form.get(name)]
        if missing:
            raise InvalidWebhook(f"missing {', '.join(missing)}")
        message = InboundSms(
            provider=self.name,
            message_id=form["MessageSid"],
            sender=form["From"],
            recipient=form["To"],
            text=form.get("Body", ""),
        )
        return ParsedWebhook(inbound=[message])

    def acknowledge(self, kind: WebhookKind) -> WebhookAck:
        if kind == "inbound":  # Twilio expects TwiML; an empty Response sends no reply
            return WebhookAck(EMPTY_TWIML, mimetype="text/xml")
        return WebhookAck()


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _failure(response: httpx.Response) -> Exception:
    status = response.status_code
    body = _json(response)
    code = body.get("code")
    code_text = str(code) if code is not None else None
    common = common_http_failure(
        "twilio", response, provider_code=code_text, credentials="TWILIO_ACCOUNT_SID and its secret"
    )
    if common is not None:
        return common
    # Twilio's codes are JSON numbers: a code in any other form is not one of its table's
    reason = send_failure_reason(TABLES, code if isinstance(code, int) else None)
    # Twilio's message text can quote the phone number: keep only the code.
    return PermanentSendError(
        reason, f"twilio: refused with error {code_text or status}", provider_code=code_text
    )
