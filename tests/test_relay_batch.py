"""Batched relays stay exactly-once: a 429 storm against Dataverse's enforced limits, an outage,
and a worker that dies mid-batch (its tasks cancelled after the claims, with and without giving
the claims back) are followed by redeliveries, and every report reaches Dataverse once.

A small in-process stand-in for the Functions host's queue trigger runs the jobs: many messages at
once, each deleted when its invocation returns (``RelayService.process`` re-queues what must wait).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import usecases.relay as relay_module
from contracts import ChannelStatus
from dataverse.client import DataverseClient
from storage.ledger import SendLedger
from storage.relay_queue import NotificationJob, RelayQueue, decode_job
from tests.conftest import DataverseWorld, RelayQueues
from tests.doubles import send_record
from tests.fakes.dataverse import FakeDataverse, ServiceProtection
from usecases.relay import RelayService


@pytest.fixture
async def clients(dataverse_world: DataverseWorld) -> AsyncIterator[Callable[[], DataverseClient]]:
    made: list[DataverseClient] = []

    def make() -> DataverseClient:
        made.append(dataverse_world.client(organization_id="org"))
        return made[-1]

    yield make
    for client in made:
        await client.aclose()


async def reports(ledger: SendLedger, count: int) -> list[NotificationJob]:
    """``count`` delivery reports of sends this app recorded."""
    jobs = []
    for _ in range(count):
        message_id = "SM" + uuid.uuid4().hex
        await ledger.remember_message(send_record("twilio"), message_id)
        jobs.append(
            NotificationJob(
                provider="twilio",
                message_id=message_id,
                status=ChannelStatus.DELIVERED,
                provider_status="delivered",
            )
        )
    return jobs


async def run_host(
    service: RelayService, queues: RelayQueues, done: Callable[[], bool], *, timeout: float = 90
) -> None:
    """The queue trigger: up to 32 invocations at once, a message deleted when its invocation returns."""
    in_flight: set[asyncio.Task[None]] = set()

    async def invoke(message: Any) -> None:
        await service.process(decode_job(base64.b64decode(message.content)))
        await asyncio.to_thread(queues.jobs.delete_message, message)

    def receive(room: int) -> list[Any]:
        return list(queues.jobs.receive_messages(max_messages=min(room, 32), visibility_timeout=60))

    deadline = time.monotonic() + timeout
    while not (done() and not in_flight and queues.count(queues.jobs) == 0):
        assert time.monotonic() < deadline, "the relay did not drain"
        room = 32 - len(in_flight)
        messages = await asyncio.to_thread(receive, room) if room else []
        for message in messages:
            task = asyncio.create_task(invoke(message))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.sleep(0.05 if messages else 0.2)


def relayed(fake: FakeDataverse) -> collections.Counter[str]:
    return collections.Counter(p["MessageId"] for p in fake.notification_payloads())


def assert_once_each(fake: FakeDataverse, jobs: list[NotificationJob], queues: RelayQueues) -> None:
    counts = relayed(fake)
    assert sorted(counts) == sorted(job.message_id for job in jobs), "a report was lost"
    assert max(counts.values()) == 1, "a report was relayed twice"
    assert queues.count(queues.poison) == 0


async def test_a_429_storm_relays_every_report_exactly_once(
    ledger: SendLedger,
    queue: RelayQueue,
    relay_queues: RelayQueues,
    dataverse_world: DataverseWorld,
    clients: Callable[[], DataverseClient],
) -> None:
    fake = dataverse_world.dataverse
    # a tiny user: 3 requests/s, 0.15 s of execution time/s (15 notifications/s)
    fake.limits = limits = ServiceProtection(
        window_seconds=2, max_requests=6, max_execution_ms=300, operation_ms=10
    )
    jobs = await reports(ledger, 120)
    await queue.put_many(list(jobs))
    service = RelayService(ledger=ledger, queue=queue, dataverse=clients())
    await run_host(service, relay_queues, lambda: len(relayed(fake)) == len(jobs))

    assert_once_each(fake, jobs, relay_queues)
    assert limits.throttled_total > 0  # the storm happened
    assert len(fake.batches) > 0 and max(len(b) for b in fake.batches) > 1


async def test_an_outage_then_recovery_relays_every_report_exactly_once(
    ledger: SendLedger,
    queue: RelayQueue,
    relay_queues: RelayQueues,
    dataverse_world: DataverseWorld,
    clients: Callable[[], DataverseClient],
) -> None:
    fake = dataverse_world.dataverse
    jobs = await reports(ledger, 40)
    await queue.put_many(list(jobs))
    fake.unavailable_until = time.monotonic() + 3.0  # 503 with Retry-After: 1 for three seconds
    service = RelayService(ledger=ledger, queue=queue, dataverse=clients())
    await run_host(service, relay_queues, lambda: len(relayed(fake)) == len(jobs))

    assert_once_each(fake, jobs, relay_queues)
    assert any(call.path.endswith("$batch") for _, call in fake.calls)


async def kill_mid_batch(service: RelayService, jobs: list[NotificationJob], fake: FakeDataverse) -> None:
    """Run ``jobs`` until their events are claimed and their operations wait in the batcher (the
    worker was just throttled: a Retry-After is running), then cancel every invocation, as a dying
    worker loses them, and close its client."""
    client = service.dataverse
    assert isinstance(client, DataverseClient)
    client.pacer.resume_at = time.monotonic() + 30
    tasks = [asyncio.create_task(service.process(job)) for job in jobs]
    deadline = time.monotonic() + 30
    while len(client._batcher._pending) < len(jobs):  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the operations never queued up"
        await asyncio.sleep(0.05)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.aclose()
    assert fake.calls == []  # nothing reached Dataverse


async def test_a_worker_cancelled_mid_batch_gives_its_claims_back_and_the_redelivery_relays_once(
    ledger: SendLedger,
    queue: RelayQueue,
    relay_queues: RelayQueues,
    dataverse_world: DataverseWorld,
    clients: Callable[[], DataverseClient],
) -> None:
    fake = dataverse_world.dataverse
    jobs = await reports(ledger, 20)
    await kill_mid_batch(RelayService(ledger=ledger, queue=queue, dataverse=clients()), jobs, fake)

    # the host redelivers the messages to a fresh worker
    await queue.put_many(list(jobs))
    started = time.monotonic()
    service = RelayService(ledger=ledger, queue=queue, dataverse=clients())
    await run_host(service, relay_queues, lambda: len(relayed(fake)) == len(jobs))
    assert_once_each(fake, jobs, relay_queues)
    first_call, _ = fake.calls[0]
    assert first_call - started < 2.5  # the claims were given back: no lease to wait out


async def test_a_worker_killed_mid_batch_keeps_its_claims_until_their_lease_and_nothing_is_lost(
    ledger: SendLedger,
    queue: RelayQueue,
    relay_queues: RelayQueues,
    dataverse_world: DataverseWorld,
    clients: Callable[[], DataverseClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(relay_module, "RELAY_LEASE_SECONDS", 3.0)
    monkeypatch.setattr(relay_module, "BUSY_DELAY_SECONDS", 1.0)
    fake = dataverse_world.dataverse
    jobs = await reports(ledger, 20)

    async def dies_before_releasing(*args: object, **kwargs: object) -> None:
        return None  # a killed process gives nothing back

    started = time.monotonic()
    with monkeypatch.context() as killed:
        killed.setattr(SendLedger, "_release_relay", dies_before_releasing)
        await kill_mid_batch(RelayService(ledger=ledger, queue=queue, dataverse=clients()), jobs, fake)

    await queue.put_many(list(jobs))  # redelivered while the dead worker's claims stand
    service = RelayService(ledger=ledger, queue=queue, dataverse=clients())
    await run_host(service, relay_queues, lambda: len(relayed(fake)) == len(jobs))
    assert_once_each(fake, jobs, relay_queues)
    first_call, _ = fake.calls[0]
    assert first_call - started >= 2.8  # taken over only once the dead worker's leases ran out
