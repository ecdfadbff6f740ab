"""Composition root: the Function App and its blueprints. Nothing here does I/O at import time."""

from __future__ import annotations

import logging

import azure.functions as func

from blueprints import health, maintenance, outbound, relay, webhooks
from usecases.composition import Services

# The storage SDK logs every request's headers at INFO; keep the app's own logs readable.
logging.getLogger("azure").setLevel(logging.WARNING)
logging.getLogger("httpx").setLevel(logging.WARNING)


def create_app(services: Services) -> func.FunctionApp:
    """Every function of the app, over ``services`` (tests pass their own)."""
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    for module in (outbound, webhooks, relay, health, maintenance):
        app.register_functions(module.blueprint(services))
    return app


services = Services()
app = create_app(services)
