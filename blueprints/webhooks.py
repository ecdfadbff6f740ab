"""POST /api/providers/{provider}/delivery-reports and /inbound: verify, queue, acknowledge.

Verification comes before anything else; the Dataverse round trip happens later, from the relay
queue, so providers get their answer in milliseconds and Dataverse throttling never turns into
provider retry storms. A 503 (queue unreachable) asks the provider to retry.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import azure.functions as func

from blueprints.responses import error_response
from channels.base import SmsChannel
from channels.events import InvalidWebhook, WebhookKind, WebhookRejected, WebhookRequest
from core.settings import ConfigurationError
from storage.ledger import StorageUnavailable
from usecases.composition import Services
from usecases.relay import RelayJob

log = logging.getLogger("sms.webhooks")


def webhook_request(req: func.HttpRequest, public_base_url: str | None) -> WebhookRequest:
    """The request as the provider sent it; its URL rebuilt from PUBLIC_BASE_URL (proxies change it)."""
    url = req.url
    if public_base_url:
        parts = urlsplit(req.url)
        url = public_base_url.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")
    return WebhookRequest(
        method=req.method,
        public_url=url,
        headers={k.lower(): v for k, v in req.headers.items()},
        query=dict(req.params),
        body=req.get_body(),
    )


def authenticated_by(candidates: list[SmsChannel], request: WebhookRequest) -> SmsChannel:
    """The account (adapter) whose credentials the request was signed with; the first refusal if none."""
    first: WebhookRejected | None = None
    for channel in candidates:
        try:
            channel.verify_webhook(request)
            return channel
        except WebhookRejected as rejected:
            first = first or rejected
    assert first is not None
    raise first


async def handle(services: Services, req: func.HttpRequest, kind: WebhookKind) -> func.HttpResponse:
    provider = req.route_params.get("provider", "").lower()
    try:
        candidates = services.router().for_webhooks(provider)
        settings = services.settings()
    except ConfigurationError as exc:
        # no setting names to anonymous callers; 503 so that providers retry once it is fixed
        log.error("%s %s webhook refused, configuration: %s", provider, kind, exc)
        return error_response(503, "NotConfigured", "this webhook is not configured", retry_after=60)
    if not candidates:
        return error_response(404, "UnknownProvider", "no such provider")
    if len(req.get_body()) > settings.max_body_bytes:
        return error_response(413, "PayloadTooLarge", "the body is over MAX_BODY_BYTES")
    base = settings.public_base_url
    request = webhook_request(req, str(base) if base else None)

    try:
        channel = authenticated_by(candidates, request)
    except WebhookRejected as rejected:
        log.warning("%s %s webhook refused (%d): %s", provider, kind, rejected.status_code, rejected.reason)
        return error_response(
            rejected.status_code, "NotAuthenticated", "the webhook could not be authenticated"
        )
    except InvalidWebhook as exc:
        log.warning("%s %s webhook unreadable: %s", provider, kind, exc)
        return error_response(400, "InvalidWebhook", str(exc))
    try:
        parsed = (
            channel.parse_delivery_reports(request)
            if kind == "delivery-reports"
            else channel.parse_inbound(request)
        )
    except InvalidWebhook as exc:
        log.warning("%s %s webhook unreadable: %s", provider, kind, exc)
        return error_response(400, "InvalidWebhook", str(exc))
    if parsed.handshake is not None:
        log.info("%s %s webhook: subscription validation answered", provider, kind)
        ack = parsed.handshake
        return func.HttpResponse(ack.body, status_code=ack.status_code, mimetype=ack.mimetype)

    jobs = [RelayJob.delivery(e) for e in parsed.delivery_events if e.outcome.is_final]
    jobs += [RelayJob.inbound(message) for message in parsed.inbound]
    try:
        await services.relay_queue().put_many(jobs)
    except (StorageUnavailable, ConfigurationError) as exc:
        log.error("%s %s webhook not queued (%s); the provider should retry", provider, kind, exc)
        return error_response(503, "QueueUnavailable", "not accepted; retry later", retry_after=5)
    for event in parsed.delivery_events:
        log.info(
            "%s delivery report MessageId=%s status=%s %s",
            provider,
            event.message_id,
            event.provider_status,
            "queued" if event.outcome.is_final else "(intermediate, not relayed)",
        )
    for message in parsed.inbound:
        log.info("%s inbound MessageId=%s queued", provider, message.message_id)
    ack = channel.acknowledge(kind)
    return func.HttpResponse(ack.body, status_code=ack.status_code, mimetype=ack.mimetype)


def blueprint(services: Services) -> func.Blueprint:
    bp = func.Blueprint()

    @bp.function_name("delivery_reports")
    @bp.route(
        route="providers/{provider}/delivery-reports", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS
    )
    async def delivery_reports(req: func.HttpRequest) -> func.HttpResponse:
        return await handle(services, req, "delivery-reports")

    @bp.function_name("inbound")
    @bp.route(route="providers/{provider}/inbound", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
    async def inbound(req: func.HttpRequest) -> func.HttpResponse:
        return await handle(services, req, "inbound")

    return bp
