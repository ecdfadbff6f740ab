"""JSON answers shared by the HTTP functions. Error bodies name what is wrong, never a stack trace."""

from __future__ import annotations

import json
import math
from typing import Any

import azure.functions as func

from core.settings import ConfigurationError


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
    return json_response({"error": {"code": code, "message": message, **extra}}, status_code, headers)


def misconfigured(exc: ConfigurationError) -> func.HttpResponse:
    return error_response(
        503,
        "Misconfigured",
        "the app is missing or has invalid settings; an operator must fix them",
        settings=[{"setting": p.setting, "message": p.message} for p in exc.problems],
    )
