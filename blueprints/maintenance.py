"""Timer: delete send state and message records older than RETENTION_DAYS."""

from __future__ import annotations

import logging

import azure.functions as func

from usecases.composition import Services

log = logging.getLogger("sms.retention")

#: Daily at 03:17 UTC (NCRONTAB with seconds).
RETENTION_SCHEDULE = "0 17 3 * * *"


def blueprint(services: Services) -> func.Blueprint:
    bp = func.Blueprint()

    @bp.function_name("purge_expired_records")
    @bp.timer_trigger(arg_name="timer", schedule=RETENTION_SCHEDULE, run_on_startup=False)
    async def purge_expired_records(timer: func.TimerRequest) -> None:
        deleted = await services.ledger().purge_expired()
        log.info("retention: deleted %d expired records", deleted)

    return bp
