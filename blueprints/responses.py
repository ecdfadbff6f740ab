"""JSON answers shared by the HTTP functions, and the one table that turns errors into answers.

Error bodies name what is wrong, never a stack trace. Webhook callers are anonymous: they are
never told which setting is broken, only to come back later.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func

from contracts.http import ErrorAnswer, ErrorBody
from core.settings import ConfigurationError
from storage.errors import StorageUnavailable
from usecases.intake import InvalidWebhook, PayloadTooLarge, UnknownProvider, WebhookRejected

__all__ = ["InvalidRequest", "error_answer", "error_response", "json_response"]


@dataclass(frozen=True, slots=True)
class InvalidRequest(Exception):
    """A request body the app cannot take: ``fields`` names each wrong field."""

    code: str
    message: str
    fields: tuple[dict[str, str], ...] = ()
    status_code: int = 400


@dataclass(frozen=True, slots=True)
class _Answer:
    status_code: int
    code: str
    message: Callable[[Exception], str]
    retry_after: float | None = None
    extra: Callable[[Exception], dict[str, Any]] = field(default=lambda _exc: {})


def _settings(exc: Exception) -> dict[str, Any]:
    assert isinstance(exc, ConfigurationError)
    return {"settings": [{"setting": p.setting, "message": p.message} for p in exc.problems]}


#: Most specific first. ``anonymous`` answers (webhooks) never name settings.
_ANSWERS: list[tuple[type[Exception], _Answer, _Answer | None]] = [
    (UnknownProvider, _Answer(404, "UnknownProvider", lambda _: "no such provider"), None),
    (PayloadTooLarge, _Answer(413, "PayloadTooLarge", str), None),
    (
        WebhookRejected,
        _Answer(401, "NotAuthenticated", lambda _: "the webhook could not be authenticated"),
        None,
    ),
    (InvalidWebhook, _Answer(400, "InvalidWebhook", str), None),
    (
        StorageUnavailable,
        _Answer(
            503,
            "StorageUnavailable",
            lambda _: "storage is unreachable; nothing was accepted, retry the same request later",
            retry_after=5,
        ),
        None,
    ),
    (
        ConfigurationError,
        _Answer(
            503,
            "Misconfigured",
            lambda _: "the app is missing or has invalid settings; an operator must fix them",
            extra=_settings,
        ),
        _Answer(503, "NotConfigured", lambda _: "this webhook is not configured", retry_after=60),
    ),
]


def error_answer(exc: Exception, *, anonymous: bool = False) -> func.HttpResponse:
    """The answer for a failure the use cases raise. Anything not in the table is a bug: re-raised."""
    if isinstance(exc, InvalidRequest):
        extra: dict[str, Any] = {"fields": list(exc.fields)} if exc.fields else {}
        return error_response(exc.status_code, exc.code, exc.message, **extra)
    for kind, answer, anonymous_answer in _ANSWERS:
        if isinstance(exc, kind):
            chosen = anonymous_answer if anonymous and anonymous_answer else answer
            status = exc.status_code if isinstance(exc, WebhookRejected) else chosen.status_code
            return error_response(
                status,
                chosen.code,
                chosen.message(exc),
                retry_after=chosen.retry_after,
                **chosen.extra(exc),
            )
    raise exc


def json_response(
    body: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body),
        status_code=status_code,
        mimetype="application/json",
        charset="utf-8",
        headers=headers,
    )


def error_response(
    status_code: int,
    code: str,
    message: str,
    *,
    retry_after: float | None = None,
    **extra: Any,
) -> func.HttpResponse:
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    body = ErrorAnswer(error=ErrorBody(code=code, message=message, **extra))
    return json_response(body.to_wire(), status_code, headers)
