"""Table writes against Azurite: lone SDK writes, the SDK's transactions, and ours written as text.

The ledger's group commit sends the writes of one partition that arrive together as one entity group
transaction (``storage/table_transaction.py``). This measures, per write, the CPU of this process
and of Azurite (from /proc) for claim-sized inserts made 16 at a time: as lone ``create_entity``
calls (the baseline), as ``TableClient.submit_transaction`` groups, and as our transactions, at
group sizes 2, 4 and 8. In production Azure Storage's CPU is not ours; this process's is.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from azure.data.tables.aio import TableClient

from bench.common import emit, machine, sized
from storage.clients import StorageAccess
from storage.table_transaction import submit
from tests.fakes.azurite import start_azurite

WRITES = sized(2_400, 48)
AT_ONCE = 16
GROUP_SIZES = (2, 4, 8)


def claim_row(partition: str) -> dict[str, Any]:
    """An entity shaped like a send claim."""
    now = datetime.now(timezone.utc)
    return {
        "PartitionKey": partition,
        "RowKey": f"bench-{uuid.uuid4()}",
        "RequestId": f"bench-{uuid.uuid4()}",
        "State": "Sending",
        "Provider": "simulator",
        "From": "+14155550100",
        "Fingerprint": "f" * 32,
        "IdempotencyKey": str(uuid.uuid4()),
        "FirstAttemptAt": now,
        "LeaseUntil": now,
        "ExpiresAt": now,
        "Segments": 1,
        "Encoding": "GSM-7",
        "IsTestSend": False,
        "Owner": uuid.uuid4().hex,
    }


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    azurite_pid: int, group: int, write: Callable[[list[dict[str, Any]]], Awaitable[object]]
) -> tuple[float, float]:
    """(our CPU, Azurite's CPU) per write, in ms, for WRITES writes in groups of ``group``."""
    partition = uuid.uuid4().hex
    groups = WRITES // group

    async def worker(count: int) -> None:
        for _ in range(count):
            await write([claim_row(partition) for _ in range(group)])

    workers = max(AT_ONCE // group, 1)
    ours, theirs = time.process_time(), cpu_seconds(azurite_pid)
    await asyncio.gather(*(worker(groups // workers) for _ in range(workers)))
    done = groups // workers * workers * group
    return (time.process_time() - ours) / done * 1000, (cpu_seconds(azurite_pid) - theirs) / done * 1000


async def run(table: TableClient, azurite_pid: int) -> None:
    async def lone(rows: list[dict[str, Any]]) -> None:
        await table.create_entity(rows[0])

    async def sdk_transaction(rows: list[dict[str, Any]]) -> None:
        await table.submit_transaction([("create", row) for row in rows])

    async def text_transaction(rows: list[dict[str, Any]]) -> None:
        await submit(table, [("create", row, {}) for row in rows])

    await measure(azurite_pid, 1, lone)  # warm up: connections, table
    ours, theirs = await measure(azurite_pid, 1, lone)
    emit("table_writes", "lone SDK write: our CPU per write", ours, "ms", writes=WRITES, machine=machine())
    emit("table_writes", "lone SDK write: Azurite CPU per write", theirs, "ms")
    for size in GROUP_SIZES:
        for name, write in (("SDK transaction", sdk_transaction), ("our transaction", text_transaction)):
            group_ours, group_theirs = await measure(azurite_pid, size, write)
            emit("table_writes", f"{name} of {size}: our CPU per write", group_ours, "ms")
            emit("table_writes", f"{name} of {size}: Azurite CPU per write", group_theirs, "ms")
            emit("table_writes", f"{name} of {size} / lone write, our CPU", group_ours / ours, "ratio")


async def main_async() -> None:
    azurite = start_azurite()
    access = StorageAccess(azurite.connection_string)
    service = access.table_service(connection_timeout=3, read_timeout=5, retry_total=1)
    table = service.get_table_client("benchwrites")
    try:
        await table.create_table()
        await run(table, azurite.process.pid)
    finally:
        await table.close()
        await service.close()
        await access.aclose()
        azurite.stop()


def main() -> None:
    asyncio.run(main_async())


if __name__ == "__main__":
    main()
