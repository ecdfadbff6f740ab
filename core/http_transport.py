"""An httpx transport that sends through aiohttp: httpx's API, aiohttp's connection handling.

Measured with ``bench.per_send`` (README "Benchmarks"): at 32 concurrent sends httpcore's async
connection pool cost our adapters 1.0-1.4 times the CPU per send of the providers' SDKs in threads;
through aiohttp the same adapters cost 0.3-0.6 times. Adapters keep httpx (its API, auth, timeouts,
MockTransport in unit tests); only the wire moves.

What the adapters rely on is kept exactly: a failure raises the httpx exception that says whether
the request can have reached the server. Only a failure to get a connection (refused, TLS, DNS, the
connect or pool timeout) is ``ConnectError`` / ``ConnectTimeout``; anything after the request may
have been written is a read error, which the adapters treat as "maybe sent". (A general mapping of
aiohttp's ``ClientConnectionError`` to a connect error would turn a server closing the connection
mid-request into "nothing sent", and a retry into a double send.)

The span the httpx instrumentation gives ``httpx.AsyncHTTPTransport`` is made here: one CLIENT
span per request, method, URL without its query, status.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from types import TracebackType
from typing import Any

import aiohttp
import httpx
from opentelemetry import trace
from yarl import URL

__all__ = ["AiohttpTransport"]

tracer = trace.get_tracer("sms.http")

#: aiohttp errors in the order they are tested: the first match decides.
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),  # pool wait or connect: nothing sent
    (aiohttp.ClientConnectorError, httpx.ConnectError),  # refused, DNS, TLS: nothing sent
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (asyncio.TimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientError, httpx.ReadError),
    (OSError, httpx.ReadError),
)


def _translate(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    for aiohttp_error, httpx_error in _ERRORS:
        if isinstance(exc, aiohttp_error):
            return httpx_error(f"{type(exc).__name__}: {exc}", request=request)
    raise exc  # not a transport failure: let it through unchanged


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session per event loop, keeping at most ``limits.max_connections`` connections."""

    def __init__(self, *, limits: httpx.Limits, verify: ssl.SSLContext | None = None) -> None:
        # httpx's default context: certifi, or SSL_CERT_FILE / SSL_CERT_DIR when set
        self._ssl = verify or httpx.create_ssl_context()
        self._limits = limits
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _session_for_this_loop(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            # a session's connections belong to the loop that opened them
            connector = aiohttp.TCPConnector(
                limit=self._limits.max_connections or 0,
                limit_per_host=0,
                keepalive_timeout=self._limits.keepalive_expiry or 5.0,
                ssl=self._ssl,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # httpx decodes, as it does for its own transport
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
                # httpx's clients honour HTTP(S)_PROXY; aiohttp then also reads ~/.netrc in a thread
                # on every request, so the environment is consulted only when it names a proxy
                trust_env=bool(urllib.request.getproxies()),
            )
            self._loop = loop
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=_add(timeouts.get("pool"), timeouts.get("connect")),
            sock_connect=timeouts.get("connect"),
            sock_read=timeouts.get("read"),
        )
        url = request.url
        with tracer.start_as_current_span(
            request.method,
            kind=trace.SpanKind.CLIENT,
            attributes={
                "http.request.method": request.method,
                "url.full": str(url.copy_with(query=None)),
                "server.address": url.host,
                "server.port": url.port or (443 if url.scheme == "https" else 80),
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            body = await request.aread()
            session = self._session_for_this_loop()
            try:
                async with session.request(
                    request.method,
                    URL(str(url), encoded=True),  # sent as built: signatures cover the exact URL
                    headers=request.headers.multi_items(),
                    data=body or None,
                    allow_redirects=False,
                    timeout=timeout,
                ) as response:
                    content = await response.read()
                    status, headers = response.status, response.raw_headers
            except Exception as exc:
                translated = _translate(exc, request)
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(translated).__name__))
                span.set_attribute("error.type", type(translated).__name__)
                raise translated from exc
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(trace.Status(trace.StatusCode.ERROR))
        return httpx.Response(status, headers=list(headers), content=content, request=request)

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()


def _add(*seconds: Any) -> float | None:
    values = [value for value in seconds if value is not None]
    return sum(values) if values else None
