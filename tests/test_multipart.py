"""Messages sent or received as separately reported parts (Vonage): one notification per message,
one inbound message per concatenated text."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import SecretStr

from channels.events import WebhookRejected, WebhookRequest
from channels.vonage import VonageAdapter, VonageSettings, vonage_signature
from contracts import ChannelStatus
from dataverse.dry_run import DryRunDataverse
from storage.ledger import SendLedger, SendRecord
from storage.relay_queue import InboundJob, NotificationJob, RelayJob, RelayQueue
from tests.conftest import CUSTOMER, OUR_NUMBER, RelayQueues
from tests.doubles import send_record
from tests.fakes.azurite import Azurite
from tests.fakes.http import FakeHttpServer
from tests.fakes.providers import FakeVonage
from tests.kits import send_request
from usecases.intake import inbound_job
from usecases.relay import RelayService


async def test_long_text_is_sent_as_parts_and_every_part_id_is_returned() -> None:
    with FakeHttpServer(FakeVonage("key", "secret")) as api:
        channel = VonageAdapter(
            VonageSettings(api_key="key", api_secret=SecretStr("secret"), api_base_url=api.url)
        )  # type: ignore[arg-type]
        request = send_request()
        long_request = type(request)(
            **{**{f: getattr(request, f) for f in request.__slots__}, "text": "x" * 400}
        )
        receipt = await channel.send(long_request)
        await channel.aclose()
        form = api.requests[0].form()
    assert len(receipt.part_message_ids) == 3 and receipt.message_id == receipt.part_message_ids[0]
    assert form["to"] == CUSTOMER.lstrip("+") and form["type"] == "text"


def test_md5hash_signature_as_the_dashboard_default_computes_it() -> None:
    params = {
        "messageId": "0B00000123",
        "status": "delivered",
        "timestamp": str(int(time.time())),
        "nonce": "n",
    }
    secret = "sig-secret"
    material = "".join(f"&{k}={params[k]}" for k in sorted(params))
    expected = hashlib.md5((material + secret).encode()).hexdigest()
    assert vonage_signature(params, secret, "md5hash") == expected
    channel = VonageAdapter(
        VonageSettings(api_key="k", api_secret=SecretStr("s"), signature_secret=SecretStr(secret))
    )
    body = json.dumps({**params, "sig": expected.upper()}).encode()
    request = WebhookRequest(
        method="POST",
        public_url="https://x/api/providers/vonage/delivery-reports",
        headers={"content-type": "application/json"},
        query={},
        body=body,
    )
    channel.verify_webhook(request)  # Vonage may send the hex upper-cased
    with pytest.raises(WebhookRejected):
        channel.verify_webhook(
            WebhookRequest(
                method="POST",
                public_url=request.public_url,
                headers=request.headers,
                query={},
                body=body.replace(b"delivered", b"failed"),
            )
        )


@pytest.fixture
async def relay(
    azurite: Azurite, ledger: SendLedger, relay_queues: RelayQueues, tmp_path: Path
) -> AsyncIterator[tuple[RelayService, DryRunDataverse]]:
    dataverse = DryRunDataverse(tmp_path / "sink.jsonl", channel_definitions={OUR_NUMBER: uuid.uuid4()})
    queue = RelayQueue(azurite.connection_string)
    yield RelayService(ledger=ledger, queue=queue, dataverse=dataverse), dataverse
    await queue.aclose()


async def multipart_send(ledger: SendLedger, parts: int) -> tuple[SendRecord, list[str]]:
    record = send_record("vonage", segments=parts)
    ids = [f"PART{uuid.uuid4().hex[:8]}" for _ in range(parts)]
    await ledger.remember_message(record, ids[0], tuple(ids))
    return record, ids


def report(message_id: str, status: ChannelStatus, correlation: str | None = None) -> RelayJob:
    return NotificationJob(
        provider="vonage",
        message_id=message_id,
        status=status,
        provider_status="delivered" if status is ChannelStatus.DELIVERED else "failed",
        correlation=correlation,
    )


def relayed(dataverse: DryRunDataverse) -> list[dict[str, object]]:
    if not dataverse.sink.exists():
        return []
    return [
        json.loads(json.loads(line)["body"]["notificationPayLoad"])
        for line in dataverse.sink.read_text().splitlines()
    ]


async def test_delivered_once_every_part_is(
    relay: tuple[RelayService, DryRunDataverse], ledger: SendLedger
) -> None:
    service, dataverse = relay
    record, ids = await multipart_send(ledger, 3)
    await service.process(report(ids[1], ChannelStatus.DELIVERED))
    await service.process(report(ids[0], ChannelStatus.DELIVERED))
    assert relayed(dataverse) == []
    await service.process(report(ids[2], ChannelStatus.DELIVERED))
    await service.process(report(ids[2], ChannelStatus.DELIVERED))  # the provider retried
    [notification] = relayed(dataverse)
    assert (notification["RequestId"], notification["MessageId"], notification["Status"]) == (
        record.request_id,
        ids[0],
        "Delivered",
    )
    assert notification["StatusDetails"]["PartsTotal"] == "3"  # type: ignore[index]
    assert notification["StatusDetails"]["PartsDelivered"] == "3"  # type: ignore[index]


async def test_parts_whose_reports_name_the_request_still_wait_for_each_other(
    relay: tuple[RelayService, DryRunDataverse], ledger: SendLedger
) -> None:
    """Part 1's report finds the send's own row (it holds part 1's id); that row knows the parts."""
    service, dataverse = relay
    record, ids = await multipart_send(ledger, 2)
    assert (await ledger.claim(replace(record, message_id=ids[0], parts=2)))[0]
    reference = {"correlation": f"{record.channel_definition_id}/{record.request_id}"}
    await service.process(report(ids[0], ChannelStatus.DELIVERED, **reference))
    assert relayed(dataverse) == []
    await service.process(report(ids[1], ChannelStatus.DELIVERED, **reference))
    [notification] = relayed(dataverse)
    assert (notification["RequestId"], notification["MessageId"], notification["Status"]) == (
        record.request_id,
        ids[0],
        "Delivered",
    )


async def test_not_delivered_as_soon_as_one_part_fails(
    relay: tuple[RelayService, DryRunDataverse], ledger: SendLedger
) -> None:
    service, dataverse = relay
    _, ids = await multipart_send(ledger, 2)
    await service.process(report(ids[1], ChannelStatus.NOT_DELIVERED))
    await service.process(report(ids[0], ChannelStatus.DELIVERED))
    [notification] = relayed(dataverse)
    assert (notification["MessageId"], notification["Status"]) == (ids[0], "NotDelivered")
    assert notification["StatusDetails"]["PartsDelivered"] == "0"  # type: ignore[index]


async def test_concatenated_inbound_parts_become_one_message(
    relay: tuple[RelayService, DryRunDataverse],
) -> None:
    service, dataverse = relay
    texts = ["This reply is long enough ", "to arrive in three ", "parts. STOP"]
    for index in (3, 1, 2):  # out of order, like a carrier delivers them
        await service.process(
            InboundJob(
                provider="vonage",
                message_id=f"IN{index}",
                customer=CUSTOMER.lstrip("+"),
                our_number=OUR_NUMBER,
                text=texts[index - 1],
                concat_ref="77",
                concat_total=3,
                concat_part=index,
            )
        )
    [line] = dataverse.sink.read_text().splitlines()
    inbound = json.loads(json.loads(line)["body"]["inboundPayLoad"])
    assert inbound["Message"] == {"text": "".join(texts)} and inbound["From"] == CUSTOMER


async def test_concatenated_reply_through_the_adapter_and_a_reused_reference(
    relay: tuple[RelayService, DryRunDataverse],
) -> None:
    service, dataverse = relay
    channel = VonageAdapter(VonageSettings(api_key="k", api_secret=SecretStr("s")))

    def part(message_id: str, index: int, text: str) -> RelayJob:
        body = json.dumps(
            {
                "msisdn": CUSTOMER.lstrip("+"),
                "to": OUR_NUMBER,
                "messageId": message_id,
                "text": text,
                "concat": "true",
                "concat-ref": "12",
                "concat-total": "2",
                "concat-part": str(index),
            }
        )
        request = WebhookRequest(
            method="POST",
            public_url="https://x/api/providers/vonage/inbound",
            headers={"content-type": "application/json"},
            query={},
            body=body.encode(),
        )
        [message] = channel.parse_inbound(request).inbound
        return inbound_job(message)

    for job in (part("A2", 2, "world"), part("A1", 1, "hello ")):
        await service.process(job)
    # the carrier reuses reference 12 for the next long reply
    for job in (part("B1", 1, "second "), part("B2", 2, "reply")):
        await service.process(job)
    texts = [
        json.loads(json.loads(line)["body"]["inboundPayLoad"])["Message"]["text"]
        for line in dataverse.sink.read_text().splitlines()
    ]
    assert texts == ["hello world", "second reply"]
    await channel.aclose()


async def test_a_text_with_a_refused_part_is_not_delivered(
    relay: tuple[RelayService, DryRunDataverse], ledger: SendLedger
) -> None:
    service, dataverse = relay
    record, ids = await multipart_send(ledger, 1)
    await ledger.remember_message(record, ids[0], (ids[0],), refused_parts=1)  # part 2 was refused at send
    await service.process(report(ids[0], ChannelStatus.DELIVERED))
    [notification] = relayed(dataverse)
    assert notification["Status"] == "NotDelivered"
    assert notification["StatusDetails"]["PartsTotal"] == "2"  # type: ignore[index]
