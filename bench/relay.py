"""Relays per second from the queue to a fake Dataverse answering in 20 ms, token requests and TCP
connections per 10,000 relays, storage round trips per relay, and webhook acknowledgement latency.

``--smoke`` runs a few hundred relays (the test suite runs it so that the benchmark cannot rot).
Every relayed report belongs to a send recorded beforehand, as in production: a report of a
message this app never sent is dropped, not relayed. Storage round trips are counted from
Azurite's request log while the relay runs: table requests are the ledger's, queue requests
include the host's reads and deletes.

The app runs in the local host (its own process) against Azurite, a fake Entra token endpoint and
a fake Dataverse (HTTPS, test CA, in this process). The in-run bound: with DATAVERSE_MAX_CONCURRENCY
requests in flight and 20 ms each, no relay can beat concurrency / 0.02 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import tempfile
import time
import uuid
from collections.abc import Callable
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
from tests.fakes.azurite import count_requests, start_azurite
from tests.fakes.dataverse import FakeDataverse, FakeEntra
from tests.fakes.http import FakeHttpServer
from tests.fakes.tls import make_local_ca

CONCURRENCY = 8
BACKLOG = 300
LATENCY = 0.020
SENDER = "+14155550100"


def job(index: int) -> RelayJob:
    return NotificationJob(
        provider="simulator",
        message_id=f"SMbench{index:08d}",
        status=ChannelStatus.DELIVERED,
        provider_status="delivered",
        sender=SENDER,
    )


async def record_sends(ledger: SendLedger, message_ids: list[str]) -> None:
    """The sends these reports belong to, as the outbound service records them."""
    gate = asyncio.Semaphore(16)

    async def one(message_id: str) -> None:
        async with gate:
            await ledger.remember_message(send_record("simulator"), message_id)

    await asyncio.gather(*(one(message_id) for message_id in message_ids))


async def feed(queue: RelayQueue, count: int, relayed: Callable[[], int]) -> None:
    """Enqueue ``count`` jobs while the host relays them, keeping the backlog near BACKLOG.

    Azurite's in-memory queue slows down sharply with thousands of waiting messages, which would
    measure the emulator rather than the relay.
    """
    gate = asyncio.Semaphore(16)
    produced = 0

    async def one(index: int) -> None:
        async with gate:
            for _ in range(5):  # the emulator stalls now and then under load
                try:
                    await queue.put(job(index))
                    return
                except StorageUnavailable:
                    await asyncio.sleep(1)
            raise RuntimeError("the storage emulator stopped answering")

    while produced < count:
        room = BACKLOG - (produced - relayed())
        if room <= 0:
            await asyncio.sleep(0.01)
            continue
        wave = min(room, count - produced)
        await asyncio.gather(*(one(produced + i) for i in range(wave)))
        produced += wave


async def post_webhooks(base: str, secret: str, count: int) -> list[float]:
    latencies: list[float] = []
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:

        async def one(index: int) -> None:
            body = json.dumps(
                {
                    "MessageId": f"SMhook{index:08d}",
                    "Status": "delivered",
                    "From": SENDER,
                }
            ).encode()
            async with gate:
                started = time.perf_counter()
                response = await http.post(
                    "/api/providers/simulator/delivery-reports",
                    content=body,
                    headers=sign_webhook(secret, body),
                )
                latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text

        await asyncio.gather(*(one(i) for i in range(count)))
    return latencies


def wait_until(condition: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark did not finish in time")
        time.sleep(0.02)


def main() -> None:
    relays = int(os.environ.get("BENCH_RELAYS", sized(10_000, 200)))
    webhooks = int(os.environ.get("BENCH_WEBHOOKS", sized(2_000, 50)))

    scratch = Path(tempfile.mkdtemp())
    ca = make_local_ca(scratch)
    os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = str(ca.bundle)
    request_log = scratch / "azurite-requests.log"
    azurite = start_azurite(request_log=request_log)
    secret, webhook_secret = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    entra = FakeEntra(TENANT_ID, CLIENT_ID, client_secret=secret)
    dataverse = FakeDataverse(entra, latency=LATENCY)
    try:
        with (
            FakeHttpServer(entra, tls=ca.server_context()) as entra_server,
            FakeHttpServer(dataverse, tls=ca.server_context()) as dataverse_server,
        ):
            queue = RelayQueue(azurite.connection_string)
            ledger = SendLedger(azurite.connection_string, retention=timedelta(days=1))
            message_ids = [job(i).message_id for i in range(relays)]
            message_ids += [f"SMhook{i:08d}" for i in range(webhooks)]
            asyncio.run(record_sends(ledger, message_ids))
            ledger.close()
            env = {
                "AzureWebJobsStorage": azurite.connection_string,
                "SMS_PROVIDER": "simulator",
                "SIMULATOR_WEBHOOK_SECRET": webhook_secret,
                "DATAVERSE_URL": dataverse_server.url,
                "DATAVERSE_MAX_CONCURRENCY": str(CONCURRENCY),
                "AZURE_TENANT_ID": TENANT_ID,
                "AZURE_CLIENT_ID": CLIENT_ID,
                "AZURE_CLIENT_SECRET": secret,
                "AZURE_AUTHORITY_HOST": entra_server.url,
                "DATAVERSE_ORGANIZATION_ID": str(uuid.uuid4()),
                "LOG_LEVEL": "WARNING",
            }
            with local_host(env) as base:
                before = count_requests(request_log)
                started = time.perf_counter()
                asyncio.run(feed(queue, relays, lambda: len(dataverse.notifications)))
                wait_until(lambda: len(dataverse.notifications) >= relays, timeout=1800)
                drained = time.perf_counter() - started
                during = count_requests(request_log)
                latencies = asyncio.run(post_webhooks(base, webhook_secret, webhooks))
                wait_until(lambda: len(dataverse.notifications) >= relays + webhooks, timeout=600)
            queue.close()
    finally:
        azurite.stop()
    # the feeder's own enqueues are not the relay's round trips
    table_trips = (during["Table"] - before["Table"]) / relays
    queue_trips = (during["Queue"] - before["Queue"] - relays) / relays
    bound = CONCURRENCY / LATENCY
    emit(
        "relay",
        "relays per second (queue to Dataverse, 20 ms per call)",
        relays / drained,
        "relays/s",
        relays=relays,
        concurrency_cap=CONCURRENCY,
        backlog=BACKLOG,
        machine=machine(),
    )
    emit(
        "relay",
        "relays per second / in-run bound (cap / latency)",
        relays / drained / bound,
        "ratio",
        bound=bound,
    )
    total = relays + webhooks
    emit("relay", f"token requests during {total} relays", len(entra.token_requests), "requests", goal=1)
    emit(
        "relay",
        f"TCP connections to Dataverse during {total} relays",
        dataverse_server.connections,
        "connections",
        goal=f"<= {CONCURRENCY}",
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
        "relay",
        "queue storage requests per relay (host reads, deletes, re-queues)",
        queue_trips,
        "requests",
        relays=relays,
    )
    emit("relay", "notifications received", len(dataverse.notifications), "calls", expected=relays + webhooks)
    emit("relay", "duplicate relays", len(dataverse.notifications) - (relays + webhooks), "calls", goal=0)


if __name__ == "__main__":
    main()
