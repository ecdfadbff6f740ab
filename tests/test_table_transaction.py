"""Transactions written as text, against Azurite, with the SDK as the oracle of what a row holds."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from storage.errors import StorageUnavailable
from storage.group_commit import GroupCommit, Write
from storage.ledger import SendLedger
from storage.table_transaction import TransactionNotApplied, submit

REPLACE = {"mode": UpdateMode.REPLACE}


def if_unchanged(etag: str) -> dict[str, Any]:
    return {"mode": UpdateMode.REPLACE, "etag": etag, "match_condition": MatchConditions.IfNotModified}


async def test_rows_written_in_a_transaction_read_back_as_the_sdk_writes_them(table: TableClient) -> None:
    values = {
        "Text": "Grüße 👋 'quoted' \"double\" a/b\\c#d?e",
        "Count": 2**31 - 1,
        "Negative": -5,
        "Flag": False,
        "When": datetime(2026, 11, 30, 6, 7, 8, 123456, tzinfo=timezone.utc),
    }
    partition = "it's p%2F1"  # a quote and a percent-encoded row key, as the ledger's keys are
    await table.create_entity({"PartitionKey": partition, "RowKey": "by-sdk", **values})
    await submit(
        table,
        [
            ("create", {"PartitionKey": partition, "RowKey": "by-us%2Fcreated", **values}, {}),
            ("upsert", {"PartitionKey": partition, "RowKey": "by-us-upserted", **values}, REPLACE),
        ],
    )
    rows = {
        e["RowKey"]: e async for e in table.query_entities("PartitionKey eq @p", parameters={"p": partition})
    }
    assert set(rows) == {"by-sdk", "by-us%2Fcreated", "by-us-upserted"}
    oracle = dict(rows["by-sdk"])
    for key in ("by-us%2Fcreated", "by-us-upserted"):
        assert dict(rows[key]) | {"RowKey": "by-sdk"} == oracle
        assert type(rows[key]["When"]) is type(oracle["When"])


async def test_each_write_gets_the_etag_its_row_now_has(table: TableClient) -> None:
    first = await submit(table, [("create", {"PartitionKey": "p", "RowKey": k, "N": 1}, {}) for k in "ab"])
    again = await submit(
        table,
        [
            ("update", {"PartitionKey": "p", "RowKey": k, "N": 2}, if_unchanged(m["etag"]))
            for k, m in zip("ab", first, strict=True)
        ],
    )
    for key, metadata in zip("ab", again, strict=True):
        row = await table.get_entity("p", key)
        assert (row["N"], row.metadata["etag"]) == (2, metadata["etag"])


@pytest.mark.parametrize("failing", ["exists", "modified"])
async def test_a_refused_operation_leaves_the_whole_transaction_unapplied(
    table: TableClient, failing: str
) -> None:
    stored = await table.create_entity({"PartitionKey": "p", "RowKey": "there", "N": 1})
    await table.update_entity({"PartitionKey": "p", "RowKey": "there", "N": 2}, mode=UpdateMode.REPLACE)
    refused = (
        ("create", {"PartitionKey": "p", "RowKey": "there"}, {})
        if failing == "exists"
        else ("update", {"PartitionKey": "p", "RowKey": "there", "N": 3}, if_unchanged(stored["etag"]))
    )
    with pytest.raises(TransactionNotApplied):
        await submit(table, [("create", {"PartitionKey": "p", "RowKey": "new"}, {}), refused])
    assert [(e["RowKey"], e["N"]) async for e in table.list_entities()] == [("there", 2)]


async def test_writes_it_does_not_make_are_refused_before_sending(table: TableClient) -> None:
    with pytest.raises(ValueError, match="not a write"):
        await submit(table, [("upsert", {"PartitionKey": "p", "RowKey": "merge"}, {})])  # MERGE
    with pytest.raises(TypeError, match=r"Edm\.Int32"):
        await submit(table, [("create", {"PartitionKey": "p", "RowKey": "big", "N": 2**40}, {})])


async def test_a_group_the_codec_cannot_write_still_lands_write_by_write(
    table: TableClient, caplog: pytest.LogCaptureFixture
) -> None:
    async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await fn(*args, **kwargs)

    commit = GroupCommit(table, call)
    merges = [Write("upsert", {"PartitionKey": "p", "RowKey": f"m{i}", "N": i}) for i in range(3)]
    await asyncio.gather(*(commit.write(write) for write in merges))
    assert sorted([e["N"] async for e in table.list_entities()]) == [0, 1, 2]
    assert "transaction of 3 writes not made" in caplog.text


async def test_a_transaction_to_unreachable_storage_is_storage_unavailable_to_the_ledger() -> None:
    dead = SendLedger(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;",
        retention=timedelta(days=1),
    )
    dead._tables_ready = True  # straight to the write
    with pytest.raises(StorageUnavailable):
        await dead._call(submit, dead._sends, [("create", {"PartitionKey": "p", "RowKey": "r"}, {})])
    await dead.aclose()
