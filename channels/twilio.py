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

from datetime import timedelta
from typing import Any, ClassVar

import httpx
from pydantic import Field, HttpUrl, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from channels.base import SendReceipt, SendRequest, common_http_failure, translate_http_error
from channels.errors import AmbiguousSendError, NotSentReason, PermanentSendError
from core.settings import AppSettings, load

NOT_SENT_BY_ERROR_CODE: dict[int, NotSentReason] = {
    21211: NotSentReason.INVALID_RECIPIENT,
    21214: NotSentReason.INVALID_RECIPIENT,
    21612: NotSentReason.INVALID_RECIPIENT,
    21614: NotSentReason.INVALID_RECIPIENT,
    21610: NotSentReason.RECIPIENT_OPTED_OUT,
    21212: NotSentReason.INVALID_SENDER,
    21606: NotSentReason.INVALID_SENDER,
    21602: NotSentReason.EMPTY_MESSAGE,
    21617: NotSentReason.TOO_MANY_SEGMENTS,
}

DELIVERY_REPORT_PATH = "/api/providers/twilio/delivery-reports"


class TwilioSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TWILIO_", extra="ignore", env_ignore_empty=True)

    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    auth_token: SecretStr | None = None
    api_key_sid: str | None = Field(default=None, pattern=r"^SK[0-9a-fA-F]{32}$")
    api_key_secret: SecretStr | None = None
    #: Send through a Messaging Service (its sender pool) instead of the payload's From.
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-fA-F]{32}$")
    api_base_url: HttpUrl = HttpUrl("https://api.twilio.com")

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


class TwilioChannel:
    name: ClassVar[str] = "twilio"
    idempotent_resend_window: ClassVar[timedelta | None] = None

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
        self._http = httpx.AsyncClient(
            base_url=str(settings.api_base_url).rstrip("/") + "/2010-04-01",
            auth=settings.basic_auth(),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)),
            transport=transport,
            headers={"Accept": "application/json"},
        )

    @classmethod
    def from_settings(cls, app: AppSettings) -> TwilioChannel:
        return cls(
            load(TwilioSettings),
            status_callback_url=app.callback_url(DELIVERY_REPORT_PATH),
            timeout=app.provider_timeout_seconds,
        )

    async def send(self, request: SendRequest) -> SendReceipt:
        form = {"To": request.recipient, "Body": request.text}
        if self.settings.messaging_service_sid:
            form["MessagingServiceSid"] = self.settings.messaging_service_sid
        else:
            form["From"] = request.sender
        if self.status_callback_url:
            form["StatusCallback"] = self.status_callback_url
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
            return SendReceipt(message_id=sid, provider_status=body.get("status"))
        raise _failure(response)

    async def aclose(self) -> None:
        await self._http.aclose()


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
    reason = (
        NOT_SENT_BY_ERROR_CODE.get(code, NotSentReason.PROVIDER_REJECTED)
        if isinstance(code, int)
        else NotSentReason.PROVIDER_REJECTED
    )
    # Twilio's message text can quote the phone number: keep only the code.
    return PermanentSendError(
        reason, f"twilio: refused with error {code_text or status}", provider_code=code_text
    )
