"""Queue trigger: relays queued delivery reports and inbound messages to Dataverse."""

from __future__ import annotations

import logging

import azure.functions as func
from pydantic import ValidationError

from usecases.composition import Services
from usecases.relay import RELAY_QUEUE, RelayJob

log = logging.getLogger("sms.relay")


def blueprint(services: Services) -> func.Blueprint:
    bp = func.Blueprint()

    @bp.function_name("relay")
    @bp.queue_trigger(arg_name="msg", queue_name=RELAY_QUEUE, connection="AzureWebJobsStorage")
    async def relay(msg: func.QueueMessage) -> None:
        try:
            job = RelayJob.decode(msg.get_body())
        except (ValidationError, ValueError):
            log.error("relay message %s is not a relay job; moved to the poison queue", msg.id)
            await services.relay_queue().poison_raw(msg.get_body())
            return
        await services.relay().process(job)

    return bp
