"""Group commit: writes to one table partition go out together while an earlier one is in flight.

A lone write goes out at once, as before. Writes that arrive while a write of the same table
partition is on the wire wait for it and then go out together as one entity group transaction (at
most 100 operations, never two of one row), so under load most sends pay a fraction of a storage
request for their claim and their outcome. Each writer still gets its own answer: the transaction's
metadata for its operation (the new ETag), or its own error.

A transaction is all or nothing. When one fails (a conflict in one operation, a timeout, a service
error) every writer in it makes its write again on its own, which tells each one its own outcome:
a conflict raises ResourceExistsError or ResourceModifiedError for that writer only, as a lone write
would. A transaction that timed out but was applied makes those writes conflict with themselves;
the ledger already recognises its own writes by their owner token (the SDK retries single writes
the same way).

One write or transaction per partition is on the wire at a time (allowing two was measured no
faster in bench.outbound_rps, and makes the groups smaller); the lone writes of a refused
transaction go beside the next groups, so a brownout's timeouts do not queue up behind each other.
A write whose caller was cancelled before it went out is never made. Transactions are written by
:mod:`storage.table_transaction`; lone writes and the fallback use the SDK's own calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from azure.data.tables.aio import TableClient

from storage import table_transaction
from storage.errors import StorageUnavailable

__all__ = ["GroupCommit", "Write"]

log = logging.getLogger("sms.storage")

#: Operations in one entity group transaction at most (the service's limit).
MAX_OPERATIONS = 100


@dataclass(frozen=True, slots=True)
class Write:
    """One table write, as the SDK's transactions take it."""

    kind: Literal["create", "update", "upsert"]
    entity: Mapping[str, Any]
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def row(self) -> tuple[str, str]:
        return self.entity["PartitionKey"], self.entity["RowKey"]


@dataclass(slots=True)
class _Waiting:
    write: Write
    answer: asyncio.Future[Mapping[str, Any]]


class GroupCommit:
    """Group commit for the writes to one table."""

    def __init__(self, table: TableClient, call: Callable[..., Awaitable[Any]]) -> None:
        """``call(fn, *args, **kwargs)`` makes one storage request (the ledger's: request slots,
        errors mapped to StorageUnavailable)."""
        self._table = table
        self._call = call
        self._waiting: dict[str, list[_Waiting]] = {}
        self._committers: dict[str, asyncio.Task[None]] = {}
        #: Writes of refused transactions being made alone, beside the partition's next groups.
        self._fallbacks: set[asyncio.Task[None]] = set()
        #: Transactions committed, the writes they carried, and transactions refused (for tests).
        self.transactions = 0
        self.grouped_writes = 0
        self.refused = 0

    async def write(self, write: Write) -> Mapping[str, Any]:
        """Make ``write``; return its response metadata or raise what a lone write would."""
        partition = write.entity["PartitionKey"]
        waiting = _Waiting(write, asyncio.get_running_loop().create_future())
        self._waiting.setdefault(partition, []).append(waiting)
        if partition not in self._committers:
            committer = asyncio.create_task(self._commit_all(partition))
            committer.add_done_callback(functools.partial(self._stopped, partition))
            self._committers[partition] = committer
        try:
            return await waiting.answer
        except asyncio.CancelledError:
            # not sent yet: withdrawn; already on the wire: it lands or not, as a lone write would
            with contextlib.suppress(ValueError):
                self._waiting.get(partition, []).remove(waiting)
            raise

    async def _commit_all(self, partition: str) -> None:
        group: list[_Waiting] = []
        try:
            while group := self._take(partition):
                await self._commit(group)
        except Exception:
            log.exception("group commit of table %s stopped", self._table.table_name)
        finally:
            if self._committers.get(partition) is asyncio.current_task():
                del self._committers[partition]
            # left only when this task failed or was cancelled (the loop is closing): a write on
            # the wire may have landed, which is what StorageUnavailable says
            for left in group + self._waiting.pop(partition, []):
                _answer(left, error=StorageUnavailable("table storage: writer stopped"))

    def _stopped(self, partition: str, committer: asyncio.Task[None]) -> None:
        """A committer cancelled before it ever ran (the loop is closing) never cleaned up: its
        partition's writes would wait for it for ever."""
        if self._committers.get(partition) is not committer:
            return  # it finished and cleaned up
        del self._committers[partition]
        for left in self._waiting.pop(partition, []):
            _answer(left, error=StorageUnavailable("table storage: writer stopped"))

    def _take(self, partition: str) -> list[_Waiting]:
        """The next group: in arrival order, at most MAX_OPERATIONS, one operation per row."""
        waiting = self._waiting.get(partition, [])
        group: list[_Waiting] = []
        rows: set[tuple[str, str]] = set()
        for item in list(waiting):
            if len(group) == MAX_OPERATIONS:
                break
            if item.answer.done():  # its caller is gone: never written
                waiting.remove(item)
                continue
            if item.write.row in rows:
                continue  # a second write of the row goes in the next group
            rows.add(item.write.row)
            group.append(item)
            waiting.remove(item)
        if not waiting:
            self._waiting.pop(partition, None)
        return group

    async def _commit(self, group: list[_Waiting]) -> None:
        if len(group) == 1:
            await self._alone(group[0])
            return
        operations = [(w.write.kind, w.write.entity, w.write.options) for w in group]
        try:
            results = await self._call(table_transaction.submit, self._table, operations)
        except Exception as exc:
            self.refused += 1
            if isinstance(exc, StorageUnavailable):  # a conflict, a timeout, a refusal
                log.info("transaction of %d writes not applied (%s: %s)", len(group), exc, exc.__cause__)
            else:  # a bug here must not cost the writes
                log.exception("transaction of %d writes not made", len(group))
            # nothing of it was applied (or, timed out, perhaps all): each write tells its own
            # outcome, made alone while the partition's next groups go on
            fallback = asyncio.create_task(self._each_alone(group))
            self._fallbacks.add(fallback)
            fallback.add_done_callback(self._fallbacks.discard)
            return
        self.transactions += 1
        self.grouped_writes += len(group)
        for waiting, result in zip(group, results, strict=True):
            _answer(waiting, result=result)

    async def _each_alone(self, group: list[_Waiting]) -> None:
        try:
            await asyncio.gather(*(self._alone(w) for w in group))
        finally:  # cancelled (the loop is closing): a write on the wire may have landed
            for left in group:
                _answer(left, error=StorageUnavailable("table storage: writer stopped"))

    async def _alone(self, waiting: _Waiting) -> None:
        if waiting.answer.done():  # its caller is gone: never written
            return
        write = waiting.write
        method = getattr(self._table, f"{write.kind}_entity")
        try:
            result = await self._call(method, dict(write.entity), **write.options)
        except Exception as exc:
            _answer(waiting, error=exc)
        else:
            _answer(waiting, result=result)


def _answer(
    waiting: _Waiting, *, result: Mapping[str, Any] | None = None, error: BaseException | None = None
) -> None:
    if waiting.answer.done():
        return
    if error is not None:
        waiting.answer.set_exception(error)
    else:
        waiting.answer.set_result(result or {})
