"""Traces, metrics and structured log fields, through the OpenTelemetry API only.

The app never configures an SDK or an exporter: in Azure the Functions Python worker configures the
Azure Monitor distro (``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY``, see ``function_app``), tests
install the SDK's in-memory exporters, and the local host can print spans (``--trace-console``).
Until one of them does, every call here is a no-op of the API's proxies.

Field names are the same on spans, metrics and log records, so one ``customDimensions.RequestId``
finds a send in requests, dependencies and traces alike:

    RequestId, ChannelDefinitionId      the Journeys request
    Provider, ProviderMessageId         the SMS provider and its id for the message
    Status, Segments, Attempt, Kind     outcome, SMS parts, retry count, relay job kind

Never a phone number, a message text, a token or a secret.

Log records get the fields of the scope they are written in (:func:`dimensions`, :func:`annotate`)
through a filter on the app's loggers (``APP_LOGGERS``): the Azure Monitor log exporter turns a
record's extra attributes into custom dimensions. ``extra={...}`` on a call adds or overrides fields.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from enum import Enum
from typing import Literal

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

__all__ = [
    "APP_LOGGERS",
    "POISONED",
    "RELAYS",
    "RELAY_LAG",
    "SENDS",
    "RelayRun",
    "annotate",
    "context_from",
    "dimensions",
    "note_relay_outcome",
    "record_throttled_wait",
    "relay_run",
    "span",
    "traceparent",
]

tracer = trace.get_tracer("sms")
meter = metrics.get_meter("sms")

SENDS = meter.create_counter(
    "sms.sends", unit="{send}", description="Outbound sends decided, by Provider, Status and Reason"
)
RELAYS = meter.create_counter(
    "sms.relays",
    unit="{job}",
    description="Relay jobs by Provider, Kind, Status and Outcome (relayed, retried, poisoned, skipped)",
)
RELAY_LAG = meter.create_histogram(
    "sms.relay.lag",
    unit="s",
    description="From the webhook queuing a report or message (job received_at) to Dataverse accepting it",
)
POISONED = meter.create_counter(
    "sms.relay.poisoned", unit="{message}", description="Messages put on relay-jobs-poison by Provider, Kind"
)
DATAVERSE_THROTTLED_WAIT = meter.create_counter(
    "sms.dataverse.throttled_wait",
    unit="s",
    description="Time requests waited out a Dataverse service-protection Retry-After in-process",
)

#: Every logger of the app; each carries the scope's fields (a test keeps this list complete).
APP_LOGGERS = (
    "sms.dataverse",
    "sms.health",
    "sms.outbound",
    "sms.providers",
    "sms.relay",
    "sms.retention",
    "sms.simulator",
    "sms.storage",
    "sms.webhooks",
)

_PROPAGATOR = TraceContextTextMapPropagator()
_FIELDS: ContextVar[dict[str, AttributeValue] | None] = ContextVar("sms_log_fields", default=None)


def _clean(fields: Mapping[str, object]) -> dict[str, AttributeValue]:
    """Attribute values: None dropped, str/bool/int/float kept, anything else (UUIDs, enums) as text."""
    cleaned: dict[str, AttributeValue] = {}
    for key, value in fields.items():
        if isinstance(value, Enum):
            value = value.value
        if value is None:
            continue
        cleaned[key] = value if isinstance(value, (str, bool, int, float)) else str(value)
    return cleaned


class _ScopeFields(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_FIELDS.get() or {}).items():
            record.__dict__.setdefault(key, value)
        return True


_FILTER = _ScopeFields()
for _name in APP_LOGGERS:
    logging.getLogger(_name).addFilter(_FILTER)


@contextmanager
def dimensions(**fields: object) -> Iterator[None]:
    """Log records written inside carry ``fields`` (and those of enclosing scopes)."""
    token = _FIELDS.set({**(_FIELDS.get() or {}), **_clean(fields)})
    try:
        yield
    finally:
        _FIELDS.reset(token)


def annotate(**fields: object) -> None:
    """Add ``fields`` to the current span and to the current :func:`dimensions` scope."""
    cleaned = _clean(fields)
    trace.get_current_span().set_attributes(cleaned)
    scope = _FIELDS.get()
    if scope is not None:
        scope.update(cleaned)


@contextmanager
def span(
    name: str,
    *,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    context: otel_context.Context | None = None,
    links: list[trace.Link] | None = None,
    **attributes: object,
) -> Iterator[trace.Span]:
    """A span that is also a :func:`dimensions` scope with the same fields.

    A failure marks it ERROR with the exception's type only: exception messages can quote what a
    provider or Dataverse said, phone numbers included, so they are never recorded.
    """
    cleaned = _clean(attributes)
    with (
        tracer.start_as_current_span(
            name,
            context=context,
            kind=kind,
            attributes=cleaned,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as current,
        dimensions(**cleaned),
    ):
        try:
            yield current
        except BaseException as exc:
            current.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
            current.set_attribute("ErrorType", type(exc).__name__)
            raise


def traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, to carry across the queue; None outside a span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def context_from(traceparent_value: str | None) -> otel_context.Context | None:
    """The trace context a carried ``traceparent`` names (None if there is none or it is invalid)."""
    if not traceparent_value:
        return None
    extracted = _PROPAGATOR.extract({"traceparent": traceparent_value})
    valid = trace.get_current_span(extracted).get_span_context().is_valid
    return extracted if valid else None


def record_throttled_wait(seconds: float) -> None:
    """Dataverse's client waited ``seconds`` for a service-protection window to pass."""
    if seconds > 0:
        DATAVERSE_THROTTLED_WAIT.add(seconds)


# -- what one relay invocation did -------------------------------------------------------------

RelayOutcome = Literal["relayed", "poisoned", "retried", "skipped"]
#: When several happen in one invocation, the first of these names it.
_PRECEDENCE: tuple[RelayOutcome, ...] = ("relayed", "poisoned", "retried", "skipped")


class RelayRun:
    """The outcome of one relay invocation, noted by the parts it passes through."""

    def __init__(self) -> None:
        self.noted: set[RelayOutcome] = set()

    @property
    def outcome(self) -> RelayOutcome:
        return next((o for o in _PRECEDENCE if o in self.noted), "skipped")


_RELAY_RUN: ContextVar[RelayRun | None] = ContextVar("sms_relay_run", default=None)


@contextmanager
def relay_run() -> Iterator[RelayRun]:
    run = RelayRun()
    token = _RELAY_RUN.set(run)
    try:
        yield run
    finally:
        _RELAY_RUN.reset(token)


def note_relay_outcome(outcome: RelayOutcome) -> None:
    """Inside a relay invocation: Dataverse accepted it, or it was poisoned or re-queued."""
    run = _RELAY_RUN.get()
    if run is not None:
        run.noted.add(outcome)
