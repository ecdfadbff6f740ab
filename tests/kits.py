"""One kit per provider: how to stand up its fake API, build its adapter, and make the webhooks it
would send, signed the way the provider signs (with the provider's own SDK where one exists).

Adding a provider = one adapter module, one registry line, and one kit here: the conformance suite
(tests/test_conformance.py) then runs every check against it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, ClassVar
from urllib.parse import urlencode

import plivo.utils as plivo_utils
import plivo.utils.signature_v3 as plivo_v3
from nacl.signing import SigningKey
from pydantic import SecretStr
from telnyx.lib.webhook_verification import verify_webhook_signature
from twilio.request_validator import RequestValidator
from vonage_http_client import Auth as VonageAuth

from channels.acs import AcsAdapter, AcsSettings
from channels.base import ProviderAdapter, SendRequest
from channels.events import WebhookRequest
from channels.infobip import InfobipAdapter, InfobipSettings
from channels.plivo import PlivoAdapter, PlivoSettings
from channels.simulator import SimulatorAdapter, SimulatorSettings, sign_webhook
from channels.telnyx import TelnyxAdapter, TelnyxSettings
from channels.twilio import TwilioAdapter, TwilioSettings
from channels.vonage import VonageAdapter, VonageSettings
from tests.fakes.http import FakeHttpServer
from tests.fakes.providers import FakeAcs, FakeInfobip, FakePlivo, FakeTelnyx, FakeTwilio, FakeVonage
from tests.fakes.tls import LocalCA

PUBLIC = "https://sms.example.org"
OUR_NUMBER = "+14155550100"
CUSTOMER = "+14155550123"
#: Recipient suffixes the fake APIs (and the simulator's settings below) answer with a failure.
REJECTED, THROTTLED = "+14155550211", "+14155550429"


def send_request(recipient: str = CUSTOMER) -> SendRequest:
    request_id, definition = f"req-{uuid.uuid4().hex[:8]}", uuid.uuid4()
    return SendRequest(
        request_id=request_id,
        channel_definition_id=definition,
        reference=f"{definition}/{request_id}",
        sender=OUR_NUMBER,
        recipient=recipient,
        text="Conformance check",
        idempotency_key=uuid.uuid4(),
        first_attempt_at=datetime.now(timezone.utc),
    )


class ProviderKit:
    name: ClassVar[str]
    #: Whether the provider's signature carries a timestamp (so stale webhooks can be refused).
    timestamped: ClassVar[bool] = False

    def __init__(self, ca: LocalCA) -> None:
        self.ca = ca

    @contextmanager
    def channel(self) -> Iterator[ProviderAdapter]:
        raise NotImplementedError

    def delivery_report(self, message_id: str, status: str) -> WebhookRequest:
        """A signed report; ``status`` is "delivered", "failed" or "intermediate"."""
        raise NotImplementedError

    def inbound(self, text: str) -> WebhookRequest:
        raise NotImplementedError

    def forged(self, request: WebhookRequest) -> WebhookRequest:
        """The same request with its body changed after signing."""
        return replace(
            request, body=request.body.replace(b"delivered", b"failed").replace(b"Hello", b"Hallo")
        )

    def unsigned(self, request: WebhookRequest) -> WebhookRequest:
        raise NotImplementedError

    def stale(self, message_id: str) -> WebhookRequest:
        raise NotImplementedError


def _request(
    url: str, body: bytes, headers: dict[str, str], query: dict[str, str] | None = None
) -> WebhookRequest:
    return WebhookRequest(
        method="POST",
        public_url=url + (f"?{urlencode(query)}" if query else ""),
        headers={k.lower(): v for k, v in headers.items()},
        query=query or {},
        body=body,
    )


class SimulatorKit(ProviderKit):
    name = "simulator"
    timestamped = True

    def __init__(self, ca: LocalCA) -> None:
        super().__init__(ca)
        self.secret = secrets.token_urlsafe(16)

    @contextmanager
    def channel(self) -> Iterator[ProviderAdapter]:
        yield SimulatorAdapter(
            SimulatorSettings(
                reject_suffixes=(REJECTED[-4:],),
                transient_suffixes=(THROTTLED[-4:],),
                webhook_secret=SecretStr(self.secret),
            )
        )

    def _signed(self, kind: str, document: dict[str, Any], timestamp: int | None = None) -> WebhookRequest:
        body = json.dumps(document).encode()
        return _request(
            f"{PUBLIC}/api/providers/simulator/{kind}",
            body,
            sign_webhook(self.secret, body, timestamp=timestamp),
        )

    def delivery_report(self, message_id: str, status: str) -> WebhookRequest:
        wire = {"delivered": "delivered", "failed": "failed", "intermediate": "sent"}[status]
        return self._signed("delivery-reports", {"MessageId": message_id, "Status": wire})

    def inbound(self, text: str) -> WebhookRequest:
        return self._signed(
            "inbound", {"MessageId": "SMin", "From": CUSTOMER, "To": OUR_NUMBER, "Text": text}
        )

    def unsigned(self, request: WebhookRequest) -> WebhookRequest:
        return replace(request, headers={})

    def stale(self, message_id: str) -> WebhookRequest:
        return self._signed(
            "delivery-reports",
            {"MessageId": message_id, "Status": "delivered"},
            timestamp=int(time.time()) - 600,
        )


class TwilioKit(ProviderKit):
    name = "twilio"
    account_sid = "AC" + "4" * 32

    def __init__(self, ca: LocalCA) -> None:
        super().__init__(ca)
        self.token = secrets.token_hex(16)

    @contextmanager
    def channel(self) -> Iterator[ProviderAdapter]:
        with FakeHttpServer(FakeTwilio(self.account_sid, self.token)) as api:
            yield TwilioAdapter(
                TwilioSettings(
                    account_sid=self.account_sid, auth_token=SecretStr(self.token), api_base_url=api.url
                )
            )  # type: ignore[arg-type]

    def _signed(self, kind: str, params: dict[str, str]) -> WebhookRequest:
        url = f"{PUBLIC}/api/providers/twilio/{kind}"
        signature = RequestValidator(self.token).compute_signature(url, params)  # the SDK as oracle
        return _request(url, urlencode(params).encode(), {"X-Twilio-Signature": signature})

    def delivery_report(self, message_id: str, status: str) -> WebhookRequest:
        wire = {"delivered": "delivered", "failed": "undelivered", "intermediate": "sent"}[status]
        return self._signed(
            "delivery-reports",
            {
                "MessageSid": message_id,
                "MessageStatus": wire,
                "AccountSid": self.account_sid,
                "From": OUR_NUMBER,
                "To": CUSTOMER,
                **({"ErrorCode": "30003"} if status == "failed" else {}),
            },
        )

    def inbound(self, text: str) -> WebhookRequest:
        return self._signed(
            "inbound",
            {
                "MessageSid": "SMin",
                "AccountSid": self.account_sid,
                "From": CUSTOMER,
                "To": OUR_NUMBER,
                "Body": text,
            },
        )

    def forged(self, request: WebhookRequest) -> WebhookRequest:
        return replace(
            request,
            body=request.body.replace(b"delivered", b"failed").replace(b"Hello", b"Hallo") + b"&Extra=1",
        )

    def unsigned(self, request: WebhookRequest) -> WebhookRequest:
        return replace(request, headers={})


class AcsKit(ProviderKit):
    name = "acs"

    def __init__(self, ca: LocalCA) -> None:
        super().__init__(ca)
        self.secret = secrets.token_urlsafe(16)
        self.key = secrets.token_bytes(32)

    @contextmanager
    def channel(self) -> Iterator[ProviderAdapter]:
        with FakeHttpServer(FakeAcs(self.key), tls=self.ca.server_context()) as api:
            connection = f"endpoint={api.url}/;accesskey={base64.b64encode(self.key).decode()}"
            yield AcsAdapter(
                AcsSettings(connection_string=SecretStr(connection), webhook_secret=SecretStr(self.secret))
            )

    def _events(self, kind: str, event_type: str, data: dict[str, Any]) -> WebhookRequest:
        body = json.dumps(
            [
                {
                    "id": str(uuid.uuid4()),
                    "eventType": event_type,
                    "data": data,
                    "dataVersion": "1.0",
                    "subject": f"/phonenumber/{OUR_NUMBER}",
                    "eventTime": "2026-11-27T10:00:00Z",
                }
            ]
        )
        return _request(f"{PUBLIC}/api/providers/acs/{kind}", body.encode(), {}, {"secret": self.secret})

    def delivery_report(self, message_id: str, status: str) -> WebhookRequest:
        if status == "intermediate":  # ACS publishes final reports only; other event types are ignored
            return self._events(
                "delivery-reports",
                "Microsoft.Communication.AdvancedMessageDeliveryStatusUpdated",
                {"messageId": message_id, "status": "Sent"},
            )
        wire = {"delivered": "Delivered", "failed": "Failed"}[status]
        return self._events(
            "delivery-reports",
            "Microsoft.Communication.SMSDeliveryReportReceived",
            {
                "messageId": message_id,
                "from": OUR_NUMBER,
                "to": CUSTOMER,
                "deliveryStatus": wire,
                "deliveryStatusDetails": "No error." if status == "delivered" else "Unreachable",
            },
        )

    def inbound(self, text: str) -> WebhookRequest:
        return self._events(
            "inbound",
            "Microsoft.Communication.SMSReceived",
            {"messageId": "Incoming_1", "from": CUSTOMER, "to": OUR_NUMBER, "message": text},
        )

    def forged(self, request: WebhookRequest) -> WebhookRequest:
        return replace(request, query={"secret": "guessed"}, public_url=request.public_url.split("?")[0])

    def unsigned(self, request: WebhookRequest) -> WebhookRequest:
        return replace(request, query={}, public_url=request.public_url.split("?")[0])


class TelnyxKit(ProviderKit):
    name = "telnyx"
    timestamped = True

    def __init__(self, ca: LocalCA) -> None:
        super().__init__(ca)
        self.api_key = "KEY" + secrets.token_hex(16)
        self.signing_key = SigningKey.generate()
        self.public_key = base64.b64encode(bytes(self.signing_key.verify_key)).decode()

    @contextmanager
    def channel(self) -> Iterator[ProviderAdapter]:
        with FakeHttpServer(FakeTelnyx(self.api_key)) as api:
            yield TelnyxAdapter(
                TelnyxSettings(
                    api_key=SecretStr(self.api_key), public_key=self.public_key, api_base_url=api.url
                )
            )  # type: ignore[arg-type]

    def _signed(
        self, kind: str, event_type: str, payload: dict[str, Any], timestamp: int | None = None
    ) -> WebhookRequest:
        body = json.dumps(
            {
                "data": {
                    "event_type": event_type,
                    "id": str(uuid.uuid4()),
                    "record_type": "event",
                    "occurred_at": "2026-11-27T10:00:00Z",
                    "payload": payload,
                },
                "meta": {"attempt": 1},
            }
        ).encode()
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = base64.b64encode(self.signing_key.sign(stamp.encode() + b"|" + body).signature).decode()
        headers = {"telnyx-signature-ed25519": signature, "telnyx-timestamp": stamp}
        if timestamp is None:  # Telnyx's own verifier (the SDK) must accept the vector too
            verify_webhook_signature(body, headers, self.public_key)
        return _request(f"{PUBLIC}/api/providers/telnyx/{kind}", body, headers)

    def _message(self, message_id: str, status: str) -> dict[str, Any]:
        errors = [{"code": "40008", "title": "Undeliverable"}] if status == "delivery_failed" else []
        return {
            "id": message_id,
            "direction": "outbound",
            "from": {"phone_number": OUR_NUMBER},
            "to": [{"phone_number": CUSTOMER, "status": status}],
            "errors": errors,
            "text": "x",
        }

    def delivery_report(self, message_id: str, status: str) -> WebhookRequest:
        if status == "intermediate":
            return self._signed("delivery-reports", "message.sent", self._message(message_id, "sent"))
        wire = {"delivered": "delivered", "failed": "delivery_failed"}[status]
        return self._signed("delivery-reports", "message.finalized", self._message(message_id, wire))

    def inbound(self, text: str) -> WebhookRequest:
        return self._signed(
            "inbound",
            "message.received",
            {
                "id": str(uuid.uuid4()),
                "direction": "inbound",
                "from": {"phone_number": CUSTOMER},
                "to": [{"phone_number": OUR_NUMBER, "status": "received"}],
                "text": text,
            },
        )

    def unsigned(self, request: WebhookRequest) -> WebhookRequest:
        return replace(request, headers={})

    def stale(self, message_id: str) -> WebhookRequest:
        return self._signed(
            "delivery-reports",
            "message.finalized",
            self._message(message_id, "delivered"),
            timestamp=int(time.time()) - 600,
        )


class PlivoKit(ProviderKit):
    name = "plivo"
    auth_id = "MA" + "7" * 18

    def __init__(self, ca: LocalCA) -> None:
        super().__init__(ca)
        self.token = secrets.token_hex(20)

    @contextmanager
    def channel(self) -> Iterator[ProviderAdapter]:
        with FakeHttpServer(FakePlivo(self.auth_id, self.token)) as api:
            yield PlivoAdapter(
                PlivoSettings(auth_id=self.auth_id, auth_token=SecretStr(self.token), api_base_url=api.url)
            )  # type: ignore[arg-type]

    def _signed(self, kind: str, params: dict[str, str]) -> WebhookRequest:
        url = f"{PUBLIC}/api/providers/plivo/{kind}"
        nonce = secrets.token_hex(10)
        # Plivo's own SDK computes the signature our verifier must accept
        base_url = plivo_v3.construct_post_url(url, dict(params)).decode("utf-8")  # as its validator does
        signature = plivo_v3.get_signature_v3(self.token.encode(), base_url, nonce.encode()).decode()
        assert plivo_v3.validate_v3_signature("POST", url, nonce, self.token, signature, dict(params))
        return _request(
            url,
            urlencode(params).encode(),
            {"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce},
        )

    def delivery_report(self, message_id: str, status: str) -> WebhookRequest:
        wire = {"delivered": "delivered", "failed": "undelivered", "intermediate": "sent"}[status]
        return self._signed(
            "delivery-reports",
            {
                "MessageUUID": message_id,
                "Status": wire,
                "From": OUR_NUMBER.lstrip("+"),
                "To": CUSTOMER.lstrip("+"),
                "ErrorCode": "80" if status == "failed" else "000",
                "Units": "1",
                "MessageTime": "2026-11-27 10:00:00",
            },
        )

    def inbound(self, text: str) -> WebhookRequest:
        return self._signed(
            "inbound",
            {
                "MessageUUID": str(uuid.uuid4()),
                "From": CUSTOMER.lstrip("+"),
                "To": OUR_NUMBER,
                "Text": text,
                "Type": "sms",
            },
        )

    def forged(self, request: WebhookRequest) -> WebhookRequest:
        return replace(request, body=request.body.replace(b"delivered", b"undelivered") + b"&Extra=1")

    def unsigned(self, request: WebhookRequest) -> WebhookRequest:
        return replace(request, headers={})


class VonageKit(ProviderKit):
    name = "vonage"
    timestamped = True

    def __init__(self, ca: LocalCA) -> None:
        super().__init__(ca)
        self.api_key, self.api_secret = secrets.token_hex(4), secrets.token_hex(8)
        self.signature_secret = secrets.token_urlsafe(24)

    @contextmanager
    def channel(self) -> Iterator[ProviderAdapter]:
        with FakeHttpServer(FakeVonage(self.api_key, self.api_secret)) as api:
            yield VonageAdapter(
                VonageSettings(
                    api_key=self.api_key,
                    api_secret=SecretStr(self.api_secret),
                    signature_secret=SecretStr(self.signature_secret),
                    signature_method="sha256",
                    api_base_url=api.url,
                )
            )  # type: ignore[arg-type]

    def _signed(self, kind: str, params: dict[str, str], timestamp: int | None = None) -> WebhookRequest:
        params = {
            **params,
            "timestamp": str(int(time.time()) if timestamp is None else timestamp),
            "nonce": str(uuid.uuid4()),
            "api-key": self.api_key,
        }
        # Vonage's SDK signs what our verifier must accept
        params["sig"] = VonageAuth(
            api_key=self.api_key, signature_secret=self.signature_secret, signature_method="sha256"
        ).sign_params(dict(params))
        return _request(
            f"{PUBLIC}/api/providers/vonage/{kind}",
            json.dumps(params).encode(),
            {"Content-Type": "application/json"},
        )

    def _receipt(self, message_id: str, status: str, err_code: str) -> dict[str, str]:
        return {
            "msisdn": CUSTOMER.lstrip("+"),
            "to": OUR_NUMBER.lstrip("+"),
            "network-code": "310260",
            "messageId": message_id,
            "price": "0.03",
            "status": status,
            "scts": "2611271000",
            "err-code": err_code,
            "message-timestamp": "2026-11-27 10:00:00",
        }

    def delivery_report(self, message_id: str, status: str) -> WebhookRequest:
        wire, err = {
            "delivered": ("delivered", "0"),
            "failed": ("failed", "12"),
            "intermediate": ("accepted", "0"),
        }[status]
        return self._signed("delivery-reports", self._receipt(message_id, wire, err))

    def inbound(self, text: str) -> WebhookRequest:
        return self._signed(
            "inbound",
            {
                "msisdn": CUSTOMER.lstrip("+"),
                "to": OUR_NUMBER,
                "messageId": "IN1",
                "text": text,
                "type": "unicode",
                "keyword": "HELLO",
                "message-timestamp": "2026-11-27 10:00:00",
            },
        )

    def unsigned(self, request: WebhookRequest) -> WebhookRequest:
        document = json.loads(request.body)
        document.pop("sig")
        return replace(request, body=json.dumps(document).encode())

    def stale(self, message_id: str) -> WebhookRequest:
        return self._signed(
            "delivery-reports", self._receipt(message_id, "delivered", "0"), timestamp=int(time.time()) - 600
        )


class InfobipKit(ProviderKit):
    """Infobip signs nothing: its webhooks carry the Basic credentials of the subscription's
    security settings, so there is no SDK oracle and no timestamp."""

    name = "infobip"

    def __init__(self, ca: LocalCA) -> None:
        super().__init__(ca)
        self.api_key = secrets.token_hex(16)
        self.password = secrets.token_urlsafe(16)

    @contextmanager
    def channel(self) -> Iterator[ProviderAdapter]:
        with FakeHttpServer(FakeInfobip(self.api_key)) as api:
            yield InfobipAdapter(
                InfobipSettings(
                    api_key=SecretStr(self.api_key),
                    base_url=api.url,  # type: ignore[arg-type]
                    webhook_username="infobip",
                    webhook_password=SecretStr(self.password),
                )
            )

    def _post(self, kind: str, results: list[dict[str, Any]], password: str | None = None) -> WebhookRequest:
        credentials = base64.b64encode(f"infobip:{password or self.password}".encode()).decode()
        return _request(
            f"{PUBLIC}/api/providers/infobip/{kind}",
            json.dumps({"results": results}).encode(),
            {"Authorization": f"Basic {credentials}", "Content-Type": "application/json"},
        )

    def delivery_report(self, message_id: str, status: str) -> WebhookRequest:
        group = {
            "delivered": ("DELIVERED", 3, "DELIVERED_TO_HANDSET"),
            "failed": ("UNDELIVERABLE", 2, "UNDELIVERABLE_NOT_DELIVERED"),
            "intermediate": ("PENDING", 1, "PENDING_ENROUTE"),
        }[status]
        error = (
            {
                "groupId": 1,
                "groupName": "HANDSET_ERRORS",
                "id": 27,
                "name": "EC_ABSENT_SUBSCRIBER",
                "description": "Absent subscriber",
                "permanent": False,
            }
            if status == "failed"
            else {
                "groupId": 0,
                "groupName": "OK",
                "id": 0,
                "name": "NO_ERROR",
                "description": "No Error",
                "permanent": False,
            }
        )
        return self._post(
            "delivery-reports",
            [
                {
                    "bulkId": "b1",
                    "messageId": message_id,
                    "to": CUSTOMER.lstrip("+"),
                    "sentAt": "2026-11-27T10:00:00.000+0000",
                    "doneAt": "2026-11-27T10:00:05.000+0000",
                    "smsCount": 1,
                    "callbackData": f"{uuid.uuid4()}/req-1",
                    "status": {
                        "groupId": group[1],
                        "groupName": group[0],
                        "id": 5,
                        "name": group[2],
                        "description": "x",
                    },
                    "error": error,
                }
            ],
        )

    def inbound(self, text: str) -> WebhookRequest:
        return self._post(
            "inbound",
            [
                {
                    "messageId": "IN1",
                    "from": CUSTOMER.lstrip("+"),
                    "to": OUR_NUMBER,
                    "text": text,
                    "cleanText": text,
                    "receivedAt": "2026-11-27T10:00:00.000+0000",
                    "smsCount": 1,
                }
            ],
        )

    def forged(self, request: WebhookRequest) -> WebhookRequest:
        credentials = base64.b64encode(b"infobip:guessed").decode()
        return replace(request, headers={**request.headers, "authorization": f"Basic {credentials}"})

    def unsigned(self, request: WebhookRequest) -> WebhookRequest:
        return replace(request, headers={k: v for k, v in request.headers.items() if k != "authorization"})


class PlivoV2Kit(PlivoKit):
    """Plivo messaging callbacks signed with V2 only (scheme, host, path and nonce)."""

    name = "plivo"

    def _signed(self, kind: str, params: dict[str, str]) -> WebhookRequest:
        url = f"{PUBLIC}/api/providers/plivo/{kind}"
        nonce = secrets.token_hex(10)
        signature = base64.b64encode(
            hmac.new(self.token.encode(), (url + nonce).encode(), hashlib.sha256).digest()
        ).decode()
        assert plivo_utils.validate_signature(url, nonce, signature, self.token)  # Plivo's SDK agrees
        return _request(
            url,
            urlencode(params).encode(),
            {"X-Plivo-Signature-V2": signature, "X-Plivo-Signature-V2-Nonce": nonce},
        )

    def forged(self, request: WebhookRequest) -> WebhookRequest:
        # V2 covers no body: a forgery is a signature made without the Auth Token
        return replace(request, headers={**request.headers, "x-plivo-signature-v2": "bm90IGEgc2lnbmF0dXJl"})


KITS: list[type[ProviderKit]] = [
    SimulatorKit,
    TwilioKit,
    AcsKit,
    TelnyxKit,
    PlivoKit,
    PlivoV2Kit,
    VonageKit,
    InfobipKit,
]
