"""Telemetry around the relay: its span across the queue, its outcome, and the Dataverse calls.

**One trace per provider callback.** The webhook's ``traceparent`` travels in the relay job; the
relay span (kind CONSUMER, so Application Insights lists it with the requests) takes it as its
*parent*, so provider webhook → queue → relay → Dataverse is one trace (one ``operation_Id``). The
span of the queue-trigger invocation itself (the Functions host's, when it sends one) becomes a
*link*: it stays reachable without splitting the path in two. A job queued without a traceparent
(before this version, or by hand) is a child of the invocation, as any span would be. A re-queued
or replayed job keeps its traceparent, so its later attempts join the same trace.

**Outcome.** ``relayed`` (Dataverse accepted it), ``poisoned``, ``retried`` (re-queued for later:
Dataverse failing, message id not known yet, duplicate in flight) or ``skipped`` (already relayed,
waiting for further parts, dropped). The relay service is left alone: the Dataverse gateway below
and the relay queue note what happened (:func:`core.telemetry.note_relay_outcome`).

**Lag.** ``sms.relay.lag`` runs from the job's ``received_at`` (when the webhook queued it) to
Dataverse accepting it: no adapter parses a provider timestamp today, so the provider's own delay
before calling the webhook is not in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from opentelemetry import trace

from contracts import InboundPayload, NotificationPayload
from core import telemetry
from dataverse.client import DataverseGateway
from storage.relay_queue import NotificationJob, RelayJob

__all__ = ["ObservedDataverse", "observe_relay"]


@contextmanager
def observe_relay(job: RelayJob) -> Iterator[None]:
    """Span ``relay``, its log fields, and the relay metrics, around relaying one job."""
    parent = telemetry.context_from(job.traceparent)
    invocation = trace.get_current_span().get_span_context()
    links = [trace.Link(invocation)] if parent is not None and invocation.is_valid else []
    fields: dict[str, object] = {
        "Provider": job.provider,
        "ProviderMessageId": job.message_id,
        "Kind": job.kind,
        "Attempt": job.attempt,
        "JobId": job.job_id,
    }
    if isinstance(job, NotificationJob):
        fields["Status"] = job.status
    with (
        telemetry.relay_run() as run,
        telemetry.span(
            "relay",
            kind=trace.SpanKind.CONSUMER,
            context=parent,  # None: the invocation's own context is the parent
            links=links,
        ),
    ):
        telemetry.annotate(**fields)
        try:
            yield
        finally:
            telemetry.annotate(Outcome=run.outcome)
            names: tuple[str, ...] = ("Provider", "Kind", "Status")
            metric = {name: str(fields[name]) for name in names if name in fields}
            telemetry.RELAYS.add(1, {**metric, "Outcome": run.outcome})
            if run.outcome == "relayed":
                lag = (datetime.now(timezone.utc) - job.received_at).total_seconds()
                telemetry.RELAY_LAG.record(max(lag, 0.0), metric)


class ObservedDataverse:
    """A Dataverse gateway whose two channel calls are spans that note a relayed job.

    The HTTP requests below them (and their retries) are the httpx instrumentation's spans.
    Everything else is the wrapped gateway's, unchanged.
    """

    def __init__(self, inner: DataverseGateway) -> None:
        self._inner = inner
        self.mode = inner.mode
        self.apis = inner.apis

    async def notify(self, payload: NotificationPayload) -> None:
        # the relay span and its log lines learn the RequestId
        telemetry.annotate(
            RequestId=payload.request_id,
            ChannelDefinitionId=payload.channel_definition_id,
            ProviderMessageId=payload.message_id,
            Status=payload.status,
        )
        with telemetry.span(
            "Dataverse notification",
            Api=self.apis.notification,
            Mode=self.mode,
            RequestId=payload.request_id,
            ChannelDefinitionId=payload.channel_definition_id,
            ProviderMessageId=payload.message_id,
            Provider=payload.status_details.get("Provider"),
            Status=payload.status,
        ):
            await self._inner.notify(payload)
        telemetry.note_relay_outcome("relayed")

    async def inbound(self, payload: InboundPayload) -> None:
        telemetry.annotate(ChannelDefinitionId=payload.channel_definition_id)
        with telemetry.span(
            "Dataverse inbound",
            Api=self.apis.inbound,
            Mode=self.mode,
            ChannelDefinitionId=payload.channel_definition_id,
        ):
            await self._inner.inbound(payload)
        telemetry.note_relay_outcome("relayed")

    async def organization_id(self) -> str:
        return await self._inner.organization_id()

    async def channel_definition_for(self, contact_point: str) -> UUID | None:
        return await self._inner.channel_definition_for(contact_point)

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __getattr__(self, name: str) -> Any:
        # whatever else the gateway offers (and a test may look at) passes through untouched
        return getattr(self._inner, name)
