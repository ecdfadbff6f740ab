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

import httpx
import trustme
from pydantic import SecretStr

from bench.common import emit, machine, sized
from channels.acs import AcsAdapter, AcsSettings
from channels.base import SendRequest
from channels.infobip import InfobipAdapter, InfobipSettings
from channels.plivo import PlivoAdapter, PlivoSettings
from channels.telnyx import TelnyxAdapter, TelnyxSettings
from channels.twilio import TwilioAdapter, TwilioSettings
from channels.vonage import VonageAdapter, VonageSettings

SEQUENTIAL = sized(300, 10)
CONCURRENT = sized(960, 32)
CONCURRENCY = 32
WARMUP = sized(30, 2)
ROOT = Path(__file__).resolve().parents[1]
SENDER, RECIPIENT, TEXT = "+14155550100", "+14155550123", "Your appointment is tomorrow at 10:00"


def request() -> SendRequest:
    request_id, definition = str(uuid.uuid4()), uuid.uuid4()
    return SendRequest(
        request_id=request_id,
        channel_definition_id=definition,
        reference=f"{definition}/{request_id}",
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


def compare_with_bare_client(
    provider: str,
    ours: Callable[[SendRequest], Awaitable[object]],
    bare: Callable[[], Awaitable[object]],
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Where the provider's SDK cannot be pointed at a local fake: our adapter against a bare
    httpx POST of the same request (what any client must at least do)."""
    ours_sequential(ours, loop, WARMUP)
    ours_sequential(lambda _request: bare(), loop, WARMUP)
    for mode, count, run in (
        ("sequential", SEQUENTIAL, ours_sequential),
        (f"{CONCURRENCY} concurrent", CONCURRENT, ours_concurrent),
    ):
        ours_wall, ours_cpu = timed(lambda count=count, run=run: run(ours, loop, count), count)
        bare_wall, bare_cpu = timed(lambda count=count, run=run: run(lambda _r: bare(), loop, count), count)
        for figure, ours_value, bare_value in (("wall", ours_wall, bare_wall), ("cpu", ours_cpu, bare_cpu)):
            emit(
                "per_send",
                f"{provider} {mode} {figure} per send",
                ours_value,
                "ms",
                bare_httpx=bare_value,
                ratio_ours_to_bare=round(ours_value / bare_value, 3),
                sends=count,
            )


def main() -> None:
    from azure.communication.sms import SmsClient
    from telnyx import Telnyx
    from twilio.rest import Client
    from vonage import Auth, HttpClientOptions, Vonage
    from vonage_sms import SmsMessage

    emit("per_send", "machine", 0, "-", machine=machine())
    directory = Path(tempfile.mkdtemp())
    ca = trustme.CA()
    cert = directory / "server.pem"
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(cert))
    bundle = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)

    sid, token, key = "AC" + secrets.token_hex(16), secrets.token_hex(16), secrets.token_bytes(32)
    env = {"BENCH_SID": sid, "BENCH_TOKEN": token, "BENCH_ACS_KEY": base64.b64encode(key).decode()}
    servers = {
        kind: start_fake(kind, cert, env)
        for kind in ("twilio", "acs", "telnyx", "vonage", "plivo", "infobip")
    }
    url = {kind: server[1] for kind, server in servers.items()}
    loop = asyncio.new_event_loop()
    bare = httpx.AsyncClient(timeout=10)
    try:
        twilio = TwilioAdapter(
            TwilioSettings(account_sid=sid, auth_token=SecretStr(token), api_base_url=url["twilio"])
        )  # type: ignore[arg-type]
        twilio_sdk = Client(sid, token)
        twilio_sdk.api.base_url = url["twilio"]
        compare(
            "twilio",
            twilio.send,
            lambda: twilio_sdk.messages.create(to=RECIPIENT, from_=SENDER, body=TEXT),
            loop,
        )

        connection = f"endpoint={url['acs']}/;accesskey={base64.b64encode(key).decode()}"
        acs = AcsAdapter(AcsSettings(connection_string=SecretStr(connection)))
        acs_sdk = SmsClient.from_connection_string(connection)
        compare(
            "acs",
            acs.send,
            lambda: acs_sdk.send(from_=SENDER, to=RECIPIENT, message=TEXT, enable_delivery_report=True),
            loop,
        )

        telnyx = TelnyxAdapter(TelnyxSettings(api_key=SecretStr(token), api_base_url=url["telnyx"]))  # type: ignore[arg-type]
        telnyx_sdk = Telnyx(api_key=token, base_url=f"{url['telnyx']}/v2", max_retries=0)
        compare(
            "telnyx",
            telnyx.send,
            lambda: telnyx_sdk.messages.send(from_=SENDER, to=RECIPIENT, text=TEXT),
            loop,
        )

        vonage = VonageAdapter(
            VonageSettings(api_key=sid, api_secret=SecretStr(token), api_base_url=url["vonage"])
        )  # type: ignore[arg-type]
        vonage_host = url["vonage"].removeprefix("https://")
        vonage_sdk = Vonage(
            Auth(api_key=sid, api_secret=token), HttpClientOptions(rest_host=vonage_host, max_retries=0)
        )
        message = SmsMessage(to=RECIPIENT.lstrip("+"), from_=SENDER.lstrip("+"), text=TEXT)
        compare("vonage", vonage.send, lambda: vonage_sdk.sms.send(message), loop)

        plivo = PlivoAdapter(
            PlivoSettings(auth_id=sid, auth_token=SecretStr(token), api_base_url=url["plivo"])
        )  # type: ignore[arg-type]
        plivo_url = f"{url['plivo']}/v1/Account/{sid}/Message/"
        compare_with_bare_client(
            "plivo",
            plivo.send,
            lambda: bare.post(
                plivo_url, json={"src": SENDER, "dst": RECIPIENT, "text": TEXT}, auth=(sid, token)
            ),
            loop,
        )

        infobip = InfobipAdapter(InfobipSettings(api_key=SecretStr(token), base_url=url["infobip"]))  # type: ignore[arg-type]
        infobip_url = f"{url['infobip']}/sms/2/text/advanced"
        infobip_body = {"messages": [{"from": SENDER, "destinations": [{"to": RECIPIENT}], "text": TEXT}]}
        compare_with_bare_client(
            "infobip",
            infobip.send,
            lambda: bare.post(infobip_url, json=infobip_body, headers={"Authorization": f"App {token}"}),
            loop,
        )

        for channel in (twilio, acs, telnyx, vonage, plivo, infobip):
            loop.run_until_complete(channel.aclose())
        loop.run_until_complete(bare.aclose())
    finally:
        loop.close()
        for process, _ in servers.values():
            assert process.stdin is not None
            process.stdin.close()
            process.wait(timeout=10)


if __name__ == "__main__":
    main()
