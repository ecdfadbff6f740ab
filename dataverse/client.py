"""Dataverse Web API client: the two channel APIs, WhoAmI, and the channel-instance lookup.

Failures, as the relay must treat them:

    DataverseError
    ├── DataverseTransientError   429 (service protection), 502/503/504, timeouts, connection
    │                             errors, tokens unavailable: retried, later redelivered
    └── DataversePermanentError   any other 4xx/5xx: retrying cannot help (to the poison queue)

A 429 holds back every request of this process until its Retry-After has passed, as the service
protection limits ask; a 401 refreshes the token once (see :class:`dataverse.auth.BearerAuth`).
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import logging
import re
import time
from typing import Any, Protocol
from urllib.parse import quote
from uuid import UUID

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
)
from tenacity.wait import wait_exponential_jitter

from contracts import InboundPayload, NotificationPayload
from core.phones import mask
from core.retry_after import parse_retry_after
from dataverse.auth import BearerAuth, MsalTokenProvider, TokenUnavailable
from dataverse.settings import DataverseSettings

__all__ = [
    "DataverseClient",
    "DataverseError",
    "DataverseGateway",
    "DataversePermanentError",
    "DataverseTransientError",
]

log = logging.getLogger("sms.dataverse")

API_PATH = "/api/data/v9.2/"
#: Service-protection error codes (requests, execution time, concurrency).
SERVICE_PROTECTION_CODES = {"0x80072322", "0x80072321", "0x80072326"}
#: In-process retries are short; longer outages are bridged by the relay queue's redelivery.
MAX_ATTEMPTS = 4
MAX_IN_PROCESS_SECONDS = 30.0
BACKOFF = wait_exponential_jitter(multiplier=0.5, max=8.0, jitter=0.5)
STOP_ATTEMPTS = stop_after_attempt(MAX_ATTEMPTS)
STOP_DELAY = stop_after_delay(MAX_IN_PROCESS_SECONDS)
_LONG_DIGITS = re.compile(r"\+?\d{6,}")


class DataverseError(Exception):
    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class DataverseTransientError(DataverseError):
    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        throttled: bool = False,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after
        #: A service-protection 429: every request of this process waits out ``retry_after``.
        self.throttled = throttled


class DataversePermanentError(DataverseError):
    pass


class DataverseGateway(Protocol):
    """What the relay needs from Dataverse (the real client, or the dry-run stand-in)."""

    mode: str

    async def notify(self, payload: NotificationPayload) -> None: ...

    async def inbound(self, payload: InboundPayload) -> None: ...

    async def organization_id(self) -> str: ...

    async def channel_definition_for(self, contact_point: str) -> UUID | None: ...

    async def aclose(self) -> None: ...


def _no_cookies() -> http.cookiejar.CookieJar:
    # Without the ARR affinity cookie, parallel requests spread over Dataverse's web servers.
    return http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


class DataverseClient:
    mode = "live"

    def __init__(
        self,
        settings: DataverseSettings,
        tokens: MsalTokenProvider,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        assert settings.base_url is not None
        self.settings = settings
        self.tokens = tokens
        cap = settings.max_concurrency
        self._http = httpx.AsyncClient(
            base_url=settings.base_url + API_PATH,
            auth=BearerAuth(tokens),
            timeout=httpx.Timeout(settings.timeout_seconds, connect=5.0),
            limits=httpx.Limits(max_connections=cap, max_keepalive_connections=cap, keepalive_expiry=60),
            cookies=_no_cookies(),
            headers={
                "Accept": "application/json",
                "OData-MaxVersion": "4.0",
                "OData-Version": "4.0",
                "If-None-Match": "null",
            },
            transport=transport,
        )
        self._gate = asyncio.Semaphore(cap)
        self._resume_at = 0.0
        self._organization_id: str | None = settings.organization_id
        self._definitions: dict[str, UUID] = dict(settings.channel_definitions)

    # -- operations --------------------------------------------------------------------------

    async def notify(self, payload: NotificationPayload) -> None:
        await self._send(
            "POST", "msdyn_D365ChannelsNotification", json={"notificationPayLoad": payload.to_wire_json()}
        )

    async def inbound(self, payload: InboundPayload) -> None:
        await self._send("POST", "msdyn_D365ChannelsInbound", json={"inboundPayLoad": payload.to_wire_json()})

    async def organization_id(self) -> str:
        if self._organization_id is None:
            body = (await self._send("GET", "WhoAmI")).json()
            self._organization_id = str(body["OrganizationId"])
        return self._organization_id

    async def channel_definition_for(self, contact_point: str) -> UUID | None:
        """The ChannelDefinitionId of the channel instance whose contact point is ``contact_point``."""
        if contact_point not in self._definitions:
            literal = contact_point.replace("'", "''")
            # built by hand: a '+' must reach Dataverse as %2B, or it decodes to a space
            query = "$select=_msdyn_channeldefinitionid_value&$top=2&$filter=" + quote(
                f"msdyn_contactpoint eq '{literal}'", safe="'"
            )
            rows = (await self._send("GET", f"msdyn_channelinstances?{query}")).json().get("value", [])
            definitions = {row.get("_msdyn_channeldefinitionid_value") for row in rows} - {None}
            if len(definitions) > 1:
                log.warning(
                    "several channel definitions use contact point %s; using none",
                    _LONG_DIGITS.sub(_mask, contact_point),
                )
            if len(definitions) != 1:
                return None  # not cached: a channel instance created later must be found on replay
            self._definitions[contact_point] = UUID(definitions.pop())
        return self._definitions[contact_point]

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- transport policy --------------------------------------------------------------------

    async def _send(self, method: str, path: str, *, json: Any = None) -> httpx.Response:
        started = time.monotonic()

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, DataverseTransientError) and exc.retry_after is not None:
                # a 429's window is waited out by every request in _respect_throttling
                return 0.0 if exc.throttled else exc.retry_after
            return float(BACKOFF(state))

        def stop(state: RetryCallState) -> bool:
            # a Retry-After beyond the in-process budget is left to the relay queue's redelivery
            exc = state.outcome.exception() if state.outcome else None
            pause = exc.retry_after if isinstance(exc, DataverseTransientError) and exc.retry_after else 0.0
            return (
                STOP_ATTEMPTS(state)
                or STOP_DELAY(state)
                or time.monotonic() - started + pause > MAX_IN_PROCESS_SECONDS
            )

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(DataverseTransientError),
            wait=wait,
            stop=stop,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(method, path, json)
        raise AssertionError("unreachable: tenacity reraises the last failure")  # pragma: no cover

    async def _attempt(self, method: str, path: str, json: Any) -> httpx.Response:
        pause = self._resume_at - time.monotonic()
        if pause > MAX_IN_PROCESS_SECONDS:  # a long throttling window is waited out by the relay queue
            raise DataverseTransientError("dataverse: throttled", retry_after=pause, throttled=True)
        async with self._gate:
            await self._respect_throttling()
            try:
                response = await self._http.request(method, path, json=json)
            except TokenUnavailable as exc:
                raise DataverseTransientError(f"dataverse: {exc}") from None
            except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
                raise DataversePermanentError(f"dataverse: {type(exc).__name__}") from None
            except httpx.HTTPError as exc:
                raise DataverseTransientError(f"dataverse: {type(exc).__name__}") from None
        if response.is_success:
            return response
        raise self._failure(response)

    async def _respect_throttling(self) -> None:
        # a later 429 may push the window further out while we sleep
        while (pause := self._resume_at - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(pause)

    def _failure(self, response: httpx.Response) -> DataverseError:
        status = response.status_code
        code, message = _error(response)
        description = f"dataverse: HTTP {status} {code or ''} {message}".strip()
        if status == 429 or code in SERVICE_PROTECTION_CODES:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), default=5.0) or 0.0
            self._resume_at = max(self._resume_at, time.monotonic() + retry_after)
            log.warning("dataverse throttled (%s); pausing requests for %.1fs", code or status, retry_after)
            return DataverseTransientError(
                description, status=status, code=code, retry_after=retry_after, throttled=True
            )
        if status in (401, 502, 503, 504):
            return DataverseTransientError(
                description,
                status=status,
                code=code,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        return DataversePermanentError(description, status=status, code=code)


def _error(response: httpx.Response) -> tuple[str | None, str]:
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        return None, ""
    if not isinstance(error, dict):
        return None, ""
    # Dataverse messages can quote the payload: keep them short and without phone numbers.
    message = _LONG_DIGITS.sub(_mask, str(error.get("message", "")))[:300]
    return (str(error["code"]) if error.get("code") else None), message


def _mask(match: re.Match[str]) -> str:
    return mask(match.group(0))
