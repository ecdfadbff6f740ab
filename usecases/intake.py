"""Webhook intake: verify → parse → keep final events → build relay jobs → queue → acknowledge.

Verification comes before anything else; the Dataverse round trip happens later, from the relay
queue, so providers get their answer in milliseconds and Dataverse throttling never turns into
provider retry storms. Every refusal is an exception the HTTP layer answers from one table:

    UnknownProvider       no adapter of the app serves this provider
    PayloadTooLarge       more than the provider sends at once: the body is over its limit
                          (MAX_BODY_BYTES, Event Grid 1 MB), or over 5,000 Event Grid events
    WebhookRejected       not provably from the provider (401 missing, 403 wrong or stale)
    InvalidWebhook        authentic but unreadable
    StorageUnavailable    the relay queue did not take the jobs: the provider should retry
    ConfigurationError    the app's settings are broken (a verification secret missing included):
                          the provider should retry
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from channels.base import ProviderAdapter
from channels.events import (
    DeliveryEvent,
    DeliveryOutcome,
    InboundSms,
    InvalidWebhook,
    ParsedWebhook,
    PayloadTooLarge,
    WebhookAck,
    WebhookKind,
    WebhookRejected,
    WebhookRequest,
    webhook_route,
)
from contracts import ChannelStatus
from core import telemetry
from core.settings import ConfigurationError
from storage.ledger import SendKey
from storage.relay_queue import (
    InboundJob,
    NotificationJob,
    RelayJob,
    RelayQueue,
    fits_on_queue,
    reasons_summary,
)
from usecases.routing import ProviderRouter

__all__ = [
    # the webhook vocabulary the HTTP layer translates from and to
    "InvalidWebhook",
    "PayloadTooLarge",
    "UnknownProvider",
    "WebhookAck",
    "WebhookIntake",
    "WebhookKind",
    "WebhookRejected",
    "WebhookRequest",
    "relay_jobs",
    "webhook_route",
]

log = logging.getLogger("sms.webhooks")


class UnknownProvider(LookupError):
    """No adapter of this app serves the provider named in the route."""


class WebhookIntake:
    def __init__(
        self,
        *,
        router: ProviderRouter,
        queue: RelayQueue,
        max_body_bytes: int,
        public_base_url: str | None = None,
    ) -> None:
        self.router = router
        self.queue = queue
        self.max_body_bytes = max_body_bytes
        self.public_base_url = public_base_url

    async def receive(self, provider: str, kind: WebhookKind, request: WebhookRequest) -> WebhookAck:
        """Queue what the webhook reports and return the answer its provider expects.

        Span ``webhook intake``; each job carries its ``traceparent``, so the relay that the queue
        trigger runs later continues this trace (see ``usecases.observed.observe_relay``).
        """
        with telemetry.span("webhook intake", Provider=provider, Webhook=kind):
            return await self._receive(provider, kind, request)

    async def _receive(self, provider: str, kind: WebhookKind, request: WebhookRequest) -> WebhookAck:
        candidates = self.router.for_webhooks(provider)
        if not candidates:
            raise UnknownProvider(provider)
        limit = candidates[0].max_webhook_bytes or self.max_body_bytes
        if len(request.body) > limit:
            raise PayloadTooLarge(
                f"the body is {len(request.body)} bytes; this provider's webhooks may have {limit}"
            )
        request = self._as_published(request)
        adapter = authenticated_by(candidates, request)
        parsed = (
            adapter.parse_delivery_reports(request)
            if kind == "delivery-reports"
            else adapter.parse_inbound(request)
        )
        if parsed.handshake is not None:
            log.info("%s %s webhook: subscription validation answered", provider, kind)
            return parsed.handshake
        jobs, unrelayable = relay_jobs(parsed, traceparent=telemetry.traceparent())
        telemetry.annotate(Jobs=len(jobs), **(_job_fields(jobs[0]) if len(jobs) == 1 else {}))
        kept = [*parsed.unreadable, *unrelayable]
        if kept:  # one record and one line per delivery, however many events it held
            log.error(
                "%s %s webhook: %d event(s) cannot be relayed (%s); kept in one poison record",
                provider,
                kind,
                len(kept),
                reasons_summary(kept),
            )
            await self.queue.keep_unrelayable(provider, kind, kept)
        await self.queue.put_many(jobs)
        _log_queued(provider, jobs, parsed)
        return adapter.acknowledge(kind)

    def _as_published(self, request: WebhookRequest) -> WebhookRequest:
        """The URL the provider called (and signed), rebuilt from PUBLIC_BASE_URL: proxies change it."""
        if not self.public_base_url:
            return request
        parts = urlsplit(request.public_url)
        url = self.public_base_url.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")
        return dataclasses.replace(request, public_url=url)


def authenticated_by(candidates: list[ProviderAdapter], request: WebhookRequest) -> ProviderAdapter:
    """The account (adapter) whose credentials the request was signed with. If none: an account
    that could not tell for lack of a setting makes it a ConfigurationError (retry once fixed),
    else the first refusal."""
    refused: WebhookRejected | None = None
    misconfigured: ConfigurationError | None = None
    for adapter in candidates:
        try:
            adapter.verify_webhook(request)
            return adapter
        except WebhookRejected as rejected:
            refused = refused or rejected
        except ConfigurationError as exc:
            misconfigured = misconfigured or exc
    if misconfigured is not None:
        raise misconfigured
    assert refused is not None
    raise refused


def relay_jobs(
    parsed: ParsedWebhook, *, traceparent: str | None = None
) -> tuple[list[RelayJob], list[tuple[Any, str]]]:
    """One job per final delivery status and per inbound message (intermediates are not relayed),
    and the events that cannot become one, each with why: values no job can hold (blank ids,
    nested values) or a job too large for a queue message. Each job carries ``traceparent``."""
    jobs: list[RelayJob] = []
    unrelayable: list[tuple[Any, str]] = []
    events: list[DeliveryEvent | InboundSms] = [e for e in parsed.delivery_events if e.outcome.is_final]
    events += parsed.inbound
    for event in events:
        try:
            job = (
                notification_job(event, traceparent=traceparent)
                if isinstance(event, DeliveryEvent)
                else inbound_job(event, traceparent=traceparent)
            )
        except ValidationError as exc:
            fields = ", ".join(sorted({".".join(map(str, e["loc"])) for e in exc.errors()}))
            unrelayable.append((dataclasses.asdict(event), f"invalid values: {fields}"))
            continue
        if not fits_on_queue(job):
            unrelayable.append((job.model_dump(mode="json"), "too large for a queue message"))
            continue
        jobs.append(job)
    return jobs, unrelayable


def notification_job(event: DeliveryEvent, *, traceparent: str | None = None) -> NotificationJob:
    assert event.outcome is not DeliveryOutcome.INTERMEDIATE
    return NotificationJob(
        traceparent=traceparent,
        provider=event.provider,
        message_id=event.message_id,
        status=ChannelStatus(event.outcome.value),
        provider_status=event.provider_status,
        error_code=event.error_code,
        reason=event.reason,
        description=event.description,
        sender=event.sender,
        correlation=event.correlation,
    )


def inbound_job(message: InboundSms, *, traceparent: str | None = None) -> InboundJob:
    return InboundJob(
        traceparent=traceparent,
        provider=message.provider,
        message_id=message.message_id,
        customer=message.sender,
        our_number=message.recipient,
        text=message.text,
        concat_ref=message.concat_ref,
        concat_total=message.concat_total,
        concat_part=message.concat_part,
    )


def _job_fields(job: RelayJob) -> dict[str, object]:
    """A job's telemetry fields: ids and statuses, never a number or a text."""
    fields: dict[str, object] = {"ProviderMessageId": job.message_id, "Kind": job.kind}
    if isinstance(job, NotificationJob):
        fields["Status"] = job.status
        echoed = SendKey.from_reference(job.correlation)
        if echoed is not None:
            fields["ChannelDefinitionId"] = str(echoed.channel_definition_id)
            fields["IdempotencyId" if echoed.by_idempotency_id else "RequestId"] = echoed.value
    return fields


def _log_queued(provider: str, jobs: list[RelayJob], parsed: ParsedWebhook) -> None:
    for job in jobs:
        log.info("%s %s MessageId=%s queued", provider, job.kind, job.message_id, extra=_job_fields(job))
    for event in parsed.delivery_events:
        if not event.outcome.is_final:
            log.info(
                "%s delivery report MessageId=%s status=%s (intermediate, not relayed)",
                provider,
                _printable(event.message_id),
                _printable(event.provider_status),
            )


def _printable(value: object) -> str:
    """A provider's value for a log line: never raises, never more than a line."""
    return repr(value)[:100]
