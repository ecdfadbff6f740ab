"""Traces, metrics and log fields of a Twilio send, its signed status callback and the relay.

The OpenTelemetry SDK's in-memory exporters stand in for Azure Monitor. A process can install its
global tracer and meter providers once: a session fixture does it, and every test reads only what
it produced (spans cleared, metrics read as deltas). The httpx instrumentation (which the Azure
Monitor distro turns on in Azure) is on for this module only.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import re
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import azure.functions as func
import pytest
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from twilio.request_validator import RequestValidator

import function_app
from core import telemetry
from dataverse.batch import Batcher, Operation, Pacer
from storage.relay_queue import NotificationJob
from tests.conftest import CUSTOMER, OUR_NUMBER, DataverseWorld, RelayQueues, payload_json
from tests.doubles import app_function
from tests.fakes.azurite import Azurite
from tests.fakes.http import FakeHttpServer
from tests.fakes.providers import FakeTwilio
from usecases.composition import Services

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT_SID = "AC" + "7" * 32
PUBLIC = "https://sms.example.org"
TEXT = "Your table for 4 is booked at 19:30"
#: What must never be in an attribute or a log field: both numbers (with or without +) and the text.
SECRETS_OF_THE_CUSTOMER = (CUSTOMER, CUSTOMER[1:], OUR_NUMBER, OUR_NUMBER[1:], TEXT)
#: Attributes every LogRecord has; the rest are the fields a log exporter turns into dimensions.
STANDARD_RECORD = set(vars(logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None))) | {"message"}


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        [found] = self.named(name)
        return found

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Metric name -> (attributes, data point), for what was recorded since the last read."""
        data = self.reader.get_metrics_data()
        found: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for m in scope.metrics:
                    found.setdefault(m.name, []).extend(
                        (dict(p.attributes or {}), p) for p in m.data.data_points
                    )
        return found

    def counts(self, metrics: dict[str, list[tuple[dict[str, Any], Any]]], name: str) -> list[Any]:
        return [(attributes, point.value) for attributes, point in metrics.get(name, [])]


@pytest.fixture(scope="session")
def _providers() -> Telemetry:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(tracer_provider)
    delta = AggregationTemporality.DELTA
    reader = InMemoryMetricReader(preferred_temporality={Counter: delta, Histogram: delta})
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    if trace.get_tracer_provider() is not tracer_provider:
        pytest.fail("another tracer provider was installed first in this process")
    return Telemetry(exporter, reader)


@pytest.fixture(scope="module")
def _httpx_spans(_providers: Telemetry) -> Iterator[None]:
    instrumentor = HTTPXClientInstrumentor()
    instrumentor.instrument()
    yield
    instrumentor.uninstrument()


@pytest.fixture
def otel(_providers: Telemetry, _httpx_spans: None) -> Telemetry:
    _providers.spans.clear()
    _providers.reader.get_metrics_data()  # start the deltas here
    return _providers


# -- the app, in-process, against fake Twilio, Azurite and a fake Dataverse --------------------------


@pytest.fixture
def twilio_token() -> str:
    return secrets.token_hex(16)


@pytest.fixture
def fake_twilio(twilio_token: str) -> Iterator[FakeHttpServer]:
    # message ids unique to this run: relayed events are remembered in the session's Azurite
    fake = FakeTwilio(ACCOUNT_SID, twilio_token, _ids=itertools.count(secrets.randbits(64)))
    with FakeHttpServer(fake) as server:
        yield server


@pytest.fixture
async def services(
    azurite: Azurite,
    fake_twilio: FakeHttpServer,
    twilio_token: str,
    dataverse_world: DataverseWorld,
    relay_queues: RelayQueues,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Services]:
    for name, value in {
        "AzureWebJobsStorage": azurite.connection_string,
        "SMS_PROVIDER": "twilio",
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": twilio_token,
        "TWILIO_API_BASE_URL": fake_twilio.url,
        "PUBLIC_BASE_URL": PUBLIC,
        **dataverse_world.env(),
    }.items():
        monkeypatch.setenv(name, value)
    built = Services()
    yield built
    await built.aclose()


async def send(services: Services, request_id: str, *, to: str = CUSTOMER) -> dict[str, Any]:
    body = payload_json(uuid.UUID(int=0xC0FFEE), request_id, to=to, text=TEXT)
    request = func.HttpRequest(
        "POST",
        "http://localhost/api/outbound",
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    response = await app_function(services, "outbound")(request)
    answer: dict[str, Any] = json.loads(response.get_body())
    return answer


async def status_callback(
    services: Services, callback_url: str, message_id: str, token: str, status: str = "delivered"
) -> func.HttpResponse:
    params = {
        "MessageSid": message_id,
        "SmsSid": message_id,
        "MessageStatus": status,
        "SmsStatus": status,
        "AccountSid": ACCOUNT_SID,
        "From": OUR_NUMBER,
        "To": CUSTOMER,
        "ApiVersion": "2010-04-01",
    }
    parts = urlsplit(callback_url)
    request = func.HttpRequest(
        "POST",
        "http://localhost:7071" + parts.path + (f"?{parts.query}" if parts.query else ""),
        body=urlencode(params).encode(),
        headers={
            "X-Twilio-Signature": RequestValidator(token).compute_signature(callback_url, params),
            "Content-Type": "application/x-www-form-urlencoded",
        },
        params=dict(parse_qsl(parts.query)),
        route_params={"provider": "twilio"},
    )
    response: func.HttpResponse = await app_function(services, "delivery_reports")(request)
    return response


async def relay_what_is_queued(services: Services, relay_queues: RelayQueues) -> list[NotificationJob]:
    """Run the queue trigger on every queued job, as the Functions host would."""
    relayed: list[NotificationJob] = []
    for message in relay_queues.jobs.receive_messages(max_messages=32, visibility_timeout=60):
        body = base64.b64decode(message.content)
        job = NotificationJob.model_validate_json(body)
        await app_function(services, "relay")(msg=func.QueueMessage(id=message.id, body=body))
        relay_queues.jobs.delete_message(message)
        relayed.append(job)
    return relayed


def children(otel: Telemetry, parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in otel.finished() if s.parent is not None and s.parent.span_id == parent.context.span_id]


def descendants(otel: Telemetry, root: ReadableSpan) -> list[ReadableSpan]:
    found, frontier = [], [root]
    while frontier:
        below = children(otel, frontier.pop())
        found += below
        frontier += below
    return found


def leaks(value: object) -> list[str]:
    text = str(value)
    return [secret for secret in SECRETS_OF_THE_CUSTOMER if secret in text]


# -- the whole path ---------------------------------------------------------------------------------


async def test_send_callback_and_relay_are_one_observed_path(
    otel: Telemetry,
    services: Services,
    fake_twilio: FakeHttpServer,
    twilio_token: str,
    dataverse_world: DataverseWorld,
    relay_queues: RelayQueues,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sms")
    sent = await send(services, "otel-1")
    message_id = sent["MessageId"]
    callback_url = fake_twilio.requests[-1].form()["StatusCallback"]
    ack = await status_callback(services, callback_url, message_id, twilio_token)
    [job] = await relay_what_is_queued(services, relay_queues)
    assert sent["Status"] == "Sent" and ack.status_code == 200
    assert [n["Status"] for n in dataverse_world.dataverse.notification_payloads()] == ["Delivered"]

    ids = {"RequestId": "otel-1", "ChannelDefinitionId": str(uuid.UUID(int=0xC0FFEE))}
    # outbound: the send, the provider call as its child, the HTTP request below that
    outbound = otel.one("outbound send")
    assert dict(outbound.attributes or {}) == {
        **ids,
        "IsTestSend": False,
        "Provider": "twilio",
        "Segments": 1,
        "Status": "Sent",
        "ProviderMessageId": message_id,
    }
    provider_call = otel.one("twilio send")
    assert provider_call.parent is not None and provider_call.parent.span_id == outbound.context.span_id
    assert provider_call.attributes == {"Provider": "twilio", "Attempt": 1, "ProviderMessageId": message_id}
    assert [s.kind for s in children(otel, provider_call)] == [trace.SpanKind.CLIENT]  # httpx: the POST

    # the webhook's trace continues across the queue into the relay and the Dataverse call
    assert job.traceparent is not None
    webhook = otel.one("webhook intake")
    assert webhook.attributes == {
        "Provider": "twilio",
        "Webhook": "delivery-reports",
        "Jobs": 1,
        "ProviderMessageId": message_id,
        "Kind": "notification",
        "Status": "Delivered",
        **ids,  # echoed by Twilio in the status callback URL
    }
    assert job.traceparent.split("-")[1:3] == [
        f"{webhook.context.trace_id:032x}",
        f"{webhook.context.span_id:016x}",
    ]
    relay = otel.one("relay")
    assert relay.kind is trace.SpanKind.CONSUMER
    assert relay.context.trace_id == webhook.context.trace_id
    assert relay.parent is not None and relay.parent.span_id == webhook.context.span_id
    assert relay.attributes == {
        "Provider": "twilio",
        "ProviderMessageId": message_id,
        "Kind": "notification",
        "Attempt": 0,
        "JobId": job.job_id,
        "Status": "Delivered",
        **ids,
        "Outcome": "relayed",
    }
    dataverse = otel.one("Dataverse notification")
    assert dataverse.parent is not None and dataverse.parent.span_id == relay.context.span_id
    assert dataverse.context.trace_id == webhook.context.trace_id
    assert dataverse.attributes is not None
    assert {k: dataverse.attributes[k] for k in ("RequestId", "Status", "Provider", "Mode")} == {
        "RequestId": "otel-1",
        "Status": "Delivered",
        "Provider": "twilio",
        "Mode": "live",
    }
    # the httpx instrumentation's HTTP request to Dataverse, in the same trace
    dataverse_http = [s for s in descendants(otel, relay) if s.kind is trace.SpanKind.CLIENT]
    assert any(
        "msdyn_D365ChannelsNotification" in str(s.attributes) or "$batch" in str(s.attributes)
        for s in dataverse_http
    ), [s.attributes for s in dataverse_http]

    # metrics
    recorded = otel.metrics()
    assert otel.counts(recorded, "sms.sends") == [({"Provider": "twilio", "Status": "Sent"}, 1)]
    relays = {"Provider": "twilio", "Kind": "notification", "Status": "Delivered"}
    assert otel.counts(recorded, "sms.relays") == [({**relays, "Outcome": "relayed"}, 1)]
    [(lag_attributes, lag)] = recorded["sms.relay.lag"]
    assert lag_attributes == relays and lag.count == 1 and 0 <= lag.sum < 60

    # the main log lines carry the same fields as dimensions
    def fields(message: str) -> dict[str, Any]:
        [record] = [r for r in caplog.records if re.search(message, r.getMessage())]
        return {k: v for k, v in vars(record).items() if k not in STANDARD_RECORD}

    assert fields(r"^Sent RequestId=otel-1") == {
        **ids,
        "IsTestSend": False,
        "Provider": "twilio",
        "Segments": 1,
        "Status": "Sent",
        "ProviderMessageId": message_id,
    }
    assert fields(r"^twilio notification MessageId=\S+ queued") == {
        "Provider": "twilio",
        "Webhook": "delivery-reports",
        "Jobs": 1,
        "ProviderMessageId": message_id,
        "Kind": "notification",
        "Status": "Delivered",
        **ids,
    }
    relayed = fields(r"^relayed notification twilio")
    assert {k: relayed.get(k) for k in (*ids, "Provider", "ProviderMessageId", "Attempt", "Status")} == {
        **ids,
        "Provider": "twilio",
        "ProviderMessageId": message_id,
        "Attempt": 0,
        "Status": "Delivered",
    }

    # no phone number and no text anywhere in what is exported
    for span in otel.finished():
        assert not leaks(span.attributes), (span.name, span.attributes)
        assert not leaks(span.status.description), span.name
        assert not any(leaks(event.attributes) for event in span.events), span.name
    for record in caplog.records:
        dimensions = {k: v for k, v in vars(record).items() if k not in STANDARD_RECORD}
        assert not leaks(dimensions), (record.getMessage(), dimensions)
        assert not leaks(record.getMessage()), record.getMessage()


async def test_a_refused_send_records_no_number_twilio_quoted(
    otel: Telemetry, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """Twilio's error message quotes the recipient: it stays out of spans and log fields."""
    caplog.set_level(logging.INFO, logger="sms")
    invalid = "+14155550211"  # the fake answers 21211 "The 'To' number … is not valid"
    assert (await send(services, "otel-refused", to=invalid))["Status"] == "NotSent"

    outbound = otel.one("outbound send")
    assert outbound.attributes is not None and outbound.attributes["Status"] == "NotSent"
    provider_call = otel.one("twilio send")
    assert provider_call.status.status_code is trace.StatusCode.ERROR
    assert provider_call.status.description == "PermanentSendError"
    assert otel.counts(otel.metrics(), "sms.sends") == [
        ({"Provider": "twilio", "Status": "NotSent", "Reason": "InvalidRecipient"}, 1)
    ]
    for span in otel.finished():
        exported = [span.attributes, span.status.description, *(e.attributes for e in span.events)]
        assert invalid not in str(exported) and invalid[1:] not in str(exported), span.name
    for record in caplog.records:
        dimensions = {k: v for k, v in vars(record).items() if k not in STANDARD_RECORD}
        assert invalid not in str(dimensions) and invalid[1:] not in str(dimensions)


async def test_relay_takes_the_job_traceparent_as_parent_and_links_the_invocation(
    otel: Telemetry, services: Services, relay_queues: RelayQueues
) -> None:
    webhook_trace = "0af7651916cd43dd8448eb211c80319c"
    job = NotificationJob(
        provider="twilio",
        message_id="SM-unknown",
        status="Delivered",
        provider_status="delivered",
        traceparent=f"00-{webhook_trace}-b7ad6b7169203331-01",
    )
    relay = app_function(services, "relay")
    tracer = trace.get_tracer("functions-host-stand-in")
    with tracer.start_as_current_span("invocation") as invocation:
        await relay(msg=func.QueueMessage(id="m1", body=job.model_dump_json().encode()))
        untraced = job.model_copy(update={"traceparent": None})
        await relay(msg=func.QueueMessage(id="m2", body=untraced.model_dump_json().encode()))

    carried, uncarried = otel.named("relay")
    assert f"{carried.context.trace_id:032x}" == webhook_trace
    assert carried.parent is not None and f"{carried.parent.span_id:016x}" == "b7ad6b7169203331"
    assert [link.context.span_id for link in carried.links] == [invocation.get_span_context().span_id]
    # a job without a traceparent (queued before this version) is the invocation's child
    assert uncarried.parent is not None and uncarried.parent.span_id == invocation.get_span_context().span_id
    assert not uncarried.links
    # the message id is unknown: it is looked at again later, and no Dataverse call is made
    assert {carried.attributes["Outcome"], uncarried.attributes["Outcome"]} == {"retried"}  # type: ignore[index]
    assert not otel.named("Dataverse notification")


async def test_a_refused_webhook_is_logged_with_its_fields(
    otel: Telemetry, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sms")
    url = f"{PUBLIC}/api/providers/twilio/delivery-reports"
    forged = await status_callback(services, url, "SMx", token="not-the-auth-token")
    assert forged.status_code == 403
    [record] = [r for r in caplog.records if "webhook refused" in r.getMessage()]
    assert {k: v for k, v in vars(record).items() if k not in STANDARD_RECORD} == {
        "Provider": "twilio",
        "Webhook": "delivery-reports",
        "Outcome": "refused",
        "HttpStatus": 403,
    }
    webhook = otel.one("webhook intake")
    assert webhook.status.status_code is trace.StatusCode.ERROR
    assert webhook.status.description == "WebhookRejected"


async def test_poisoned_messages_are_counted(
    otel: Telemetry, services: Services, relay_queues: RelayQueues
) -> None:
    await app_function(services, "relay")(msg=func.QueueMessage(id="m1", body=b'{"kind": "nonsense"}'))
    assert otel.counts(otel.metrics(), "sms.relay.poisoned") == [
        ({"Provider": "unknown", "Kind": "unreadable"}, 1)
    ]


# -- configuration and cold start -------------------------------------------------------------------


def test_telemetry_is_configured_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    fake = type(sys)("azure.monitor.opentelemetry")
    fake.configure_azure_monitor = lambda **kwargs: calls.append(kwargs)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "azure.monitor.opentelemetry", fake)
    key = "InstrumentationKey=00000000-0000-0000-0000-000000000000"
    connection = {"APPLICATIONINSIGHTS_CONNECTION_STRING": key}

    assert function_app.configure_telemetry({}) == "off"
    worker = {**connection, "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true"}
    assert function_app.configure_telemetry(worker) == "worker"
    monkeypatch.setattr(function_app.trace, "get_tracer_provider", trace.ProxyTracerProvider)
    assert function_app.configure_telemetry(connection) == "app"
    assert calls == [{"connection_string": key}]


def test_importing_the_app_loads_neither_the_distro_nor_the_sdk() -> None:
    probe = (
        "import sys, function_app; "
        "print(sorted({m.split('.')[0] + '.' + m.split('.')[1] for m in sys.modules "
        "if m.startswith(('azure.monitor', 'opentelemetry.sdk', 'opentelemetry.instrumentation'))}))"
    )
    env = {"PATH": "/usr/bin:/bin"}  # no APPLICATIONINSIGHTS_CONNECTION_STRING
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, env=env
    )
    assert result.stdout.strip() == "[]"


def test_every_app_logger_carries_the_scope_fields() -> None:
    app = ("blueprints", "channels", "contracts", "core", "dataverse", "storage", "usecases")
    names: set[str] = set()
    for path in [ROOT / "function_app.py", *(p for package in app for p in (ROOT / package).rglob("*.py"))]:
        names |= set(re.findall(r"getLogger\(\"(sms[.\w]*)\"\)", path.read_text(encoding="utf-8")))
    assert names and names <= set(telemetry.APP_LOGGERS), sorted(names - set(telemetry.APP_LOGGERS))


async def test_a_dataverse_batch_links_every_relay_it_carries(otel: Telemetry) -> None:
    """Relays of different traces share one $batch: its span is linked to each of them, and a later
    batch belongs to its own callers, not to the trace of whoever started the dispatcher."""

    async def accept(operations: list[Operation], _started: float) -> list[BaseException | None]:
        return [None] * len(operations)

    batcher = Batcher(
        send=accept,
        pacer=Pacer(max_in_flight=8, timeout_seconds=30),
        batch_size=100,
        retry=lambda _item, _error: None,
        long_pause=lambda _pause: RuntimeError("paused"),
    )

    async def relay(name: str) -> None:
        with telemetry.span(name, context=otel_context.Context()):  # each relay its own trace
            await batcher.submit(Operation("msdyn_D365ChannelsNotification", {"name": name}))

    await asyncio.gather(relay("relay a"), relay("relay b"))
    await relay("relay c")
    await batcher.aclose()

    a, b, c = otel.one("relay a"), otel.one("relay b"), otel.one("relay c")
    assert len({a.context.trace_id, b.context.trace_id, c.context.trace_id}) == 3
    together, alone = sorted(otel.named("Dataverse batch"), key=lambda s: s.start_time or 0)
    assert together.attributes is not None and together.attributes["Operations"] == 2
    assert {link.context.span_id for link in together.links} == {a.context.span_id, b.context.span_id}
    assert together.parent is not None and together.parent.span_id == a.context.span_id
    assert alone.parent is not None and alone.parent.span_id == c.context.span_id
    assert alone.context.trace_id == c.context.trace_id
    assert [link.context.span_id for link in alone.links] == [c.context.span_id]
