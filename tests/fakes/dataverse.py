"""Entra ID (token endpoint, managed identity endpoint) and the Dataverse Web API, played locally.

Both run as real HTTPS servers with the test CA. The fake Dataverse accepts only tokens the fake
Entra issued (and not revoked), records every call, and plays scripted faults first.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

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


@dataclass
class FakeDataverse:
    entra: FakeEntra
    organization_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: contact point (E.164) -> ChannelDefinitionId, for msdyn_channelinstances.
    channel_instances: dict[str, str] = field(default_factory=dict)
    #: Replies played, in order, before normal handling (faults).
    faults: list[Reply] = field(default_factory=list)
    #: Seconds every answer takes (a real Dataverse takes tens of milliseconds).
    latency: float = 0.0
    #: Seconds the next request alone is held before it is answered (a timeout for the client).
    stall_next: float = 0.0
    notifications: list[dict[str, Any]] = field(default_factory=list)
    inbound: list[dict[str, Any]] = field(default_factory=list)
    calls: list[tuple[float, Recorded]] = field(default_factory=list)
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
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self.entra.issued:
            return Reply(
                401, {"error": {"code": "0x80040220", "message": "Principal user is missing prvRead"}}
            )
        name = request.path.removeprefix("/api/data/v9.2/")
        if name == "msdyn_D365ChannelsNotification" and request.method == "POST":
            with self._lock:
                self.notifications.append(request.json())
            return Reply(200, {"@odata.context": "$metadata#...", "responseMessage": "ok"})
        if name == "msdyn_D365ChannelsInbound" and request.method == "POST":
            with self._lock:
                self.inbound.append(request.json())
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

    def notification_payloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(body["notificationPayLoad"]) for body in self.notifications]

    def inbound_payloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(body["inboundPayLoad"]) for body in self.inbound]
