"""Provider APIs played by real local servers: what they check and how they answer.

A recipient number's last four digits choose the answer, so one fake serves every scenario:
``0429`` throttled, ``0500`` server error, ``0610`` opted out (Twilio 21610 / ACS 400),
``0211`` invalid number, anything else accepted. Twilio also: ``0400`` refused for another reason
(21408), ``0408`` never answered until the test sets ``release``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import threading
import uuid
from dataclasses import dataclass, field

from tests.fakes.http import Recorded, Reply


@dataclass
class FakeTwilio:
    account_sid: str
    auth_token: str
    retry_after: str = "1"
    #: Holds the answers to ``…0408`` until set: a provider that keeps the request.
    release: threading.Event = field(default_factory=threading.Event)
    #: Message ids are unique across fakes too: tests share one Azurite, where relayed events stay.
    _run: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Recorded) -> Reply:
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return Reply(401, {"code": 20003, "message": "Authenticate", "status": 401})
        if request.path != f"/2010-04-01/Accounts/{self.account_sid}/Messages.json":
            return Reply(404, {"code": 20404, "message": "not found", "status": 404})
        form = request.form()
        to = form.get("To", "")
        if to.endswith("0429"):
            return Reply(
                429,
                {"code": 20429, "message": "Too Many Requests", "status": 429},
                {"Retry-After": self.retry_after},
            )
        if to.endswith("0500"):
            return Reply(500, {"code": 20500, "message": "Internal Server Error", "status": 500})
        if to.endswith("0610"):
            return Reply(
                400,
                {"code": 21610, "message": f"Attempt to send to unsubscribed recipient {to}", "status": 400},
            )
        if to.endswith("0211"):
            return Reply(400, {"code": 21211, "message": f"The 'To' number {to} is not valid", "status": 400})
        if to.endswith("0400"):
            return Reply(400, {"code": 21408, "message": "Permission to send an SMS has not been enabled"})
        if to.endswith("0408"):
            self.release.wait()
        with self._lock:
            sid = f"SM{self._run}{next(self._ids):016x}"
        return Reply(
            201,
            {
                "sid": sid,
                "status": "queued",
                "to": to,
                "from": form.get("From"),
                "body": form.get("Body"),
                "account_sid": self.account_sid,
                "messaging_service_sid": form.get("MessagingServiceSid"),
            },
        )


def acs_signature_valid(request: Recorded, access_key: bytes) -> bool:
    """ACS HMAC-SHA256 as documented: verb, path and query, date;host;content-hash."""
    content_hash = base64.b64encode(hashlib.sha256(request.body).digest()).decode()
    if request.headers.get("x-ms-content-sha256") != content_hash:
        return False
    to_sign = (
        f"{request.method}\n{request.target}\n{request.headers.get('x-ms-date')};"
        f"{request.headers.get('host')};{content_hash}"
    )
    expected = base64.b64encode(hmac.new(access_key, to_sign.encode(), hashlib.sha256).digest()).decode()
    authorization = request.headers.get("authorization", "")
    prefix = "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature="
    return authorization.startswith(prefix) and hmac.compare_digest(authorization[len(prefix) :], expected)


@dataclass
class FakeAcs:
    access_key: bytes
    bearer_token: str | None = None
    #: repeatabilityRequestId -> the answer given the first time (ACS replays it for repeats).
    seen: dict[str, dict[str, object]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Recorded) -> Reply:
        authorized = (
            request.headers.get("authorization") == f"Bearer {self.bearer_token}"
            if self.bearer_token
            else acs_signature_valid(request, self.access_key)
        )
        if not authorized:
            return Reply(401, {"error": {"code": "Denied", "message": "Denied by the resource provider."}})
        if request.path != "/sms" or request.query.get("api-version") != ["2021-03-07"]:
            return Reply(404, {"error": {"code": "NotFound", "message": "no such API"}})
        body = request.json()
        recipient = body["smsRecipients"][0]
        to = recipient["to"]
        if to.endswith("0429"):
            return Reply(
                429, {"error": {"code": "TooManyRequests", "message": "throttled"}}, {"Retry-After": "1"}
            )
        if to.endswith("0500"):
            return Reply(503, {"error": {"code": "ServiceUnavailable", "message": "try later"}})
        repeatability = recipient.get("repeatabilityRequestId")
        with self._lock:
            if repeatability and repeatability in self.seen:
                return Reply(202, {"value": [self.seen[repeatability]]})
            if to.endswith(("0211", "0610")):
                result: dict[str, object] = {
                    "to": to,
                    "httpStatusCode": 400,
                    "repeatabilityResult": "accepted",
                    "successful": False,
                    "errorMessage": "Invalid To phone number.",
                }
            else:
                result = {
                    "to": to,
                    "messageId": f"Outgoing_{next(self._ids):020d}",
                    "httpStatusCode": 202,
                    "repeatabilityResult": "accepted",
                    "successful": True,
                }
            if repeatability:
                self.seen[repeatability] = result
        return Reply(202, {"value": [result]})


@dataclass
class FakeTelnyx:
    api_key: str
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Recorded) -> Reply:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return Reply(401, {"errors": [{"code": "10009", "title": "Authentication failed"}]})
        if request.path != "/v2/messages":
            return Reply(404, {"errors": [{"code": "10005", "title": "Resource not found"}]})
        body = request.json()
        to = body.get("to", "")
        if to.endswith("0429"):
            return Reply(
                429, {"errors": [{"code": "10011", "title": "Too many requests"}]}, {"Retry-After": "1"}
            )
        if to.endswith("0500"):
            return Reply(500, {"errors": [{"code": "10007", "title": "Unexpected error"}]})
        if to.endswith("0211"):
            return Reply(400, {"errors": [{"code": "40310", "title": "Invalid 'to' address"}]})
        if to.endswith("0610"):
            return Reply(400, {"errors": [{"code": "40300", "title": "Blocked due to STOP message"}]})
        return Reply(
            200,
            {
                "data": {
                    "id": str(uuid.uuid4()),
                    "record_type": "message",
                    "direction": "outbound",
                    "from": {"phone_number": body.get("from")},
                    "text": body.get("text"),
                    "to": [{"phone_number": to, "status": "queued"}],
                }
            },
        )


@dataclass
class FakePlivo:
    auth_id: str
    auth_token: str

    def __call__(self, request: Recorded) -> Reply:
        expected = "Basic " + base64.b64encode(f"{self.auth_id}:{self.auth_token}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return Reply(401, {"api_id": str(uuid.uuid4()), "error": "Authentication failed"})
        if request.path != f"/v1/Account/{self.auth_id}/Message/":
            return Reply(404, {"api_id": str(uuid.uuid4()), "error": "not found"})
        dst = request.json().get("dst", "")
        if dst.endswith("0429"):
            return Reply(429, {"api_id": "x", "error": "too many requests"}, {"Retry-After": "1"})
        if dst.endswith("0500"):
            return Reply(500, {"api_id": "x", "error": "internal error"})
        if dst.endswith(("0211", "0610")):
            return Reply(400, {"api_id": "x", "error": f"{dst} is not a valid destination"})
        return Reply(
            202,
            {
                "api_id": str(uuid.uuid4()),
                "message": "message(s) queued",
                "message_uuid": [str(uuid.uuid4())],
            },
        )


@dataclass
class FakeVonage:
    """The SMS API: a text over one SMS comes back as several parts, each with its own id."""

    api_key: str
    api_secret: str
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Recorded) -> Reply:
        if request.path != "/sms/json":
            return Reply(404, {"error": "not found"})
        # the SMS API takes a form or JSON; credentials in the body or as Basic auth
        form = (
            request.json()
            if request.headers.get("content-type", "").startswith("application/json")
            else request.form()
        )
        basic = request.headers.get("authorization", "")
        if basic.startswith("Basic "):
            form["api_key"], _, form["api_secret"] = base64.b64decode(basic[6:]).decode().partition(":")
        if (form.get("api_key"), form.get("api_secret")) != (self.api_key, self.api_secret):
            return Reply(
                200, {"message-count": "1", "messages": [{"status": "4", "error-text": "Bad Credentials"}]}
            )
        to = form.get("to", "")
        if to.endswith("0500"):
            return Reply(500, "")
        for suffix, status in (("0429", "1"), ("0211", "7"), ("0610", "6")):
            if to.endswith(suffix):
                return Reply(
                    200,
                    {
                        "message-count": "1",
                        "messages": [{"to": to, "status": status, "error-text": "refused"}],
                    },
                )
        limit = 70 if form.get("type") == "unicode" else 160
        per_part = 67 if form.get("type") == "unicode" else 153
        text = form.get("text", "")
        count = 1 if len(text) <= limit else -(-len(text) // per_part)
        with self._lock:
            ids = [f"{next(self._ids):016X}" for _ in range(count)]
        return Reply(
            200,
            {
                "message-count": str(count),
                "messages": [
                    {
                        "to": to,
                        "message-id": message_id,
                        "status": "0",
                        "remaining-balance": "10.0",
                        "message-price": "0.03",
                        "network": "310260",
                    }
                    for message_id in ids
                ],
            },
        )


@dataclass
class FakeInfobip:
    api_key: str

    def __call__(self, request: Recorded) -> Reply:
        if request.headers.get("authorization") != f"App {self.api_key}":
            return Reply(401, {"requestError": {"serviceException": {"messageId": "UNAUTHORIZED"}}})
        if request.path != "/sms/2/text/advanced":
            return Reply(404, {"requestError": {"serviceException": {"messageId": "NOT_FOUND"}}})
        message = request.json()["messages"][0]
        to = message["destinations"][0]["to"]
        if to.endswith("0429"):
            return Reply(
                429,
                {"requestError": {"serviceException": {"messageId": "TOO_MANY_REQUESTS"}}},
                {"Retry-After": "1"},
            )
        if to.endswith("0500"):
            return Reply(500, {"requestError": {"serviceException": {"messageId": "GENERAL_ERROR"}}})
        if to.endswith("0211"):
            status = {
                "groupId": 5,
                "groupName": "REJECTED",
                "id": 51,
                "name": "REJECTED_DESTINATION",
                "description": "Destination rejected",
            }
        else:
            status = {
                "groupId": 1,
                "groupName": "PENDING",
                "id": 26,
                "name": "PENDING_ACCEPTED",
                "description": "Message sent to next instance",
            }
        return Reply(
            200,
            {
                "bulkId": str(uuid.uuid4()),
                "messages": [{"to": to, "status": status, "messageId": str(uuid.uuid4())}],
            },
        )
