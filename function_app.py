"""Composition root: the Function App and its blueprints. Nothing here does I/O at import time
(except the telemetry exporter, when this module has to configure it: see configure_telemetry)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import azure.functions as func
from opentelemetry import trace

from blueprints import health, maintenance, outbound, relay, webhooks
from usecases.composition import Services

# The storage SDK logs every request's headers at INFO; keep the app's own logs readable.
logging.getLogger("azure").setLevel(logging.WARNING)
logging.getLogger("httpx").setLevel(logging.WARNING)


def configure_telemetry(environ: Mapping[str, str] = os.environ) -> str:
    """Export traces, metrics and logs to Application Insights, configured exactly once.

    In Azure the Functions Python worker configures the Azure Monitor distro itself when
    ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY`` is true (before it loads this module), with the
    httpx instrumentation on; configuring it again would export everything twice, so then nothing
    happens here. Otherwise, with ``APPLICATIONINSIGHTS_CONNECTION_STRING`` set and no tracer
    provider installed yet (the local host's ``--trace-console`` installs one), the distro is
    configured here. Without a connection string the heavy distro is never imported: cold starts
    pay only for the OpenTelemetry API. Returns who configured it: off, worker, already or app.
    """
    connection_string = environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "").strip()
    if not connection_string:
        return "off"
    if environ.get("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY", "").strip().lower() in ("true", "1"):
        return "worker"
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return "already"
    from azure.monitor.opentelemetry import configure_azure_monitor

    # the exporter reads APPLICATIONINSIGHTS_AUTHENTICATION_STRING (Entra ingestion) by itself
    configure_azure_monitor(connection_string=connection_string)
    return "app"


def create_app(services: Services) -> func.FunctionApp:
    """Every function of the app, over ``services`` (tests pass their own)."""
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    for module in (outbound, webhooks, relay, health, maintenance):
        app.register_functions(module.blueprint(services))
    return app


configure_telemetry()
services = Services()
app = create_app(services)
