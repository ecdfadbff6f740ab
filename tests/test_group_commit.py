"""Group commit against Azurite: concurrent writes to one partition share transactions, and every
writer still gets its own outcome (the sends' claims and outcomes depend on it)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from storage.clients import StorageAccess
from storage.errors import StorageUnavailable
from storage.group_commit import MAX_OPERATIONS, GroupCommit, Write
from storage.ledger import SendKey, SendLedger, SendState
from tests.doubles import send_record
from tests.fakes.azurite import Azurite


@dataclass
class _Gate:
    """Holds one storage request on the wire: ``entered`` once it is, until ``release``."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


class _Calls:
    """The ledger's ``call``: one storage request, errors mapped as the ledger maps them."""

    def __init__(self) -> None:
        self.made: list[str] = []
        self._gates: list[_Gate] = []

    def hold_next(self) -> _Gate:
        """Hold the next request not yet held on the wire."""
        gate = _Gate()
        self._gates.append(gate)
        return gate

    async def __call__(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.made.append(fn.__name__)
        if self._gates:
            gate = self._gates.pop(0)
            gate.entered.set()
            await gate.release.wait()
        try:
            return await fn(*args, **kwargs)
        except (ResourceExistsError, ResourceModifiedError):
            raise
        except AzureError as exc:
            raise StorageUnavailable(f"table storage: {type(exc).__name__}") from exc


def row(partition: str, key: str, **values: object) -> dict[str, object]:
    return {"PartitionKey": partition, "RowKey": key, **values}


async def test_a_lone_write_goes_out_at_once_as_itself(table: TableClient) -> None:
    calls = _Calls()
    commit = GroupCommit(table, calls)
    metadata = await commit.write(Write("create", row("p", "a")))
    assert metadata["etag"] and calls.made == ["create_entity"] and commit.transactions == 0


async def test_writes_arriving_while_one_is_on_the_wire_share_one_transaction(table: TableClient) -> None:
    calls = _Calls()
    commit = GroupCommit(table, calls)
    gate = calls.hold_next()
    first = asyncio.ensure_future(commit.write(Write("create", row("p", "r0", N=0))))
    await gate.entered.wait()
    later = [
        asyncio.ensure_future(commit.write(Write("create", row("p", f"r{i}", N=i)))) for i in range(1, 8)
    ]
    gate.release.set()
    created = [await first, *await asyncio.gather(*later)]
    assert calls.made == ["create_entity", "submit"]
    assert (commit.transactions, commit.grouped_writes) == (1, 7)
    updates = [
        Write(
            "update",
            row("p", f"r{i}", N=i + 100),
            {"mode": UpdateMode.REPLACE, "etag": m["etag"], "match_condition": MatchConditions.IfNotModified},
        )
        for i, m in enumerate(created)
    ]
    await asyncio.gather(*(commit.write(update) for update in updates))  # each etag was its row's
    assert sorted([e["N"] async for e in table.list_entities()]) == list(range(100, 108))


async def test_a_conflict_fails_only_its_own_writer(table: TableClient) -> None:
    await table.create_entity(row("p", "taken"))
    calls = _Calls()
    commit = GroupCommit(table, calls)
    outcomes = await asyncio.gather(
        commit.write(Write("create", row("p", "first"))),
        *(commit.write(Write("create", row("p", key))) for key in ("x", "taken", "y")),
        return_exceptions=True,
    )
    assert [type(outcome).__name__ for outcome in outcomes] == ["dict", "dict", "ResourceExistsError", "dict"]
    assert sorted([e["RowKey"] async for e in table.list_entities()]) == ["first", "taken", "x", "y"]
    assert calls.made.count("submit") == 1  # refused as a whole, then each alone


async def test_two_writes_of_one_row_never_share_a_transaction(table: TableClient) -> None:
    commit = GroupCommit(table, _Calls())
    outcomes = await asyncio.gather(
        commit.write(Write("create", row("p", "first"))),
        commit.write(Write("create", row("p", "same", Who=1))),
        commit.write(Write("create", row("p", "same", Who=2))),
        commit.write(Write("create", row("p", "other"))),
        return_exceptions=True,
    )
    assert isinstance(outcomes[2], ResourceExistsError)  # the second went in the next group and lost
    assert (await table.get_entity("p", "same"))["Who"] == 1
    assert commit.transactions == 1


async def test_a_group_holds_at_most_the_services_limit(table: TableClient) -> None:
    commit = GroupCommit(table, _Calls())
    count = MAX_OPERATIONS + 12
    replace_row = {"mode": UpdateMode.REPLACE}
    await asyncio.gather(
        *(commit.write(Write("upsert", row("p", f"r{i:04d}"), replace_row)) for i in range(count))
    )
    assert (commit.transactions, commit.grouped_writes) == (2, count)
    assert len([e async for e in table.list_entities()]) == count


async def test_partitions_are_committed_apart(table: TableClient) -> None:
    calls = _Calls()
    commit = GroupCommit(table, calls)
    await asyncio.gather(*(commit.write(Write("create", row(p, "r"))) for p in ("a", "b", "c")))
    assert calls.made == ["create_entity"] * 3


async def test_a_writer_cancelled_before_its_group_went_out_writes_nothing(table: TableClient) -> None:
    calls = _Calls()
    commit = GroupCommit(table, calls)
    gate = calls.hold_next()
    first = asyncio.ensure_future(commit.write(Write("create", row("p", "first"))))
    await gate.entered.wait()
    withdrawn = asyncio.ensure_future(commit.write(Write("create", row("p", "withdrawn"))))
    await asyncio.sleep(0)  # it waits for the first to come back
    withdrawn.cancel()
    gate.release.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await withdrawn
    assert [e["RowKey"] async for e in table.list_entities()] == ["first"]
    assert calls.made == ["create_entity"]


async def test_a_writer_cancelled_while_its_transaction_was_out_is_not_written_alone(
    table: TableClient,
) -> None:
    """The transaction is refused (one conflict); its writes are then made alone, but not the one
    whose caller has gone: that caller was told nothing was done."""
    await table.create_entity(row("p", "taken"))
    calls = _Calls()
    commit = GroupCommit(table, calls)
    first_gate, transaction_gate = calls.hold_next(), calls.hold_next()
    first = asyncio.ensure_future(commit.write(Write("create", row("p", "first"))))
    await first_gate.entered.wait()
    group = [
        asyncio.ensure_future(commit.write(Write("create", row("p", key))))
        for key in ("taken", "gone", "kept")
    ]
    first_gate.release.set()
    await transaction_gate.entered.wait()  # the three are on the wire together
    group[1].cancel()
    transaction_gate.release.set()
    outcomes = await asyncio.gather(first, *group, return_exceptions=True)
    assert [type(outcome).__name__ for outcome in outcomes] == [
        "dict",
        "ResourceExistsError",
        "CancelledError",
        "dict",
    ]
    assert sorted([e["RowKey"] async for e in table.list_entities()]) == ["first", "kept", "taken"]
    assert commit.refused == 1


async def test_a_committer_cancelled_before_it_ran_does_not_block_its_partition(table: TableClient) -> None:
    commit = GroupCommit(table, _Calls())
    orphan = asyncio.ensure_future(commit.write(Write("create", row("p", "orphan"))))
    await asyncio.sleep(0)  # the write is queued and its committer scheduled, not yet run
    commit._committers["p"].cancel()
    with pytest.raises(StorageUnavailable):  # told, not left waiting for ever
        await orphan
    await commit.write(Write("create", row("p", "next")))  # a new committer
    assert [e["RowKey"] async for e in table.list_entities()] == ["next"]


async def test_unreachable_storage_fails_every_writer_with_storage_unavailable() -> None:
    access = StorageAccess(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;"
    )
    service = access.table_service(connection_timeout=1, read_timeout=1, retry_total=0)
    dead = service.get_table_client("nowhere")
    commit = GroupCommit(dead, _Calls())
    outcomes = await asyncio.gather(
        *(commit.write(Write("create", row("p", f"r{i}"))) for i in range(3)), return_exceptions=True
    )
    await service.close()
    await access.aclose()
    assert all(isinstance(outcome, StorageUnavailable) for outcome in outcomes)


class _LedgerLosingTransactionAnswers(SendLedger):
    """Storage applies every transaction but its answer never arrives."""

    lost = 0

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        result = await super()._call(fn, *args, **kwargs)
        if getattr(fn, "__name__", "") == "submit":
            self.lost += 1
            raise StorageUnavailable("table storage: ServiceResponseTimeoutError")
        return result


async def test_claims_and_outcomes_of_a_transaction_whose_answer_was_lost_are_still_ours(
    azurite: Azurite,
) -> None:
    """Each write is then made alone and conflicts with itself; the owner token tells the ledger
    the rows are its own, so no send is taken for someone else's (nor sent twice)."""
    ledger = _LedgerLosingTransactionAnswers(azurite.connection_string, retention=timedelta(days=1))
    definition = uuid.uuid4()
    drafts = [
        replace(
            send_record("simulator", state=SendState.SENDING), channel_definition_id=definition, owner=f"o{i}"
        )
        for i in range(6)
    ]
    claims = await asyncio.gather(*(ledger.claim(draft) for draft in drafts))
    finished = await asyncio.gather(
        *(
            ledger.replace_if_unchanged(record, state=SendState.SENT, message_id=f"SM{i}")
            for i, (_, record) in enumerate(claims)
        )
    )
    stored = [await ledger.get(SendKey(definition, draft.request_id)) for draft in drafts]
    await ledger.aclose()
    assert ledger.lost == 2  # the claims' transaction and the outcomes'
    assert all(created for created, _ in claims)
    assert all(record is not None for record in finished)
    assert [(r.state, r.message_id) for r in stored if r] == [(SendState.SENT, f"SM{i}") for i in range(6)]
