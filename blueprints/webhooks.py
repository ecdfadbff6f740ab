"""POST /api/providers/{provider}/delivery-reports and /inbound: HTTP in, webhook intake, HTTP out."""

from __future__ import annotations

import logging

import azure.functions as func

from blueprints.responses import error_answer
from core.settings import ConfigurationError
from storage.errors import StorageUnavailable
from usecases.composition import Services
from usecases.intake import (
    InvalidWebhook,
    PayloadTooLarge,
    UnknownProvider,
    WebhookKind,
    WebhookRejected,
    WebhookRequest,
    webhook_route,
)

log = logging.getLogger("sms.webhooks")


def webhook_request(req: func.HttpRequest) -> WebhookRequest:
    return WebhookRequest(
        method=req.method,
        public_url=req.url,
        headers={k.lower(): v for k, v in req.headers.items()},
        query=dict(req.params),
        body=req.get_body(),
    )


async def handle(services: Services, req: func.HttpRequest, kind: WebhookKind) -> func.HttpResponse:
    provider = req.route_params.get("provider", "").lower()
    try:
        ack = await services.intake().receive(provider, kind, webhook_request(req))
    except (UnknownProvider, PayloadTooLarge) as exc:
        return error_answer(exc)
    except WebhookRejected as exc:
        log.warning(
            "%s %s webhook refused (%d): %s",
            provider,
            kind,
            exc.status_code,
            exc.reason,
            extra={
                "Provider": provider,
                "Webhook": kind,
                "Outcome": "refused",
                "HttpStatus": exc.status_code,
            },
        )
        return error_answer(exc)
    except InvalidWebhook as exc:
        log.warning(
            "%s %s webhook unreadable: %s",
            provider,
            kind,
            exc,
            extra={"Provider": provider, "Webhook": kind, "Outcome": "unreadable"},
        )
        return error_answer(exc)
    except (StorageUnavailable, ConfigurationError) as exc:
        log.error(
            "%s %s webhook not queued (%s); the provider should retry",
            provider,
            kind,
            exc,
            extra={"Provider": provider, "Webhook": kind, "Outcome": "not queued"},
        )
        return error_answer(exc, anonymous=True)
    return func.HttpResponse(
        ack.body, status_code=ack.status_code, mimetype=ack.mimetype, headers=ack.headers
    )


def blueprint(services: Services) -> func.Blueprint:
    bp = func.Blueprint()

    @bp.function_name("delivery_reports")
    @bp.route(
        route=webhook_route("delivery-reports"),
        methods=["POST", "OPTIONS"],
        auth_level=func.AuthLevel.ANONYMOUS,
    )
    async def delivery_reports(req: func.HttpRequest) -> func.HttpResponse:
        return await handle(services, req, "delivery-reports")

    @bp.function_name("inbound")
    @bp.route(
        route=webhook_route("inbound"), methods=["POST", "OPTIONS"], auth_level=func.AuthLevel.ANONYMOUS
    )
    async def inbound(req: func.HttpRequest) -> func.HttpResponse:
        return await handle(services, req, "inbound")

    return bp
