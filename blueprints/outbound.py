"""POST /api/outbound: the send behind the channel's outbound custom API.

The forwarding plugin posts either the payload JSON itself or the custom API's envelope
``{"payload": "<serialized JSON>"}``; the answer comes in the same shape.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import azure.functions as func
from pydantic import ValidationError

from blueprints.responses import InvalidRequest, error_answer, error_response, json_response
from contracts import OutboundPayload, OutboundResponse
from core.settings import ConfigurationError
from storage.errors import StorageUnavailable
from usecases.composition import Services
from usecases.outbound import SendOutcome

log = logging.getLogger("sms.outbound")

#: Used when the settings cannot be read (the request is then refused as misconfigured anyway).
FALLBACK_MAX_BODY_BYTES = 65536


def parse_outbound(body: bytes, *, max_bytes: int) -> tuple[OutboundPayload, bool]:
    """Return the payload and whether it came in the custom API envelope."""
    if len(body) > max_bytes:
        raise InvalidRequest(
            "PayloadTooLarge",
            f"the body is {len(body)} bytes; the limit is {max_bytes} (MAX_BODY_BYTES)",
            status_code=413,
        )
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidRequest("InvalidJson", "the body is not UTF-8 text") from None
    document = _json(text, "the body")
    enveloped = isinstance(document, dict) and "payload" in document and "ChannelDefinitionId" not in document
    if enveloped:
        inner = document["payload"]
        if isinstance(inner, str):
            document = _json(inner, "payload")
        elif isinstance(inner, dict):
            document = inner
        else:
            raise InvalidRequest(
                "InvalidPayload",
                "payload must be a string holding the payload JSON",
                fields=({"field": "payload", "message": "must be a JSON string"},),
            )
    if not isinstance(document, dict):
        raise InvalidRequest("InvalidPayload", "the payload must be a JSON object")
    try:
        return OutboundPayload.model_validate(document), enveloped
    except ValidationError as exc:
        fields = tuple(
            {"field": ".".join(str(part) for part in err["loc"]) or "(payload)", "message": err["msg"]}
            for err in exc.errors(include_url=False, include_input=False)
        )
        names = ", ".join(sorted({f["field"] for f in fields}))
        raise InvalidRequest("InvalidPayload", f"invalid or missing fields: {names}", fields=fields) from None


def _json(text: str, what: str) -> Any:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            "InvalidJson", f"{what} is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except (RecursionError, ValueError):
        raise InvalidRequest("InvalidJson", f"{what} is nested too deeply or holds invalid numbers") from None
    try:  # JSON escapes can spell lone UTF-16 surrogates, which no SMS or storage key can carry
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("InvalidJson", f"{what} holds invalid Unicode (a lone surrogate)") from None
    return document


def render(payload: OutboundPayload, outcome: SendOutcome, *, enveloped: bool) -> func.HttpResponse:
    answer = OutboundResponse(
        channel_definition_id=payload.channel_definition_id,
        message_id=outcome.message_id,
        request_id=payload.request_id,
        status=outcome.status,
        details=outcome.details,
    )
    if enveloped:
        return json_response({"response": answer.to_wire_json()})
    return json_response(answer.to_wire())


def blueprint(services: Services) -> func.Blueprint:
    bp = func.Blueprint()

    @bp.function_name("outbound")
    @bp.route(route="outbound", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
    async def outbound(req: func.HttpRequest) -> func.HttpResponse:
        try:
            max_bytes = services.settings().max_body_bytes
        except ConfigurationError:
            max_bytes = FALLBACK_MAX_BODY_BYTES
        try:
            payload, enveloped = parse_outbound(req.get_body(), max_bytes=max_bytes)
        except InvalidRequest as invalid:
            log.info("outbound request refused: %s", invalid.message)
            return error_answer(invalid)
        try:
            outcome = await services.outbound().send(payload)
        except (ConfigurationError, StorageUnavailable) as exc:
            log.error("outbound RequestId=%s not sent: %s", payload.request_id, exc)
            return error_answer(exc)
        if not isinstance(outcome, SendOutcome):
            return error_response(
                503,
                "TryAgainLater",
                outcome.reason,
                retry_after=outcome.retry_after,
                requestId=payload.request_id,
            )
        return render(payload, outcome, enveloped=enveloped)

    return bp
