"""The aiohttp wire under the providers' httpx clients, over real sockets.

What a user relies on: the provider gets the request exactly as the adapter built it, and a failure
says whether the request can have reached the provider. "Nothing sent" lets a send be retried; a
failure after the request left must never be taken for one (a retry would be a double send).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

import httpx
import pytest
from pydantic import SecretStr

from channels.base import SendRequest
from channels.errors import AmbiguousSendError, TransientSendError
from channels.twilio import TwilioAdapter, TwilioSettings
from core.http_transport import AiohttpTransport
from tests.fakes.tls import LocalCA

LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=4)
ACCOUNT_SID = "AC" + "0" * 32


@dataclass
class RawRequest:
    head: str
    body: bytes

    @property
    def target(self) -> str:
        return self.head.split(" ")[1]

    def header(self, name: str) -> str | None:
        for line in self.head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


@dataclass
class RawServer:
    """Reads each request whole, then does what ``answer`` says with the connection."""

    answer: Callable[[RawRequest, asyncio.StreamWriter], Awaitable[None]]
    received: list[RawRequest] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    connections: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                request = RawRequest(head, b"")
                length = int(request.header("Content-Length") or 0)
                request.body = await reader.readexactly(length)
                self.received.append(request)
                self.arrived.set()
                await self.answer(request, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or the test is over
        finally:
            writer.close()


@asynccontextmanager
async def serve(
    answer: Callable[[RawRequest, asyncio.StreamWriter], Awaitable[None]], **tls: object
) -> AsyncIterator[tuple[RawServer, str]]:
    raw = RawServer(answer)
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0, **tls)  # type: ignore[arg-type]
    port = server.sockets[0].getsockname()[1]
    scheme = "https" if tls else "http"
    try:
        yield raw, f"{scheme}://127.0.0.1:{port}"
    finally:
        server.close()
        for task in asyncio.all_tasks():
            if task.get_coro().__qualname__.startswith("RawServer.handle"):  # type: ignore[union-attr]
                task.cancel()


def reply(status: int, body: bytes, *headers: tuple[str, str]) -> Callable[..., Awaitable[None]]:
    async def answer(_request: RawRequest, writer: asyncio.StreamWriter) -> None:
        lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers)]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()

    return answer


async def close_without_answer(_request: RawRequest, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def never_answer(_request: RawRequest, _writer: asyncio.StreamWriter) -> None:
    await asyncio.Event().wait()


def client(base_url: str, *, timeout: float = 5.0, limits: httpx.Limits = LIMITS) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=AiohttpTransport(limits=limits))


def twilio(base_url: str) -> TwilioAdapter:
    settings = TwilioSettings(
        account_sid=ACCOUNT_SID,
        auth_token=SecretStr("token"),
        api_base_url=base_url,
        timeout_seconds=0.5,
    )
    return TwilioAdapter(settings)


def send_request() -> SendRequest:
    request_id, definition = str(uuid.uuid4()), uuid.uuid4()
    return SendRequest(
        request_id=request_id,
        channel_definition_id=definition,
        reference=f"{definition}/{request_id}",
        sender="+14155550100",
        recipient="+14155550123",
        text="Your code is 1234",
        idempotency_key=uuid.uuid4(),
        first_attempt_at=datetime.now(timezone.utc),
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once it is closed


async def test_the_provider_gets_the_request_as_the_client_built_it() -> None:
    answer = reply(201, json.dumps({"sid": "SM1"}).encode(), ("Content-Type", "application/json"))
    async with serve(answer) as (server, url), client(url) as http:
        response = await http.post(
            "/Accounts/AC1/Messages.json?x=a%2Bb%20c&y=%2F",
            data={"To": "+14155550123", "Body": "ünïcode & more"},
            auth=("AC1", "secret"),
            headers={"X-Custom": "one"},
        )
    assert response.status_code == 201 and response.json() == {"sid": "SM1"}
    sent = server.received[0]
    assert sent.head.startswith("POST ")
    assert sent.target == "/Accounts/AC1/Messages.json?x=a%2Bb%20c&y=%2F"  # not re-encoded
    assert sent.header("Content-Type") == "application/x-www-form-urlencoded"
    assert sent.header("Authorization") == "Basic " + base64.b64encode(b"AC1:secret").decode()
    assert sent.header("X-Custom") == "one"
    assert sent.body == str(httpx.QueryParams({"To": "+14155550123", "Body": "ünïcode & more"})).encode()
    assert sent.header("Host") == url.removeprefix("http://")


async def test_compressed_and_repeated_response_headers_arrive_as_httpx_gives_them() -> None:
    body = gzip.compress(b'{"ok": true}')
    answer = reply(200, body, ("Content-Encoding", "gzip"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"))
    async with serve(answer) as (_server, url), client(url) as http:
        response = await http.get("/")
    assert response.json() == {"ok": True}
    assert response.headers.get_list("Set-Cookie") == ["a=1", "b=2"]


async def test_connections_are_kept_and_reused() -> None:
    async with serve(reply(200, b"{}")) as (server, url), client(url) as http:
        for _ in range(5):
            assert (await http.get("/")).status_code == 200
    assert len(server.received) == 5
    assert server.connections == 1


async def test_a_refused_connection_is_nothing_sent() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    async with client(url) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/")
    adapter = twilio(url)
    with pytest.raises(TransientSendError):
        await adapter.send(send_request())
    await adapter.aclose()


@pytest.mark.parametrize(
    ("answer", "failure"),
    [(close_without_answer, httpx.RemoteProtocolError), (never_answer, httpx.ReadTimeout)],
    ids=["closed-after-the-request", "no-answer-in-time"],
)
async def test_a_failure_after_the_request_left_is_maybe_sent(
    answer: Callable[[RawRequest, asyncio.StreamWriter], Awaitable[None]],
    failure: type[httpx.TransportError],
) -> None:
    async with serve(answer) as (server, url):
        async with client(url, timeout=0.3) as http:
            with pytest.raises(failure):
                await http.post("/", content=b"x")
        adapter = twilio(url)
        with pytest.raises(AmbiguousSendError):
            await adapter.send(send_request())
        await adapter.aclose()
    assert len(server.received) == 2  # both requests did reach the server


async def test_waiting_too_long_for_a_free_connection_is_nothing_sent() -> None:
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with (
        serve(never_answer) as (server, url),
        httpx.AsyncClient(
            base_url=url,
            timeout=httpx.Timeout(5.0, connect=0.2, pool=0.3),
            transport=AiohttpTransport(limits=one),
        ) as http,
    ):
        first = asyncio.create_task(http.post("/first", content=b"x"))
        await server.arrived.wait()
        with pytest.raises(httpx.ConnectTimeout):
            await http.post("/second", content=b"x")
        first.cancel()
    assert [request.target for request in server.received] == ["/first"]


async def test_https_trusts_what_ssl_cert_file_trusts(trust_test_ca: LocalCA) -> None:
    tls = {"ssl": trust_test_ca.server_context()}
    async with serve(reply(200, b"{}"), **tls) as (_server, url), client(url) as http:
        assert (await http.get("/")).status_code == 200


async def test_an_untrusted_certificate_is_nothing_sent(test_ca: LocalCA) -> None:
    tls = {"ssl": test_ca.server_context()}  # the test CA is not in this client's trust store
    async with serve(reply(200, b"{}"), **tls) as (server, url), client(url) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/")
    assert server.received == []


def test_one_transport_serves_successive_event_loops() -> None:
    """An adapter can outlive an event loop (tools, tests): the next loop gets its own connections."""
    transport = AiohttpTransport(limits=LIMITS)

    async def once(*, close: bool) -> int:
        async with serve(reply(204, b"")) as (_server, url):
            http = httpx.AsyncClient(base_url=url, transport=transport)
            status = (await http.get("/")).status_code
            if close:
                await transport.aclose()
            return status

    assert asyncio.run(once(close=False)) == 204
    assert asyncio.run(once(close=True)) == 204


async def test_a_proxy_named_in_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx honoured HTTP(S)_PROXY; the aiohttp wire must too (it reads the environment only then)."""
    async with serve(reply(200, b"{}")) as (proxy, proxy_url):
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        target = f"http://127.0.0.1:{closed_port()}"  # reachable only through the proxy
        async with client(target) as http:
            assert (await http.get("/via-proxy")).status_code == 200
    assert proxy.received[0].target == f"{target}/via-proxy"  # absolute form: a proxy request
