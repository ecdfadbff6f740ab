"""Infobip SMS (``/sms/2/text/advanced``): send with ``Authorization: App <key>``; webhooks
authenticated by the HTTP Basic credentials set in the Infobip subscription's security settings
(Infobip offers Basic, HMAC or OAuth there; Basic is the one documented end to end).

Delivery reports and inbound messages arrive in batches (``results[]``). Status groups:

| status.groupName        | outcome                                          |
|-------------------------|--------------------------------------------------|
| PENDING (1)             | intermediate                                     |
| DELIVERED (3)           | Delivered                                        |
| UNDELIVERABLE (2)       | NotDelivered, Unreachable                        |
| EXPIRED (4)             | NotDelivered, Expired                            |
| REJECTED (5)            | NotDelivered, Blocked                            |

A long text is one message with ``smsCount`` parts and one report. Send: ``messages[0].status``
PENDING -> Sent; REJECTED -> NotSent (``REJECTED_DESTINATION`` / ``REJECTED_INVALID_DESTINATION``
InvalidRecipient, ``REJECTED_SOURCE`` InvalidSender, ``REJECTED_NOT_ENOUGH_CREDITS`` transient until
topped up, others ProviderRejected); HTTP 401/403 and 429/503 transient; 500/502/504 ambiguous.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any, ClassVar

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
from channels.signatures import same
from channels.tables import ProviderTables, classify_delivery, log_unknown_status, send_failure_reason
from core.settings import AppSettings, ConfigurationError, load

TABLES = ProviderTables(
    # status.groupName, upper-cased
    final_statuses={
        "DELIVERED": DeliveryOutcome.DELIVERED,
        "UNDELIVERABLE": DeliveryOutcome.NOT_DELIVERED,
        "EXPIRED": DeliveryOutcome.NOT_DELIVERED,
        "REJECTED": DeliveryOutcome.NOT_DELIVERED,
    },
    intermediate_statuses=frozenset({"PENDING"}),
    delivery_failures={},  # the report's error gives the description; the group gives the reason
    failure_by_status={
        "UNDELIVERABLE": DeliveryFailure.UNREACHABLE,
        "EXPIRED": DeliveryFailure.EXPIRED,
        "REJECTED": DeliveryFailure.BLOCKED,
    },
    fallback_description=None,  # without the report's own description, the relay writes one
    # messages[0].status.name of a REJECTED send
    send_failures={
        "REJECTED_DESTINATION": NotSentReason.INVALID_RECIPIENT,
        "REJECTED_INVALID_DESTINATION": NotSentReason.INVALID_RECIPIENT,
        "REJECTED_SOURCE": NotSentReason.INVALID_SENDER,
    },
)
#: messages[0].status.name values that refuse a send only for now.
TRANSIENT_SEND_FAILURES = frozenset({"REJECTED_NOT_ENOUGH_CREDITS"})


class InfobipSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INFOBIP_", extra="ignore", env_ignore_empty=True)

    api_key: SecretStr
    #: The account's own API base URL, e.g. https://xxxxx.api.infobip.com
    base_url: HttpUrl
    #: Basic credentials Infobip sends with webhooks (subscription security settings, type BASIC).
    webhook_username: str | None = None
    webhook_password: SecretStr | None = None


class InfobipAdapter:
    name: ClassVar[str] = "infobip"
    idempotent_resend_window: ClassVar[timedelta | None] = None
    tables: ClassVar[ProviderTables] = TABLES
    max_webhook_bytes: ClassVar[int | None] = None  # MAX_BODY_BYTES

    def __init__(
        self, settings: InfobipSettings, *, delivery_report_url: str | None = None, timeout: float = 5.0
    ) -> None:
        self.settings = settings
        self.delivery_report_url = delivery_report_url
        self._http = provider_client(
            str(settings.base_url),
            timeout=timeout,
            headers={"Authorization": f"App {settings.api_key.get_secret_value()}"},
        )

    @classmethod
    def from_settings(cls, app: AppSettings, account: str | None = None) -> InfobipAdapter:
        return cls(
            load(InfobipSettings, account=account),
            delivery_report_url=app.callback_url(webhook_path(cls.name, "delivery-reports")),
            timeout=app.provider_timeout_seconds,
        )

    async def send(self, request: SendRequest) -> SendReceipt:
        message: dict[str, Any] = {
            "from": request.sender.lstrip("+"),
            "destinations": [{"to": request.recipient.lstrip("+")}],
            "text": request.text,
            # echoed in the delivery report, so it can be matched even if our send answer was lost
            "callbackData": request.reference,
        }
        if self.delivery_report_url:
            message.update(notifyUrl=self.delivery_report_url, notifyContentType="application/json")
        try:
            response = await self._http.post("/sms/2/text/advanced", json={"messages": [message]})
        except httpx.HTTPError as exc:
            raise translate_http_error(self.name, exc) from exc
        if not response.is_success:
            common = common_http_failure(
                self.name, response, provider_code=None, credentials="INFOBIP_API_KEY"
            )
            raise common or PermanentSendError(
                NotSentReason.PROVIDER_REJECTED, f"infobip: refused (HTTP {response.status_code})"
            )
        try:
            result: dict[str, Any] = response.json()["messages"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            raise AmbiguousSendError("infobip: accepted answer without a message result") from None
        status = result.get("status") or {}
        group, name = str(status.get("groupName", "")), str(status.get("name", ""))
        if group != "REJECTED":
            if not result.get("messageId"):  # accepted, but we cannot tell which message it is
                raise AmbiguousSendError(f"infobip: {name or group or 'accepted'} without a messageId")
            return SendReceipt(message_id=str(result["messageId"]), provider_status=name or group)
        if name in TRANSIENT_SEND_FAILURES:
            raise TransientSendError(f"infobip: {name}", provider_code=name)
        raise PermanentSendError(
            send_failure_reason(TABLES, name),
            f"infobip: refused ({name or group or 'no status'})",
            provider_code=name,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- webhooks ----------------------------------------------------------------------------

    def verify_webhook(self, request: WebhookRequest) -> None:
        authorization = request.header("Authorization")
        if not authorization or not authorization.startswith("Basic "):
            raise WebhookRejected(401, "no Basic credentials")
        username, password = self.settings.webhook_username, self.settings.webhook_password
        if not username or password is None:
            raise ConfigurationError.single(
                "INFOBIP_WEBHOOK_PASSWORD", "INFOBIP_WEBHOOK_USERNAME and _PASSWORD verify webhooks"
            )
        expected = "Basic " + base64.b64encode(f"{username}:{password.get_secret_value()}".encode()).decode()
        if not same(expected, authorization):
            raise WebhookRejected(403, "Basic credentials do not match")

    def parse_delivery_reports(self, request: WebhookRequest) -> ParsedWebhook:
        events = []
        for result in _results(request):
            message_id = result.get("messageId")
            status = result.get("status") or {}
            if not message_id or not isinstance(status, dict):
                raise InvalidWebhook("report without messageId or status")
            group = str(status.get("groupName", "")).upper()
            raw_error = result.get("error")
            error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
            error_code = str(error["id"]) if error.get("id") else None
            detail = error.get("description") or status.get("description")
            verdict = classify_delivery(TABLES, group, error_code, detail=str(detail) if detail else None)
            if not verdict.known:
                log_unknown_status(self.name, group, str(message_id))
            events.append(
                DeliveryEvent(
                    provider=self.name,
                    message_id=str(message_id),
                    outcome=verdict.outcome,
                    provider_status=str(status.get("name") or group),
                    error_code=error_code,
                    reason=verdict.reason,
                    description=verdict.description,
                    sender=str(result["from"]) if result.get("from") else None,
                    correlation=str(result["callbackData"]) if result.get("callbackData") else None,
                )
            )
        return ParsedWebhook(delivery_events=events)

    def parse_inbound(self, request: WebhookRequest) -> ParsedWebhook:
        messages = []
        for result in _results(request):
            if not result.get("messageId") or not result.get("from") or not result.get("to"):
                raise InvalidWebhook("inbound message without messageId, from or to")
            messages.append(
                InboundSms(
                    provider=self.name,
                    message_id=str(result["messageId"]),
                    sender=str(result["from"]),
                    recipient=str(result["to"]),
                    text=str(result.get("text") or ""),
                )
            )
        return ParsedWebhook(inbound=messages)

    def acknowledge(self, kind: WebhookKind) -> WebhookAck:
        return WebhookAck()


def _results(request: WebhookRequest) -> list[dict[str, Any]]:
    document = request.json()
    results = document.get("results") if isinstance(document, dict) else None
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise InvalidWebhook("expected {results: [...]}")
    return results
