"""Per-send cost: our Twilio and ACS adapters against the official SDKs, same fake API, same run.

The fake API runs in its own process, so CPU time measured here is the client's alone. Sequential
sends and 32 concurrent ones (ours: asyncio tasks on one client; the SDKs: 32 threads on one client,
their documented way to send concurrently).
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import trustme
from pydantic import SecretStr

from bench.common import emit, machine
from channels.acs import AcsChannel, AcsSettings
from channels.base import SendRequest
from channels.twilio import TwilioChannel, TwilioSettings

SEQUENTIAL = 300
CONCURRENT = 960
CONCURRENCY = 32
WARMUP = 30
ROOT = Path(__file__).resolve().parents[1]
SENDER, RECIPIENT, TEXT = "+14155550100", "+14155550123", "Your appointment is tomorrow at 10:00"


def request() -> SendRequest:
    return SendRequest(
        request_id=str(uuid.uuid4()),
        channel_definition_id=uuid.uuid4(),
        sender=SENDER,
        recipient=RECIPIENT,
        text=TEXT,
        idempotency_key=uuid.uuid4(),
        first_attempt_at=datetime.now(timezone.utc),
    )


def start_fake(kind: str, cert: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.fake_server", kind, str(cert)],
        cwd=ROOT,
        env={**os.environ, **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def timed(run: Callable[[], None], count: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return (time.perf_counter() - wall) / count * 1000, (time.process_time() - cpu) / count * 1000


def ours_sequential(
    send: Callable[[SendRequest], Awaitable[object]], loop: asyncio.AbstractEventLoop, count: int
) -> None:
    async def go() -> None:
        for _ in range(count):
            await send(request())

    loop.run_until_complete(go())


def ours_concurrent(
    send: Callable[[SendRequest], Awaitable[object]], loop: asyncio.AbstractEventLoop, count: int
) -> None:
    async def go() -> None:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one() -> None:
            async with gate:
                await send(request())

        await asyncio.gather(*(one() for _ in range(count)))

    loop.run_until_complete(go())


def sdk_sequential(send: Callable[[], object], count: int) -> None:
    for _ in range(count):
        send()


def sdk_concurrent(send: Callable[[], object], count: int) -> None:
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        for future in [pool.submit(send) for _ in range(count)]:
            future.result()


def compare(
    provider: str,
    ours: Callable[[SendRequest], Awaitable[object]],
    sdk: Callable[[], object],
    loop: asyncio.AbstractEventLoop,
) -> None:
    ours_sequential(ours, loop, WARMUP)
    sdk_sequential(sdk, WARMUP)
    for mode, count in (("sequential", SEQUENTIAL), (f"{CONCURRENCY} concurrent", CONCURRENT)):
        if mode == "sequential":
            ours_wall, ours_cpu = timed(lambda count=count: ours_sequential(ours, loop, count), count)
            sdk_wall, sdk_cpu = timed(lambda count=count: sdk_sequential(sdk, count), count)
        else:
            ours_wall, ours_cpu = timed(lambda count=count: ours_concurrent(ours, loop, count), count)
            sdk_wall, sdk_cpu = timed(lambda count=count: sdk_concurrent(sdk, count), count)
        for figure, ours_value, sdk_value in (("wall", ours_wall, sdk_wall), ("cpu", ours_cpu, sdk_cpu)):
            emit(
                "per_send",
                f"{provider} {mode} {figure} per send",
                ours_value,
                "ms",
                sdk=sdk_value,
                ratio_ours_to_sdk=round(ours_value / sdk_value, 3),
                sends=count,
            )


def main() -> None:
    from azure.communication.sms import SmsClient
    from twilio.rest import Client

    emit("per_send", "machine", 0, "-", machine=machine())
    directory = Path(tempfile.mkdtemp())
    ca = trustme.CA()
    cert = directory / "server.pem"
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(cert))
    bundle = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)

    sid, token, key = "AC" + secrets.token_hex(16), secrets.token_hex(16), secrets.token_bytes(32)
    env = {
        "BENCH_TWILIO_SID": sid,
        "BENCH_TWILIO_TOKEN": token,
        "BENCH_ACS_KEY": base64.b64encode(key).decode(),
    }
    twilio_server, twilio_url = start_fake("twilio", cert, env)
    acs_server, acs_url = start_fake("acs", cert, env)
    loop = asyncio.new_event_loop()
    try:
        twilio = TwilioChannel(
            TwilioSettings(account_sid=sid, auth_token=SecretStr(token), api_base_url=twilio_url)
        )  # type: ignore[arg-type]
        twilio_sdk = Client(sid, token)
        twilio_sdk.api.base_url = twilio_url
        compare(
            "twilio",
            twilio.send,
            lambda: twilio_sdk.messages.create(to=RECIPIENT, from_=SENDER, body=TEXT),
            loop,
        )

        connection = f"endpoint={acs_url}/;accesskey={base64.b64encode(key).decode()}"
        acs = AcsChannel(AcsSettings(connection_string=SecretStr(connection)))
        acs_sdk = SmsClient.from_connection_string(connection)
        compare(
            "acs",
            acs.send,
            lambda: acs_sdk.send(from_=SENDER, to=RECIPIENT, message=TEXT, enable_delivery_report=True),
            loop,
        )
        loop.run_until_complete(twilio.aclose())
        loop.run_until_complete(acs.aclose())
    finally:
        loop.close()
        for process in (twilio_server, acs_server):
            assert process.stdin is not None
            process.stdin.close()
            process.wait(timeout=10)


if __name__ == "__main__":
    main()
