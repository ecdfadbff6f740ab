"""Relays per second from the queue to a fake Dataverse answering in 20 ms, token requests and TCP
connections per 10,000 relays, and webhook acknowledgement latency.

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
from pathlib import Path

import httpx

from bench.common import emit, machine, percentile
from channels.simulator import sign_webhook
from contracts import ChannelStatus
from core.ledger import StorageUnavailable
from core.relay import RelayJob, RelayQueue
from tests.conftest import CLIENT_ID, TENANT_ID
from tests.e2e import local_host
from tests.fakes.azurite import start_azurite
from tests.fakes.dataverse import FakeDataverse, FakeEntra
from tests.fakes.http import FakeHttpServer
from tests.fakes.tls import make_local_ca

RELAYS = int(os.environ.get("BENCH_RELAYS", "10000"))
WEBHOOKS = int(os.environ.get("BENCH_WEBHOOKS", "2000"))
CONCURRENCY = 8
BACKLOG = 300
LATENCY = 0.020
SENDER = "+14155550100"


def job(index: int) -> RelayJob:
    return RelayJob(
        kind="notification",
        provider="simulator",
        message_id=f"SMbench{index:08d}",
        status=ChannelStatus.DELIVERED,
        provider_status="delivered",
        sender=SENDER,
        correlation=f"{uuid.uuid4()}/bench-{index}",
    )


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
                    "Correlation": f"{uuid.uuid4()}/hook-{index}",
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
    ca = make_local_ca(Path(tempfile.mkdtemp()))
    os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = str(ca.bundle)
    azurite = start_azurite()
    secret, webhook_secret = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    entra = FakeEntra(TENANT_ID, CLIENT_ID, client_secret=secret)
    dataverse = FakeDataverse(entra, latency=LATENCY)
    try:
        with (
            FakeHttpServer(entra, tls=ca.server_context()) as entra_server,
            FakeHttpServer(dataverse, tls=ca.server_context()) as dataverse_server,
        ):
            queue = RelayQueue(azurite.connection_string)
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
                started = time.perf_counter()
                asyncio.run(feed(queue, RELAYS, lambda: len(dataverse.notifications)))
                wait_until(lambda: len(dataverse.notifications) >= RELAYS, timeout=1800)
                drained = time.perf_counter() - started
                latencies = asyncio.run(post_webhooks(base, webhook_secret, WEBHOOKS))
                wait_until(lambda: len(dataverse.notifications) >= RELAYS + WEBHOOKS, timeout=600)
            queue.close()
    finally:
        azurite.stop()
    bound = CONCURRENCY / LATENCY
    emit(
        "relay",
        "relays per second (queue to Dataverse, 20 ms per call)",
        RELAYS / drained,
        "relays/s",
        relays=RELAYS,
        concurrency_cap=CONCURRENCY,
        backlog=BACKLOG,
        machine=machine(),
    )
    emit(
        "relay",
        "relays per second / in-run bound (cap / latency)",
        RELAYS / drained / bound,
        "ratio",
        bound=bound,
    )
    total = RELAYS + WEBHOOKS
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
        webhooks=WEBHOOKS,
        clients=16,
    )
    emit("relay", "webhook acknowledgement p99", percentile(latencies, 99) * 1000, "ms")
    emit("relay", "notifications received", len(dataverse.notifications), "calls", expected=RELAYS + WEBHOOKS)
    emit("relay", "duplicate relays", len(dataverse.notifications) - (RELAYS + WEBHOOKS), "calls", goal=0)


if __name__ == "__main__":
    main()
