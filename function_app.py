"""Composition root: the Function App and its blueprints. Nothing here does I/O at import time."""

from __future__ import annotations

import logging

import azure.functions as func

from blueprints import health, maintenance, outbound, relay, webhooks
from usecases.composition import Services

# The storage SDK logs every request's headers at INFO; keep the app's own logs readable.
logging.getLogger("azure").setLevel(logging.WARNING)
logging.getLogger("httpx").setLevel(logging.WARNING)

services = Services()

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(outbound.blueprint(services))
app.register_functions(webhooks.blueprint(services))
app.register_functions(relay.blueprint(services))
app.register_functions(health.blueprint(services))
app.register_functions(maintenance.blueprint(services))
