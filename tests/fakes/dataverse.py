"""Entra ID (token endpoint, managed identity endpoint) and the Dataverse Web API, played locally.

Both run as real HTTPS servers with the test CA. The fake Dataverse accepts only tokens the fake
Entra issued (and not revoked), records every call, and plays scripted faults first.

It reads ``$batch`` requests as strictly as Dataverse does (multipart/mixed, ``application/http``
parts, at most 1,000 operations, no nesting): a malformed batch is a 400 and runs nothing. With
:class:`ServiceProtection` it enforces Dataverse's service protection limits per application user
(the fake is one web server): requests and combined execution time over a sliding window, and
concurrent requests, answering 429 with Dataverse's error codes and a Retry-After.
"""

from __future__ import annotations

import collections
import json
import math
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
from cryptography import x509

from tests.fakes.http import Recorded, Reply


@dataclass
class FakeEntra:
    tenant_id: str
    client_id: str
    client_secret: str | None = None
    #: PEM certificate whose key signs client assertions (certificate credentials).
    certificate_pem: bytes | None = None
    identity_header: str = field(default_factory=lambda: secrets.token_hex(8))
    issued: set[str] = field(default_factory=set)
    issued_ever: list[str] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    expires_in: int = 3600
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Recorded) -> Reply:
        base = f"https://{request.headers['host']}"
        if request.path == f"/{self.tenant_id}/v2.0/.well-known/openid-configuration":
            return Reply(
                200,
                {
                    "authorization_endpoint": f"{base}/{self.tenant_id}/oauth2/v2.0/authorize",
                    "token_endpoint": f"{base}/{self.tenant_id}/oauth2/v2.0/token",
                    "issuer": f"{base}/{self.tenant_id}/v2.0",
                },
            )
        if request.path == f"/{self.tenant_id}/oauth2/v2.0/token" and request.method == "POST":
            form = request.form()
            with self._lock:
                self.token_requests.append(form)
            if form.get("grant_type") != "client_credentials" or form.get("client_id") != self.client_id:
                return Reply(400, {"error": "invalid_client", "error_description": "unknown client"})
            if not self._credential_valid(form, f"{base}/{self.tenant_id}/oauth2/v2.0/token"):
                return Reply(401, {"error": "invalid_client", "error_description": "bad credential"})
            return Reply(
                200, {"token_type": "Bearer", "expires_in": self.expires_in, "access_token": self._issue()}
            )
        if request.path == "/msi/token":  # App Service managed identity endpoint
            with self._lock:
                self.token_requests.append({k: v[0] for k, v in request.query.items()})
            if request.headers.get("x-identity-header") != self.identity_header:
                return Reply(401, {"error": "unauthorized"})
            return Reply(
                200,
                {
                    "access_token": self._issue(),
                    "token_type": "Bearer",
                    "expires_on": str(int(time.time()) + self.expires_in),
                    "resource": request.query["resource"][0],
                },
            )
        return Reply(404, {"error": "not_found"})

    def _credential_valid(self, form: dict[str, str], audience: str) -> bool:
        if self.client_secret is not None:
            return form.get("client_secret") == self.client_secret
        assertion = form.get("client_assertion")
        if self.certificate_pem is None or not assertion:
            return False
        key = x509.load_pem_x509_certificate(self.certificate_pem).public_key()
        try:
            claims = jwt.decode(assertion, key, algorithms=["RS256", "PS256"], audience=audience)  # type: ignore[arg-type]
        except jwt.PyJWTError:
            return False
        return bool(claims.get("iss") == self.client_id == claims.get("sub"))

    def _issue(self) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self.issued.add(token)
            self.issued_ever.append(token)
        return token

    def revoke_all(self) -> None:
        with self._lock:
            self.issued.clear()


API = "/api/data/v9.2/"
MAX_BATCH_OPERATIONS = 1000
#: Service protection errors: (Web API code, SDK error code, message template).
REQUESTS_LIMIT = (
    "0x80072322",
    -2147015902,
    "Number of requests exceeded the limit of {requests} over time window of {window} seconds.",
)
TIME_LIMIT = (
    "0x80072321",
    -2147015903,
    "Combined execution time of incoming requests exceeded limit of "
    "{time_ms:,} milliseconds over time window of {window} seconds. Decrease number of concurrent "
    "requests or reduce the duration of requests and try again later.",
)
CONCURRENCY_LIMIT = (
    "0x80072326",
    -2147015898,
    "Number of concurrent requests exceeded the limit of {concurrent}.",
)


@dataclass
class ServiceProtection:
    """Dataverse's service protection limits for one user on one web server.

    Defaults are Dataverse's: 6,000 requests and 1,200,000 ms of execution time in a 300 s sliding
    window, 52 concurrent requests. A test shrinks the window (and the limits with it) to run in
    seconds. Every operation is charged ``operation_ms`` of execution time and takes that long to
    answer (a $batch runs its operations one after another); a $batch counts as one request.
    Requests and execution time are checked when a request arrives, against what completed inside
    the window ("may only take effect after the window is exceeded"); concurrency at once.
    """

    window_seconds: float = 300.0
    max_requests: int = 6000
    max_execution_ms: float = 1_200_000.0
    max_concurrent: int = 52
    operation_ms: float = 50.0
    #: Retry-After of a concurrency 429 (the others: until the window would have let it through).
    concurrency_retry_after: float = 1.0
    #: Answers given, by limit: {"0x80072322": n, …}.
    throttled: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Requests let through, and the most that ran at once.
    admitted: int = 0
    peak_concurrent: int = 0
    _requests: collections.deque[float] = field(default_factory=collections.deque)
    _charges: collections.deque[tuple[float, float]] = field(default_factory=collections.deque)
    _charged_ms: float = 0.0
    _in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self) -> Reply | None:
        """None when a request may run (then :meth:`done` must follow), else the 429 to answer."""
        with self._lock:
            now = time.monotonic()
            self._expire(now)
            if self._in_flight >= self.max_concurrent:
                return self._refuse(CONCURRENCY_LIMIT, self.concurrency_retry_after)
            if len(self._requests) >= self.max_requests:
                return self._refuse(REQUESTS_LIMIT, self._requests[0] + self.window_seconds - now)
            if self._charged_ms >= self.max_execution_ms:
                return self._refuse(TIME_LIMIT, self._time_freed_at() - now)
            self._requests.append(now)
            self._in_flight += 1
            self.admitted += 1
            self.peak_concurrent = max(self.peak_concurrent, self._in_flight)
            return None

    def done(self, charged_ms: float) -> None:
        with self._lock:
            self._in_flight -= 1
            self._charges.append((time.monotonic(), charged_ms))
            self._charged_ms += charged_ms

    def _expire(self, now: float) -> None:
        start = now - self.window_seconds
        while self._requests and self._requests[0] <= start:
            self._requests.popleft()
        while self._charges and self._charges[0][0] <= start:
            self._charged_ms -= self._charges.popleft()[1]

    def _time_freed_at(self) -> float:
        """When enough charges will have left the window for execution time to be under the limit."""
        remaining = self._charged_ms
        for at, charged in self._charges:
            remaining -= charged
            if remaining < self.max_execution_ms:
                return at + self.window_seconds
        return time.monotonic()

    def _refuse(self, limit: tuple[str, int, str], retry_after: float) -> Reply:
        code, _, template = limit
        self.throttled[code] += 1
        window = (
            int(self.window_seconds)
            if self.window_seconds == int(self.window_seconds)
            else self.window_seconds
        )
        message = template.format(
            requests=self.max_requests,
            window=window,
            time_ms=int(self.max_execution_ms),
            concurrent=self.max_concurrent,
        )
        # Retry-After in whole seconds, as HTTP delta-seconds
        return Reply(
            429,
            {"error": {"code": code, "message": message}},
            {"Retry-After": str(max(1, math.ceil(retry_after)))},
        )

    @property
    def throttled_total(self) -> int:
        with self._lock:
            return sum(self.throttled.values())


class _BadBatch(Exception):
    pass


#: Journeys' base actions and their one parameter.
BASE_ACTIONS = {
    "msdyn_D365ChannelsNotification": "notificationPayLoad",
    "msdyn_D365ChannelsInbound": "inboundPayLoad",
}


@dataclass
class FakeDataverse:
    entra: FakeEntra
    organization_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: contact point (E.164) -> ChannelDefinitionId, for msdyn_channelinstances.
    channel_instances: dict[str, str] = field(default_factory=dict)
    #: Replies played, in order, before normal handling (faults).
    faults: list[Reply] = field(default_factory=list)
    #: Replies played, in order, for operations inside a $batch (an operation's own failure).
    operation_faults: list[Reply] = field(default_factory=list)
    #: Until then (time.monotonic()) every request gets 503: an outage.
    unavailable_until: float = 0.0
    #: Seconds every answer takes (a real Dataverse takes tens of milliseconds).
    latency: float = 0.0
    #: Seconds the next request alone is held before it is answered (a timeout for the client).
    stall_next: float = 0.0
    #: Service protection limits; None: unlimited.
    limits: ServiceProtection | None = None
    #: Whether a $batch answer repeats each part's Content-ID (Dataverse does in change sets).
    echo_content_id: bool = True
    #: The channel's own custom APIs (provisioning's <prefix>_SmsDeliveryReport / _SmsInbound): name ->
    #: the base action their main-operation plug-in executes with the payload unchanged.
    channel_apis: dict[str, str] = field(default_factory=dict)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    inbound: list[dict[str, Any]] = field(default_factory=list)
    #: The action each notification or inbound message was relayed through, in order.
    relayed_via: list[str] = field(default_factory=list)
    calls: list[tuple[float, Recorded]] = field(default_factory=list)
    #: Operations of every $batch run, by batch.
    batches: list[list[Recorded]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Recorded) -> Reply:
        with self._lock:
            self.calls.append((time.monotonic(), request))
            fault = self.faults.pop(0) if self.faults else None
            stall, self.stall_next = self.stall_next, 0.0
        if self.latency or stall:
            time.sleep(self.latency + stall)
        if fault is not None:
            return fault
        if time.monotonic() < self.unavailable_until:
            return Reply(503, {"error": {"code": "", "message": "Service Unavailable"}}, {"Retry-After": "1"})
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self.entra.issued:
            return Reply(
                401, {"error": {"code": "0x80040220", "message": "Principal user is missing prvRead"}}
            )
        name = request.path.removeprefix(API)
        if name == "$batch" and request.method == "POST":
            try:
                operations = self._batch_operations(request)
            except _BadBatch as exc:
                return Reply(400, {"error": {"code": "0x80048d19", "message": f"Malformed $batch: {exc}"}})
        else:
            operations = [request]
        if self.limits is not None:
            refused = self.limits.admit()
            if refused is not None:
                return refused
            try:
                time.sleep(len(operations) * self.limits.operation_ms / 1000)
            finally:
                self.limits.done(len(operations) * self.limits.operation_ms)
        if name != "$batch" or request.method != "POST":
            return self._operation(request)
        return self._batch(request, operations)

    # -- one operation ------------------------------------------------------------------------

    def _operation(self, request: Recorded) -> Reply:
        name = request.path.removeprefix(API)
        action = self.channel_apis.get(name, name)
        if action in BASE_ACTIONS and request.method == "POST":
            body = request.json()
            parameter = BASE_ACTIONS[action]
            if set(body) != {parameter} or not isinstance(body[parameter], str):
                return Reply(
                    400,
                    {
                        "error": {
                            "code": "0x80048d19",
                            "message": f"{name} takes one string parameter, {parameter}",
                        }
                    },
                )
            with self._lock:
                kept = self.notifications if action == "msdyn_D365ChannelsNotification" else self.inbound
                kept.append(body)  # the plug-in passes the payload on unchanged
                self.relayed_via.append(name)
            return Reply(200, {"@odata.context": "$metadata#...", "responseMessage": "ok"})
        if name == "WhoAmI":
            return Reply(
                200,
                {
                    "BusinessUnitId": str(uuid.uuid4()),
                    "UserId": str(uuid.uuid4()),
                    "OrganizationId": self.organization_id,
                },
            )
        if name == "msdyn_channelinstances":
            return self._channel_instances(request)
        return Reply(404, {"error": {"code": "0x8006088a", "message": f"Resource not found: {name}"}})

    def _channel_instances(self, request: Recorded) -> Reply:
        query = parse_qs(request.target.split("?", 1)[1])  # decodes '+' as a space, like Dataverse
        expression = query.get("$filter", [""])[0]
        prefix = "msdyn_contactpoint eq '"
        if not expression.startswith(prefix) or not expression.endswith("'"):
            return Reply(400, {"error": {"code": "0x80060888", "message": "unsupported filter"}})
        contact_point = unquote(expression[len(prefix) : -1]).replace("''", "'")
        definition = self.channel_instances.get(contact_point)
        rows = [{"_msdyn_channeldefinitionid_value": definition}] if definition else []
        return Reply(200, {"value": rows})

    # -- $batch ------------------------------------------------------------------------------

    def _batch_operations(self, request: Recorded) -> list[Recorded]:
        """The operations of a $batch, read strictly; _BadBatch for anything Dataverse would refuse."""
        content_type = request.headers.get("content-type", "")
        match = re.fullmatch(
            r'multipart/mixed\s*;\s*boundary=(?:"([^"]+)"|([^";\s]+))\s*', content_type, re.I
        )
        if match is None:
            raise _BadBatch("Content-Type must be multipart/mixed with a boundary")
        boundary = (match.group(1) or match.group(2)).encode()
        body = request.body
        if not body.startswith(b"--" + boundary + b"\r\n"):
            raise _BadBatch("the body must start with the boundary delimiter")
        closing = b"\r\n--" + boundary + b"--"
        if closing not in body:
            raise _BadBatch("no closing delimiter")
        inner = body[len(boundary) + 4 : body.index(closing)]
        chunks = inner.split(b"\r\n--" + boundary + b"\r\n")
        if len(chunks) > MAX_BATCH_OPERATIONS:
            raise _BadBatch(f"more than {MAX_BATCH_OPERATIONS} operations")
        return [self._batch_part(chunk) for chunk in chunks]

    @staticmethod
    def _batch_part(chunk: bytes) -> Recorded:
        head, sep, http = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise _BadBatch("a part without headers")
        mime = _headers(head)
        if mime.get("content-type", "").split(";")[0].strip().lower() == "multipart/mixed":
            raise _BadBatch("change sets are not played by this fake")
        if mime.get("content-type", "").split(";")[0].strip().lower() != "application/http":
            raise _BadBatch("each part must be Content-Type: application/http")
        if mime.get("content-transfer-encoding", "").lower() != "binary":
            raise _BadBatch("each part must be Content-Transfer-Encoding: binary")
        request_head, sep, content = http.partition(b"\r\n\r\n")
        if not sep:
            raise _BadBatch("an operation without a blank line after its headers")
        request_line, _, header_lines = request_head.partition(b"\r\n")
        match = re.fullmatch(rb"(GET|POST|PATCH|PUT|DELETE) (\S+) HTTP/1\.1", request_line)
        if match is None:
            raise _BadBatch(f"bad request line {request_line[:80]!r}")
        headers = _headers(header_lines)
        if "content-length" in headers and int(headers["content-length"]) != len(content):
            raise _BadBatch("Content-Length does not match the operation's body")
        target = match.group(2).decode()
        parts = urlsplit(target)
        if not parts.path.startswith(API):
            raise _BadBatch(f"operation outside the Web API: {target}")
        if content and not headers.get("content-type", "").startswith("application/json"):
            raise _BadBatch("an operation's body must be JSON")
        if content:
            try:
                json.loads(content)
            except ValueError:
                raise _BadBatch("an operation's body is not JSON") from None
        headers["content-id"] = mime.get("content-id", "")
        query = parse_qs(parts.query, keep_blank_values=True)
        return Recorded(match.group(1).decode(), target, parts.path, query, headers, content)

    def _batch(self, request: Recorded, operations: list[Recorded]) -> Reply:
        continue_on_error = "odata.continue-on-error" in request.headers.get("prefer", "")
        boundary = f"batchresponse_{uuid.uuid4()}"
        parts: list[bytes] = []
        status = 200
        with self._lock:
            self.batches.append(operations)
        for operation in operations:
            with self._lock:
                fault = self.operation_faults.pop(0) if self.operation_faults else None
            reply = fault or self._operation(operation)
            body, headers = reply.encoded()
            content_id = operation.headers.get("content-id")
            lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
            if content_id and self.echo_content_id:
                lines.append(f"Content-ID: {content_id}")
            reason = {200: "OK", 204: "No Content", 400: "Bad Request", 429: "Too Many Requests"}.get(
                reply.status, "Status"
            )
            lines += ["", f"HTTP/1.1 {reply.status} {reason}", "OData-Version: 4.0"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            parts.append(
                f"--{boundary}\r\n".encode() + "\r\n".join(lines).encode() + b"\r\n\r\n" + body + b"\r\n"
            )
            if reply.status >= 400 and not continue_on_error:
                status = reply.status  # the batch stops at its first failure
                break
        parts.append(f"--{boundary}--\r\n".encode())
        return Reply(
            status,
            b"".join(parts),
            {"Content-Type": f"multipart/mixed; boundary={boundary}", "OData-Version": "4.0"},
        )

    def notification_payloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(body["notificationPayLoad"]) for body in self.notifications]

    def inbound_payloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(body["inboundPayLoad"]) for body in self.inbound]


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(b"\r\n"):
        if not line:
            continue
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name.strip() or name != name.strip():
            raise _BadBatch(f"malformed header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers
