"""The relay queue and the jobs on it: one per delivery report or inbound message to relay.

A job is either a :class:`NotificationJob` (a final delivery status, for
``msdyn_D365ChannelsNotification``) or an :class:`InboundJob` (a customer's message, for
``msdyn_D365ChannelsInbound``), told apart by ``kind``. Messages are base64 JSON, as the Functions
host's queue trigger reads them; jobs queued by an earlier version decode unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from azure.core.exceptions import AzureError, ResourceExistsError
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter

from contracts import ChannelStatus
from core import telemetry
from core.settings import StorageLocation
from storage.clients import StorageAccess
from storage.errors import StorageUnavailable

__all__ = [
    "POISON_QUEUE",
    "RELAY_QUEUE",
    "InboundJob",
    "NotificationJob",
    "RelayJob",
    "RelayQueue",
    "decode_job",
    "fits_on_queue",
]

RELAY_QUEUE = "relay-jobs"
POISON_QUEUE = f"{RELAY_QUEUE}-poison"
#: Azure Storage queue messages hold at most 64 KiB, counted on the base64 text the host reads.
MAX_MESSAGE_BYTES = 64 * 1024


def _scrub(value: object) -> object:
    """Lone UTF-16 surrogates (JSON can spell them) cannot be stored or relayed: replace them."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value.strip()


#: Text from a provider: numbers become strings, lone surrogates U+FFFD; nested values are refused.
Text = Annotated[str, BeforeValidator(_scrub)]
#: An identifier or number: as Text, and never blank.
Identifier = Annotated[str, BeforeValidator(_scrub), AfterValidator(_non_blank)]


class _Job(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", coerce_numbers_to_str=True)

    provider: Identifier
    message_id: Identifier
    job_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    received_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    attempt: int = 0
    last_error: str | None = None
    #: W3C trace context of the webhook that queued the job: the relay continues its trace.
    traceparent: str | None = None

    def encode(self) -> str:
        return base64.b64encode(self.model_dump_json(exclude_none=True).encode("utf-8")).decode("ascii")


class NotificationJob(_Job):
    kind: Literal["notification"] = "notification"
    status: ChannelStatus
    #: The provider's own status and error code, kept for StatusDetails.
    provider_status: Identifier
    error_code: Text | None = None
    #: Normalized failure reason and its description, for Details {Reason, Message}.
    reason: Text | None = None
    description: Text | None = None
    #: Our sender number as the provider reports it.
    sender: Text | None = None
    #: "<ChannelDefinitionId>/<RequestId>" when the provider echoes what we sent with the message.
    correlation: Text | None = None
    #: A message sent as separately reported parts: how many, and how many were delivered.
    parts_total: int | None = None
    parts_delivered: int | None = None

    @property
    def event_key(self) -> str:
        """Identity for deduplication: the same provider event relayed twice is the same key."""
        return f"notification|{self.message_id}|{self.status.value}"


class InboundJob(_Job):
    kind: Literal["inbound"] = "inbound"
    #: The customer's number, and ours (the channel instance's contact point).
    customer: Identifier
    our_number: Identifier
    text: Text
    #: One part of a concatenated inbound message (reassembled before relaying).
    concat_ref: Text | None = None
    concat_total: int | None = None
    concat_part: int | None = None
    #: Set on a reassembled message: the stored parts to delete once it is relayed.
    concat_group: str | None = None

    @property
    def event_key(self) -> str:
        return f"inbound|{self.message_id}|"


RelayJob = Annotated[NotificationJob | InboundJob, Field(discriminator="kind")]
_JOB: TypeAdapter[RelayJob] = TypeAdapter(RelayJob)


def decode_job(body: bytes) -> RelayJob:
    """The job in a queue message's (decoded) body; pydantic's ValidationError if it is none."""
    return _JOB.validate_json(body)


def fits_on_queue(job: RelayJob) -> bool:
    return len(job.encode()) <= MAX_MESSAGE_BYTES


def _shortened(value: Any, limit: int = 2000) -> Any:
    """``value`` with every string cut to ``limit`` characters (a record that must fit a message)."""
    if isinstance(value, str):
        return value if len(value) <= limit else f"{value[:limit]}… ({len(value)} characters)"
    if isinstance(value, dict):
        return {str(k)[:limit]: _shortened(v, limit) for k, v in list(value.items())[:100]}
    if isinstance(value, (list, tuple)):
        return [_shortened(v, limit) for v in value[:100]]
    return value if isinstance(value, (int, float, bool)) or value is None else str(value)[:limit]


class RelayQueue:
    """The relay queue and its poison queue (Azure Storage queues, base64 like the Functions host)."""

    def __init__(self, location: StorageLocation | str, name: str = RELAY_QUEUE) -> None:
        """``location``: where the queues are (a plain string is a connection string)."""
        # Webhooks wait for the enqueue: one retry after about a second rather than the SDK's
        # default 15-second back-off, so the provider gets its 503 well inside its own timeout.
        retry = {"retry_total": 1, "initial_backoff": 1, "increment_base": 0, "random_jitter_range": 1}
        self._access = StorageAccess(location)
        self._queue, self._poison = (
            self._access.async_queue(queue, connection_timeout=3, read_timeout=5, **retry)
            for queue in (name, f"{name}-poison")
        )
        self._ready = False

    async def _run(self, fn: object, *args: object, **kwargs: object) -> None:
        try:
            if not self._ready:
                await self._create()
                self._ready = True
            await fn(*args, **kwargs)  # type: ignore[operator]
        except AzureError as exc:
            raise StorageUnavailable(f"queue storage: {type(exc).__name__}") from exc

    async def _create(self) -> None:
        for queue in (self._queue, self._poison):
            with contextlib.suppress(ResourceExistsError):
                await queue.create_queue()

    async def put(self, job: RelayJob, *, delay: float = 0.0) -> None:
        await self._run(
            self._queue.send_message, job.encode(), visibility_timeout=int(delay) or None, time_to_live=-1
        )
        telemetry.note_relay_outcome("retried")  # inside a relay: the job comes back later

    async def put_many(self, jobs: list[RelayJob]) -> None:
        await asyncio.gather(*(self.put(job) for job in jobs))

    async def poison(self, job: RelayJob, error: str) -> None:
        failed = job.model_copy(update={"last_error": error[:500]})
        await self._run(self._poison.send_message, failed.encode(), time_to_live=-1)
        telemetry.POISONED.add(1, {"Provider": job.provider, "Kind": job.kind})
        telemetry.note_relay_outcome("poisoned")

    async def keep_unrelayable(self, provider: str, record: Any, reason: str) -> None:
        """Keep what a webhook reported but cannot be relayed in the poison queue, for an operator
        (``replay_poison`` leaves it there: it is no job)."""
        kept = {"unrelayable": _shortened(record), "provider": provider, "last_error": reason[:500]}
        body = json.dumps(kept, ensure_ascii=True, default=str).encode("ascii")
        await self.poison_raw(body, provider=provider)

    async def poison_raw(self, body: bytes, *, provider: str | None = None) -> None:
        """Keep a message that is no relay job (or none any more) in the poison queue."""
        await self._run(self._poison.send_message, base64.b64encode(body).decode("ascii"), time_to_live=-1)
        telemetry.POISONED.add(1, {"Provider": provider or "unknown", "Kind": "unreadable"})
        telemetry.note_relay_outcome("poisoned")

    async def aclose(self) -> None:
        await self._queue.close()
        await self._poison.close()
        await self._access.aclose()
