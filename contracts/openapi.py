"""The OpenAPI 3.1 document of the app's HTTP API, built from the same pydantic models that read and
write the wire: ``python -m contracts.schemas`` writes it to ``docs/openapi.json`` with the JSON Schemas,
and a test fails when it drifts. Nothing serves it."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from contracts.http import ErrorAnswer, HealthReport, OutboundEnvelope, OutboundEnvelopeAnswer
from contracts.outbound import OutboundPayload, OutboundResponse

__all__ = ["build"]

_REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": _json(_ref("ErrorAnswer"))}
    if retry_after:
        answer["headers"] = {
            "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
        }
    return answer


def _components() -> dict[str, Any]:
    _, definitions = models_json_schema(
        [
            (OutboundPayload, "validation"),
            (OutboundEnvelope, "validation"),
            (OutboundResponse, "serialization"),
            (OutboundEnvelopeAnswer, "serialization"),
            (ErrorAnswer, "serialization"),
            (HealthReport, "serialization"),
        ],
        by_alias=True,
        ref_template=_REF,
    )
    schemas: dict[str, Any] = definitions["$defs"]
    return schemas


def _webhook(kind: str, summary: str) -> dict[str, Any]:
    provider = {
        "name": "provider",
        "in": "path",
        "required": True,
        "description": "a provider the app sends through (SMS_PROVIDER or SENDER_ROUTES); any other is 404",
        "schema": {"type": "string", "examples": ["twilio", "acs"]},
    }
    body_formats = {
        "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
        "application/json": {"schema": {}},
    }
    return {
        "parameters": [provider],
        "post": {
            "operationId": f"{kind}Webhook",
            "summary": summary,
            "description": "The provider's own format, verified with the provider's signature or shared "
            "secret before it is read (README, 'Delivery reports and inbound messages').",
            "security": [],
            "requestBody": {"required": True, "content": body_formats},
            "responses": {
                "200": {
                    "description": "queued (or a subscription handshake answered), in the form the provider "
                    "expects: empty, TwiML for Twilio, the validation response for Event Grid",
                    "content": {"text/plain": {}, "application/xml": {}, "application/json": {}},
                },
                "400": _error("a body the provider's format cannot be read from"),
                "401": _error("no credentials (signature or secret)"),
                "403": _error("wrong or stale credentials"),
                "404": _error("not a provider the app sends through"),
                "413": _error("body over the provider's limit"),
                "503": _error(
                    "the webhook's setting is missing, or the queue is unreachable: retry later",
                    retry_after=True,
                ),
            },
        },
        "options": {
            "operationId": f"{kind}Handshake",
            "summary": "CloudEvents webhook validation (Event Grid): answered with WebHook-Allowed-Origin",
            "description": "Only with the webhook's secret (?secret= or X-Webhook-Secret).",
            "security": [],
            "responses": {
                "200": {"description": "the origin is allowed"},
                "401": _error("no secret: nothing is echoed"),
                "403": _error("a wrong secret: nothing is echoed"),
                "404": _error("not a provider the app sends through"),
                "503": _error("the webhook's secret is not configured: retry later", retry_after=True),
            },
        },
    }


def build() -> dict[str, Any]:
    """The whole document, as a JSON-ready dict."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Custom SMS channel for Dynamics 365 Customer Insights - Journeys",
            "version": "1.0.0",
            "description": "Outbound sends behind the channel's outbound custom API (Microsoft's contract "
            "of 2026: IdempotencyId, Details), provider webhooks, and health.",
        },
        "servers": [{"url": "/api"}],
        "components": {
            "schemas": _components(),
            "securitySchemes": {
                "functionKey": {"type": "apiKey", "in": "header", "name": "x-functions-key"},
            },
        },
        "paths": {
            "/outbound": {
                "post": {
                    "operationId": "outbound",
                    "summary": "Send one SMS at most once per message and answer the response contract",
                    "security": [{"functionKey": []}],
                    "requestBody": {
                        "required": True,
                        "content": _json({"oneOf": [_ref("OutboundPayload"), _ref("OutboundEnvelope")]}),
                    },
                    "responses": {
                        "200": {
                            "description": "Sent, or NotSent with Details (in the envelope when the request "
                            "came in one)",
                            "content": _json(
                                {"oneOf": [_ref("OutboundResponse"), _ref("OutboundEnvelopeAnswer")]}
                            ),
                        },
                        "400": _error("not JSON, or fields wrong or missing (each named in fields)"),
                        "413": _error("body over MAX_BODY_BYTES"),
                        "503": _error(
                            "TryAgainLater (nothing sent: retry the same message), Misconfigured (settings "
                            "named) or StorageUnavailable",
                            retry_after=True,
                        ),
                    },
                }
            },
            "/providers/{provider}/delivery-reports": _webhook(
                "deliveryReports", "A provider's delivery reports"
            ),
            "/providers/{provider}/inbound": _webhook("inbound", "Messages customers send to our numbers"),
            "/health": {
                "get": {
                    "operationId": "health",
                    "summary": "Configured? Which provider? Storage reachable? Dataverse live or dry run?",
                    "security": [],
                    "responses": {
                        "200": {"description": "healthy", "content": _json(_ref("HealthReport"))},
                        "503": {
                            "description": "unhealthy: settings named",
                            "content": _json(_ref("HealthReport")),
                        },
                    },
                }
            },
        },
    }
