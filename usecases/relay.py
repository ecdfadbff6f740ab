"""From acknowledged webhook to Dataverse: the relay queue and the job that drains it.

A webhook only verifies, parses and queues (``relay-jobs``); the queue-triggered relay then
correlates, builds the contract payload and calls Dataverse. Nothing acknowledged is lost:

* a relay that Dataverse refuses for good (a 4xx) goes to ``relay-jobs-poison`` at once;
* a throttled or failing Dataverse gets the job back later, re-queued with a growing delay (at
  least its Retry-After), and after MAX_ATTEMPTS into the poison queue;
* a crash mid-job leaves the message to the Functions host, which redelivers it after
  ``visibilityTimeout`` and moves it to the same poison queue after ``maxDequeueCount``;
* each (provider, message id, status) is relayed once: a worker claims the event in the
  ``relayedevents`` table before calling Dataverse (one insert wins), so concurrent duplicates,
  redeliveries and provider retries never call twice. A worker that dies after Dataverse
  processed its call but before the event was marked relayed is the one window in which
  Dataverse can see a relay twice (the claim is taken over after RELAY_LEASE_SECONDS).

Batching does not change any of this: the queue trigger hands over one message per invocation,
and each invocation claims its own event before its notification joins the worker's in-process
``$batch`` (:class:`dataverse.batch.Batcher`, inside the Dataverse client). The invocation then
gets its own operation's outcome and takes the path above: marked relayed, poisoned, or re-queued.
An invocation cancelled while its operation still waits to be sent withdraws it (nothing goes out
for a released claim); a worker killed mid-batch leaves its claims to their lease.

``python -m storage.replay_poison`` puts poisoned jobs back on the queue.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace

from contracts import ChannelStatus, Details, InboundPayload, NotificationPayload
from core.phones import InvalidPhoneNumber, mask, to_e164
from dataverse.client import DataverseGateway, DataversePermanentError, DataverseTransientError
from storage.errors import StorageUnavailable
from storage.ledger import MessageRecord, RelayClaimState, SendKey, SendLedger
from storage.relay_queue import InboundJob, NotificationJob, RelayJob, RelayQueue

__all__ = ["RelayService"]

log = logging.getLogger("sms.relay")

#: Transient failures before a job is poisoned: with delays doubling from 5 s to 30 minutes, about a day.
MAX_ATTEMPTS = 60
MAX_DELAY_SECONDS = 1800.0
#: A delivery report can overtake the send's own record (the provider reported before the app
#: wrote the message id down): look again soon, then later, then give up.
UNKNOWN_MESSAGE_DELAYS_SECONDS = (2.0, 20.0)
UNKNOWN_MESSAGE_ATTEMPTS = len(UNKNOWN_MESSAGE_DELAYS_SECONDS) + 1
#: How long a worker's claim on an event stands before another may take it over (it died).
RELAY_LEASE_SECONDS = 600.0
#: When a duplicate finds its event claimed, it looks again this much later.
BUSY_DELAY_SECONDS = 60.0


class _Unresolvable(Exception):
    """The job cannot become a Dataverse call, now or later."""


class RelayService:
    def __init__(self, *, ledger: SendLedger, queue: RelayQueue, dataverse: DataverseGateway) -> None:
        self.ledger = ledger
        self.queue = queue
        self.dataverse = dataverse

    async def process(self, job: RelayJob) -> None:
        """Relay one job. Only a failure to put it back on a queue escapes (the host then retries)."""
        context = f"{job.kind} {job.provider} MessageId={job.message_id} job={job.job_id}"
        try:
            await self._process(job, context)
        except StorageUnavailable as exc:
            # a storage hiccup must not burn the host's few dequeues: come back later
            await self._later(job, context, None, str(exc))
        except Exception as exc:
            log.exception("unexpected failure relaying %s", context)
            await self.queue.poison(job, f"unexpected {type(exc).__name__}")

    async def _process(self, job: RelayJob, context: str) -> None:
        # looked up once: a record appearing between two look-ups must not split one decision
        record = await self._sent_message(job) if isinstance(job, NotificationJob) else None
        whole = (
            await self._whole_notification(job, context, record)
            if isinstance(job, NotificationJob)
            else await self._whole_inbound(job, context)
        )
        if whole is None:
            return
        async with self.ledger.relay_claim(
            whole.provider, whole.event_key, lease_seconds=RELAY_LEASE_SECONDS
        ) as claim:
            if claim.state is RelayClaimState.DONE:
                log.info("duplicate %s: already relayed", context)
            elif claim.state is RelayClaimState.BUSY:  # a duplicate is being relayed: look again later
                log.info(
                    "%s: being relayed by another worker; looking again in %.0fs", context, BUSY_DELAY_SECONDS
                )
                await self.queue.put(whole, delay=BUSY_DELAY_SECONDS)
            elif await self._relay(whole, context, record):
                claim.relayed()
        if claim.is_relayed and isinstance(whole, InboundJob) and whole.concat_group:
            await self.ledger.delete_parts(whole.provider, whole.concat_group)

    async def _relay(self, job: RelayJob, context: str, record: MessageRecord | None) -> bool:
        """Call Dataverse; True once it accepted it. Dataverse's and the job's own failures are
        handled here (poison or a later attempt)."""
        try:
            if isinstance(job, NotificationJob):
                notification = await self._notification(job, context, record)
                if notification is None:
                    return False
                await self.dataverse.notify(notification)
                log.info("relayed %s RequestId=%s Status=%s", context, notification.request_id, job.status)
            else:
                await self.dataverse.inbound(await self._inbound(job))
                log.info("relayed %s", context)
        except (DataversePermanentError, _Unresolvable) as exc:
            log.error("poisoned %s: %s", context, exc)
            await self.queue.poison(job, str(exc))
            return False
        except DataverseTransientError as exc:
            await self._later(job, context, exc.retry_after, str(exc))
            return False
        return True

    async def _whole_notification(
        self, job: NotificationJob, context: str, record: MessageRecord | None
    ) -> NotificationJob | None:
        """A message sent as several reported parts relays once for the whole text: NotDelivered
        as soon as one part fails, Delivered once all are. None while parts are outstanding."""
        if record is None or record.parts <= 1 or job.parts_total is not None:
            return job  # single part, unknown, or already aggregated (a re-queued job)
        outcomes = await self.ledger.add_part(
            job.provider, record.message_id, job.message_id, job.status.value
        )
        delivered = sum(1 for outcome in outcomes.values() if outcome == ChannelStatus.DELIVERED.value)
        failed = any(outcome == ChannelStatus.NOT_DELIVERED.value for outcome in outcomes.values())
        if not failed and delivered < record.parts:
            log.info("%s: %d of %d parts delivered", context, delivered, record.parts)
            return None
        status = ChannelStatus.NOT_DELIVERED if failed else ChannelStatus.DELIVERED
        return job.model_copy(
            update={
                "message_id": record.message_id,
                "status": status,
                "parts_total": record.parts,
                "parts_delivered": delivered,
            }
        )

    async def _whole_inbound(self, job: InboundJob, context: str) -> InboundJob | None:
        """A concatenated inbound message relays once, when all its parts are in."""
        if not (job.concat_total and job.concat_total > 1 and job.concat_ref):
            return job
        group = f"concat|{job.customer}|{job.our_number}|{job.concat_ref}|{job.concat_total}"
        part = json.dumps({"id": job.message_id, "text": job.text})
        stored = await self.ledger.add_part(job.provider, group, f"{job.concat_part or 0:04d}", part)
        if len(stored) < job.concat_total:
            log.info("%s: %d of %d parts received", context, len(stored), job.concat_total)
            return None
        parts = [json.loads(stored[key]) for key in sorted(stored)]
        # the parts' own ids identify the message: concat references are reused by carriers
        identity = hashlib.sha256("|".join(p["id"] for p in parts).encode()).hexdigest()[:32]
        return job.model_copy(
            update={
                "message_id": f"concat-{identity}",
                "text": "".join(p["text"] for p in parts),
                "concat_ref": None,
                "concat_total": None,
                "concat_part": None,
                "concat_group": group,
            }
        )

    async def _later(self, job: RelayJob, context: str, retry_after: float | None, error: str) -> None:
        attempt = job.attempt + 1
        if attempt >= MAX_ATTEMPTS:
            log.error("poisoned %s after %d attempts: %s", context, attempt, error)
            await self.queue.poison(job, error)
            return
        delay = min(max(retry_after or 0.0, 5.0 * 2**job.attempt), MAX_DELAY_SECONDS)
        log.warning("%s not relayed (%s); attempt %d again in %.0fs", context, error, attempt + 1, delay)
        await self.queue.put(
            job.model_copy(update={"attempt": attempt, "last_error": error[:500]}), delay=delay
        )

    async def _notification(
        self, job: NotificationJob, context: str, record: MessageRecord | None
    ) -> NotificationPayload | None:
        if record is None:
            if job.attempt + 1 < UNKNOWN_MESSAGE_ATTEMPTS:
                delay = UNKNOWN_MESSAGE_DELAYS_SECONDS[job.attempt]
                log.info("%s: message id not known yet; looking again in %.0fs", context, delay)
                await self.queue.put(job.model_copy(update={"attempt": job.attempt + 1}), delay=delay)
            else:
                log.warning("%s: no send of this app has this message id; dropped", context)
            return None
        status_details = {"Provider": job.provider, "ProviderStatus": job.provider_status}
        if job.error_code:
            status_details["ErrorCode"] = job.error_code
        if job.parts_total:
            status_details["PartsTotal"] = str(job.parts_total)
            status_details["PartsDelivered"] = str(job.parts_delivered or 0)
        details = None
        if job.status is ChannelStatus.NOT_DELIVERED:
            details = Details(
                reason=job.reason or "Unknown",
                message=job.description or f"{job.provider} status {job.provider_status}",
            )
        return NotificationPayload(
            channel_definition_id=record.channel_definition_id,
            request_id=record.request_id,
            message_id=job.message_id,
            from_=record.sender,
            organization_id=await self.dataverse.organization_id(),
            status=job.status,
            status_details=status_details,
            details=details,
        )

    async def _sent_message(self, job: NotificationJob) -> MessageRecord | None:
        """The send a delivery report belongs to, naming the RequestId reports must name.

        A report naming its send (the reference the provider echoed) is taken to that send's row:
        sends whose reports all carry it have no message-id record, and an ambiguous send never
        learnt its message id. The row must be this provider's, and name this message unless it
        never learnt its id: a reference the provider did not sign cannot move a report to another
        send. Anything else is looked up by message id; a send keyed on IdempotencyId is then read
        too, for the latest attempt answered (a retry may have come after the record was written).
        """
        echoed = SendKey.from_reference(job.correlation)
        send = await self.ledger.get(echoed) if echoed is not None else None
        if send is not None and send.provider == job.provider and send.message_id in (None, job.message_id):
            return MessageRecord.of_send(send, job.message_id)
        record = await self.ledger.find_message(job.provider, job.message_id)
        if record is None or record.idempotency_id is None:
            return record
        send = await self.ledger.get(record.send_key)
        return record if send is None else replace(record, request_id=send.latest_request_id)

    async def _inbound(self, job: InboundJob) -> InboundPayload:
        # our number may be a short code, which is no phone number; the customer's must be one
        our_number, customer = _e164(job.our_number) or job.our_number, _e164(job.customer)
        if customer is None:
            raise _Unresolvable("the customer's number is not a phone number")
        channel_definition_id = await self.dataverse.channel_definition_for(our_number)
        if channel_definition_id is None:
            raise _Unresolvable(f"no channel instance has the contact point {mask(our_number)}")
        return InboundPayload(
            channel_definition_id=channel_definition_id,
            to=our_number,
            from_=customer,
            organization_id=await self.dataverse.organization_id(),
            message={"text": job.text},
        )


def _e164(number: str) -> str | None:
    """The number as E.164 (providers often leave out the +); None when it is no phone number."""
    candidate = number if number.startswith("+") or not number.isdigit() else f"+{number}"
    try:
        return to_e164(candidate)
    except InvalidPhoneNumber:
        return None
