"""Send state in Azure Table Storage: one row per (ChannelDefinitionId, RequestId), one per message.

``outboundsends`` makes sends idempotent. A message's row is keyed on its :class:`SendKey`: the
payload's IdempotencyId when Journeys gave one (every attempt at the message carries it), else its
RequestId. A request claims the row by inserting it (the storage service lets exactly one insert
win); state changes are conditional on the row's ETag, so two processes can never both believe
they own a send. The row remembers the RequestId of the latest attempt answered with its outcome:
delivery reports name that one.

    Sending ──► Sent | NotSent          final: repeats get the same answer
       │
       ├──► Retryable                   nothing went out; the next repeat may claim the row again
       └──► Ambiguous                   the provider may have the message; never sent again

``smsmessages`` maps a provider's message id back to the request, for delivery reports whose
reference to the request is not certain (a send whose reports all carry it needs no such row).
``relayedevents`` remembers each (provider, message id, status) relayed to Dataverse, so provider
retries and queue redeliveries relay it once. Every table carries ``ExpiresAt``;
:meth:`SendLedger.purge_expired` deletes what has passed it.

Claims, outcomes, message records and relay claims are written through :mod:`storage.group_commit`:
under load, the writes of one partition share entity group transactions, each writer keeping its
own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote
from uuid import UUID

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from contracts.base import StrEnum
from core.settings import StorageLocation
from storage.clients import StorageAccess
from storage.errors import StorageUnavailable
from storage.group_commit import GroupCommit, Write

__all__ = [
    "MessageRecord",
    "RelayClaim",
    "RelayClaimState",
    "SendKey",
    "SendLedger",
    "SendRecord",
    "SendState",
    "StorageUnavailable",
]

SENDS_TABLE = "outboundsends"
MESSAGES_TABLE = "smsmessages"
RELAYED_TABLE = "relayedevents"
PARTS_TABLE = "messageparts"
#: Attempts at recording a relay as done after Dataverse accepted it.
MARK_ATTEMPTS = 4
#: Attempts at recording which attempt was answered last, when concurrent attempts race for it.
ANSWER_ATTEMPTS = 3
#: Table requests one process has in flight at most. The asyncio client has no limit of its own: 64
#: relays and 16 sends at once would put 80 requests on the account together, and a request that
#: outlives its 5 s read timeout but lands (a claim) holds its event for a lease.
TABLE_REQUESTS_AT_ONCE = 16

log = logging.getLogger("sms.relay")


class RelayClaimState(StrEnum):
    CLAIMED = "Claimed"
    #: Already relayed: a duplicate.
    DONE = "Done"
    #: Another worker holds an unexpired claim.
    BUSY = "Busy"


@dataclass(slots=True)
class RelayClaim:
    state: RelayClaimState
    etag: str | None = None
    #: The claimant's token, kept on the row once relayed: a lost answer is then told from a takeover.
    owner: str | None = None
    is_relayed: bool = False

    def relayed(self) -> None:
        """Dataverse accepted the event: it is marked relayed when the claim's block ends."""
        self.is_relayed = True


class SendState(StrEnum):
    SENDING = "Sending"
    SENT = "Sent"
    NOT_SENT = "NotSent"
    RETRYABLE = "Retryable"
    AMBIGUOUS = "Ambiguous"

    @property
    def is_final(self) -> bool:
        return self in (SendState.SENT, SendState.NOT_SENT, SendState.AMBIGUOUS)


@dataclass(frozen=True, slots=True)
class SendKey:
    """What identifies one message's send: its IdempotencyId when the payload has one, else its
    RequestId (each within its ChannelDefinitionId)."""

    channel_definition_id: UUID
    value: str
    by_idempotency_id: bool = False

    @classmethod
    def of(cls, channel_definition_id: UUID, request_id: str, idempotency_id: str | None) -> SendKey:
        if idempotency_id is not None:
            return cls(channel_definition_id, idempotency_id, by_idempotency_id=True)
        return cls(channel_definition_id, request_id)

    @property
    def row_key(self) -> str:
        # "!" never occurs in row_key()'s output, so the two kinds of key cannot meet
        return f"i!{row_key(self.value)}" if self.by_idempotency_id else row_key(self.value)

    @property
    def reference(self) -> str:
        """What providers echo in their reports: ``<ChannelDefinitionId>/<RequestId>`` (the form of
        every send before IdempotencyId) or ``<ChannelDefinitionId>:<IdempotencyId>``."""
        return f"{self.channel_definition_id}{':' if self.by_idempotency_id else '/'}{self.value}"

    @classmethod
    def from_reference(cls, reference: str | None) -> SendKey | None:
        """The key a report's echoed reference names; None for anything else."""
        if not reference or len(reference) < 38 or reference[36] not in "/:":
            return None
        try:
            channel_definition_id = UUID(reference[:36])
        except ValueError:
            return None
        return cls(channel_definition_id, reference[37:], by_idempotency_id=reference[36] == ":")


@dataclass(frozen=True, slots=True, kw_only=True)
class SendRecord:
    channel_definition_id: UUID
    #: The attempt that created the row.
    request_id: str
    state: SendState
    provider: str
    sender: str
    fingerprint: str
    idempotency_key: UUID
    first_attempt_at: datetime
    lease_until: datetime
    expires_at: datetime
    segments: int
    encoding: str
    is_test_send: bool = False
    message_id: str | None = None
    #: How many separately reported parts the message went out as (see MessageRecord.parts).
    parts: int = 1
    reason: str | None = None
    #: Token of the call that last claimed the row: lets a call recognise its own write when the
    #: storage SDK retried it after a lost response (the retry then sees a conflict).
    owner: str = ""
    #: Details.Message of a NotSent outcome, kept so that every repeat gets the same Details.
    detail: str | None = None
    #: The payload's IdempotencyId, when the row is keyed on it.
    idempotency_id: str | None = None
    #: The latest later attempt (another RequestId, same IdempotencyId) answered with this outcome.
    answered_request_id: str | None = None
    etag: str | None = None

    @property
    def key(self) -> SendKey:
        return SendKey.of(self.channel_definition_id, self.request_id, self.idempotency_id)

    @property
    def latest_request_id(self) -> str:
        """The RequestId delivery reports name: the latest attempt answered with the outcome."""
        return self.answered_request_id or self.request_id

    def to_entity(self) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "PartitionKey": str(self.channel_definition_id),
            "RowKey": self.key.row_key,
            "RequestId": self.request_id,
            "State": self.state.value,
            "Provider": self.provider,
            "From": self.sender,
            "Fingerprint": self.fingerprint,
            "IdempotencyKey": str(self.idempotency_key),
            "FirstAttemptAt": self.first_attempt_at,
            "LeaseUntil": self.lease_until,
            "ExpiresAt": self.expires_at,
            "Segments": self.segments,
            "Encoding": self.encoding,
            "IsTestSend": self.is_test_send,
            "Owner": self.owner,
        }
        if self.message_id is not None:
            entity["MessageId"] = self.message_id
        if self.parts != 1:
            entity["Parts"] = self.parts
        optional = {
            "Reason": self.reason,
            "Detail": self.detail,
            "IdempotencyId": self.idempotency_id,
            "AnsweredRequestId": self.answered_request_id,
        }
        entity.update({name: value for name, value in optional.items() if value is not None})
        return entity

    @classmethod
    def from_entity(cls, entity: Any) -> SendRecord:
        return cls(
            channel_definition_id=UUID(entity["PartitionKey"]),
            request_id=entity["RequestId"],
            state=SendState(entity["State"]),
            provider=entity["Provider"],
            sender=entity["From"],
            fingerprint=entity["Fingerprint"],
            idempotency_key=UUID(entity["IdempotencyKey"]),
            first_attempt_at=_utc(entity["FirstAttemptAt"]),
            lease_until=_utc(entity["LeaseUntil"]),
            expires_at=_utc(entity["ExpiresAt"]),
            segments=int(entity.get("Segments", 0)),
            encoding=entity.get("Encoding", ""),
            is_test_send=bool(entity.get("IsTestSend", False)),
            message_id=entity.get("MessageId"),
            parts=int(entity.get("Parts", 1)),
            reason=entity.get("Reason"),
            owner=entity.get("Owner", ""),
            detail=entity.get("Detail"),
            idempotency_id=entity.get("IdempotencyId"),
            answered_request_id=entity.get("AnsweredRequestId"),
            etag=entity.metadata.get("etag"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageRecord:
    """What a delivery report needs to find its request from the provider's message id."""

    provider: str
    message_id: str
    channel_definition_id: UUID
    #: The attempt reports name; for a send keyed on IdempotencyId, the one of when it was recorded
    #: (the send's own row knows any later one).
    request_id: str
    sender: str
    segments: int
    expires_at: datetime
    #: How many separately reported parts the message was sent as (1 for most providers).
    parts: int = 1
    #: The send's IdempotencyId, when its row is keyed on it.
    idempotency_id: str | None = None

    @property
    def send_key(self) -> SendKey:
        return SendKey.of(self.channel_definition_id, self.request_id, self.idempotency_id)

    @classmethod
    def of_send(cls, send: SendRecord, message_id: str) -> MessageRecord:
        """What a send's own row says of its message (``message_id`` when it never learnt one)."""
        return cls(
            provider=send.provider,
            message_id=send.message_id or message_id,
            channel_definition_id=send.channel_definition_id,
            request_id=send.latest_request_id,
            sender=send.sender,
            segments=send.segments,
            expires_at=send.expires_at,
            parts=send.parts,
            idempotency_id=send.idempotency_id,
        )


#: Table keys hold at most 1 KiB; longer encodings are replaced by a digest of the value.
MAX_ROW_KEY_LENGTH = 512


def row_key(value: str) -> str:
    """Table keys may not hold / \\ # ? or control characters: percent-encode them."""
    encoded = quote(value, safe="")
    if len(encoded) <= MAX_ROW_KEY_LENGTH:
        return encoded
    return "sha256-" + hashlib.sha256(value.encode("utf-8")).hexdigest()


def _if_unchanged(etag: str | None) -> dict[str, Any]:
    """Options of a write that replaces a row only if nobody changed it since ``etag``."""
    return {"mode": UpdateMode.REPLACE, "etag": etag, "match_condition": MatchConditions.IfNotModified}


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class SendLedger:
    def __init__(self, location: StorageLocation | str, *, retention: timedelta) -> None:
        """``location``: where the tables are (a plain string is a connection string)."""
        self.retention = retention
        self._access = StorageAccess(location)
        self._service = self._access.table_service(connection_timeout=3, read_timeout=5, retry_total=1)
        self._sends: TableClient = self._service.get_table_client(SENDS_TABLE)
        self._messages: TableClient = self._service.get_table_client(MESSAGES_TABLE)
        self._relayed: TableClient = self._service.get_table_client(RELAYED_TABLE)
        self._parts: TableClient = self._service.get_table_client(PARTS_TABLE)
        self._tables = (self._sends, self._messages, self._relayed, self._parts)
        self._send_writes = GroupCommit(self._sends, self._call)
        self._message_writes = GroupCommit(self._messages, self._call)
        self._relayed_writes = GroupCommit(self._relayed, self._call)
        self._tables_ready = False
        self._lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(TABLE_REQUESTS_AT_ONCE)

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._tables_ready:
            async with self._lock:
                if not self._tables_ready:
                    await self._create_tables()
                    self._tables_ready = True
        try:
            async with self._slots:
                return await fn(*args, **kwargs)
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
            raise  # answers the caller handles
        except AzureError as exc:
            raise StorageUnavailable(f"table storage: {type(exc).__name__}") from exc

    async def _create_tables(self) -> None:
        try:
            for table in self._tables:
                with contextlib.suppress(ResourceExistsError):
                    await table.create_table()
        except AzureError as exc:
            raise StorageUnavailable(f"table storage: {type(exc).__name__}") from exc

    async def ping(self) -> None:
        """Raise StorageUnavailable unless the storage account answers."""
        try:
            async for _table in self._service.list_tables(results_per_page=1):
                break
        except AzureError as exc:
            raise StorageUnavailable(f"table storage: {type(exc).__name__}") from exc

    # -- sends -------------------------------------------------------------------------------

    async def claim(self, draft: SendRecord) -> tuple[bool, SendRecord]:
        """Insert ``draft``; return (True, it) if this call created the row, else (False, the row)."""
        try:
            metadata = await self._send_writes.write(Write("create", draft.to_entity()))
            return True, replace(draft, etag=metadata.get("etag"))
        except ResourceExistsError:
            existing = await self.get(draft.key)
            if existing is None:  # purged between the two calls: try once more
                return await self.claim(draft)
            return existing.owner == draft.owner, existing
        except StorageUnavailable:
            # A timed-out insert may still have landed. Unrecognised, its row would make the repeat
            # wait out the lease and then, nothing having been sent, answer Sent: look now.
            landed = await self.get(draft.key)
            if landed is None or landed.owner != draft.owner:
                raise
            return True, landed

    async def get(self, key: SendKey) -> SendRecord | None:
        try:
            entity = await self._call(self._sends.get_entity, str(key.channel_definition_id), key.row_key)
        except ResourceNotFoundError:
            return None
        return SendRecord.from_entity(entity)

    async def replace_if_unchanged(self, record: SendRecord, **changes: Any) -> SendRecord | None:
        """Write ``record`` with ``changes`` unless someone else changed the row since it was read.

        Returns the stored record, or None when the row had changed (the caller lost a race).
        """
        updated = replace(record, **changes)
        try:
            metadata = await self._send_writes.write(
                Write("update", updated.to_entity(), _if_unchanged(record.etag))
            )
        except ResourceModifiedError:
            stored = await self.get(record.key)
            if stored is not None and stored.owner == updated.owner and stored.state is updated.state:
                return stored  # our own write, retried by the SDK after its answer was lost
            return None
        return replace(updated, etag=metadata.get("etag"))

    async def record_answer(self, record: SendRecord, request_id: str) -> SendRecord:
        """Remember ``request_id`` as the latest attempt answered with ``record``'s final outcome
        (a retry of the message with another RequestId): its delivery reports name that attempt."""
        for _ in range(ANSWER_ATTEMPTS):
            if record.latest_request_id == request_id:
                return record
            answered = replace(record, answered_request_id=request_id)
            try:
                metadata = await self._send_writes.write(
                    Write("update", answered.to_entity(), _if_unchanged(record.etag))
                )
                return replace(answered, etag=metadata.get("etag"))
            except ResourceModifiedError:  # another attempt answered meanwhile: ours is the later
                latest = await self.get(record.key)
                if latest is None:
                    return record
                record = latest
        return record

    # -- messages ----------------------------------------------------------------------------

    async def remember_message(
        self, record: SendRecord, message_id: str, part_ids: tuple[str, ...] = (), refused_parts: int = 0
    ) -> None:
        """Record ``message_id`` (and, for providers that send long texts as separately reported
        parts, every part's id) as belonging to ``record``'s request. Parts the provider refused are
        stored as already NotDelivered, so the message is reported NotDelivered."""
        for index in range(refused_parts):
            await self._save_part(record.provider, message_id, f"refused-{index}", "NotDelivered")
        for part_id in part_ids or (message_id,):
            entity = {
                "PartitionKey": record.provider,
                "RowKey": row_key(part_id),
                "MessageId": message_id,
                "PartId": part_id,
                "Parts": max(len(part_ids) + refused_parts, 1),
                "ChannelDefinitionId": str(record.channel_definition_id),
                "RequestId": record.latest_request_id,
                "From": record.sender,
                "Segments": record.segments,
                "ExpiresAt": record.expires_at,
            }
            if record.idempotency_id is not None:
                entity["IdempotencyId"] = record.idempotency_id
            await self._message_writes.write(Write("upsert", entity, {"mode": UpdateMode.REPLACE}))

    async def find_message(self, provider: str, message_id: str) -> MessageRecord | None:
        try:
            entity = await self._call(self._messages.get_entity, provider, row_key(message_id))
        except ResourceNotFoundError:
            return None
        return MessageRecord(
            provider=entity["PartitionKey"],
            message_id=entity["MessageId"],
            channel_definition_id=UUID(entity["ChannelDefinitionId"]),
            request_id=entity["RequestId"],
            sender=entity["From"],
            segments=int(entity.get("Segments", 0)),
            expires_at=_utc(entity["ExpiresAt"]),
            parts=int(entity.get("Parts", 1)),
            idempotency_id=entity.get("IdempotencyId"),
        )

    # -- message parts: per-part delivery outcomes, concatenated inbound texts -------------------

    async def add_part(self, provider: str, group: str, part: str, value: str) -> dict[str, str]:
        """Store one part of ``group`` and return every part stored for it so far: part -> value."""
        await self._save_part(provider, group, part, value)
        return await self._stored_parts(provider, group)

    async def _save_part(self, provider: str, group: str, part: str, value: str) -> None:
        entity = {
            "PartitionKey": row_key(f"{provider}|{group}"),
            "RowKey": row_key(part),
            "Value": value,
            "ExpiresAt": self.expiry(),
        }
        await self._call(self._parts.upsert_entity, entity, mode=UpdateMode.REPLACE)

    async def _stored_parts(self, provider: str, group: str) -> dict[str, str]:
        partition = row_key(f"{provider}|{group}").replace("'", "''")

        async def query() -> dict[str, str]:
            rows = self._parts.query_entities(f"PartitionKey eq '{partition}'", select=["RowKey", "Value"])
            return {entity["RowKey"]: entity["Value"] async for entity in rows}

        result: dict[str, str] = await self._call(query)
        return result

    async def delete_parts(self, provider: str, group: str) -> None:
        partition = row_key(f"{provider}|{group}")
        for part in await self._stored_parts(provider, group):
            with contextlib.suppress(ResourceNotFoundError):
                await self._call(self._parts.delete_entity, partition, part)

    # -- relays ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def relay_claim(
        self, provider: str, event_key: str, *, lease_seconds: float
    ) -> AsyncIterator[RelayClaim]:
        """Hold the right to relay one event for the duration of the block.

        One caller at a time gets ``state`` CLAIMED; a duplicate sees DONE (already relayed) or
        BUSY (another worker holds an unexpired claim). A holder calls :meth:`RelayClaim.relayed`
        once Dataverse has the event; on leaving the block the event is then marked relayed,
        otherwise (failure, exception) the claim is given back so that a later attempt may relay.
        """
        claim = await self._claim_relay(provider, event_key, lease_seconds)
        if claim.state is not RelayClaimState.CLAIMED:
            yield claim
            return
        try:
            yield claim
        except BaseException:
            with contextlib.suppress(StorageUnavailable):
                await self._release_relay(provider, event_key, claim)
            raise
        if claim.is_relayed:
            await self._mark_relayed(provider, event_key, claim, lease_seconds)
        else:
            await self._release_relay(provider, event_key, claim)

    async def _claim_relay(self, provider: str, event_key: str, lease_seconds: float) -> RelayClaim:
        owner = uuid.uuid4().hex
        entity = {
            "PartitionKey": provider,
            "RowKey": row_key(event_key),
            "State": "Relaying",
            "LeaseUntil": self.lease(lease_seconds),
            "ExpiresAt": self.expiry(),
            # lets this call recognise its own insert when the SDK retried it after a lost answer
            "Owner": owner,
        }
        try:
            metadata = await self._relayed_writes.write(Write("create", entity))
            return RelayClaim(RelayClaimState.CLAIMED, metadata.get("etag"), owner)
        except ResourceExistsError:
            unanswered = None
        except StorageUnavailable as exc:
            # a timed-out insert may still have landed: unrecognised, it would hold the event for
            # the lease (the job's next attempt claims with another owner token)
            unanswered = exc
        try:
            existing = await self._call(self._relayed.get_entity, provider, row_key(event_key))
        except ResourceNotFoundError:
            if unanswered is not None:  # it did not land: storage is failing, try again later
                raise unanswered from unanswered.__cause__  # keep the storage error it came from
            return RelayClaim(RelayClaimState.BUSY)  # released in between: the next attempt claims it
        if existing.get("State") == "Relayed":
            return RelayClaim(RelayClaimState.DONE)
        if existing.get("Owner") == owner:
            return RelayClaim(RelayClaimState.CLAIMED, existing.metadata.get("etag"), owner)
        if _utc(existing["LeaseUntil"]) > self.now:
            return RelayClaim(RelayClaimState.BUSY)
        try:  # the claimant died mid-relay: take its claim over
            metadata = await self._relayed_writes.write(
                Write("update", entity, _if_unchanged(existing.metadata.get("etag")))
            )
        except ResourceModifiedError:
            return await self._taken_over_by(provider, event_key, owner)
        return RelayClaim(RelayClaimState.CLAIMED, metadata.get("etag"), owner)

    async def _taken_over_by(self, provider: str, event_key: str, owner: str) -> RelayClaim:
        """After a takeover met a changed row: ours if the change was our own write, landed before
        its answer was lost (a retried write, or a transaction redone write by write)."""
        try:
            row = await self._call(self._relayed.get_entity, provider, row_key(event_key))
        except ResourceNotFoundError:
            return RelayClaim(RelayClaimState.BUSY)
        if row.get("State") == "Relaying" and row.get("Owner") == owner:
            return RelayClaim(RelayClaimState.CLAIMED, row.metadata.get("etag"), owner)
        return RelayClaim(RelayClaimState.BUSY)

    async def _mark_relayed(self, provider: str, event_key: str, claim: RelayClaim, lease: float) -> None:
        """Dataverse has the event: record that, but never raise now (a retry would relay it again)."""
        entity = {
            "PartitionKey": provider,
            "RowKey": row_key(event_key),
            "State": "Relayed",
            "RelayedAt": self.now,
            "ExpiresAt": self.expiry(),
            "Owner": claim.owner,
        }
        for attempt in range(MARK_ATTEMPTS):
            try:
                await self._relayed_writes.write(Write("update", entity, _if_unchanged(claim.etag)))
                return
            except (ResourceModifiedError, ResourceNotFoundError):
                if await self._relayed_by(provider, event_key, claim.owner):
                    return  # our own write: the SDK retried it after its answer was lost
                log.warning(
                    "relayed %s after its claim was taken over; Dataverse may see it twice", event_key
                )
                return
            except StorageUnavailable as exc:
                if attempt + 1 == MARK_ATTEMPTS:
                    log.error(
                        "relayed %s but could not record it (%s); a duplicate arriving after %.0fs "
                        "would be relayed again",
                        event_key,
                        exc,
                        lease,
                    )
                    return
                await asyncio.sleep(0.5 * 2**attempt)

    async def _relayed_by(self, provider: str, event_key: str, owner: str | None) -> bool:
        try:
            row = await self._call(self._relayed.get_entity, provider, row_key(event_key))
        except (ResourceNotFoundError, StorageUnavailable):
            return False
        return bool(row.get("State") == "Relayed" and owner is not None and row.get("Owner") == owner)

    async def _release_relay(self, provider: str, event_key: str, claim: RelayClaim) -> None:
        """Give the claim back unless another worker holds the event by now."""
        with contextlib.suppress(ResourceNotFoundError, ResourceModifiedError):
            await self._call(
                self._relayed.delete_entity,
                provider,
                row_key(event_key),
                etag=claim.etag,
                match_condition=MatchConditions.IfNotModified,
            )

    # -- retention ---------------------------------------------------------------------------

    async def purge_expired(self, now: datetime | None = None) -> int:
        """Delete every row whose ExpiresAt has passed; return how many."""
        cutoff = now or datetime.now(timezone.utc)
        deleted = 0
        for table in self._tables:
            deleted += await self._call(self._purge_table, table, cutoff)
        return deleted

    @staticmethod
    async def _purge_table(table: TableClient, cutoff: datetime) -> int:
        expired = table.query_entities(
            "ExpiresAt lt @cutoff", parameters={"cutoff": cutoff}, select=["PartitionKey", "RowKey"]
        )
        deleted = 0
        rows = sorted([(e["PartitionKey"], e["RowKey"]) async for e in expired])
        for _partition, group in itertools.groupby(rows, key=lambda row: row[0]):
            keys = list(group)
            for start in range(0, len(keys), 100):  # a transaction holds at most 100 operations
                batch = keys[start : start + 100]
                await table.submit_transaction(
                    [("delete", {"PartitionKey": pk, "RowKey": rk}) for pk, rk in batch]
                )
                deleted += len(batch)
        return deleted

    async def aclose(self) -> None:
        for table in self._tables:
            await table.close()
        await self._service.close()
        await self._access.aclose()

    @property
    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def expiry(self) -> datetime:
        return self.now + self.retention

    def lease(self, seconds: float) -> datetime:
        return self.now + timedelta(seconds=seconds)
