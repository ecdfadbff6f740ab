"""$batch and service protection: the limits-enforcing fake, the wire format, the pacer, and the
client's batches (real MSAL, real HTTPS) with each operation's outcome mapped back to its caller."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from contracts import ChannelStatus, InboundPayload, NotificationPayload
from dataverse.batch import (
    START_REQUEST_RATE,
    BatchFormatError,
    Operation,
    Pacer,
    decode_batch,
    encode_batch,
    throttle_kind,
)
from dataverse.client import DataverseClient, DataversePermanentError, DataverseTransientError
from tests.conftest import OUR_NUMBER, DataverseWorld
from tests.fakes.dataverse import FakeDataverse, FakeEntra, ServiceProtection
from tests.fakes.http import Recorded, Reply

NOTIFY = "/api/data/v9.2/msdyn_D365ChannelsNotification"


def notification(request_id: str) -> NotificationPayload:
    return NotificationPayload(
        channel_definition_id=uuid.UUID("0b5c9b52-3f0e-4c1b-8a0e-5f4b1f0a9c21"),
        request_id=request_id,
        message_id=f"SM-{request_id}",
        from_=OUR_NUMBER,
        organization_id="org",
        status=ChannelStatus.DELIVERED,
        status_details={"ProviderStatus": "delivered"},
    )


def operation(request_id: str) -> Operation:
    return Operation(
        "msdyn_D365ChannelsNotification", {"notificationPayLoad": notification(request_id).to_wire_json()}
    )


# -- the fake, called directly -------------------------------------------------------------------


def fake_with(limits: ServiceProtection | None = None) -> tuple[FakeDataverse, str]:
    entra = FakeEntra("tenant", "client", client_secret="s")
    return FakeDataverse(entra, limits=limits), entra._issue()


def recorded(method: str, path: str, token: str, body: bytes = b"", **headers: str) -> Recorded:
    return Recorded(method, path, path, {}, {"authorization": f"Bearer {token}", **headers}, body)


def single(fake: FakeDataverse, token: str, request_id: str = "r") -> Reply:
    body = operation(request_id).encoded_body()
    return fake(recorded("POST", NOTIFY, token, body, **{"content-type": "application/json"}))


def batch(fake: FakeDataverse, token: str, count: int, *, continue_on_error: bool = True) -> Reply:
    boundary = f"batch_{uuid.uuid4().hex}"
    body = encode_batch(
        [operation(f"b{i}") for i in range(count)], path_prefix="/api/data/v9.2/", boundary=boundary
    )
    headers = {"content-type": f'multipart/mixed; boundary="{boundary}"'}
    if continue_on_error:
        headers["prefer"] = "odata.continue-on-error"
    return fake(recorded("POST", "/api/data/v9.2/$batch", token, body, **headers))


def error_code(reply: Reply) -> str:
    return str(reply.body["error"]["code"])


def test_service_protection_codes_are_dataverses() -> None:
    for hexadecimal, decimal, kind in [
        ("0x80072322", -2147015902, "requests"),
        ("0x80072321", -2147015903, "time"),
        ("0x80072326", -2147015898, "concurrency"),
    ]:
        assert int(hexadecimal, 16) - 2**32 == decimal
        assert throttle_kind(hexadecimal) == throttle_kind(str(decimal)) == kind
    assert throttle_kind("0x80040265") is None and throttle_kind(None) is None


def test_request_limit_counts_a_batch_as_one_request() -> None:
    limits = ServiceProtection(window_seconds=2, max_requests=3, operation_ms=1)
    fake, token = fake_with(limits)
    assert single(fake, token).status == 200
    assert batch(fake, token, 50).status == 200  # fifty notifications, one request
    assert single(fake, token).status == 200
    refused = single(fake, token)
    assert refused.status == 429 and error_code(refused) == "0x80072322"
    assert refused.body["error"]["message"] == (
        "Number of requests exceeded the limit of 3 over time window of 2 seconds."
    )
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    assert len(fake.notifications) == 52 and limits.admitted == 3
    time.sleep(float(refused.headers["Retry-After"]))
    assert single(fake, token).status == 200  # the window slid past the first request


def test_execution_time_is_charged_per_operation_and_binds_after_the_fact() -> None:
    limits = ServiceProtection(window_seconds=2, max_execution_ms=100, operation_ms=30)
    fake, token = fake_with(limits)
    started = time.monotonic()
    assert batch(fake, token, 4).status == 200  # under the limit when it arrived
    assert time.monotonic() - started >= 0.12  # its operations ran one after another
    refused = single(fake, token)
    assert refused.status == 429 and error_code(refused) == "0x80072321"
    assert (
        "exceeded limit of 100 milliseconds over time window of 2 seconds" in refused.body["error"]["message"]
    )
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    time.sleep(float(refused.headers["Retry-After"]))
    assert single(fake, token).status == 200
    assert dict(limits.throttled) == {"0x80072321": 1}


def test_concurrent_requests_beyond_the_limit_are_refused_at_once() -> None:
    limits = ServiceProtection(max_concurrent=2, operation_ms=300)
    fake, token = fake_with(limits)
    replies: list[Reply] = []
    threads = [threading.Thread(target=lambda: replies.append(single(fake, token))) for _ in range(3)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    assert sorted(r.status for r in replies) == [200, 200, 429]
    [refused] = [r for r in replies if r.status == 429]
    assert error_code(refused) == "0x80072326" and refused.headers["Retry-After"] == "1"
    assert limits.peak_concurrent == 2


@pytest.mark.parametrize(
    "mangle",
    [
        lambda body, boundary: (body, "application/json"),
        lambda body, boundary: (body.replace(f"--{boundary}--".encode(), b""), None),
        lambda body, boundary: (body.replace(b"application/http", b"text/plain", 1), None),
        lambda body, boundary: (body.replace(b"Content-Length: ", b"Content-Length: 1", 1), None),
        lambda body, boundary: (body.replace(b"POST /api", b"POST/api", 1), None),
        lambda body, boundary: (body.replace(b"\r\n\r\n{", b"\r\n\r\n{oops", 1), None),
    ],
    ids=[
        "not-multipart",
        "no-closing-delimiter",
        "not-application-http",
        "wrong-length",
        "bad-request-line",
        "bad-json",
    ],
)
def test_a_malformed_batch_is_a_400_and_runs_nothing(mangle: Any) -> None:
    fake, token = fake_with()
    boundary = "batch_x"
    body = encode_batch([operation("a"), operation("b")], path_prefix="/api/data/v9.2/", boundary=boundary)
    body, content_type = mangle(body, boundary)
    reply = fake(
        recorded(
            "POST",
            "/api/data/v9.2/$batch",
            token,
            body,
            **{"content-type": content_type or f"multipart/mixed; boundary={boundary}"},
        )
    )
    assert reply.status == 400 and fake.notifications == []


def test_more_than_a_thousand_operations_is_a_400() -> None:
    fake, token = fake_with()
    ops = [operation(str(i)) for i in range(1001)]
    with pytest.raises(ValueError):
        encode_batch(ops, path_prefix="/api/data/v9.2/", boundary="b")
    body = encode_batch(ops[:1000], path_prefix="/api/data/v9.2/", boundary="b")
    extra = encode_batch(ops[1000:], path_prefix="/api/data/v9.2/", boundary="b")
    body = body.removesuffix(b"--b--\r\n") + extra
    reply = fake(
        recorded(
            "POST", "/api/data/v9.2/$batch", token, body, **{"content-type": "multipart/mixed; boundary=b"}
        )
    )
    assert reply.status == 400 and fake.notifications == []


def test_without_continue_on_error_a_batch_stops_at_its_first_failure() -> None:
    fake, token = fake_with()
    fake.operation_faults = [None, Reply(400, {"error": {"code": "0x80040265", "message": "bad"}})]
    reply = batch(fake, token, 3, continue_on_error=False)
    assert reply.status == 400
    parts = decode_batch(reply.headers["Content-Type"], reply.body)
    assert [p.status for p in parts] == [200, 400] and len(fake.notifications) == 1


# -- wire format ---------------------------------------------------------------------------------


def test_dataverse_documented_batch_answer_is_read_part_by_part() -> None:
    """The continue-on-error answer from Microsoft's $batch page (LF line ends, as printed there)."""
    answer = (
        b"--batchresponse_f44bd09d\n"
        b"Content-Type: application/http\n"
        b"Content-Transfer-Encoding: binary\n"
        b"\n"
        b"HTTP/1.1 400 Bad Request\n"
        b"REQ_ID: de4c5227-4a28-4ebd-8ced-3392ece1697b\n"
        b"Content-Type: application/json; odata.metadata=minimal\n"
        b"OData-Version: 4.0\n"
        b"\n"
        b'{"error":{"code":"0x80044331","message":"A validation error occurred."}}\n'
        b"--batchresponse_f44bd09d\n"
        b"Content-Type: application/http\n"
        b"Content-Transfer-Encoding: binary\n"
        b"\n"
        b"HTTP/1.1 204 No Content\n"
        b"OData-Version: 4.0\n"
        b"Location: [Organization Uri]/api/data/v9.2/tasks(aed2ae8b-3c94-ed11-aad1-000d3a9933c9)\n"
        b"\n"
        b"\n"
        b"--batchresponse_f44bd09d--\n"
    )
    for body in (answer, answer.replace(b"\n", b"\r\n")):
        first, second = decode_batch("multipart/mixed; boundary=batchresponse_f44bd09d", body)
        assert (first.status, json.loads(first.body)["error"]["code"]) == (400, "0x80044331")
        assert (second.status, second.body.strip()) == (204, b"")
    with pytest.raises(BatchFormatError):
        decode_batch("multipart/mixed; boundary=batchresponse_f44bd09d", answer[: len(answer) // 2])
    with pytest.raises(BatchFormatError):
        decode_batch("application/json", answer)


# -- pacer ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pacer_cuts_once_per_throttling_event_and_raises_only_what_held_work_back() -> None:
    clock = Clock()
    pacer = Pacer(max_in_flight=8, timeout_seconds=30, clock=clock)
    assert pacer.delay() == 0  # idle: a lone request goes at once
    sent = [pacer.started() for _ in range(4)]
    assert pacer.delay() > 0  # the request rate applies after a burst of two
    clock.now += 1
    for at in sent:
        pacer.finished(at)
    before = pacer.state.time_rate
    pacer.throttled("time", 3.0, sent_at=sent[0])
    pacer.throttled("time", 3.0, sent_at=sent[1])  # the same event, seen by another request
    assert pacer.throttle_events == 1 and pacer.state.time_rate <= before / 2
    assert pacer.state.batch_seconds == 30 * 0.25 / 2 and pacer.delay() >= 3.0
    cut = pacer.state.time_rate
    pacer.throttled("requests", 1.0, sent_at=None)
    assert pacer.throttle_events == 2 and pacer.state.request_rate <= START_REQUEST_RATE / 2
    rate = pacer.state.request_rate

    def unthrottled_request() -> None:
        at = pacer.started()
        clock.now += 0.1
        pacer.finished(at)
        pacer.measured(at, 10)

    clock.now += 4
    pacer.pressed("size")
    unthrottled_request()
    assert pacer.state.time_rate == cut and pacer.state.batch_seconds == 3.75  # not quiet for long enough
    clock.now += 10
    unthrottled_request()
    assert pacer.state.batch_seconds > 3.75  # full batches: larger ones
    assert pacer.state.time_rate == cut and pacer.state.request_rate == rate  # nothing waited for these
    clock.now += 10
    pacer._time_clock = clock.now + 1  # work waits for Dataverse time
    pacer.hold_back()
    unthrottled_request()
    assert pacer.state.time_rate > cut


def test_batch_size_follows_the_time_one_operation_takes() -> None:
    clock = Clock()
    pacer = Pacer(max_in_flight=8, timeout_seconds=20, clock=clock)
    assert pacer.batch_limit(100) == 10  # unmeasured: Microsoft's suggested start
    at = pacer.started()
    clock.now += 1.0
    pacer.finished(at)
    pacer.measured(at, 10)  # 100 ms per operation
    assert pacer.batch_limit(100) == 50  # 5 s, a quarter of the timeout
    pacer.throttled("time", 1.0, sent_at=None)
    assert pacer.batch_limit(100) == 25
    assert pacer.batch_limit(7) == 7


# -- the client, over HTTPS ----------------------------------------------------------------------


@pytest.fixture
async def client(dataverse_world: DataverseWorld) -> AsyncIterator[DataverseClient]:
    client = dataverse_world.client()
    await client.organization_id()  # token and connection ready
    yield client
    await client.aclose()


def batch_calls(fake: FakeDataverse) -> list[Recorded]:
    return [call for _, call in fake.calls if call.path.endswith("$batch")]


async def outcomes(client: DataverseClient, count: int) -> list[BaseException | None]:
    results = await asyncio.gather(
        *(client.notify(notification(f"n{i}")) for i in range(count)), return_exceptions=True
    )
    return list(results)


@pytest.mark.parametrize("echo_content_id", [True, False], ids=["by-content-id", "by-position"])
async def test_concurrent_notifications_share_a_batch_and_each_gets_its_own_outcome(
    client: DataverseClient, dataverse_world: DataverseWorld, echo_content_id: bool
) -> None:
    fake = dataverse_world.dataverse
    fake.echo_content_id = echo_content_id
    fake.operation_faults = [
        None,
        Reply(400, {"error": {"code": "0x80040265", "message": "Invalid To +14155550123"}}),
        Reply(503, {"error": {"code": "", "message": "busy"}}),
        None,
    ]
    results = await outcomes(client, 4)

    assert results[0] is None and results[3] is None
    assert isinstance(results[1], DataversePermanentError) and results[1].code == "0x80040265"
    assert "+14155550123" not in str(results[1])
    assert results[2] is None  # its 503 was retried in this process, in a later request
    first, *_ = batch_calls(fake)
    assert first.headers["prefer"] == "odata.continue-on-error"
    assert first.headers["content-type"].startswith("multipart/mixed; boundary=")
    assert [op.headers["content-id"] for op in fake.batches[0]] == ["1", "2", "3", "4"]
    assert [op.path for op in fake.batches[0]] == [NOTIFY] * 4
    delivered = sorted(p["RequestId"] for p in fake.notification_payloads())
    assert delivered == ["n0", "n2", "n3"]


async def test_a_lone_notification_goes_out_at_once_as_a_plain_request(
    client: DataverseClient, dataverse_world: DataverseWorld
) -> None:
    fake = dataverse_world.dataverse
    for i in range(3):
        started = time.monotonic()
        await client.notify(notification(f"lone{i}"))
        arrived, call = fake.calls[-1]
        assert call.path == NOTIFY  # no $batch for one operation
        assert arrived - started < 0.1  # no batch window: sent as soon as it was submitted
        await asyncio.sleep(0.2)
    assert batch_calls(fake) == []


async def test_a_throttled_batch_waits_out_retry_after_then_goes_again(
    client: DataverseClient, dataverse_world: DataverseWorld
) -> None:
    fake = dataverse_world.dataverse
    fake.faults = [
        Reply(
            429,
            {
                "error": {
                    "code": "0x80072321",
                    "message": "Combined execution time of incoming requests exceeded",
                }
            },
            {"Retry-After": "1"},
        )
    ]
    started = time.monotonic()
    assert await outcomes(client, 12) == [None] * 12
    assert time.monotonic() - started >= 0.95
    assert sorted(p["RequestId"] for p in fake.notification_payloads()) == sorted(f"n{i}" for i in range(12))
    assert client.pacer.throttle_events == 1 and client.pacer.state.time_rate < 8


async def test_an_unreadable_or_short_batch_answer_is_transient(
    client: DataverseClient, dataverse_world: DataverseWorld
) -> None:
    fake = dataverse_world.dataverse
    short = (
        b"--r\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n\r\n--r--\r\n"
    )
    fake.faults = [
        Reply(
            200,
            b"--r\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 2",
            {"Content-Type": "multipart/mixed; boundary=r"},
        ),
        Reply(200, short, {"Content-Type": "multipart/mixed; boundary=r"}),
    ]
    assert await outcomes(client, 3) == [None] * 3  # both retried in this process
    # the short answer accepted n0 (as played); n1 and n2, not in it, went again
    assert sorted(p["RequestId"] for p in fake.notification_payloads()) == ["n1", "n2"]
    assert len(batch_calls(fake)) >= 2


async def test_an_operation_withdrawn_by_its_caller_is_never_sent(
    client: DataverseClient, dataverse_world: DataverseWorld
) -> None:
    fake = dataverse_world.dataverse
    client.pacer.resume_at = time.monotonic() + 1.0  # a Retry-After in progress: operations wait
    waiting = [asyncio.create_task(client.notify(notification(f"w{i}"))) for i in range(5)]
    await asyncio.sleep(0.2)
    for task in waiting[:3]:
        task.cancel()
    done = await asyncio.gather(*waiting, return_exceptions=True)
    assert [type(r).__name__ for r in done[:3]] == ["CancelledError"] * 3 and done[3:] == [None, None]
    assert sorted(p["RequestId"] for p in fake.notification_payloads()) == ["w3", "w4"]


async def test_a_retry_after_beyond_the_in_process_budget_goes_back_to_the_queue(
    client: DataverseClient, dataverse_world: DataverseWorld
) -> None:
    dataverse_world.dataverse.faults = [
        Reply(
            429,
            {"error": {"code": "0x80072322", "message": "Number of requests exceeded"}},
            {"Retry-After": "120"},
        )
    ]
    results = await outcomes(client, 3)
    assert all(isinstance(r, DataverseTransientError) and r.throttled for r in results)
    assert all(
        r.retry_after is not None and r.retry_after > 100
        for r in results
        if isinstance(r, DataverseTransientError)
    )
    assert dataverse_world.dataverse.notifications == []


async def test_a_refused_batch_falls_back_to_one_request_per_notification(
    client: DataverseClient, dataverse_world: DataverseWorld
) -> None:
    fake = dataverse_world.dataverse
    fake.faults = [Reply(400, {"error": {"code": "0x80048d19", "message": "Malformed $batch"}})]
    assert await outcomes(client, 4) == [None] * 4  # nothing ran: each went again, alone
    assert await outcomes(client, 3) == [None] * 3
    assert len(batch_calls(fake)) == 1 and len(fake.notifications) == 7
    assert [call.path for _, call in fake.calls[-3:]] == [NOTIFY] * 3


async def test_through_the_channels_own_apis_relays_keep_batching_pacing_and_their_outcomes(
    dataverse_world: DataverseWorld,
) -> None:
    """DATAVERSE_CHANNEL_API_PREFIX: the same batches, pacing and 429 handling, another action."""
    fake = dataverse_world.dataverse
    fake.channel_apis = {
        "contoso_SmsDeliveryReport": "msdyn_D365ChannelsNotification",
        "contoso_SmsInbound": "msdyn_D365ChannelsInbound",
    }
    fake.faults = [
        Reply(
            429,
            {"error": {"code": "0x80072322", "message": "Number of requests exceeded"}},
            {"Retry-After": "1"},
        )
    ]
    client = dataverse_world.client(channel_api_prefix="contoso")
    try:
        assert await outcomes(client, 12) == [None] * 12
        await client.inbound(
            InboundPayload(
                channel_definition_id=uuid.uuid4(),
                to=OUR_NUMBER,
                from_="+14155550123",
                organization_id="org",
                message={"text": "STOP"},
            )
        )
    finally:
        await client.aclose()

    assert sorted(p["RequestId"] for p in fake.notification_payloads()) == sorted(f"n{i}" for i in range(12))
    assert fake.relayed_via == ["contoso_SmsDeliveryReport"] * 12 + ["contoso_SmsInbound"]
    assert client.pacer.throttle_events == 1
    assert any(len(operations) > 1 for operations in fake.batches)  # they still shared requests
    assert {op.path for operations in fake.batches for op in operations} == {
        "/api/data/v9.2/contoso_SmsDeliveryReport"
    }


async def test_an_own_api_that_does_not_exist_is_a_permanent_refusal(dataverse_world: DataverseWorld) -> None:
    client = dataverse_world.client(channel_api_prefix="contoso")  # provisioning never created it
    try:
        with pytest.raises(DataversePermanentError):
            await client.notify(notification("nowhere"))
    finally:
        await client.aclose()
    assert dataverse_world.dataverse.notifications == []
