"""The plug-ins (plugin/, C# for the Dataverse sandbox), built with mono's mcs and run under mono.

The plug-ins are compiled as the product rules say (every ``*.cs`` under plugin/ but tests, build output and
reference stubs; only the allowed framework references) against reference stubs of Microsoft.Xrm.Sdk
(plugin/stubs), with a driver (plugin/tests/Driver.cs) that plays Dataverse: it builds one plug-in instance
and calls Execute once per payload, concurrently.

The forwarder's targets: the app itself through the local host (Sent, NotSent, 503, 400) and small servers on
127.0.0.1 (a server that never answers, one that stops mid-answer, a refused connection, 429, 401, the request
as sent). The relays' target: an organization service that records what it is asked to execute, as whom.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.inbound import InboundPayload
from contracts.notification import NotificationPayload
from contracts.status import ChannelStatus
from tests.conftest import CUSTOMER, OUR_NUMBER, ROOT, payload_json
from tests.e2e import free_port, local_host
from tests.fakes.azurite import Azurite
from tests.fakes.http import FakeHttpServer, Reply

MONO_PACKAGES = (
    "mono-mcs",
    "mono-runtime",
    "libmono-system-net-http4.0-cil",
    "libmono-system-runtime-serialization4.0-cil",
)
INSTALL_HINT = (
    f"the plug-in tests need mono: install it with `sudo apt-get install -y {' '.join(MONO_PACKAGES)}` "
    "(scripts/setup does this when it runs as root)"
)
PLUGIN = ROOT / "plugin"
#: The only assemblies the plug-in may use besides mscorlib and Microsoft.Xrm.Sdk (the sandbox has these).
FRAMEWORK_REFERENCES = (
    "System.dll",
    "System.Core.dll",
    "System.Net.Http.dll",
    "System.Runtime.Serialization.dll",
    "System.Xml.dll",
    "Microsoft.CSharp.dll",
)
PLUGIN_EXCEPTION = "Microsoft.Xrm.Sdk.InvalidPluginExecutionException"

FUNCTION_KEY = "plugin-test-key-" + secrets.token_hex(12)
TEXT = "Your table for 4 is booked at 19:30"
#: Recipients the simulator answers by suffix: 0666 refused (NotSent), 0503 transient (503).
REFUSED = "+14155550666"
TRANSIENT = "+14155550503"


# -- building and running ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    directory: Path
    driver: Path


@dataclass(frozen=True)
class Call:
    """One Execute on an organization service the plug-in asked the factory for."""

    user_id: str | None  # None: the system user
    request: str
    parameters: list[dict[str, str | None]]  # [{"name", "type", "value"}]


@dataclass(frozen=True)
class Run:
    outcome: str
    exception_type: str | None
    message: str | None
    outputs: dict[str, str]
    duration_ms: int
    traces: list[str]
    calls: list[Call]

    @property
    def response(self) -> str | None:
        return self.outputs.get("response")

    def trace_with(self, *parts: str) -> str:
        found = [line for line in self.traces if all(part in line for part in parts)]
        assert found, f"no trace line holds {parts}: {self.traces}"
        return found[0]

    def assert_retry_later(self) -> None:
        assert self.outcome == "exception" and self.exception_type == PLUGIN_EXCEPTION, self
        assert self.message is not None and "retry later" in self.message.lower(), self.message

    def assert_discreet(self) -> None:
        """Nothing the plug-in writes (exception, traces) holds the key, a phone number or the text."""
        written = "\n".join([self.message or "", *self.traces])
        for secret in (FUNCTION_KEY, CUSTOMER, OUR_NUMBER, REFUSED, TRANSIENT, TEXT):
            assert secret not in written


def _has(pattern: str, path: Path) -> bool:
    return re.search(pattern, path.read_text(encoding="utf-8")) is not None


def _is_stub(path: Path) -> bool:
    return _has(r"\bnamespace\s+Microsoft\.Xrm\.Sdk\b", path)


def plugin_sources() -> list[Path]:
    """Every ``*.cs`` under plugin/ except tests, build output, entry points and reference stubs."""
    sources = []
    for path in sorted(PLUGIN.rglob("*.cs")):
        folders = set(path.relative_to(PLUGIN).parts[:-1])
        if folders & {"tests", "test", "bin", "obj"}:
            continue
        if path.name.endswith(("Tests.cs", "Test.cs", "Harness.cs")):
            continue
        if _has(r"\bstatic\s+(?:void|int)\s+Main\s*\(", path) or _is_stub(path):
            continue
        sources.append(path)
    return sources


def _mcs(*args: str | Path) -> None:
    # mcs knows C# up to 7.2; the project itself says 7.3 (dotnet build)
    command = ["mcs", "-langversion:7.2", "-warnaserror+", "-nologo", *map(str, args)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    assert completed.returncode == 0, f"{' '.join(command)}\n{completed.stdout}{completed.stderr}"


def _mono_env() -> dict[str, str]:
    """The driver talks to 127.0.0.1 only: no proxy from the environment may stand in between."""
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    return {key: value for key, value in os.environ.items() if key.lower() not in proxies}


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    missing = [tool for tool in ("mcs", "mono") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found; {INSTALL_HINT}", pytrace=False)
    out = tmp_path_factory.mktemp("plugin-build")
    stubs = [path for path in sorted(PLUGIN.rglob("*.cs")) if _is_stub(path)]
    driver_sources = sorted((PLUGIN / "tests").glob("*.cs"))
    sources = plugin_sources()
    assert stubs and driver_sources and sources
    sdk, plugin, driver = out / "Microsoft.Xrm.Sdk.dll", out / "SmsChannel.Plugin.dll", out / "Driver.exe"
    _mcs("-target:library", f"-out:{sdk}", *stubs)
    # -noconfig: nothing but mscorlib unless named here, so a dependency the sandbox lacks fails the build
    references = [f"-r:{name}" for name in FRAMEWORK_REFERENCES]
    _mcs("-noconfig", "-target:library", f"-out:{plugin}", *references, f"-r:{sdk}", *sources)
    _mcs("-target:exe", f"-out:{driver}", f"-r:{sdk}", f"-r:{plugin}", *driver_sources)
    return Build(out, driver)


def _arg(text: str | None) -> str:
    return "-" if text is None else base64.b64encode(text.encode("utf-8")).decode("ascii")


def _drive(build: Build, arguments: list[str], count: int) -> list[Run]:
    completed = subprocess.run(
        ["mono", str(build.driver), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env=_mono_env(),
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert len(lines) == count, completed.stdout + completed.stderr
    runs = []
    for line in lines:
        document = json.loads(line)
        runs.append(
            Run(
                outcome=document["outcome"],
                exception_type=document["exceptionType"],
                message=document["message"],
                outputs=dict(document["outputs"]),
                duration_ms=int(document["durationMs"]),
                traces=list(document["traces"]),
                calls=[
                    Call(call["userId"], call["request"], call["parameters"]) for call in document["calls"]
                ],
            )
        )
    return runs


def run_plugin(build: Build, unsecure: str | None, secure: str | None, *payloads: str | None) -> list[Run]:
    """One forwarder instance, Execute once per payload (concurrently); one Run per payload, in order."""
    return _drive(build, [_arg(text) for text in (unsecure, secure, *payloads)], len(payloads))


def run_one(build: Build, unsecure: str | None, secure: str | None, payload: str | None) -> Run:
    [run] = run_plugin(build, unsecure, secure, payload)
    return run


def unsecure_config(url: str, timeout_seconds: float | None = None) -> str:
    config: dict[str, Any] = {"url": url}
    if timeout_seconds is not None:
        config["timeoutSeconds"] = timeout_seconds
    return json.dumps(config)


def secure_config() -> str:
    return json.dumps({"functionKey": FUNCTION_KEY})


def payload(request_id: str, *, to: str = CUSTOMER, **extra: object) -> str:
    return json.dumps(payload_json(uuid.uuid4(), request_id, to=to, text=TEXT, **extra))


def fresh_id(label: str) -> str:
    return f"plugin-{label}-{uuid.uuid4().hex[:8]}"


# -- what the build holds ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inspected(build: Build) -> dict[str, Any]:
    completed = subprocess.run(
        ["mono", str(build.driver), "--inspect"], capture_output=True, text=True, timeout=60, check=True
    )
    document: dict[str, Any] = json.loads(completed.stdout)
    return document


def test_three_stateless_public_plugins_under_the_names_provisioning_registers(
    inspected: dict[str, Any],
) -> None:
    # provisioning registers the plug-in types by these full names (provisioning/base.py)
    assert sorted(inspected["plugins"], key=lambda plugin: plugin["type"]) == [
        {"type": "SmsChannel.Plugin.DeliveryReportRelay", "constructors": [""]},
        {"type": "SmsChannel.Plugin.InboundRelay", "constructors": [""]},
        {"type": "SmsChannel.Plugin.OutboundForwarder", "constructors": ["System.String,System.String"]},
    ]
    assert inspected["mutableStatics"] == []
    assert inspected["mutablePluginFields"] == []


def test_json_contracts_are_readable_in_partial_trust(inspected: dict[str, Any]) -> None:
    """The sandbox's partial trust lets DataContractJsonSerializer fill public types and members only."""
    contracts = inspected["dataContracts"]
    assert {"SmsChannel.Plugin.Wire.UnsecureConfiguration", "SmsChannel.Plugin.Wire.ErrorAnswer"} <= {
        contract["type"] for contract in contracts
    }
    for contract in contracts:
        assert contract["visible"] and contract["publicConstructor"], contract
        assert contract["nonPublicMembers"] == [], contract


# -- against the app on the local host -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def outbound_url(azurite: Azurite) -> Iterator[str]:
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        "SMS_PROVIDER": "simulator",
        "SIMULATOR_REJECT_SUFFIXES": "0666",
        "SIMULATOR_TRANSIENT_SUFFIXES": "0503",
        # a transient failure asks for 5 s, beyond the 2 s budget: the app answers 503 at once
        "SIMULATOR_RETRY_AFTER_SECONDS": "5",
        "SEND_BUDGET_SECONDS": "2",
        "SIMULATOR_DELIVERY_DELAY_SECONDS": "-1",
    }
    with local_host(env) as base:
        yield f"{base}/api/outbound"


@dataclass(frozen=True)
class AppCase:
    request_id: str
    payload: str
    run: Run


@pytest.fixture(scope="module")
def app_cases(build: Build, outbound_url: str) -> dict[str, AppCase]:
    """Sent, NotSent, 503 and 400 through one plug-in instance, all at once."""
    invalid = payload_json(uuid.uuid4(), fresh_id("invalid"), text=TEXT)
    invalid["ChannelDefinitionId"] = "not-a-guid"
    payloads = {
        "sent": payload(fresh_id("sent")),
        "refused": payload(fresh_id("refused"), to=REFUSED),
        "transient": payload(fresh_id("transient"), to=TRANSIENT),
        "invalid": json.dumps(invalid),
    }
    runs = run_plugin(build, unsecure_config(outbound_url), secure_config(), *payloads.values())
    return {
        name: AppCase(json.loads(text)["RequestId"], text, run)
        for (name, text), run in zip(payloads.items(), runs, strict=True)
    }


def test_sent_sets_the_apps_response_string(app_cases: dict[str, AppCase], outbound_url: str) -> None:
    case = app_cases["sent"]
    assert case.run.outcome == "ok", case.run.message
    assert case.run.response is not None
    answer = json.loads(case.run.response)
    assert answer["Status"] == "Sent" and answer["RequestId"] == case.request_id
    assert answer["MessageId"].startswith("SM")
    # exactly the app's string: a repeat of the same RequestId gets the same answer from the app
    again = httpx.post(outbound_url, json={"payload": case.payload}, timeout=30)
    assert again.status_code == 200 and again.json()["response"] == case.run.response
    case.run.trace_with(f"RequestId={case.request_id}", "outcome=Sent", "http=200", "durationMs=")
    case.run.assert_discreet()


def test_not_sent_is_a_response_not_an_exception(app_cases: dict[str, AppCase]) -> None:
    case = app_cases["refused"]
    assert case.run.outcome == "ok", case.run.message
    assert case.run.response is not None
    answer = json.loads(case.run.response)
    assert answer["Status"] == "NotSent" and answer["RequestId"] == case.request_id
    case.run.trace_with(f"RequestId={case.request_id}", "outcome=NotSent")
    case.run.assert_discreet()


def test_app_503_says_retry_later(app_cases: dict[str, AppCase]) -> None:
    case = app_cases["transient"]
    case.run.assert_retry_later()
    assert case.run.response is None
    assert case.run.message is not None
    assert "TryAgainLater" in case.run.message and "Retry-After 5 s" in case.run.message
    assert case.request_id in case.run.message
    case.run.trace_with(f"RequestId={case.request_id}", "outcome=TryAgainLater", "http=503")
    case.run.assert_discreet()


def test_app_400_names_the_invalid_fields(app_cases: dict[str, AppCase]) -> None:
    case = app_cases["invalid"]
    assert case.run.outcome == "exception" and case.run.exception_type == PLUGIN_EXCEPTION
    assert case.run.response is None
    assert case.run.message is not None
    assert "HTTP 400 InvalidPayload" in case.run.message
    assert "invalid fields: ChannelDefinitionId (" in case.run.message
    assert "retry" not in case.run.message.lower()
    case.run.trace_with(
        f"RequestId={case.request_id}", "outcome=InvalidPayload", "fields=ChannelDefinitionId"
    )
    case.run.assert_discreet()


# -- against small servers on 127.0.0.1 ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[FakeHttpServer]:
    """One small server for the module; each test sets how it answers."""
    with FakeHttpServer(lambda _: Reply(500)) as running:
        yield running


def answer_with(server: FakeHttpServer, status: int, body: Any, headers: dict[str, str] | None = None) -> str:
    server.set_handler(lambda _: Reply(status, body, headers or {}))
    return unsecure_config(f"{server.url}/api/outbound")


def test_request_carries_the_key_header_and_the_payload_unchanged(
    build: Build, server: FakeHttpServer
) -> None:
    # quotes, backslashes, control characters, non-ASCII and a non-BMP character all survive the envelope
    text = payload(fresh_id("capture"), Note='"quoted" \\ back\nslash\t\u0001 é ✓ 😀 \u2028 </script>')
    response = json.dumps({"RequestId": "x", "Status": "Sent", "Note": 'é ✓ 😀 "q" \\'}, ensure_ascii=False)
    before = len(server.requests)
    run = run_one(build, answer_with(server, 200, {"response": response}), secure_config(), text)
    [request] = server.requests[before:]
    assert run.outcome == "ok", run.message
    assert run.response == response
    assert (request.method, request.path) == ("POST", "/api/outbound")
    assert request.headers["x-functions-key"] == FUNCTION_KEY
    assert request.headers["content-type"].startswith("application/json")
    assert request.headers.get("connection", "").lower() == "close"
    assert request.json() == {"payload": text}
    run.trace_with(f"RequestId={json.loads(text)['RequestId']}", "outcome=Sent")
    run.assert_discreet()


def test_429_says_retry_later(build: Build, server: FakeHttpServer) -> None:
    request_id = fresh_id("throttled")
    config = answer_with(server, 429, {"error": {"code": "TooManyRequests"}}, {"Retry-After": "7"})
    run = run_one(build, config, secure_config(), payload(request_id))
    run.assert_retry_later()
    assert run.message is not None and "HTTP 429, Retry-After 7 s" in run.message
    run.trace_with(f"RequestId={request_id}", "outcome=TooManyRequests", "http=429")
    run.assert_discreet()


def test_refused_key_names_the_setting_without_the_key(build: Build, server: FakeHttpServer) -> None:
    run = run_one(build, answer_with(server, 401, b""), secure_config(), payload("k"))
    assert run.outcome == "exception" and run.message is not None
    assert "HTTP 401" in run.message and '"functionKey"' in run.message
    assert "retry" not in run.message.lower()
    run.assert_discreet()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"Status": "Sent"}, id="no-response"),
        pytest.param({"response": {"Status": "Sent"}}, id="an-object"),
        pytest.param({"response": 5}, id="a-number"),
        pytest.param([{"response": "x"}], id="an-array"),
        pytest.param(b"<html>Sent</html>", id="not-json"),
        pytest.param(b'{"response": "{}"', id="cut-off"),
    ],
)
def test_200_without_a_response_string_is_an_error(build: Build, server: FakeHttpServer, body: Any) -> None:
    run = run_one(build, answer_with(server, 200, body), secure_config(), payload("r"))
    assert run.outcome == "exception" and run.message is not None and '"response"' in run.message
    assert run.response is None
    run.trace_with("RequestId=r", "outcome=NoResponse")


def test_misconfigured_app_names_its_settings(build: Build, server: FakeHttpServer) -> None:
    error = {"code": "Misconfigured", "settings": [{"setting": "SMS_PROVIDER"}, {"setting": "TWILIO_FROM"}]}
    run = run_one(build, answer_with(server, 503, {"error": error}), secure_config(), payload("m"))
    run.assert_retry_later()
    assert run.message is not None and "settings: SMS_PROVIDER,TWILIO_FROM" in run.message
    run.trace_with("RequestId=m", "outcome=Misconfigured", "http=503")


@pytest.mark.parametrize("seconds", [1, 2.5, 16])
def test_timeouts_from_1_to_16_seconds_are_taken(
    build: Build, server: FakeHttpServer, seconds: float
) -> None:
    answer_with(server, 200, {"response": '{"Status": "Sent"}'})
    run = run_one(
        build, unsecure_config(f"{server.url}/api/outbound", seconds), secure_config(), payload("t")
    )
    assert run.outcome == "ok" and run.response == '{"Status": "Sent"}', run.message


class StallingServer:
    """Reads each request, then answers nothing, or (RequestId plugin-half-…) headers and half a body."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._release = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.bodies: list[bytes] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/api/outbound"

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._stall, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _stall(self, connection: socket.socket) -> None:
        with connection:
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            while length and len(body) < int(length.group(1)):
                chunk = connection.recv(65536)
                if not chunk:
                    return
                body += chunk
            with self._lock:
                self.bodies.append(body)
            if b"plugin-half-" in body:
                connection.sendall(
                    b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"resp'
                )
            self._release.wait(timeout=60)

    def __enter__(self) -> StallingServer:
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)


@dataclass(frozen=True)
class StalledCase:
    request_id: str
    run: Run
    elapsed: float


@pytest.fixture(scope="module")
def stalled(build: Build) -> dict[str, StalledCase]:
    """A server that never answers and one that stops mid-answer, at once, with timeoutSeconds 2."""
    request_ids = {"silent": fresh_id("silent"), "half": fresh_id("half")}
    with StallingServer() as server:
        started = time.monotonic()
        runs = run_plugin(
            build, unsecure_config(server.url, 2), secure_config(), *map(payload, request_ids.values())
        )
        elapsed = time.monotonic() - started
        assert len(server.bodies) == 2
    return {
        name: StalledCase(request_id, run, elapsed)
        for (name, request_id), run in zip(request_ids.items(), runs, strict=True)
    }


@pytest.mark.parametrize("case", ["silent", "half"])
def test_a_server_that_never_answers_is_given_up_after_timeout_seconds(
    stalled: dict[str, StalledCase], case: str
) -> None:
    request_id, run, elapsed = stalled[case].request_id, stalled[case].run, stalled[case].elapsed
    run.assert_retry_later()
    assert run.message is not None and "within 2 s" in run.message
    assert 1900 <= run.duration_ms < 5000, run.duration_ms
    assert elapsed < 10
    run.trace_with(f"RequestId={request_id}", "outcome=Timeout")
    run.assert_discreet()


def test_connection_refused_says_retry_later(build: Build) -> None:
    request_id = fresh_id("refused-connection")
    url = f"http://127.0.0.1:{free_port()}/api/outbound"  # nothing listens there
    run = run_one(build, unsecure_config(url, 5), secure_config(), payload(request_id))
    run.assert_retry_later()
    assert run.duration_ms < 5000
    run.trace_with(f"RequestId={request_id}", "outcome=Unreachable")
    run.assert_discreet()


# -- configuration -------------------------------------------------------------------------------------------

NOWHERE = "http://127.0.0.1:9/api/outbound"  # never reached: a misconfigured step fails before any request


@pytest.mark.parametrize(
    ("unsecure", "secure", "named"),
    [
        pytest.param(None, secure_config(), "the unsecure configuration is empty", id="no-unsecure"),
        pytest.param(json.dumps({"timeoutSeconds": 5}), secure_config(), '"url" is missing', id="no-url"),
        pytest.param(
            '{"url": "' + NOWHERE + '", ',
            secure_config(),
            "the unsecure configuration is not a JSON object",
            id="unsecure-not-json",
        ),
        pytest.param(
            unsecure_config(NOWHERE) + "}",
            secure_config(),
            "the unsecure configuration is not a JSON object",
            id="unsecure-then-more",
        ),
        pytest.param(
            json.dumps({"url": NOWHERE, "notes": json.loads("[" * 70 + "]" * 70)}),
            secure_config(),
            "the unsecure configuration is not a JSON object",
            id="unsecure-too-deep",
        ),
        pytest.param(
            json.dumps([{"url": NOWHERE}]),
            secure_config(),
            "the unsecure configuration is not a JSON object",
            id="unsecure-an-array",
        ),
        pytest.param(
            json.dumps({"url": "ftp://example.org/x"}),
            secure_config(),
            '"url" in the unsecure configuration',
            id="url-not-http",
        ),
        pytest.param(
            json.dumps({"url": 443}),
            secure_config(),
            '"url" in the unsecure configuration',
            id="url-a-number",
        ),
        pytest.param(unsecure_config(NOWHERE, 0), secure_config(), '"timeoutSeconds"', id="timeout-0"),
        pytest.param(unsecure_config(NOWHERE, 17), secure_config(), '"timeoutSeconds"', id="timeout-17"),
        pytest.param(
            json.dumps({"url": NOWHERE, "timeoutSeconds": "15"}),
            secure_config(),
            '"timeoutSeconds"',
            id="timeout-string",
        ),
        pytest.param(
            json.dumps({"url": NOWHERE, "timeoutSeconds": True}),
            secure_config(),
            '"timeoutSeconds"',
            id="timeout-true",
        ),
        pytest.param(
            json.dumps({"url": NOWHERE, "timeoutSeconds": [15]}),
            secure_config(),
            '"timeoutSeconds"',
            id="timeout-a-list",
        ),
        pytest.param(unsecure_config(NOWHERE), None, "the secure configuration is empty", id="no-secure"),
        pytest.param(
            unsecure_config(NOWHERE),
            json.dumps({"key": FUNCTION_KEY}),
            '"functionKey" is missing',
            id="no-function-key",
        ),
        pytest.param(
            unsecure_config(NOWHERE),
            json.dumps({"functionKey": 12345}),
            '"functionKey" is missing',
            id="function-key-a-number",
        ),
        pytest.param(
            unsecure_config(NOWHERE),
            '{"functionKey": "' + FUNCTION_KEY,
            "the secure configuration is not a JSON",
            id="secure-not-json",
        ),
    ],
)
def test_configuration_problems_are_named(
    build: Build, unsecure: str | None, secure: str | None, named: str
) -> None:
    run = run_one(build, unsecure, secure, payload(fresh_id("config")))
    assert run.outcome == "exception" and run.exception_type == PLUGIN_EXCEPTION
    assert run.message is not None and named in run.message
    assert "misconfigured" in run.message
    run.assert_discreet()


def test_a_missing_payload_parameter_is_named(build: Build) -> None:
    run = run_one(build, unsecure_config(NOWHERE), secure_config(), None)
    assert run.outcome == "exception" and run.message is not None and '"payload"' in run.message


# -- the relays: main operation of the delivery-report and inbound custom APIs -------------------------------


@dataclass(frozen=True)
class Relay:
    type: str
    parameter: str
    base_action: str

    @property
    def name(self) -> str:
        return self.type.rpartition(".")[2]


RELAYS = [
    pytest.param(
        Relay(
            "SmsChannel.Plugin.DeliveryReportRelay", "notificationPayLoad", "msdyn_D365ChannelsNotification"
        ),
        id="delivery-report",
    ),
    pytest.param(
        Relay("SmsChannel.Plugin.InboundRelay", "inboundPayLoad", "msdyn_D365ChannelsInbound"), id="inbound"
    ),
]
#: Non-ASCII, quotes, a backslash and a character outside the BMP: the payload's JSON carries \" and \\.
NOTE = 'Café "Zum Löwen" \\ ✓ 😀 — reply "STOP"'
RESPONSE_MESSAGE = '{"status": "Accepted", "note": "é ✓ \\"ok\\""}'
#: Plays what Dataverse throws for a failed Execute (a FaultException<OrganizationServiceFault>).
SIMULATED_FAULT = "SmsChannel.Plugin.Tests.Driver+SimulatedFault"


def relay_payload(relay: Relay) -> str:
    """The string the app sends (its own contracts), with both phone numbers and the text in it."""
    if relay.parameter == "inboundPayLoad":
        inbound = InboundPayload(
            channel_definition_id=uuid.uuid4(),
            to=OUR_NUMBER,
            from_=CUSTOMER,
            organization_id=str(uuid.uuid4()),
            message={"text": NOTE},
        )
        text = inbound.to_wire_json()
    else:
        notification = NotificationPayload(
            channel_definition_id=uuid.uuid4(),
            request_id=fresh_id("report"),
            message_id=f"SM{uuid.uuid4().hex}",
            from_=CUSTOMER,
            organization_id=str(uuid.uuid4()),
            status=ChannelStatus.DELIVERED,
            status_details={"ProviderStatus": "delivered", "To": OUR_NUMBER, "Note": NOTE},
        )
        text = notification.to_wire_json()
    assert '\\"' in text and "é" in text and "😀" in text and CUSTOMER in text
    return text


def run_relay(
    build: Build,
    relay: Relay,
    *payloads: str | None,
    response_message: str | None = RESPONSE_MESSAGE,
    failure: str | None = None,
    parameter: str | None = None,
) -> list[Run]:
    """One relay instance, Execute once per payload (concurrently), the input under ``parameter``."""
    arguments = ["--relay", relay.type, parameter or relay.parameter, _arg(response_message), _arg(failure)]
    return _drive(build, [*arguments, *map(_arg, payloads)], len(payloads))


def utf16_length(text: str) -> int:
    """String.Length in .NET."""
    return len(text.encode("utf-16-le")) // 2


def assert_traces_discreet(run: Run) -> None:
    traced = "\n".join(run.traces)
    for secret in (CUSTOMER, OUR_NUMBER, "Zum Löwen", "STOP"):
        assert secret not in traced


@pytest.mark.parametrize("relay", RELAYS)
def test_relay_hands_the_payload_unchanged_to_the_base_action_as_the_system_user(
    build: Build, relay: Relay
) -> None:
    payloads = [relay_payload(relay) for _ in range(3)]  # one instance, three calls at once
    runs = run_relay(build, relay, *payloads)
    for text, run in zip(payloads, runs, strict=True):
        assert run.outcome == "ok", run.message
        parameters = [{"name": relay.parameter, "type": "System.String", "value": text}]
        assert run.calls == [Call(user_id=None, request=relay.base_action, parameters=parameters)]
        assert run.outputs == {"responseMessage": RESPONSE_MESSAGE}
        run.trace_with(
            f"{relay.name}: outcome=Relayed",
            f"payloadChars={utf16_length(text)}",
            f"responseMessageChars={utf16_length(RESPONSE_MESSAGE)}",
        )
        assert_traces_discreet(run)


@pytest.mark.parametrize("relay", RELAYS)
def test_relay_without_a_response_message_sets_none(build: Build, relay: Relay) -> None:
    [run] = run_relay(build, relay, relay_payload(relay), response_message=None)
    assert run.outcome == "ok", run.message
    assert run.outputs == {} and len(run.calls) == 1
    run.trace_with("outcome=Relayed", "responseMessageChars=(none)")


@pytest.mark.parametrize("relay", RELAYS)
@pytest.mark.parametrize(
    ("text", "parameter"),
    [
        pytest.param(None, None, id="missing"),
        pytest.param("", None, id="empty"),
        pytest.param("  ", None, id="blank"),
        pytest.param('{"From": "' + CUSTOMER + '"}', "payload", id="under-another-name"),
    ],
)
def test_relay_refuses_a_missing_or_empty_payload_by_name(
    build: Build, relay: Relay, text: str | None, parameter: str | None
) -> None:
    [run] = run_relay(build, relay, text, parameter=parameter)
    assert run.outcome == "exception" and run.exception_type == PLUGIN_EXCEPTION
    assert run.message is not None and f'"{relay.parameter}"' in run.message
    assert run.calls == [] and run.outputs == {}
    run.trace_with(f"{relay.name}: outcome=NoPayload")
    assert_traces_discreet(run)


@pytest.mark.parametrize("relay", RELAYS)
def test_the_base_actions_failure_reaches_the_caller_untraced(build: Build, relay: Relay) -> None:
    text = relay_payload(relay)
    failure = f"{relay.base_action}: the channel instance for {CUSTOMER} was not found (0x80040217)"
    [run] = run_relay(build, relay, text, failure=failure)
    assert run.outcome == "exception"
    assert (run.exception_type, run.message) == (SIMULATED_FAULT, failure)
    assert len(run.calls) == 1 and run.outputs == {}
    run.trace_with(
        f"{relay.name}: outcome=Failed", "error=SimulatedFault", f"payloadChars={utf16_length(text)}"
    )
    assert_traces_discreet(run)
