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
from collections import Counter, deque
from datetime import datetime, timezone
from itertools import islice
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
    "excerpt",
    "fits_on_queue",
    "reasons_summary",
    "unrelayable_record",
]

RELAY_QUEUE = "relay-jobs"
POISON_QUEUE = f"{RELAY_QUEUE}-poison"
#: Azure Storage queue messages hold at most 64 KiB, counted on the base64 text the host reads.
MAX_MESSAGE_BYTES = 64 * 1024
#: The events a poison record of unrelayable events shows, in characters of ASCII JSON: with the
#: rest of the record, well inside one queue message once base64-encoded.
MAX_KEPT_CHARS = 40_000
#: How an event is cut for that record, tried in turn until it fits what is left of the record:
#: (levels of nesting, entries per array or object, characters per string, values in all).
_EXCERPT_CUTS = ((8, 50, 1000, 400), (4, 20, 200, 100), (2, 5, 50, 20))


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


def excerpt(value: Any, *, depth: int = 8, items: int = 50, chars: int = 1000, values: int = 400) -> Any:
    """``value`` cut for a record, walked breadth first without recursion: ``depth`` levels of
    nesting, the first ``items`` entries of each array or object, ``chars`` characters of each
    string and key, ``values`` values in all. Each cut says what it left out."""
    root: list[Any] = [None]
    pending: deque[tuple[Any, Any, Any, int]] = deque([(value, root, 0, 0)])
    taken = 0
    while pending:
        source, parent, slot, level = pending.popleft()
        taken += 1
        if isinstance(source, str):
            parent[slot] = source if len(source) <= chars else f"{source[:chars]}… ({len(source)} characters)"
        elif source is None or isinstance(source, (bool, int, float)):
            parent[slot] = source
        elif isinstance(source, (dict, list, tuple)):
            room = min(items, values - taken - len(pending))
            if level >= depth or room < 1:
                parent[slot] = f"… ({type(source).__name__} of {len(source)} left out)"
                continue
            more = f"{len(source) - room} more left out" if len(source) > room else None
            if isinstance(source, dict):
                fields: dict[str, Any] = {}
                for key, child in islice(source.items(), room):
                    name = str(key)[:chars]
                    fields[name] = None
                    pending.append((child, fields, name, level + 1))
                if more:
                    fields["…"] = more
                parent[slot] = fields
            else:
                entries: list[Any] = [None] * min(room, len(source))
                for index, child in enumerate(source[:room]):
                    pending.append((child, entries, index, level + 1))
                if more:
                    entries.append(f"… {more}")
                parent[slot] = entries
        else:  # no JSON value: a parsed event holds none, a dataclass field may (an enum)
            parent[slot] = str(source)[:chars]
    return root[0]


def reasons_summary(unrelayable: list[tuple[Any, str]]) -> str:
    """Why events cannot be relayed, each reason once with how many events it concerns."""
    counts = Counter(reason[:200] for _, reason in unrelayable)
    shown = "; ".join(f"{reason} ({count})" for reason, count in counts.most_common(5))
    others = len(counts) - 5
    return (shown + (f"; {others} other reasons" if others > 0 else ""))[:500]


def unrelayable_record(provider: str, webhook: str, unrelayable: list[tuple[Any, str]]) -> bytes:
    """The poison record of one webhook's events that cannot be relayed, each as received with why,
    as ASCII JSON of at most about MAX_KEPT_CHARS characters whatever the events hold: events are
    cut (``excerpt``), and those that no longer fit are only counted (``left_out``)."""
    shown: list[dict[str, Any]] = []
    room = MAX_KEPT_CHARS
    for record, reason in unrelayable:
        for depth, items, chars, values in _EXCERPT_CUTS:
            entry = {
                "reason": reason[:300],
                "event": excerpt(record, depth=depth, items=items, chars=chars, values=values),
            }
            size = len(json.dumps(entry, default=str))
            if size <= room:
                shown.append(entry)
                room -= size + 2
                break
        else:
            break  # the record is full: later events are counted, not shown
    kept = {
        "provider": provider,
        "webhook": webhook,
        "last_error": f"{len(unrelayable)} event(s) cannot be relayed: {reasons_summary(unrelayable)}"[:500],
        "total": len(unrelayable),
        "left_out": len(unrelayable) - len(shown),
        "unrelayable": shown,
    }
    return json.dumps(kept, ensure_ascii=True, default=str).encode("ascii")


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

    async def keep_unrelayable(self, provider: str, webhook: str, unrelayable: list[tuple[Any, str]]) -> None:
        """Keep what one webhook reported but cannot be relayed in the poison queue, as one record
        for an operator (``unrelayable_record``; ``replay_poison`` leaves it there: it is no job)."""
        await self.poison_raw(unrelayable_record(provider, webhook, unrelayable), provider=provider)

    async def poison_raw(self, body: bytes, *, provider: str | None = None) -> None:
        """Keep a message that is no relay job (or none any more) in the poison queue."""
        await self._run(self._poison.send_message, base64.b64encode(body).decode("ascii"), time_to_live=-1)
        telemetry.POISONED.add(1, {"Provider": provider or "unknown", "Kind": "unreadable"})
        telemetry.note_relay_outcome("poisoned")

    async def aclose(self) -> None:
        await self._queue.close()
        await self._poison.close()
        await self._access.aclose()
