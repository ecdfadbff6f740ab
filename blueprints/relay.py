"""Queue trigger: relays queued delivery reports and inbound messages to Dataverse.

The relay span continues the webhook's trace from the job's ``traceparent`` (see usecases.observed).
"""

from __future__ import annotations

import logging

import azure.functions as func
from pydantic import ValidationError

from storage.relay_queue import RELAY_QUEUE, decode_job
from usecases.composition import Services
from usecases.observed import observe_relay

log = logging.getLogger("sms.relay")


def blueprint(services: Services) -> func.Blueprint:
    bp = func.Blueprint()

    @bp.function_name("relay")
    @bp.queue_trigger(arg_name="msg", queue_name=RELAY_QUEUE, connection="AzureWebJobsStorage")
    async def relay(msg: func.QueueMessage) -> None:
        try:
            job = decode_job(msg.get_body())
        except (ValidationError, ValueError):
            log.error(
                "relay message %s is not a relay job; moved to the poison queue",
                msg.id,
                extra={"Outcome": "poisoned", "Kind": "unreadable"},
            )
            await services.relay_queue().poison_raw(msg.get_body())
            return
        with observe_relay(job):
            await services.relay().process(job)

    return bp
