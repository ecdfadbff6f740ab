"""Vonage SMS API (``/sms/json``): form post with API key and secret; webhooks signed with ``sig``.

A text longer than one SMS is sent as parts, each with its own message id and its own delivery
receipt: the send answers the first part's id and records every part's, and the relay reports the
message once (Delivered when all parts are, NotDelivered as soon as one fails). Inbound messages
can arrive as parts too (``concat-ref``) and are reassembled before they are relayed.

Send: ``messages[].status`` "0" is accepted; otherwise by status code:

| status | meaning                      | outcome                         |
|--------|------------------------------|---------------------------------|
| 1      | throttled                    | transient                       |
| 4, 8, 9| credentials / account / quota| transient (503) until fixed     |
| 5      | internal error               | ambiguous                       |
| 7, 33  | number barred / deactivated  | NotSent InvalidRecipient        |
| 15     | invalid sender address       | NotSent InvalidSender           |
| 12     | message too long             | NotSent TooManySegments         |
| other  |                              | NotSent ProviderRejected        |

Delivery receipts (``status``, reason from ``err-code``):

| status                       | outcome                                   |
|------------------------------|-------------------------------------------|
| delivered                    | Delivered                                 |
| expired, failed, rejected    | NotDelivered                              |
| accepted, buffered, unknown  | intermediate (unknown: no useful answer from the carrier; Sent stands) |

Signatures (``VONAGE_SIGNATURE_METHOD``): ``md5hash`` = MD5 of the ``&k=v`` string followed by the
secret (the dashboard's default); ``md5``, ``sha1``, ``sha256``, ``sha512`` = HMAC with the secret.
Values have ``&`` and ``=`` replaced by ``_``; a ``timestamp`` more than 300 seconds off is refused.
Configure the webhooks as POST (JSON or form).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta
from typing import Any, ClassVar, Literal

import httpx
from pydantic import HttpUrl, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from channels.base import (
    SendReceipt,
    SendRequest,
    common_http_failure,
    provider_client,
    translate_http_error,
)
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
from channels.signatures import same, unix_time, within_tolerance
from channels.tables import ProviderTables, classify_delivery, log_unknown_status, send_failure_reason
from core.segments import SmsEncoding, count_segments
from core.settings import AppSettings, ConfigurationError, load

TABLES = ProviderTables(
    # the receipt's status
    final_statuses={
        "delivered": DeliveryOutcome.DELIVERED,
        "expired": DeliveryOutcome.NOT_DELIVERED,
        "failed": DeliveryOutcome.NOT_DELIVERED,
        "rejected": DeliveryOutcome.NOT_DELIVERED,
    },
    # unknown: no useful answer from the carrier; Sent stands
    intermediate_statuses=frozenset({"accepted", "buffered", "unknown"}),
    # err-code, from Vonage's delivery-receipt guide
    delivery_failures={
        "1": (DeliveryFailure.UNKNOWN, "Unknown"),
        "2": (DeliveryFailure.UNREACHABLE, "Absent subscriber (temporary)"),
        "3": (DeliveryFailure.UNREACHABLE, "Absent subscriber (permanent)"),
        "4": (DeliveryFailure.BLOCKED, "Call barred by user"),
        "5": (DeliveryFailure.PROVIDER_ERROR, "Portability error"),
        "6": (DeliveryFailure.FILTERED, "Anti-spam rejection"),
        "7": (DeliveryFailure.UNREACHABLE, "Handset busy"),
        "8": (DeliveryFailure.PROVIDER_ERROR, "Network error"),
        "9": (DeliveryFailure.UNKNOWN_NUMBER, "Illegal number"),
        "10": (DeliveryFailure.FILTERED, "Illegal message"),
        "11": (DeliveryFailure.UNREACHABLE, "Unroutable"),
        "12": (DeliveryFailure.UNREACHABLE, "Destination unreachable"),
        "13": (DeliveryFailure.BLOCKED, "Subscriber age restriction"),
        "14": (DeliveryFailure.BLOCKED, "Number blocked by carrier"),
        "15": (DeliveryFailure.PROVIDER_ERROR, "Prepaid insufficient funds"),
        "99": (DeliveryFailure.PROVIDER_ERROR, "General error"),
    },
    failure_by_status={"expired": DeliveryFailure.EXPIRED},
    fallback_description="Vonage status {status}",
    # messages[].status of a refused send (the table in the module docstring)
    send_failures={
        "7": NotSentReason.INVALID_RECIPIENT,
        "33": NotSentReason.INVALID_RECIPIENT,
        "15": NotSentReason.INVALID_SENDER,
        "12": NotSentReason.TOO_MANY_SEGMENTS,
    },
)
#: messages[].status values that refuse a send only for now.
TRANSIENT_SEND_FAILURES = frozenset({"1", "4", "8", "9"})

SignatureMethod = Literal["md5hash", "md5", "sha1", "sha256", "sha512"]


class VonageSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VONAGE_", extra="ignore", env_ignore_empty=True)

    api_key: str
    api_secret: SecretStr
    #: Verifies the ``sig`` of webhooks (enable signed webhooks in the dashboard).
    signature_secret: SecretStr | None = None
    signature_method: SignatureMethod = "md5hash"
    api_base_url: HttpUrl = HttpUrl("https://rest.nexmo.com")


def vonage_signature(params: dict[str, str], secret: str, method: SignatureMethod) -> str:
    material = "".join(
        f"&{key}={str(params[key]).replace('&', '_').replace('=', '_')}" for key in sorted(params)
    )
    # a lone surrogate (JSON can spell one) encodes nowhere: it cannot be part of a genuine
    # signature, so it is carried through to a mismatch instead of raising
    signed = material.encode("utf-8", "surrogatepass")
    if method == "md5hash":
        return hashlib.md5(signed + secret.encode("utf-8")).hexdigest()
    return hmac.new(secret.encode("utf-8"), signed, method).hexdigest()


class VonageAdapter:
    name: ClassVar[str] = "vonage"
    idempotent_resend_window: ClassVar[timedelta | None] = None
    tables: ClassVar[ProviderTables] = TABLES
    max_webhook_bytes: ClassVar[int | None] = None  # MAX_BODY_BYTES

    def __init__(
        self, settings: VonageSettings, *, delivery_report_url: str | None = None, timeout: float = 5.0
    ) -> None:
        self.settings = settings
        self.delivery_report_url = delivery_report_url
        self._http = provider_client(str(settings.api_base_url), timeout=timeout)

    @classmethod
    def from_settings(cls, app: AppSettings, account: str | None = None) -> VonageAdapter:
        return cls(
            load(VonageSettings, account=account),
            delivery_report_url=app.callback_url(webhook_path(cls.name, "delivery-reports")),
            timeout=app.provider_timeout_seconds,
        )

    async def send(self, request: SendRequest) -> SendReceipt:
        form = {
            "api_key": self.settings.api_key,
            "api_secret": self.settings.api_secret.get_secret_value(),
            # Vonage numbers are digits without '+'; alphanumeric senders stay as they are
            "from": request.sender.lstrip("+"),
            "to": request.recipient.lstrip("+"),
            "text": request.text,
            "type": "unicode" if count_segments(request.text).encoding is SmsEncoding.UCS2 else "text",
            "status-report-req": "1",
        }
        if self.delivery_report_url:
            form["callback"] = self.delivery_report_url
        try:
            response = await self._http.post("/sms/json", data=form)
        except httpx.HTTPError as exc:
            raise translate_http_error(self.name, exc) from exc
        if not response.is_success:
            common = common_http_failure(
                self.name, response, provider_code=None, credentials="VONAGE_API_KEY and VONAGE_API_SECRET"
            )
            raise common or PermanentSendError(
                NotSentReason.PROVIDER_REJECTED, f"vonage: refused (HTTP {response.status_code})"
            )
        try:
            parts: list[dict[str, Any]] = response.json()["messages"]
        except (ValueError, KeyError, TypeError):
            raise AmbiguousSendError("vonage: accepted answer without messages") from None
        accepted = [str(p["message-id"]) for p in parts if p.get("status") == "0" and p.get("message-id")]
        if accepted:  # (some of) the text is out: never send again; refused parts make it NotDelivered
            refused = len(parts) - len(accepted)
            return SendReceipt(
                message_id=accepted[0],
                provider_status="accepted",
                part_message_ids=tuple(accepted) if len(parts) > 1 else (),
                refused_parts=refused,
            )
        raise _refusal(str(parts[0].get("status", "")) if parts else "")

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- webhooks ----------------------------------------------------------------------------

    def verify_webhook(self, request: WebhookRequest) -> None:
        params = _signed_params(request)
        signature = params.pop("sig", None)
        if not signature:
            raise WebhookRejected(401, "no sig parameter")
        if self.settings.signature_secret is None:
            raise ConfigurationError.single("VONAGE_SIGNATURE_SECRET", "required to verify webhooks")
        when = unix_time(params.get("timestamp", ""))
        if when is None:
            raise WebhookRejected(403, "no usable timestamp")
        if not within_tolerance(when):
            raise WebhookRejected(403, "stale signature")
        expected = vonage_signature(
            params, self.settings.signature_secret.get_secret_value(), self.settings.signature_method
        )
        if not same(expected, signature.lower()):
            raise WebhookRejected(403, "sig does not match")

    def parse_delivery_reports(self, request: WebhookRequest) -> ParsedWebhook:
        params = _params(request)
        message_id, status = params.get("messageId"), params.get("status", "").lower()
        if not message_id or not status:
            raise InvalidWebhook("messageId and status are required")
        error_code = params.get("err-code") or None
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
                    sender=params.get("to"),
                )
            ]
        )

    def parse_inbound(self, request: WebhookRequest) -> ParsedWebhook:
        params = _params(request)
        missing = [name for name in ("messageId", "msisdn", "to") if not params.get(name)]
        if missing:
            raise InvalidWebhook(f"missing {', '.join(missing)}")
        concat = params.get("concat", "").lower() == "true"
        try:
            total = int(params["concat-total"]) if concat else None
            part = int(params["concat-part"]) if concat else None
        except (KeyError, ValueError):
            raise InvalidWebhook("concat without concat-total / concat-part") from None
        return ParsedWebhook(
            inbound=[
                InboundSms(
                    provider=self.name,
                    message_id=params["messageId"],
                    sender=params["msisdn"],
                    recipient=params["to"],
                    text=params.get("text", ""),
                    concat_ref=params.get("concat-ref") if concat else None,
                    concat_total=total,
                    concat_part=part,
                )
            ]
        )

    def acknowledge(self, kind: WebhookKind) -> WebhookAck:
        return WebhookAck()


def _signed_params(request: WebhookRequest) -> dict[str, str]:
    """What Vonage signs: every parameter as text. Vonage posts JSON or a form (nothing we need in
    the query) with text values; other JSON scalars are read as Vonage's own SDK signs them
    (``f"{value}"``: None → "None"), and nested values, which no signer defines, are refused."""
    content_type = request.header("Content-Type") or ""
    if "json" in content_type or request.body.lstrip().startswith(b"{"):
        document = request.json()
        if not isinstance(document, dict):
            raise InvalidWebhook("expected a JSON object")
        if any(isinstance(value, (dict, list)) for value in document.values()):
            raise InvalidWebhook("nested values in a Vonage webhook")
        return {str(k): f"{v}" for k, v in document.items()}
    return {**request.query, **request.form_dict()}


def _params(request: WebhookRequest) -> dict[str, str]:
    """The parameters' values; a JSON null is an absent parameter."""
    params = _signed_params(request)
    if "json" in (request.header("Content-Type") or "") or request.body.lstrip().startswith(b"{"):
        document = request.json()
        return {k: v for k, v in params.items() if document.get(k) is not None}
    return params


def _refusal(status: str) -> Exception:
    if status in TRANSIENT_SEND_FAILURES:
        return TransientSendError(f"vonage: refused for now (status {status})", provider_code=status)
    if status == "5":
        return AmbiguousSendError("vonage: internal error (status 5)", provider_code=status)
    return PermanentSendError(
        send_failure_reason(TABLES, status), f"vonage: refused (status {status})", provider_code=status
    )
