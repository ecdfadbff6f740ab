"""HTTP triggers of a FunctionApp as one ASGI application."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import azure.functions as func
from azure.functions.decorators.http import HttpTrigger

log = logging.getLogger("devhost")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_PARAMETER = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\??\}")


@dataclass(frozen=True)
class HttpRoute:
    name: str
    pattern: re.Pattern[str]
    methods: frozenset[str] | None
    handler: Callable[..., Any]
    arg_name: str


def route_prefix(host_json: Path) -> str:
    try:
        config = json.loads(host_json.read_text(encoding="utf-8"))
        return str(config["extensions"]["http"]["routePrefix"]).strip("/")
    except (OSError, ValueError, KeyError, TypeError):
        return "api"


def compile_route(prefix: str, template: str) -> re.Pattern[str]:
    """Turn a Functions route template (``providers/{provider}/inbound``) into a regex."""
    path = "/".join(part for part in (prefix, template.strip("/")) if part)
    regex, last = "", 0
    for match in _PARAMETER.finditer(path):
        regex += re.escape(path[last : match.start()])
        catch_all, name = match.group(1), match.group(2)
        regex += f"(?P<{name}>.*)" if catch_all else f"(?P<{name}>[^/]+)"
        last = match.end()
    regex += re.escape(path[last:])
    return re.compile(f"^/{regex}/?$", re.IGNORECASE)


def http_routes(functions: list[Any], prefix: str) -> list[HttpRoute]:
    routes = []
    for function in functions:
        trigger = function.get_trigger()
        if not isinstance(trigger, HttpTrigger):
            continue
        template = trigger.route or function.get_function_name()
        methods = (
            frozenset(str(getattr(m, "value", m)).upper() for m in trigger.methods)
            if trigger.methods
            else None
        )
        routes.append(
            HttpRoute(
                function.get_function_name(),
                compile_route(prefix, template),
                methods,
                function.get_user_function(),
                trigger.name,
            )
        )
    return routes


async def invoke(handler: Callable[..., Any], **kwargs: Any) -> Any:
    """Call a function the way the Python worker does: async on the loop, sync in a thread."""
    if inspect.iscoroutinefunction(handler):
        return await handler(**kwargs)
    return await asyncio.to_thread(handler, **kwargs)


class FunctionsAsgi:
    """``functions`` is ``app.get_functions()``, called once: each call registers blueprints anew."""

    def __init__(self, functions: list[Any], *, prefix: str = "api") -> None:
        self.routes = http_routes(functions, prefix)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        response = await self.dispatch(scope, body)
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
        payload = response.get_body() or b""
        if not any(k == b"content-type" for k, _ in headers) and response.mimetype:
            content_type = response.mimetype + (f"; charset={response.charset}" if response.charset else "")
            headers.append((b"content-type", content_type.encode("latin-1")))
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def dispatch(self, scope: Scope, body: bytes) -> func.HttpResponse:
        path, method = scope["path"], scope["method"].upper()
        matched = [(route, m) for route in self.routes if (m := route.pattern.match(path))]
        if not matched:
            return func.HttpResponse(
                '{"error":{"code":"NotFound","message":"no function at this path"}}',
                status_code=404,
                mimetype="application/json",
            )
        allowed = [(r, m) for r, m in matched if r.methods is None or method in r.methods]
        if not allowed:
            return func.HttpResponse(
                '{"error":{"code":"MethodNotAllowed","message":"method not allowed"}}',
                status_code=405,
                mimetype="application/json",
            )
        route, match = allowed[0]
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "localhost")
        query = scope.get("query_string", b"").decode("latin-1")
        request = func.HttpRequest(
            method=method,
            url=f"{scope.get('scheme', 'http')}://{host}{path}" + (f"?{query}" if query else ""),
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            params=dict(parse_qsl(query, keep_blank_values=True)),
            route_params={k: v for k, v in match.groupdict().items() if v is not None},
            body=body,
        )
        try:
            result = await invoke(route.handler, **{route.arg_name: request})
        except Exception:
            log.exception("function %s raised", route.name)
            return func.HttpResponse(
                '{"error":{"code":"InternalError","message":"the function failed"}}',
                status_code=500,
                mimetype="application/json",
            )
        if isinstance(result, func.HttpResponse):
            return result
        return func.HttpResponse(str(result) if result is not None else "", status_code=200)
