"""Outbound requests per second through the local host (simulator provider, Azurite), 16 clients.

The in-run baseline is /api/health, which does one storage round trip per request: the ratio shows
what a full outbound send (claim, record message, finish: three storage writes) costs on top.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import httpx

from bench.common import emit, machine, percentile, sized
from tests.e2e import local_host
from tests.fakes.azurite import start_azurite

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = sized(600, 40)
CLIENTS = 16


async def load(base: str, make: object, count: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)

    async with httpx.AsyncClient(base_url=base, timeout=30) as http:

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                method, path, body = make(index)  # type: ignore[operator]
                started = time.perf_counter()
                response = await http.request(method, path, json=body)
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
        return time.perf_counter() - started, latencies


def main() -> None:
    azurite = start_azurite()
    settings = json.loads((ROOT / "local.settings.json.example").read_text(encoding="utf-8"))["Values"]
    settings.update({"AzureWebJobsStorage": azurite.connection_string, "LOG_LEVEL": "WARNING"})
    channel_definition_id = str(uuid.uuid4())

    def outbound(index: int) -> tuple[str, str, object]:
        return (
            "POST",
            "/api/outbound",
            {
                "ChannelDefinitionId": channel_definition_id,
                "RequestId": f"bench-{index}",
                "From": "+14155550100",
                "To": "+14155550123",
                "Message": {"text": "Your appointment is tomorrow at 10:00"},
            },
        )

    def health(index: int) -> tuple[str, str, object]:
        return "GET", "/api/health", None

    try:
        with local_host(settings) as base:
            asyncio.run(load(base, outbound, sized(50, 5)))  # warm up: tables created, connections open
            health_time, _ = asyncio.run(load(base, health, REQUESTS))
            send_time, send_latencies = asyncio.run(load(base, outbound, REQUESTS))
    finally:
        azurite.stop()
    emit(
        "outbound_rps",
        "outbound sends per second",
        REQUESTS / send_time,
        "req/s",
        clients=CLIENTS,
        requests=REQUESTS,
        machine=machine(),
    )
    emit("outbound_rps", "outbound latency p50", percentile(send_latencies, 50) * 1000, "ms")
    emit("outbound_rps", "outbound latency p99", percentile(send_latencies, 99) * 1000, "ms")
    emit("outbound_rps", "health requests per second (baseline)", REQUESTS / health_time, "req/s")
    emit(
        "outbound_rps",
        "outbound / health throughput",
        (REQUESTS / send_time) / (REQUESTS / health_time),
        "ratio",
    )


if __name__ == "__main__":
    main()
