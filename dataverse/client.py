"""Dataverse Web API client: the two channel APIs, WhoAmI, and the channel-instance lookup.

Failures, as the relay must treat them:

    DataverseError
    ├── DataverseTransientError   429 (service protection), 502/503/504, timeouts, connection
    │                             errors, tokens unavailable: retried, later redelivered
    └── DataversePermanentError   any other 4xx/5xx: retrying cannot help (to the poison queue)

A 429 holds back every request of this process until its Retry-After has passed, as the service
protection limits ask; a 401 refreshes the token once (see :class:`dataverse.auth.BearerAuth`).

Notifications and inbound messages go through :class:`dataverse.batch.Batcher`: concurrent calls
of :meth:`DataverseClient.notify` / :meth:`DataverseClient.inbound` leave together in one ``$batch``
(``DATAVERSE_BATCH_SIZE`` operations at most; 1 = every call its own request), each caller getting
its own operation's outcome; a lone call goes out at once, as a plain request. The
:class:`dataverse.batch.Pacer` adapts request rate, Dataverse time and batch size to the 429s.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import logging
import random
import re
import time
import uuid
from typing import Any, Protocol
from urllib.parse import quote, urlsplit
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
from core.telemetry import record_throttled_wait
from dataverse.auth import BearerAuth, MsalTokenProvider, TokenUnavailable
from dataverse.batch import (
    Batcher,
    BatchFormatError,
    Operation,
    Outcomes,
    Pacer,
    Pending,
    decode_batch,
    encode_batch,
    throttle_kind,
)
from dataverse.settings import ChannelApis, DataverseSettings

__all__ = [
    "DataverseClient",
    "DataverseError",
    "DataverseGateway",
    "DataversePermanentError",
    "DataverseTransientError",
]

log = logging.getLogger("sms.dataverse")

API_PATH = "/api/data/v9.2/"
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
    #: The actions relays call: Journeys' own, or the channel's custom APIs in front of them.
    apis: ChannelApis

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
        self.apis = settings.channel_apis
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
        self._pacer = Pacer(max_in_flight=cap, timeout_seconds=settings.timeout_seconds)
        self._api_path = urlsplit(self.settings.base_url or "").path + API_PATH
        self._batcher = (
            Batcher(
                send=self._send_batch,
                pacer=self._pacer,
                batch_size=settings.batch_size,
                retry=self._retry_in_process,
                long_pause=lambda pause: DataverseTransientError(
                    "dataverse: throttled", retry_after=pause, throttled=True
                ),
                max_pause=MAX_IN_PROCESS_SECONDS,
                on_throttled_wait=record_throttled_wait,
            )
            if settings.batch_size > 1
            else None
        )
        self._organization_id: str | None = settings.organization_id
        self._who_am_i = asyncio.Lock()
        self._batches_refused = False
        self._definitions: dict[str, UUID] = dict(settings.channel_definitions)

    # -- operations --------------------------------------------------------------------------

    async def notify(self, payload: NotificationPayload) -> None:
        await self._channel_api(self.apis.notification, {"notificationPayLoad": payload.to_wire_json()})

    async def inbound(self, payload: InboundPayload) -> None:
        await self._channel_api(self.apis.inbound, {"inboundPayLoad": payload.to_wire_json()})

    async def organization_id(self) -> str:
        if self._organization_id is None:
            async with self._who_am_i:  # one WhoAmI for the many relays that start together
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
        if self._batcher is not None:
            await self._batcher.aclose()
        await self._http.aclose()

    @property
    def pacer(self) -> Pacer:
        return self._pacer

    @property
    def _resume_at(self) -> float:
        """Every request of this process waits until then (a 429's Retry-After)."""
        return self._pacer.resume_at

    @_resume_at.setter
    def _resume_at(self, value: float) -> None:
        self._pacer.resume_at = value

    # -- batches -----------------------------------------------------------------------------

    async def _channel_api(self, api: str, body: dict[str, Any]) -> None:
        if self._batcher is None or self._batches_refused:
            await self._send("POST", api, json=body)
        else:
            await self._batcher.submit(Operation(api, body))

    async def _send_batch(self, operations: list[Operation], sent_at: float) -> Outcomes:
        """One request for ``operations`` (a plain call for one, a $batch for more); per operation
        None (accepted) or its DataverseError."""
        try:
            async with self._gate:
                if len(operations) == 1:
                    [operation] = operations
                    response = await self._request(
                        "POST",
                        operation.api,
                        content=operation.encoded_body(),
                        headers={"Content-Type": "application/json"},
                    )
                    return [None if response.is_success else self._failure(response, sent_at=sent_at)]
                boundary = f"batch_{uuid.uuid4().hex}"
                response = await self._request(
                    "POST",
                    "$batch",
                    content=encode_batch(operations, path_prefix=self._api_path, boundary=boundary),
                    headers={
                        "Content-Type": f'multipart/mixed; boundary="{boundary}"',
                        "Prefer": "odata.continue-on-error",
                    },
                )
        except DataverseError as exc:
            return [exc] * len(operations)
        return self._batch_outcomes(len(operations), response, sent_at)

    def _batch_outcomes(self, count: int, response: httpx.Response, sent_at: float) -> Outcomes:
        content_type = response.headers.get("content-type", "")
        if not response.is_success and not content_type.lower().startswith("multipart/"):
            failure = self._failure(response, sent_at=sent_at)  # the batch itself, before any operation ran
            if count > 1 and isinstance(failure, DataversePermanentError):
                # Dataverse will not take our $batch: nothing ran; relay one by one from now on
                log.error("dataverse refused a $batch (%s); relays are sent one by one from now on", failure)
                self._batches_refused = True
                if self._batcher is not None:
                    self._batcher.batch_size = 1  # what is already waiting goes alone too
                return [DataverseTransientError(f"{failure} ($batch refused; sent again alone)")] * count
            return [failure] * count
        try:
            parts = decode_batch(content_type, response.content)
        except BatchFormatError as exc:
            # Dataverse may have run some operations: like a timeout, they are tried again
            log.error("dataverse: unreadable $batch answer (HTTP %d, %s)", response.status_code, exc)
            error = DataverseTransientError(f"dataverse: unreadable $batch answer ({exc})")
            return [error] * count
        ids = [str(index) for index in range(1, count + 1)]
        by_id = {part.content_id: part for part in parts if part.content_id}
        if parts and len(by_id) == len(parts) and set(by_id) <= set(ids):
            answers = [by_id.get(content_id) for content_id in ids]
        elif len(parts) <= count:  # in request order; Dataverse stops at a failure without continue-on-error
            answers = [*parts, *[None] * (count - len(parts))]
        else:
            log.error("dataverse: $batch answer has %d parts for %d operations", len(parts), count)
            error = DataverseTransientError("dataverse: $batch answer does not match its operations")
            return [error] * count
        outcomes: Outcomes = []
        for answer in answers:
            if answer is None:
                outcomes.append(DataverseTransientError("dataverse: operation not run in its $batch"))
                continue
            part = httpx.Response(answer.status, headers=answer.headers, content=answer.body)
            outcomes.append(None if part.is_success else self._failure(part, sent_at=sent_at))
        return outcomes

    def _retry_in_process(self, item: Pending, error: BaseException) -> float | None:
        """Seconds before a failed operation is tried again in this process; None to give up (its
        job then goes back to the relay queue)."""
        if not isinstance(error, DataverseTransientError) or item.attempt + 1 >= MAX_ATTEMPTS:
            return None
        now = time.monotonic()
        if error.throttled:  # the pacer holds every request for the Retry-After
            wait, pause = 0.0, max(self._pacer.resume_at - now, 0.0)
        else:
            wait = pause = (
                error.retry_after
                if error.retry_after is not None
                else min(8.0, 0.5 * 2**item.attempt) + random.uniform(0, 0.5)
            )
        return None if now - item.submitted + pause > MAX_IN_PROCESS_SECONDS else wait

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
            sent_at = time.monotonic()
            response = await self._request(method, path, json=json)
        if response.is_success:
            return response
        raise self._failure(response, sent_at=sent_at)

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One HTTP exchange; transport failures become DataverseErrors."""
        try:
            return await self._http.request(method, path, **kwargs)
        except TokenUnavailable as exc:
            raise DataverseTransientError(f"dataverse: {exc}") from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise DataversePermanentError(f"dataverse: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise DataverseTransientError(f"dataverse: {type(exc).__name__}") from None

    async def _respect_throttling(self) -> None:
        # a later 429 may push the window further out while we sleep
        while (pause := self._resume_at - time.monotonic()) > 0:
            await asyncio.sleep(pause)
            record_throttled_wait(pause)

    def _failure(self, response: httpx.Response, *, sent_at: float | None = None) -> DataverseError:
        status = response.status_code
        code, message = _error(response)
        description = f"dataverse: HTTP {status} {code or ''} {message}".strip()
        if status == 429 or throttle_kind(code) is not None:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), default=5.0) or 0.0
            # holds every request of the process, and paces the batches that follow
            self._pacer.throttled(throttle_kind(code), retry_after, sent_at=sent_at)
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
