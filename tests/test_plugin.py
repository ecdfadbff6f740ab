"""The forwarding plug-in (plugin/, C# for the Dataverse sandbox), built with mono's mcs and run under mono.

The plug-in is compiled as the product rules say (every ``*.cs`` under plugin/ but tests, build output and
reference stubs; only the allowed framework references) against reference stubs of Microsoft.Xrm.Sdk
(plugin/stubs), with a driver (plugin/tests/Driver.cs) that plays Dataverse: it builds one plug-in instance
from the two configuration strings and calls Execute once per payload, concurrently. Targets: the app itself
through the local host (Sent, NotSent, 503, 400) and small servers on 127.0.0.1 (a server that never answers,
one that stops mid-answer, a refused connection, 429, 401, the request as sent).
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
class Run:
    outcome: str
    exception_type: str | None
    message: str | None
    response: str | None
    duration_ms: int
    traces: list[str]

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


def run_plugin(build: Build, unsecure: str | None, secure: str | None, *payloads: str | None) -> list[Run]:
    """One plug-in instance, Execute once per payload (concurrently); one Run per payload, in order."""
    completed = subprocess.run(
        ["mono", str(build.driver), *map(_arg, (unsecure, secure, *payloads))],
        capture_output=True,
        text=True,
        timeout=60,
        env=_mono_env(),
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert len(lines) == len(payloads), completed.stdout + completed.stderr
    runs = []
    for line in lines:
        document = json.loads(line)
        runs.append(
            Run(
                outcome=document["outcome"],
                exception_type=document["exceptionType"],
                message=document["message"],
                response=document["response"],
                duration_ms=int(document["durationMs"]),
                traces=list(document["traces"]),
            )
        )
    return runs


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


def test_one_stateless_public_plugin_with_the_configuration_constructor(build: Build) -> None:
    completed = subprocess.run(
        ["mono", str(build.driver), "--inspect"], capture_output=True, text=True, timeout=60, check=True
    )
    inspected = json.loads(completed.stdout)
    assert inspected["plugins"] == [
        {"type": "SmsChannel.Plugin.OutboundForwarder", "constructors": ["System.String,System.String"]}
    ]
    assert inspected["mutableStatics"] == []
    assert inspected["mutablePluginFields"] == []


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


def test_200_without_a_response_string_is_an_error(build: Build, server: FakeHttpServer) -> None:
    run = run_one(build, answer_with(server, 200, {"Status": "Sent"}), secure_config(), payload("r"))
    assert run.outcome == "exception" and run.message is not None and '"response"' in run.message
    run.trace_with("RequestId=r", "outcome=NoResponse")


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
            json.dumps({"url": "ftp://example.org/x"}),
            secure_config(),
            '"url" in the unsecure configuration',
            id="url-not-http",
        ),
        pytest.param(unsecure_config(NOWHERE, 0), secure_config(), '"timeoutSeconds"', id="timeout-0"),
        pytest.param(unsecure_config(NOWHERE, 17), secure_config(), '"timeoutSeconds"', id="timeout-17"),
        pytest.param(
            json.dumps({"url": NOWHERE, "timeoutSeconds": "15"}),
            secure_config(),
            '"timeoutSeconds"',
            id="timeout-string",
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
