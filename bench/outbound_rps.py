"""Outbound requests per second through the local host (simulator provider, Azurite), 16 clients.

The in-run baseline is /api/health, which does one storage round trip per request: the ratio shows
what a full outbound send costs on top. Three runs, each against its own health baseline:

* reports name the request: the send as with Twilio (status callback URL) and the simulator, whose
  reports carry ``<ChannelDefinitionId>:<IdempotencyId>``: claim, then the outcome with the message id
  (two storage writes). The simulator's reports are due after the run, so only the send is measured.
* reports by message id only: the send as with providers whose reports carry just their message
  id: claim, outcome, and the message-id record (three writes). The simulator posts no reports.
* with delivery reports: as the first, and each report really posted back 1 s later, queued and
  relayed (dry run) in the same host.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.common import emit, machine, percentile, sized
from tests.e2e import free_port, local_host
from tests.fakes.azurite import start_azurite

ROOT = Path(__file__).resolve().parents[1]
#: Requests of each kind per run, in ROUNDS alternating rounds of health and outbound: the machine's
#: drift over a run then weighs on both alike.
REQUESTS = sized(1000, 40)
ROUNDS = sized(5, 2)
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


def scratch() -> str:
    return str(Path(tempfile.mkdtemp()) / "dry-run.jsonl")


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
                "RequestId": f"bench-{uuid.uuid4()}",
                # Microsoft's 2026 contract: the message's id across Journeys' attempts
                "IdempotencyId": f"bench-message-{uuid.uuid4()}",
                "From": "+14155550100",
                "To": "+14155550123",
                "Message": {"text": "Your appointment is tomorrow at 10:00"},
            },
        )

    def health(index: int) -> tuple[str, str, object]:
        return "GET", "/api/health", None

    runs = {
        "reports name the request": {"SIMULATOR_DELIVERY_DELAY_SECONDS": "3600"},
        "reports by message id only": {"SIMULATOR_DELIVERY_DELAY_SECONDS": "-1"},
        "with delivery reports": {"SIMULATOR_DELIVERY_DELAY_SECONDS": "1"},
    }
    try:
        for run, extra in runs.items():
            port = free_port()  # the simulator posts its reports to this host
            extra |= {"PUBLIC_BASE_URL": f"http://127.0.0.1:{port}", "DATAVERSE_DRY_RUN_FILE": scratch()}
            with local_host({**settings, **extra}, port=port) as base:
                asyncio.run(load(base, outbound, sized(50, 5)))  # warm up: tables, connections
                health_time = send_time = 0.0
                send_latencies: list[float] = []
                for _ in range(ROUNDS):
                    elapsed, _ = asyncio.run(load(base, health, REQUESTS // ROUNDS))
                    health_time += elapsed
                    elapsed, latencies = asyncio.run(load(base, outbound, REQUESTS // ROUNDS))
                    send_time += elapsed
                    send_latencies += latencies
            measured = REQUESTS // ROUNDS * ROUNDS
            send_rate, health_rate = measured / send_time, measured / health_time
            emit(
                "outbound_rps",
                f"outbound sends per second ({run})",
                send_rate,
                "req/s",
                clients=CLIENTS,
                requests=REQUESTS,
                rounds=ROUNDS,
                machine=machine(),
            )
            emit("outbound_rps", f"outbound latency p50 ({run})", percentile(send_latencies, 50) * 1000, "ms")
            emit("outbound_rps", f"outbound latency p99 ({run})", percentile(send_latencies, 99) * 1000, "ms")
            emit("outbound_rps", f"health requests per second ({run}, baseline)", health_rate, "req/s")
            emit("outbound_rps", f"outbound / health throughput ({run})", send_rate / health_rate, "ratio")
    finally:
        azurite.stop()


if __name__ == "__main__":
    main()
