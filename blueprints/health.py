"""GET /api/health: is the app configured, which provider, can it reach its storage. No secrets."""

from __future__ import annotations

import logging
from typing import Literal

import azure.functions as func

from blueprints.responses import json_response
from contracts.http import HealthReport, SettingProblemBody
from core.settings import ConfigurationError, SettingProblem
from storage.errors import StorageUnavailable
from usecases.composition import Services

log = logging.getLogger("sms.health")


def blueprint(services: Services) -> func.Blueprint:
    bp = func.Blueprint()

    @bp.function_name("health")
    @bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    async def health(req: func.HttpRequest) -> func.HttpResponse:
        problems: list[SettingProblem] = []
        provider: str | None = None
        storage: Literal["reachable", "unreachable", "unknown"] = "unknown"
        dataverse = "unknown"
        try:
            provider = services.settings().sms_provider
            problems.extend(services.router().check())
        except ConfigurationError as exc:
            problems.extend(exc.problems)
        try:
            dataverse = services.dataverse().mode
        except ConfigurationError as exc:
            problems.extend(exc.problems)
        try:
            await services.ledger().ping()
            storage = "reachable"
        except ConfigurationError as exc:
            problems.extend(p for p in exc.problems if p not in problems)
        except StorageUnavailable:
            storage = "unreachable"
        healthy = not problems and storage == "reachable"
        if not healthy:
            log.warning("unhealthy: storage %s; settings: %s", storage, "; ".join(map(str, problems)) or "ok")
        report = HealthReport(
            status="ok" if healthy else "unhealthy",
            provider=provider,
            storage=storage,
            dataverse=dataverse,
            problems=[SettingProblemBody(setting=p.setting, message=p.message) for p in problems],
        )
        return json_response(report.model_dump(mode="json", by_alias=True), 200 if healthy else 503)

    return bp
