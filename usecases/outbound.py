"""The outbound send: decide what to do with a payload, send at most once, remember the outcome.

A message is identified by its IdempotencyId when the payload has one (Journeys retries an attempt
that outlived its 20 seconds with the same IdempotencyId and, it seems, a new RequestId), else by its
RequestId. Every attempt at a message gets the one outcome, with its own RequestId echoed.

Time: the whole answer is due within ``send_budget_seconds`` of the request (Journeys allows the
plug-in 20 seconds, README "Twenty seconds"). Provider attempts are cut at the budget, less a
reserve for storing the outcome; an attempt cut while on the wire is ambiguous, never re-sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_before_delay,
    wait_exponential_jitter,
)

from channels.base import ProviderAdapter, SendReceipt, SendRequest
from channels.errors import (
    AmbiguousSendError,
    NotSentReason,
    PermanentSendError,
    TransientSendError,
    not_sent_message,
)
from contracts import ChannelStatus, Details, OutboundPayload
from core import telemetry
from core.phones import InvalidPhoneNumber, mask, to_e164
from core.segments import SegmentCount, count_segments
from storage.errors import StorageUnavailable
from storage.ledger import SendKey, SendLedger, SendRecord, SendState

__all__ = ["OutboundService", "SendOutcome", "TryAgainLater"]

log = logging.getLogger("sms.outbound")

IDEMPOTENCY_NAMESPACE = uuid.UUID("0f8a4c52-3f8e-4d8e-b7b4-2f3bb1c7d9a1")
BACKOFF = wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.2)
#: How often a duplicate request looks again at a send that another request has in flight.
IN_FLIGHT_POLL_SECONDS = 0.1
#: Kept from the budget, after the last provider attempt, for storing the outcome.
OUTCOME_RESERVE_SECONDS = 1.0
#: How long a claim outlives the send budget before a repeat may decide the owner died.
LEASE_MARGIN_SECONDS = 10.0
#: No provider attempt starts with less of the budget left (at most half the provider budget): one
#: cut before its request was written would still count as maybe sent, and a message never sent
#: would be answered Sent. Without the time, the answer is 503: nothing sent, retry.
MIN_ATTEMPT_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """A final answer for the caller: Sent (with the provider's id, if known) or NotSent (with why)."""

    status: ChannelStatus
    message_id: str | None = None
    details: Details | None = None

    @classmethod
    def not_sent(cls, reason: NotSentReason, message: str | None = None) -> SendOutcome:
        return cls(
            ChannelStatus.NOT_SENT,
            details=Details(reason=reason.value, message=message or not_sent_message(reason)),
        )

    @property
    def reason(self) -> str | None:
        return self.details.reason if self.details else None


@dataclass(frozen=True, slots=True)
class TryAgainLater:
    """Nothing was sent; the caller may retry the same RequestId after ``retry_after`` seconds."""

    retry_after: float
    reason: str


@dataclass(frozen=True, slots=True)
class _Rejection:
    reason: NotSentReason
    detail: str


@dataclass(frozen=True, slots=True)
class _Final:
    """A repeat found the send decided: its outcome is the answer."""

    record: SendRecord


class OutboundService:
    def __init__(
        self,
        *,
        ledger: SendLedger,
        adapter_for: Callable[[str], ProviderAdapter | None],
        max_segments: int,
        send_budget_seconds: float,
        default_region: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        #: The adapter that sends for a sender (the payload's From); None = no route for it.
        self.adapter_for = adapter_for
        self.ledger = ledger
        self.max_segments = max_segments
        self.budget = send_budget_seconds
        # Provider attempts end by then; the rest of the budget stores the outcome.
        self.provider_budget = max(send_budget_seconds - OUTCOME_RESERVE_SECONDS, send_budget_seconds / 2)
        self.min_attempt_seconds = min(MIN_ATTEMPT_SECONDS, self.provider_budget / 2)
        # Outlives the longest the owner can take: the budget (attempts are cut at its end), plus
        # storage round trips.
        self.lease_seconds = send_budget_seconds + LEASE_MARGIN_SECONDS
        self.default_region = default_region
        self._sleep = sleep

    async def send(self, payload: OutboundPayload) -> SendOutcome | TryAgainLater:
        """Send once (span ``outbound send``; the provider calls are its children)."""
        with telemetry.span(
            "outbound send",
            RequestId=payload.request_id,
            IdempotencyId=payload.idempotency_id,
            ChannelDefinitionId=payload.channel_definition_id,
            IsTestSend=payload.is_test_send,
        ):
            answer = await self._send(payload)
            if isinstance(answer, SendOutcome):
                telemetry.annotate(Status=answer.status, ProviderMessageId=answer.message_id)
            else:
                telemetry.annotate(Status="TryAgainLater")
            return answer

    async def _send(self, payload: OutboundPayload) -> SendOutcome | TryAgainLater:
        started = time.monotonic()
        deadline = started + self.budget
        adapter = self.adapter_for(payload.from_)
        text = payload.message.get("text", "")
        count = count_segments(text)
        telemetry.annotate(Provider=adapter.name if adapter else None, Segments=count.segments)
        recipient, rejection = self._validate(payload, count)
        if adapter is None and rejection is None:
            rejection = _Rejection(NotSentReason.INVALID_SENDER, "SENDER_ROUTES has no route for this From")
        key = SendKey.of(payload.channel_definition_id, payload.request_id, payload.idempotency_id)
        draft = SendRecord(
            channel_definition_id=payload.channel_definition_id,
            request_id=payload.request_id,
            idempotency_id=payload.idempotency_id,
            state=SendState.NOT_SENT if rejection else SendState.SENDING,
            provider=adapter.name if adapter is not None else "unrouted",
            sender=payload.from_,
            fingerprint=_fingerprint(payload),
            idempotency_key=uuid.uuid5(IDEMPOTENCY_NAMESPACE, key.reference),
            first_attempt_at=self.ledger.now,
            lease_until=self.ledger.lease(self.lease_seconds),
            expires_at=self.ledger.expiry(),
            segments=count.segments,
            encoding=count.encoding.value,
            is_test_send=payload.is_test_send,
            reason=rejection.reason.value if rejection else None,
            detail=not_sent_message(rejection.reason) if rejection else None,
            owner=uuid.uuid4().hex,
        )
        context = _log_context(payload, recipient)
        if payload.is_test_send:
            log.info("test send %s", context)

        created, record = await self.ledger.claim(draft)
        while not created:
            if record.fingerprint != draft.fingerprint:
                reused = "IdempotencyId" if key.by_idempotency_id else "RequestId"
                log.warning("%s reused with a different message %s", reused, context)
                if record.state.is_final:
                    return _outcome_of(record)  # not an attempt at that message: reports keep their name
                return SendOutcome.not_sent(
                    NotSentReason.IDEMPOTENCY_ID_REUSED
                    if key.by_idempotency_id
                    else NotSentReason.REQUEST_ID_REUSED
                )
            decision = await self._resume(
                record, deadline, owner=draft.owner, payload=payload, adapter=adapter
            )
            if isinstance(decision, TryAgainLater):
                return decision
            if isinstance(decision, _Final):
                return await self._answer_repeat(decision.record, payload, context)
            record = decision  # this request now owns the send
            created = True

        if rejection is not None:
            if record.state is not SendState.NOT_SENT:
                await self._store_quietly(
                    record,
                    context,
                    state=SendState.NOT_SENT,
                    reason=rejection.reason.value,
                    detail=not_sent_message(rejection.reason),
                )
            _decided(draft.provider, "NotSent", rejection.reason.value)
            log.info(
                "NotSent %s reason=%s: %s",
                context,
                rejection.reason,
                rejection.detail,
                extra={"Status": "NotSent", "Reason": rejection.reason.value},
            )
            return SendOutcome.not_sent(rejection.reason)

        assert recipient is not None
        request = SendRequest(
            request_id=payload.request_id,
            channel_definition_id=payload.channel_definition_id,
            reference=key.reference,
            sender=payload.from_,
            recipient=recipient,
            text=text,
            idempotency_key=record.idempotency_key,
            first_attempt_at=record.first_attempt_at,
        )
        assert adapter is not None  # no route is a rejection, handled above
        return await self._send_owned(adapter, record, request, started + self.provider_budget, context)

    async def _answer_repeat(self, record: SendRecord, payload: OutboundPayload, context: str) -> SendOutcome:
        """The decided outcome, for another attempt at the message: its RequestId becomes the one
        delivery reports name (the latest answered). Failing to note that costs only the name."""
        if payload.request_id != record.latest_request_id:
            try:
                await self.ledger.record_answer(record, payload.request_id)
            except StorageUnavailable as exc:
                log.error("answered %s but could not note it as the latest attempt (%s)", context, exc)
        return _outcome_of(record)

    def _validate(
        self, payload: OutboundPayload, count: SegmentCount
    ) -> tuple[str | None, _Rejection | None]:
        try:
            recipient = to_e164(payload.to, default_region=self.default_region)
        except InvalidPhoneNumber as exc:
            return None, _Rejection(NotSentReason.INVALID_RECIPIENT, f"To is {exc}")
        text = payload.message.get("text")
        if text is None or not text.strip():
            return recipient, _Rejection(NotSentReason.EMPTY_MESSAGE, "the message has no text part")
        if count.segments > self.max_segments:
            return recipient, _Rejection(
                NotSentReason.TOO_MANY_SEGMENTS,
                f"{count.segments} {count.encoding} segments, MAX_SEGMENTS is {self.max_segments}",
            )
        return recipient, None

    async def _resume(
        self,
        record: SendRecord,
        deadline: float,
        *,
        owner: str,
        payload: OutboundPayload,
        adapter: ProviderAdapter | None,
    ) -> _Final | TryAgainLater | SendRecord:
        """Decide about a message that an earlier call already claimed.

        Returns the decided send, or the record once this call has taken the send over.
        """
        while True:
            if record.state.is_final:
                return _Final(record)
            now = datetime.now(timezone.utc)
            # the attempt taking a send over is the one whose answer carries the outcome
            answering = None if payload.request_id == record.request_id else payload.request_id
            if record.state is SendState.RETRYABLE:
                # nothing went out: a fresh attempt, with fresh provider idempotency data
                taken = await self._take_over(
                    record,
                    owner,
                    idempotency_key=uuid.uuid4(),
                    first_attempt_at=self.ledger.now,
                    provider=adapter.name if adapter is not None else record.provider,
                    answered_request_id=answering,
                )
            elif record.lease_until > now:
                # another call is sending this very message: wait for its outcome
                if time.monotonic() + IN_FLIGHT_POLL_SECONDS >= deadline:
                    return TryAgainLater(1.0, "a send of this message is in progress")
                await self._sleep(IN_FLIGHT_POLL_SECONDS)
                taken = None
            elif self._can_resend_safely(record, now, adapter):
                taken = await self._take_over(record, owner, answered_request_id=answering)
            else:
                # the call that claimed it died mid-send: the provider may have the message
                log.warning(
                    "send of RequestId=%s interrupted before its outcome was stored; not re-sending",
                    record.request_id,
                )
                marked = await self.ledger.replace_if_unchanged(record, state=SendState.AMBIGUOUS)
                if marked is not None:
                    return _Final(marked)
                taken = None
            if taken is not None:
                return taken
            latest = await self.ledger.get(record.key)
            if latest is None:
                return TryAgainLater(1.0, "send state vanished; retry")
            record = latest

    @staticmethod
    def _can_resend_safely(record: SendRecord, now: datetime, adapter: ProviderAdapter | None) -> bool:
        # only through the provider the first attempt used (routes may have changed since)
        same_provider = adapter is not None and adapter.name == record.provider
        window = adapter.idempotent_resend_window if adapter is not None and same_provider else None
        return window is not None and now - record.first_attempt_at < window

    async def _take_over(self, record: SendRecord, owner: str, **changes: Any) -> SendRecord | None:
        return await self.ledger.replace_if_unchanged(
            record,
            state=SendState.SENDING,
            owner=owner,
            lease_until=self.ledger.lease(self.lease_seconds),
            **changes,
        )

    async def _send_owned(
        self,
        adapter: ProviderAdapter,
        record: SendRecord,
        request: SendRequest,
        deadline: float,
        context: str,
    ) -> SendOutcome | TryAgainLater:
        try:
            receipt = await self._send_with_retries(adapter, request, deadline)
        except PermanentSendError as exc:
            message = not_sent_message(exc.reason, provider=adapter.name, provider_code=exc.provider_code)
            # refused for good: the answer stands even if storage fails now
            await self._store_quietly(
                record, context, state=SendState.NOT_SENT, reason=exc.reason.value, detail=message
            )
            _decided(adapter.name, "NotSent", exc.reason.value)
            log.info(
                "NotSent %s reason=%s: %s",
                context,
                exc.reason,
                exc.detail,
                extra={"Status": "NotSent", "Reason": exc.reason.value},
            )
            return SendOutcome.not_sent(exc.reason, message)
        except TransientSendError as exc:
            await self.ledger.replace_if_unchanged(record, state=SendState.RETRYABLE, reason=exc.detail[:200])
            retry_after = max(exc.retry_after or 0.0, 1.0)
            _decided(adapter.name, "TryAgainLater", "ProviderUnavailable")
            log.warning(
                "not sent yet %s: %s; caller may retry after %.0fs",
                context,
                exc.detail,
                retry_after,
                extra={"Status": "TryAgainLater"},
            )
            return TryAgainLater(retry_after, "the SMS provider is unavailable; retry the same RequestId")
        except Exception as exc:
            if isinstance(exc, AmbiguousSendError):
                detail = exc.detail
            else:
                log.exception("unexpected failure while sending %s", context)
                detail = f"unexpected {type(exc).__name__}"
            await self._store_quietly(record, context, state=SendState.AMBIGUOUS, reason="Ambiguous")
            _decided(adapter.name, "Sent", "Ambiguous")
            log.warning(
                "outcome unknown %s: %s; answering Sent without MessageId, never re-sending",
                context,
                detail,
                extra={"Status": "Sent", "Reason": "Ambiguous"},
            )
            return SendOutcome(ChannelStatus.SENT)

        # The message is out: from here on nothing may turn the answer into a failure.
        stored = await self._store_quietly(
            record,
            context,
            state=SendState.SENT,
            message_id=receipt.message_id,
            parts=receipt.parts,
            reason=None,
        )
        try:
            # reports that name the request find it in the row just stored: one write fewer
            if not (stored and receipt.reports_carry_reference and receipt.parts == 1):
                await self.ledger.remember_message(
                    record, receipt.message_id, receipt.part_message_ids, receipt.refused_parts
                )
        except StorageUnavailable as exc:
            log.error(
                "Sent %s but its message record was not stored (%s); its delivery reports "
                "cannot be matched by message id",
                context,
                exc,
            )
        _decided(adapter.name, "Sent")
        log.info(
            "Sent %s MessageId=%s segments=%d",
            context,
            receipt.message_id,
            record.segments,
            extra={"Status": "Sent", "ProviderMessageId": receipt.message_id, "Segments": record.segments},
        )
        return SendOutcome(ChannelStatus.SENT, message_id=receipt.message_id)

    async def _store_quietly(self, record: SendRecord, context: str, **changes: Any) -> bool:
        """Record an outcome whose answer is already decided; a storage failure is only logged.

        Returns whether the row now holds it."""
        try:
            stored = await self.ledger.replace_if_unchanged(record, **changes)
        except StorageUnavailable as exc:
            log.error("outcome of %s not stored (%s)", context, exc)
            return False
        if stored is None:
            log.warning("send state of %s was changed by another call while sending", context)
            return False
        return True

    async def _send_with_retries(
        self, adapter: ProviderAdapter, request: SendRequest, deadline: float
    ) -> SendReceipt:
        resend_safe = adapter.idempotent_resend_window is not None
        maybe_sent = False

        def retryable(exc: BaseException) -> bool:
            if deadline - time.monotonic() < self.min_attempt_seconds:
                return False
            if isinstance(exc, TransientSendError):
                return exc.retry_after is None or time.monotonic() + exc.retry_after < deadline
            return resend_safe and isinstance(exc, AmbiguousSendError)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, TransientSendError) and exc.retry_after is not None:
                return exc.retry_after
            return BACKOFF(state)

        retrying = AsyncRetrying(
            retry=retry_if_exception(retryable),
            wait=wait,
            stop=stop_before_delay(max(deadline - time.monotonic(), 0.0)),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with (
                    attempt,
                    telemetry.span(
                        f"{adapter.name} send",
                        Provider=adapter.name,
                        Attempt=attempt.retry_state.attempt_number,
                    ),
                ):
                    if deadline - time.monotonic() < self.min_attempt_seconds:
                        raise TransientSendError(f"{adapter.name}: too little of the send budget left to try")
                    try:
                        receipt = await _within(deadline, adapter.send(request), adapter.name)
                        telemetry.annotate(ProviderMessageId=receipt.message_id)
                        return receipt
                    except AmbiguousSendError:
                        maybe_sent = True
                        raise
        except TransientSendError as exc:
            if maybe_sent:  # an earlier attempt may have gone out: this is no longer "nothing sent"
                raise AmbiguousSendError(f"{exc.detail}, after an attempt without an answer") from exc
            raise
        raise AssertionError("unreachable: tenacity reraises the last failure")  # pragma: no cover


async def _within(deadline: float, send: Awaitable[SendReceipt], provider: str) -> SendReceipt:
    """One provider attempt, cut at the deadline. Cut on the wire, it may have reached the provider."""
    remaining = max(deadline - time.monotonic(), 0.0)
    try:
        if sys.version_info >= (3, 11):  # a timeout scope: no task per attempt, unlike wait_for
            async with asyncio.timeout(remaining):
                return await send
        return await asyncio.wait_for(send, timeout=remaining)
    except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
        raise AmbiguousSendError(f"{provider}: no answer within the send budget") from None


def _decided(provider: str, status: str, reason: str | None = None) -> None:
    """Count a send decided by this call (a repeat answering a stored outcome is not counted)."""
    attributes = {"Provider": provider, "Status": status}
    if reason:
        attributes["Reason"] = reason
    telemetry.SENDS.add(1, attributes)


def _outcome_of(record: SendRecord) -> SendOutcome:
    if record.state is SendState.NOT_SENT:
        try:
            reason = NotSentReason(record.reason)
        except ValueError:  # not a reason of this version: stored by another one
            reason = NotSentReason.PROVIDER_REJECTED
        return SendOutcome.not_sent(reason, record.detail)
    return SendOutcome(ChannelStatus.SENT, message_id=record.message_id)


def _fingerprint(payload: OutboundPayload) -> str:
    material = "\x1f".join([payload.from_, payload.to, payload.message.get("text", "")])
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:32]


def _log_context(payload: OutboundPayload, recipient: str | None) -> str:
    idempotency = f" IdempotencyId={payload.idempotency_id}" if payload.idempotency_id else ""
    return (
        f"RequestId={payload.request_id}{idempotency} ChannelDefinitionId={payload.channel_definition_id} "
        f"To={mask(recipient or payload.to)}"
    )
