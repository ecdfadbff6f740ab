"""Plivo Messaging API: send with HTTP Basic auth (Auth ID + Auth Token); webhooks signed with
X-Plivo-Signature-V3 (HMAC-SHA256 of URL, sorted parameters and a nonce, keyed by the Auth Token),
or, on messaging callbacks that carry only that, X-Plivo-Signature-V2 (URL and nonce; it does not
cover the body). Subaccount "Ma" signatures (keyed by the main account) are not accepted.

Status callbacks (``Status``; values from Plivo's message-states documentation, unverified against a
live account):

| Status                          | outcome                        |
|---------------------------------|--------------------------------|
| queued, sent                    | intermediate                   |
| delivered                       | Delivered                      |
| undelivered, failed, rejected   | NotDelivered, ErrorCode below  |

``ErrorCode`` -> Details.Reason: 30 spam/filtered, 50 invalid destination, 70 permanently
unavailable, 80 temporarily unavailable, 90 no route, 100 prohibited by carrier, 200 STOP from the
recipient, 420 expired; anything else Unknown. Send errors: 400/404 -> NotSent ProviderRejected
(Plivo's error text can quote the number, so only the status is kept); 401/403 and 429/503
transient; 500/502/504 ambiguous.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

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
from channels.signatures import hmac_sha256_base64, same
from channels.tables import ProviderTables, classify_delivery, log_unknown_status
from core.settings import AppSettings, load

TABLES = ProviderTables(
    # Status, lower-cased
    final_statuses={
        "delivered": DeliveryOutcome.DELIVERED,
        "undelivered": DeliveryOutcome.NOT_DELIVERED,
        "failed": DeliveryOutcome.NOT_DELIVERED,
        "rejected": DeliveryOutcome.NOT_DELIVERED,
    },
    intermediate_statuses=frozenset({"queued", "sent"}),
    # ErrorCode
    delivery_failures={
        "30": (DeliveryFailure.FILTERED, "Spam detected"),
        "50": (DeliveryFailure.UNKNOWN_NUMBER, "Invalid destination number"),
        "70": (DeliveryFailure.UNREACHABLE, "Destination permanently unavailable"),
        "80": (DeliveryFailure.UNREACHABLE, "Destination temporarily unavailable"),
        "90": (DeliveryFailure.UNREACHABLE, "No route available"),
        "100": (DeliveryFailure.BLOCKED, "Prohibited by carrier"),
        "200": (DeliveryFailure.OPTED_OUT, "Recipient sent STOP"),
        "420": (DeliveryFailure.EXPIRED, "Message expired"),
    },
    fallback_description="Plivo status {status}",
    send_failures={},  # a refused send is told apart by HTTP status only: ProviderRejected
)

EMPTY_XML = "<Response></Response>"


class PlivoSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PLIVO_", extra="ignore", env_ignore_empty=True)

    auth_id: str
    auth_token: SecretStr
    api_base_url: HttpUrl = HttpUrl("https://api.plivo.com")


def plivo_signature_v3(auth_token: str, url: str, params: list[tuple[str, str]], nonce: str) -> str:
    """X-Plivo-Signature-V3 of a POST: the base URL (query re-sorted), the parameters sorted by
    name as name+value, ``"." + nonce``; HMAC-SHA256 keyed by the Auth Token, base64."""
    parts = urlsplit(url)
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    query = "&".join(f"{k}={v}" for k, v in sorted(parse_qsl(parts.query, keep_blank_values=True)))
    if params:
        base += f"?{query}" + ("." if query else "")
    elif query:
        base += f"?{query}"
    grouped: dict[str, list[str]] = {}
    for name, value in params:
        grouped.setdefault(name, []).append(value)
    base += "".join(f"{name}{value}" for name in sorted(grouped) for value in sorted(grouped[name]))
    return hmac_sha256_base64(auth_token, f"{base}.{nonce}".encode())


def plivo_signature_v2(auth_token: str, url: str, nonce: str) -> str:
    """X-Plivo-Signature-V2 (messaging callbacks): HMAC-SHA256 of scheme, host and path followed by
    the nonce. It covers neither the query nor the body, so V3 is checked whenever Plivo sends it."""
    parts = urlsplit(url)
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return hmac_sha256_base64(auth_token, f"{base}{nonce}".encode())


class PlivoAdapter:
    name: ClassVar[str] = "plivo"
    idempotent_resend_window: ClassVar[timedelta | None] = None
    tables: ClassVar[ProviderTables] = TABLES
    max_webhook_bytes: ClassVar[int | None] = None  # MAX_BODY_BYTES

    def __init__(
        self, settings: PlivoSettings, *, delivery_report_url: str | None = None, timeout: float = 5.0
    ) -> None:
        self.settings = settings
        self.delivery_report_url = delivery_report_url
        self._http = provider_client(
            str(settings.api_base_url).rstrip("/") + f"/v1/Account/{settings.auth_id}",
            timeout=timeout,
            auth=httpx.BasicAuth(settings.auth_id, settings.auth_token.get_secret_value()),
        )

    @classmethod
    def from_settings(cls, app: AppSettings, account: str | None = None) -> PlivoAdapter:
        return cls(
            load(PlivoSettings, account=account),
            delivery_report_url=app.callback_url(webhook_path(cls.name, "delivery-reports")),
            timeout=app.provider_timeout_seconds,
        )

    async def send(self, request: SendRequest) -> SendReceipt:
        body: dict[str, Any] = {"src": request.sender, "dst": request.recipient, "text": request.text}
        if self.delivery_report_url:
            body.update(url=self.delivery_report_url, method="POST")
        try:
            response = await self._http.post("/Message/", json=body)
        except httpx.HTTPError as exc:
            raise translate_http_error(self.name, exc) from exc
        if response.is_success:
            try:
                uuids = response.json().get("message_uuid") or []
            except (ValueError, AttributeError):
                uuids = []
            if not uuids:
                raise AmbiguousSendError("plivo: accepted answer without a message_uuid")
            return SendReceipt(message_id=str(uuids[0]), provider_status="queued")
        common = common_http_failure(
            self.name, response, provider_code=None, credentials="PLIVO_AUTH_ID and PLIVO_AUTH_TOKEN"
        )
        if common is not None:
            raise common
        raise PermanentSendError(
            NotSentReason.PROVIDER_REJECTED, f"plivo: refused (HTTP {response.status_code})"
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- webhooks ----------------------------------------------------------------------------

    def verify_webhook(self, request: WebhookRequest) -> None:
        token = self.settings.auth_token.get_secret_value()
        v3, v3_nonce = request.header("X-Plivo-Signature-V3"), request.header("X-Plivo-Signature-V3-Nonce")
        if v3 and v3_nonce:  # the stronger scheme, when present, decides: no falling back
            expected = plivo_signature_v3(token, request.public_url, request.form(), v3_nonce)
            if not any(same(expected, candidate.strip()) for candidate in v3.split(",")):
                raise WebhookRejected(403, "X-Plivo-Signature-V3 does not match")
            return
        v2, v2_nonce = request.header("X-Plivo-Signature-V2"), request.header("X-Plivo-Signature-V2-Nonce")
        if v2 and v2_nonce:
            if not same(plivo_signature_v2(token, request.public_url, v2_nonce), v2.strip()):
                raise WebhookRejected(403, "X-Plivo-Signature-V2 does not match")
            return
        raise WebhookRejected(401, "no X-Plivo-Signature-V3 or -V2 with its nonce")

    def parse_delivery_reports(self, request: WebhookRequest) -> ParsedWebhook:
        form = request.form_dict()
        message_id, status = form.get("MessageUUID"), (form.get("Status") or "").lower()
        if not message_id or not status:
            raise InvalidWebhook("MessageUUID and Status are required")
        error_code = form.get("ErrorCode") or None
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
                    sender=form.get("From"),
                )
            ]
        )

    def parse_inbound(self, request: WebhookRequest) -> ParsedWebhook:
        form = request.form_dict()
        missing = [name for name in ("MessageUUID", "From", "To") if not form.get(name)]
        if missing:
            raise InvalidWebhook(f"missing {', '.join(missing)}")
        return ParsedWebhook(
            inbound=[
                InboundSms(
                    provider=self.name,
                    message_id=form["MessageUUID"],
                    sender=form["From"],
                    recipient=form["To"],
                    text=form.get("Text", ""),
                )
            ]
        )

    def acknowledge(self, kind: WebhookKind) -> WebhookAck:
        if kind == "inbound":  # an empty Response: no automatic reply
            return WebhookAck(EMPTY_XML, mimetype="text/xml")
        return WebhookAck()
