"""``python -m devhost [--host 127.0.0.1] [--port 7071] [--trace-console]``: serve function_app.app like
``func start``. ``--trace-console`` (or ``DEVHOST_TRACE_CONSOLE=1``) prints one line per finished span."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
from pathlib import Path

import uvicorn

from devhost.asgi import FunctionsAsgi, route_prefix
from devhost.queues import QueueOptions, queue_workers

log = logging.getLogger("devhost")


def load_local_settings(path: Path) -> None:
    """Export local.settings.json's Values like Core Tools does; real environment variables win."""
    if not path.exists():
        return
    values = json.loads(path.read_text(encoding="utf-8")).get("Values", {})
    for name, value in values.items():
        os.environ.setdefault(name, str(value))


def trace_to_console() -> None:
    """Spans to stderr, one line each (OpenTelemetry SDK; httpx calls instrumented). Development only:
    set before the app is imported, so function_app leaves telemetry alone."""
    import sys

    from opentelemetry import trace
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    def line(span: ReadableSpan) -> str:
        context, parent = span.get_span_context(), span.parent
        if context is None:
            return ""
        took = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
        return (
            f"span {span.name!r} trace={context.trace_id:032x} span={context.span_id:016x} "
            f"parent={f'{parent.span_id:016x}' if parent else '-'} {took:.1f}ms "
            f"{span.status.status_code.name} {dict(span.attributes or {})}\n"
        )

    provider = TracerProvider(resource=Resource.create({"service.name": "sms-channel-devhost"}))
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr, formatter=line)))
    trace.set_tracer_provider(provider)
    HTTPXClientInstrumentor().instrument()


async def serve(module: str, host: str, port: int, host_json: Path) -> None:
    functions = importlib.import_module(module).app.get_functions()
    asgi = FunctionsAsgi(functions, prefix=route_prefix(host_json))
    workers = queue_workers(functions, QueueOptions.from_host_json(host_json))
    server = uvicorn.Server(uvicorn.Config(asgi, host=host, port=port, log_level="warning", lifespan="on"))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(worker.run(stop)) for worker in workers]
    for route in asgi.routes:
        log.info("http  %-24s %s", route.name, route.pattern.pattern)
    for worker in workers:
        log.info("queue %-24s %s", worker.name, worker.queue.queue_name)
    log.info("listening on http://%s:%d", host, port)
    try:
        await server.serve()
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(Exception):
                await task
        services = getattr(importlib.import_module(module), "services", None)
        if services is not None and hasattr(services, "aclose"):
            await services.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devhost", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("FUNCTIONS_HTTPWORKER_PORT", 7071)))
    parser.add_argument("--module", default="function_app", help="module holding the FunctionApp `app`")
    parser.add_argument("--host-json", type=Path, default=Path("host.json"))
    parser.add_argument(
        "--trace-console",
        action="store_true",
        default=os.environ.get("DEVHOST_TRACE_CONSOLE", "") in ("1", "true"),
        help="print finished spans to stderr (also DEVHOST_TRACE_CONSOLE=1)",
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    load_local_settings(Path.cwd() / "local.settings.json")
    if args.trace_console:
        trace_to_console()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.module, args.host, args.port, args.host_json))


if __name__ == "__main__":
    main()
