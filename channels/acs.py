"""Azure Communication Services SMS (REST API 2021-03-07), HMAC-signed or with a managed identity.

Every send carries repeatability headers derived from the request, so a re-send of the same request
within ACS's tracking window (5 minutes) is answered from ACS's record instead of sending again.

Per-recipient results (``value[0]``) and top-level answers:

| answer                                   | outcome                                  |
|------------------------------------------|------------------------------------------|
| 202, successful=true                     | Sent, MessageId = messageId              |
| 202, successful=false, httpStatusCode 400| NotSent InvalidRecipient                 |
| 202, successful=false, 429 / 5xx         | transient                                |
| 202, successful=false, other             | NotSent ProviderRejected                 |
| HTTP 400 / 404 / 422                     | NotSent ProviderRejected (e.g. a foreign From) |
| HTTP 401 / 403                           | transient (503): fix credentials or role |
| HTTP 412 (repeatability window passed)   | ambiguous: the first attempt may have sent |
| HTTP 429 / 503                           | transient, Retry-After honoured          |
| HTTP 500 / 502 / 504                     | ambiguous: re-sent with the same repeatability id |

Delivery reports arrive through an Event Grid subscription (``SMSDeliveryReportReceived``), whose
endpoint URL the operator sets (with ``?secret=``); ACS is not told a callback URL per message.
``deliveryStatus`` is ``Delivered`` (-> Delivered) or ``Failed`` (-> NotDelivered): "Possible values
for DeliveryStatus are Delivered and Failed" (Microsoft Learn, event-grid/
communication-services-telephony-sms-events; the SDKs' enum has these two). ACS publishes final
reports only, so no status is intermediate; any other value is logged and taken as intermediate.
Unverified: ``deliveryStatusDetails`` is free text with no documented list of values (the samples
show "No error."); it becomes Details.Message as sent, and a text containing "expir" is read as
reason Expired (every other failure is Unknown).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
from collections import Counter
from collections.abc import AsyncGenerator, Generator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any, ClassVar

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
from channels.errors import AmbiguousSendError, NotSentReason, PermanentSendError, TransientSendError
from channels.events import (
    DeliveryEvent,
    DeliveryFailure,
    DeliveryOutcome,
    InboundSms,
    InvalidWebhook,
    ParsedWebhook,
    PayloadTooLarge,
    WebhookAck,
    WebhookKind,
    WebhookRejected,
    WebhookRequest,
)
from channels.signatures import same
from channels.tables import ProviderTables, classify_delivery, log_unknown_status, send_failure_reason
from core.settings import AppSettings, ConfigurationError, load

log = logging.getLogger("sms.providers")

TABLES = ProviderTables(
    # deliveryStatus, lower-cased
    final_statuses={"delivered": DeliveryOutcome.DELIVERED, "failed": DeliveryOutcome.NOT_DELIVERED},
    intermediate_statuses=frozenset(),
    # no error code is reported: keyed by what deliveryStatusDetails says (see _details_key)
    delivery_failures={"expired": (DeliveryFailure.EXPIRED, "Expired")},
    fallback_description=None,  # deliveryStatusDetails is the description
    # the per-recipient result's httpStatusCode (429 and 5xx are transient)
    send_failures={"400": NotSentReason.INVALID_RECIPIENT},
)

API_VERSION = "2021-03-07"
VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"
DELIVERY_REPORT_EVENT = "Microsoft.Communication.SMSDeliveryReportReceived"
SMS_RECEIVED_EVENT = "Microsoft.Communication.SMSReceived"
ACS_RESOURCE = "https://communication.azure.com"
#: Event Grid's output batching delivers up to 1 MB per request (the preferred batch size in KB is
#: at most 1024); the margin covers headers counted differently.
MAX_WEBHOOK_BYTES = 1024 * 1024 + 64 * 1024
#: Event Grid's output batching delivers at most 5,000 events per request ("Max events per batch
#: ... Must be between 1 and 5,000", Microsoft Learn, event-grid/delivery-and-retry). A body with
#: more is answered 413, which Event Grid does not retry: the same body would only come again.
MAX_EVENTS_PER_DELIVERY = 5000


class AcsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ACS_", extra="ignore", env_ignore_empty=True)

    #: ``endpoint=https://<resource>.communication.azure.com/;accesskey=<key>``
    connection_string: SecretStr | None = None
    #: With no connection string: the endpoint, reached with the Function App's managed identity.
    endpoint: HttpUrl | None = None
    #: Client id of a user-assigned managed identity (unset: the system-assigned one).
    managed_identity_client_id: str | None = None
    api_version: str = Field(default=API_VERSION)
    #: Shared secret Event Grid sends with each delivery (as ``?secret=`` in the subscription's
    #: endpoint URL, or an ``X-Webhook-Secret`` delivery header): Event Grid does not sign events.
    webhook_secret: SecretStr | None = None
    #: The secret being rotated out: accepted too until every subscription uses the new one.
    webhook_secret_previous: SecretStr | None = None

    @model_validator(mode="after")
    def _endpoint_known(self) -> AcsSettings:
        if self.connection_string is None and self.endpoint is None:
            raise ValueError("set ACS_CONNECTION_STRING, or ACS_ENDPOINT to use the managed identity")
        if self.connection_string is not None:
            parse_connection_string(self.connection_string.get_secret_value())
        return self


def parse_connection_string(value: str) -> tuple[str, bytes]:
    """Return (endpoint, access key) from an ACS connection string."""
    parts: dict[str, str] = {}
    for item in value.split(";"):
        name, sep, val = item.partition("=")
        if sep:
            parts[name.strip().lower()] = val.strip()
    endpoint, key = parts.get("endpoint"), parts.get("accesskey")
    if not endpoint or not key:
        raise ValueError("ACS_CONNECTION_STRING must hold endpoint=...;accesskey=...")
    try:
        return endpoint.rstrip("/"), base64.b64decode(key, validate=True)
    except ValueError:
        raise ValueError("ACS_CONNECTION_STRING accesskey is not base64") from None


class AcsHmacAuth(httpx.Auth):
    """ACS's HMAC-SHA256 request signature over method, path, date, host and body hash."""

    requires_request_body = True

    def __init__(self, access_key: bytes) -> None:
        self._key = access_key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        content_hash = base64.b64encode(hashlib.sha256(request.content).digest()).decode()
        date = format_datetime(datetime.now(timezone.utc), usegmt=True)
        host = request.url.netloc.decode("ascii")
        path_and_query = request.url.raw_path.decode("ascii")
        to_sign = f"{request.method}\n{path_and_query}\n{date};{host};{content_hash}"
        signature = base64.b64encode(
            hmac.new(self._key, to_sign.encode("utf-8"), hashlib.sha256).digest()
        ).decode()
        request.headers["x-ms-date"] = date
        request.headers["x-ms-content-sha256"] = content_hash
        request.headers["Authorization"] = (
            f"HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={signature}"
        )
        yield request


class ManagedIdentityAuth(httpx.Auth):
    """Bearer tokens from the Function App's managed identity (MSAL caches them per lifetime)."""

    def __init__(self, client_id: str | None) -> None:
        self._client_id = client_id
        self._client: Any = None

    def _token(self) -> str:
        import msal
        import requests

        if self._client is None:
            identity = (
                msal.UserAssignedManagedIdentity(client_id=self._client_id)
                if self._client_id
                else msal.SystemAssignedManagedIdentity()
            )
            self._client = msal.ManagedIdentityClient(identity, http_client=requests.Session())
        try:
            result = self._client.acquire_token_for_client(resource=ACS_RESOURCE)
        except Exception as exc:  # msal and requests raise many types; no request reached ACS yet
            raise TransientSendError(f"acs: managed identity unreachable ({type(exc).__name__})") from None
        token = result.get("access_token")
        if not token:
            raise TransientSendError(
                f"acs: managed identity token unavailable ({result.get('error', 'no token')})"
            )
        return str(token)

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await asyncio.to_thread(self._token)
        request.headers["Authorization"] = f"Bearer {token}"
        yield request


class AcsAdapter:
    name: ClassVar[str] = "acs"
    #: ACS tracks repeatable requests for 5 minutes; keep a margin for clock skew.
    idempotent_resend_window: ClassVar[timedelta | None] = timedelta(minutes=4)
    tables: ClassVar[ProviderTables] = TABLES
    max_webhook_bytes: ClassVar[int | None] = MAX_WEBHOOK_BYTES

    def __init__(
        self,
        settings: AcsSettings,
        *,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        auth: httpx.Auth
        if settings.connection_string is not None:
            endpoint, key = parse_connection_string(settings.connection_string.get_secret_value())
            auth = AcsHmacAuth(key)
        else:
            assert settings.endpoint is not None
            endpoint = str(settings.endpoint).rstrip("/")
            auth = ManagedIdentityAuth(settings.managed_identity_client_id)
        self.endpoint = endpoint
        self._http = provider_client(endpoint, timeout=timeout, auth=auth, transport=transport)

    @classmethod
    def from_settings(cls, app: AppSettings, account: str | None = None) -> AcsAdapter:
        return cls(load(AcsSettings, account=account), timeout=app.provider_timeout_seconds)

    async def send(self, request: SendRequest) -> SendReceipt:
        body = {
            "from": request.sender,
            "smsRecipients": [
                {
                    "to": request.recipient,
                    "repeatabilityRequestId": str(request.idempotency_key),
                    "repeatabilityFirstSent": format_datetime(request.first_attempt_at, usegmt=True),
                }
            ],
            "message": request.text,
            # echoed in the delivery report, so it can be matched even if our send answer was lost
            "smsSendOptions": {
                "enableDeliveryReport": True,
                "tag": request.reference,
            },
        }
        try:
            response = await self._http.post(
                "/sms", params={"api-version": self.settings.api_version}, json=body
            )
        except httpx.HTTPError as exc:
            raise translate_http_error(self.name, exc) from exc
        if response.status_code in (200, 202):
            return _recipient_result(response)
        raise _failure(response)

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- webhooks (Event Grid, Event Grid schema) ----------------------------------------------

    def verify_webhook(self, request: WebhookRequest) -> None:
        """The shared secret, current or previous, on every request: a subscription's validation
        handshake included, since answering it is what lets a subscription deliver here."""
        if self.settings.webhook_secret is None:
            # Event Grid drops what is answered 401/403: say "later" until the setting is fixed
            raise ConfigurationError.single("ACS_WEBHOOK_SECRET", "required to verify Event Grid deliveries")
        received = request.header("X-Webhook-Secret") or request.query.get("secret")
        if not received:
            raise WebhookRejected(401, "no webhook secret (?secret= or X-Webhook-Secret)")
        secrets = [s for s in (self.settings.webhook_secret, self.settings.webhook_secret_previous) if s]
        if not any(same(secret.get_secret_value(), received) for secret in secrets):
            raise WebhookRejected(403, "webhook secret does not match")

    def parse_delivery_reports(self, request: WebhookRequest) -> ParsedWebhook:
        return self._parse(request, DELIVERY_REPORT_EVENT)

    def parse_inbound(self, request: WebhookRequest) -> ParsedWebhook:
        return self._parse(request, SMS_RECEIVED_EVENT)

    def acknowledge(self, kind: WebhookKind) -> WebhookAck:
        return WebhookAck()

    def _parse(self, request: WebhookRequest, wanted: str) -> ParsedWebhook:
        """Event Grid schema (an array, ``eventType``) or CloudEvents 1.0 (``type``; one event, or a
        batch array). An event that cannot be read is set aside; the others are relayed, since
        Event Grid never re-delivers what was answered 400."""
        if request.method.upper() == "OPTIONS":
            return ParsedWebhook(handshake=_cloudevents_handshake(request))
        document = request.json()
        events = [document] if isinstance(document, dict) else document
        if not isinstance(events, list):
            raise InvalidWebhook("expected an array of Event Grid events or a CloudEvent")
        if len(events) > MAX_EVENTS_PER_DELIVERY:
            raise PayloadTooLarge(
                f"{len(events)} events; Event Grid delivers at most {MAX_EVENTS_PER_DELIVERY:,} at once"
            )
        if isinstance(document, list) and len(events) == 1:
            validation = _validation_answer(events[0])
            if validation is not None:
                return ParsedWebhook(handshake=validation)
        parsed = ParsedWebhook()
        other_types: Counter[str] = Counter()
        for raw in events:
            event = _folded(raw)
            event_type = event.get("eventtype", event.get("type"))
            if not isinstance(raw, dict) or not isinstance(event_type, str):
                parsed.unreadable.append((raw, "not an event: no eventType or type"))
                continue
            if event_type.lower() != wanted.lower():
                other_types[_printable(event_type)] += 1
                continue  # another event type routed here: not ours to relay
            data = _folded(event.get("data"))
            message_id = data.get("messageid")
            if not isinstance(message_id, (str, int)) or not str(message_id).strip():
                parsed.unreadable.append((raw, f"{event_type} without a messageId"))
            elif wanted == DELIVERY_REPORT_EVENT:
                parsed.delivery_events.append(_delivery_event(str(message_id), data))
            else:
                parsed.inbound.append(
                    InboundSms(
                        provider="acs",
                        message_id=str(message_id),
                        sender=str(data.get("from", "")),
                        recipient=str(data.get("to", "")),
                        text=str(data.get("message", "")),
                    )
                )
        if other_types:
            log.info(
                "acs: %d event(s) of other types acknowledged, not relayed: %s",
                other_types.total(),
                ", ".join(f"{name} ({count})" for name, count in other_types.most_common(5)),
            )
        return parsed


def _cloudevents_handshake(request: WebhookRequest) -> WebhookAck:
    """CloudEvents 1.0 validation: an OPTIONS request with ``WebHook-Request-Origin``, answered
    with ``WebHook-Allowed-Origin``."""
    origin = request.header("WebHook-Request-Origin")
    if not origin:
        raise InvalidWebhook("OPTIONS without WebHook-Request-Origin")
    return WebhookAck(headers={"WebHook-Allowed-Origin": origin[:200], "Allow": "POST, OPTIONS"})


def _validation_answer(raw: Any) -> WebhookAck | None:
    """The answer to Event Grid's validation (a SubscriptionValidationEvent alone, its
    ``validationCode`` echoed), if ``raw`` is one."""
    event = _folded(raw)
    if str(event.get("eventtype", "")).lower() != VALIDATION_EVENT.lower():
        return None
    code = _folded(event.get("data")).get("validationcode")
    if not isinstance(code, str) or not code.strip() or len(code) > 200:
        raise InvalidWebhook("validation event without a usable validationCode")
    return WebhookAck(json.dumps({"validationResponse": code}), mimetype="application/json")


def _printable(value: object) -> str:
    return repr(value)[:80]


def _folded(value: Any) -> dict[str, Any]:
    """Event Grid payloads are cased inconsistently across Microsoft's samples: match keys case-blind."""
    return {str(k).lower(): v for k, v in value.items()} if isinstance(value, dict) else {}


def _details_key(details: str | None) -> str | None:
    """The delivery_failures key of a deliveryStatusDetails text (unverified: no documented values)."""
    return "expired" if details and "expir" in details.lower() else None


def _delivery_event(message_id: str, data: dict[str, Any]) -> DeliveryEvent:
    status = str(data.get("deliverystatus", ""))
    details = str(data.get("deliverystatusdetails") or "") or None
    verdict = classify_delivery(TABLES, status.lower(), _details_key(details), detail=details)
    if not verdict.known:
        log_unknown_status(AcsAdapter.name, status, message_id)
    return DeliveryEvent(
        provider="acs",
        message_id=message_id,
        outcome=verdict.outcome,
        provider_status=status,
        reason=verdict.reason,
        description=verdict.description,
        sender=str(data.get("from")) if data.get("from") else None,
        correlation=str(data.get("tag")) if data.get("tag") else None,
    )


def _recipient_result(response: httpx.Response) -> SendReceipt:
    try:
        result: dict[str, Any] = response.json()["value"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        raise AmbiguousSendError("acs: accepted answer without a recipient result") from None
    if result.get("successful") and result.get("messageId"):
        return SendReceipt(message_id=str(result["messageId"]), provider_status="accepted")
    try:
        status = int(result.get("httpStatusCode") or 0)
    except (TypeError, ValueError):
        status = 0
    if status == 429 or status >= 500:
        raise TransientSendError(f"acs: recipient result HTTP {status}", provider_code=str(status))
    raise PermanentSendError(
        send_failure_reason(TABLES, status),
        f"acs: recipient refused (HTTP {status})",
        provider_code=str(status),
    )


def _failure(response: httpx.Response) -> Exception:
    status = response.status_code
    code = _error_code(response)
    common = common_http_failure(
        "acs", response, provider_code=code, credentials="ACS_CONNECTION_STRING or the identity's role"
    )
    if common is not None:
        return common
    if status == 412:
        return AmbiguousSendError("acs: repeatability window passed; the first attempt may have sent")
    return PermanentSendError(
        NotSentReason.PROVIDER_REJECTED,
        f"acs: refused (HTTP {status}, {code or 'no code'})",
        provider_code=code,
    )


def _error_code(response: httpx.Response) -> str | None:
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return str(code) if code else None
