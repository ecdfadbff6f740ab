"""Relays from the queue to a fake Dataverse: throughput, and throughput under Dataverse's service
protection limits, batched ($batch) and unbatched, with 429s, duplicates and lost reports.

``--smoke`` runs a few hundred relays (the test suite runs it so that the benchmark cannot rot);
``BENCH_RUNS=unlimited,limits,burst`` picks runs, ``BENCH_RELAYS`` … ``BENCH_BURST`` their sizes.
Every relayed report belongs to a send recorded beforehand, as in production: a report of a
message this app never sent is dropped, not relayed. The app runs in the local host (its own
process) against Azurite, a fake Entra token endpoint and a fake Dataverse (HTTPS, test CA, in this
process) whose every operation takes OPERATION_MS (a $batch runs its operations one after another).

Three runs:

1. **unlimited**: 10,000 queued relays plus 2,000 webhooks, no limits. Storage round trips are
   counted from Azurite's request log while the relay runs (table requests are the ledger's, queue
   requests include the host's reads and deletes).
2. **limits**: the fake enforces the limits of one application user, scaled to this machine (see
   ``scaled_limits``), and the same reports are relayed batched and unbatched
   (``DATAVERSE_BATCH_SIZE=1``, every relay its own request, as before batching). The figure is
   notifications per second divided by the unbatched ceiling (requests limit / window).
3. **burst**: a scaled 100,000-report burst, all queued before the host starts, drained under the
   same scaled limits.

Scaling. Dataverse allows one user 6,000 requests and 1,200,000 ms of execution time per 300 s
(20 requests/s, 4 s of execution per second). Azurite on a 2-core machine carries the whole relay
pipeline (a claim, a read, a completion per report, plus the queue) at about 50 reports/s, so at
Dataverse's own rates the storage, not Dataverse, would bound every batched figure. The limits are
therefore scaled to SCALE of Dataverse's rates (5 requests/s, 1 s of execution per second) in a
WINDOW-second window, keeping what decides the outcome: execution time per request allowed
(200 ms), the burst in units of the window's requests (100,000 / 6,000), and OPERATION_MS per
notification. With 20 ms per notification the execution-time limit allows 10x the unbatched
ceiling; with 50 ms it allows exactly 4x (1,200,000 ms / 300 s / 50 ms = 80/s = 4 x 20/s).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import secrets
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx

from bench.common import emit, machine, percentile, sized
from channels.simulator import sign_webhook
from contracts import ChannelStatus
from storage.errors import StorageUnavailable
from storage.ledger import SendLedger
from storage.relay_queue import NotificationJob, RelayJob, RelayQueue
from tests.conftest import CLIENT_ID, TENANT_ID
from tests.doubles import send_record
from tests.e2e import local_host
from tests.fakes.azurite import Azurite, count_requests, start_azurite
from tests.fakes.dataverse import FakeDataverse, FakeEntra, ServiceProtection
from tests.fakes.http import FakeHttpServer
from tests.fakes.tls import LocalCA, make_local_ca

CONCURRENCY = 8
BACKLOG = 300
#: Execution time of one notification (Dataverse: plug-in time included; unknown without a tenant).
OPERATION_MS = float(os.environ.get("BENCH_OPERATION_MS", 20.0))
SENDER = "+14155550100"
#: The scaled user: this share of Dataverse's rates, in a window of this many seconds.
SCALE = 0.25
WINDOW = 10.0
BURST_WINDOW = 30.0
#: Dataverse's own limits per user and web server.
REQUESTS, EXECUTION_MS, SECONDS = 6000, 1_200_000, 300.0


def unlimited() -> ServiceProtection:
    return ServiceProtection(
        max_requests=10**12, max_execution_ms=1e18, max_concurrent=10**6, operation_ms=OPERATION_MS
    )


def scaled_limits(window: float) -> ServiceProtection:
    share = SCALE * window / SECONDS
    return ServiceProtection(
        window_seconds=window,
        max_requests=round(REQUESTS * share),
        max_execution_ms=EXECUTION_MS * share,
        max_concurrent=52,
        operation_ms=OPERATION_MS,
    )


def job(message_id: str) -> RelayJob:
    return NotificationJob(
        provider="simulator",
        message_id=message_id,
        status=ChannelStatus.DELIVERED,
        provider_status="delivered",
        sender=SENDER,
    )


async def record_sends(azurite: Azurite, message_ids: list[str]) -> None:
    """The sends these reports belong to, as the outbound service records them."""
    ledger = SendLedger(azurite.connection_string, retention=timedelta(days=1))
    gate = asyncio.Semaphore(16)

    async def one(message_id: str) -> None:
        async with gate:
            await ledger.remember_message(send_record("simulator"), message_id)

    await asyncio.gather(*(one(message_id) for message_id in message_ids))
    await ledger.aclose()


async def put(queue: RelayQueue, message_id: str) -> None:
    for _ in range(5):  # the emulator stalls now and then under load
        try:
            await queue.put(job(message_id))
            return
        except StorageUnavailable:
            await asyncio.sleep(1)
    raise RuntimeError("the storage emulator stopped answering")


async def enqueue_all(azurite: Azurite, message_ids: list[str]) -> None:
    queue = RelayQueue(azurite.connection_string)
    gate = asyncio.Semaphore(16)

    async def one(message_id: str) -> None:
        async with gate:
            await put(queue, message_id)

    await asyncio.gather(*(one(m) for m in message_ids))
    await queue.aclose()


async def feed(azurite: Azurite, message_ids: list[str], relayed: Callable[[], int]) -> None:
    """Enqueue while the host relays, keeping the backlog near BACKLOG: Azurite's in-memory queue
    slows down sharply with thousands of waiting messages, which would measure the emulator."""
    queue = RelayQueue(azurite.connection_string)
    produced = 0
    while produced < len(message_ids):
        room = BACKLOG - (produced - relayed())
        if room <= 0:
            await asyncio.sleep(0.01)
            continue
        wave = message_ids[produced : produced + min(room, 64)]
        await asyncio.gather(*(put(queue, m) for m in wave))
        produced += len(wave)
    await queue.aclose()


async def post_webhooks(base: str, secret: str, message_ids: list[str]) -> list[float]:
    latencies: list[float] = []
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:

        async def one(message_id: str) -> None:
            body = json.dumps({"MessageId": message_id, "Status": "delivered", "From": SENDER}).encode()
            async with gate:
                started = time.perf_counter()
                response = await http.post(
                    "/api/providers/simulator/delivery-reports",
                    content=body,
                    headers=sign_webhook(secret, body),
                )
                latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text

        await asyncio.gather(*(one(m) for m in message_ids))
    return latencies


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark did not finish in time")
        time.sleep(0.02)


@dataclass
class World:
    azurite: Azurite
    ca: LocalCA
    entra: FakeEntra
    entra_url: str
    secret: str
    webhook_secret: str

    @contextmanager
    def dataverse(self, limits: ServiceProtection) -> Iterator[tuple[FakeDataverse, FakeHttpServer]]:
        self.entra.token_requests.clear()
        fake = FakeDataverse(self.entra, limits=limits)
        with FakeHttpServer(fake, tls=self.ca.server_context()) as server:
            yield fake, server

    def env(self, dataverse_url: str, batch_size: int) -> dict[str, str]:
        return {
            "AzureWebJobsStorage": self.azurite.connection_string,
            "SMS_PROVIDER": "simulator",
            "SIMULATOR_WEBHOOK_SECRET": self.webhook_secret,
            "DATAVERSE_URL": dataverse_url,
            "DATAVERSE_MAX_CONCURRENCY": str(CONCURRENCY),
            "DATAVERSE_BATCH_SIZE": str(batch_size),
            "AZURE_TENANT_ID": TENANT_ID,
            "AZURE_CLIENT_ID": CLIENT_ID,
            "AZURE_CLIENT_SECRET": self.secret,
            "AZURE_AUTHORITY_HOST": self.entra_url,
            "DATAVERSE_ORGANIZATION_ID": str(uuid.uuid4()),
            "LOG_LEVEL": "WARNING",
        }


def ids(prefix: str, count: int) -> list[str]:
    run = uuid.uuid4().hex[:6]
    return [f"SM{prefix}{run}{i:07d}" for i in range(count)]


def received(fake: FakeDataverse) -> collections.Counter[str]:
    return collections.Counter(p["MessageId"] for p in fake.notification_payloads())


def outcome(run: str, fake: FakeDataverse, expected: list[str], seconds: float, **extra: object) -> float:
    """Emit the run's figures; return notifications per second."""
    counts = received(fake)
    limits = fake.limits
    assert limits is not None
    rate = len(counts) / seconds
    ceiling = limits.max_requests / limits.window_seconds
    emit("relay", f"{run}: notifications per second", rate, "notifications/s", reports=len(expected), **extra)
    emit(
        "relay",
        f"{run}: notifications per second / unbatched ceiling",
        rate / ceiling,
        "ratio",
        ceiling=ceiling,
    )
    emit(
        "relay",
        f"{run}: 429s received",
        sum(limits.throttled.values()),
        "responses",
        by_code=dict(limits.throttled),
    )
    emit(
        "relay",
        f"{run}: requests to Dataverse",
        limits.admitted,
        "requests",
        batches=len(fake.batches),
        notifications_per_request=round(sum(counts.values()) / max(limits.admitted, 1), 2),
        # what the execution-time limit alone would allow, as a multiple of the ceiling
        execution_time_bound=round(limits.max_execution_ms / limits.operation_ms / limits.max_requests, 2),
    )
    emit("relay", f"{run}: duplicates", sum(counts.values()) - len(counts), "notifications", goal=0)
    emit("relay", f"{run}: lost", len(set(expected) - set(counts)), "reports", goal=0)
    return rate


def run_unlimited(world: World, relays: int, webhooks: int, request_log: Path) -> None:
    queued, hooked = ids("q", relays), ids("w", webhooks)
    asyncio.run(record_sends(world.azurite, queued + hooked))
    with world.dataverse(unlimited()) as (fake, server), local_host(world.env(server.url, 100)) as base:
        before = count_requests(request_log)
        started = time.perf_counter()
        asyncio.run(feed(world.azurite, queued, lambda: len(fake.notifications)))
        wait_until(lambda: len(fake.notifications) >= relays, timeout=1800)
        drained = time.perf_counter() - started
        during = count_requests(request_log)
        latencies = asyncio.run(post_webhooks(base, world.webhook_secret, hooked))
        # a claim whose insert timed out but landed holds its event for the 10-minute lease
        wait_until(lambda: len(fake.notifications) >= relays + webhooks, timeout=1800)
        time.sleep(1.0)  # a duplicate would arrive now
    table_trips = (during["Table"] - before["Table"]) / relays
    queue_trips = (
        during["Queue"] - before["Queue"] - relays
    ) / relays  # the feeder's enqueues are not the relay's
    bound = CONCURRENCY / (OPERATION_MS / 1000)
    emit(
        "relay",
        f"relays per second (queue to Dataverse, {OPERATION_MS:.0f} ms per notification)",
        relays / drained,
        "relays/s",
        relays=relays,
        concurrency_cap=CONCURRENCY,
        backlog=BACKLOG,
        machine=machine(),
    )
    emit(
        "relay",
        "relays per second / unbatched bound (cap / latency)",
        relays / drained / bound,
        "ratio",
        bound=bound,
    )
    total = relays + webhooks
    emit(
        "relay", f"token requests during {total} relays", len(world.entra.token_requests), "requests", goal=1
    )
    emit(
        "relay",
        f"TCP connections to Dataverse during {total} relays",
        server.connections,
        "connections",
        goal=f"<= {CONCURRENCY}",
    )
    emit(
        "relay",
        "Dataverse requests per notification",
        fake.limits.admitted / total if fake.limits else 0,
        "ratio",
    )
    emit(
        "relay",
        "webhook acknowledgement p50",
        percentile(latencies, 50) * 1000,
        "ms",
        webhooks=webhooks,
        clients=16,
    )
    emit("relay", "webhook acknowledgement p99", percentile(latencies, 99) * 1000, "ms")
    emit("relay", "table storage requests per relay", table_trips, "requests", relays=relays)
    emit(
        "relay", "queue storage requests per relay (host reads, deletes, re-queues)", queue_trips, "requests"
    )
    emit("relay", "notifications received", len(fake.notifications), "calls", expected=total)
    emit("relay", "duplicate relays", len(fake.notifications) - len(received(fake)), "calls", goal=0)


def run_limited(world: World, run: str, reports: int, batch_size: int, *, burst: bool) -> float:
    message_ids = ids(run[:1], reports)
    asyncio.run(record_sends(world.azurite, message_ids))
    if burst:
        asyncio.run(enqueue_all(world.azurite, message_ids))
    limits = scaled_limits(BURST_WINDOW if burst else WINDOW)
    with world.dataverse(limits) as (fake, server), local_host(world.env(server.url, batch_size)):
        started = time.perf_counter()
        if not burst:
            asyncio.run(feed(world.azurite, message_ids, lambda: len(received(fake))))
        wait_until(lambda: len(received(fake)) >= reports, timeout=3600)
        seconds = time.perf_counter() - started
        time.sleep(2.0)  # a duplicate would arrive now
    return outcome(
        run,
        fake,
        message_ids,
        seconds,
        batch_size=batch_size,
        window_seconds=limits.window_seconds,
        max_requests=limits.max_requests,
        max_execution_ms=limits.max_execution_ms,
        operation_ms=limits.operation_ms,
        drained_in_windows=round(seconds / limits.window_seconds, 2),
    )


def main() -> None:
    relays = int(os.environ.get("BENCH_RELAYS", sized(10_000, 200)))
    webhooks = int(os.environ.get("BENCH_WEBHOOKS", sized(2_000, 50)))
    limited = int(os.environ.get("BENCH_LIMITED", sized(3_000, 100)))
    unbatched = int(os.environ.get("BENCH_UNBATCHED", sized(400, 30)))
    # 100,000 reports scaled as the limits are: the same multiple of the window's requests
    burst = int(os.environ.get("BENCH_BURST", sized(round(100_000 * SCALE * BURST_WINDOW / SECONDS), 150)))

    scratch = Path(tempfile.mkdtemp())
    ca = make_local_ca(scratch)
    os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = str(ca.bundle)
    secret = secrets.token_urlsafe(16)
    entra = FakeEntra(TENANT_ID, CLIENT_ID, client_secret=secret)

    @contextmanager
    def world(request_log: Path | None = None) -> Iterator[World]:
        """A fresh Azurite for each run: its in-memory tables slow down as they fill up."""
        azurite = start_azurite(request_log=request_log)
        try:
            yield World(azurite, ca, entra, entra_server.url, secret, secrets.token_urlsafe(16))
        finally:
            azurite.stop()

    runs = set(os.environ.get("BENCH_RUNS", "unlimited,limits,burst").split(","))
    with FakeHttpServer(entra, tls=ca.server_context()) as entra_server:
        if "unlimited" in runs:
            request_log = scratch / "azurite-requests.log"
            with world(request_log) as fresh:
                run_unlimited(fresh, relays, webhooks, request_log)
        if "limits" in runs:
            with world() as fresh:
                batched_rate = run_limited(fresh, "limits, batched", limited, 100, burst=False)
            with world() as fresh:
                unbatched_rate = run_limited(fresh, "limits, unbatched", unbatched, 1, burst=False)
            emit(
                "relay",
                "limits: batched / unbatched notifications per second",
                batched_rate / unbatched_rate,
                "ratio",
            )
        if "burst" in runs:
            with world() as fresh:
                run_limited(fresh, f"burst of {burst} (100,000 scaled)", burst, 100, burst=True)


if __name__ == "__main__":
    main()
