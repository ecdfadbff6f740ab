"""The relay job: correlation, the contract payloads, dedupe, back-off and the poison queue."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ServiceResponseTimeoutError

from contracts import ChannelStatus
from dataverse.client import DataverseClient
from dataverse.dry_run import DryRunDataverse
from storage.errors import StorageUnavailable
from storage.group_commit import Write
from storage.ledger import (
    TABLE_REQUESTS_AT_ONCE,
    RelayClaimState,
    SendKey,
    SendLedger,
    SendRecord,
    SendState,
    row_key,
)
from storage.relay_queue import InboundJob, NotificationJob, RelayQueue
from storage.replay_poison import replay
from tests.conftest import CUSTOMER, OUR_NUMBER, DataverseWorld, RelayQueues
from tests.doubles import app_function, send_record
from tests.fakes.azurite import Azurite
from tests.fakes.http import Reply
from usecases.composition import Services
from usecases.relay import MAX_ATTEMPTS, UNKNOWN_MESSAGE_ATTEMPTS, RelayService


@pytest.fixture
async def dataverse(dataverse_world: DataverseWorld) -> AsyncIterator[DataverseClient]:
    client = dataverse_world.client()
    yield client
    await client.aclose()


@pytest.fixture
def service(ledger: SendLedger, queue: RelayQueue, dataverse: DataverseClient) -> RelayService:
    return RelayService(ledger=ledger, queue=queue, dataverse=dataverse)


async def sent_message(ledger: SendLedger, provider: str = "twilio") -> tuple[SendRecord, str]:
    record = send_record(provider)
    message_id = "SM" + uuid.uuid4().hex
    await ledger.remember_message(record, message_id)
    return record, message_id


def delivered(
    message_id: str, status: ChannelStatus = ChannelStatus.DELIVERED, **extra: Any
) -> NotificationJob:
    return NotificationJob(
        provider="twilio",
        message_id=message_id,
        status=status,
        provider_status="delivered" if status is ChannelStatus.DELIVERED else "undelivered",
        **extra,
    )


async def test_delivery_report_becomes_the_notification_contract(
    service: RelayService, ledger: SendLedger, dataverse_world: DataverseWorld
) -> None:
    record, message_id = await sent_message(ledger)
    await service.process(
        delivered(
            message_id,
            ChannelStatus.NOT_DELIVERED,
            error_code="30003",
            reason="Unreachable",
            description="Unreachable destination handset",
        )
    )
    assert dataverse_world.dataverse.notification_payloads() == [
        {
            "ChannelDefinitionId": str(record.channel_definition_id),
            "RequestId": record.request_id,
            "MessageId": message_id,
            "From": OUR_NUMBER,
            "OrganizationId": dataverse_world.dataverse.organization_id,
            "Status": "NotDelivered",
            "StatusDetails": {"Provider": "twilio", "ProviderStatus": "undelivered", "ErrorCode": "30003"},
            "Details": {"Reason": "Unreachable", "Message": "Unreachable destination handset"},
        }
    ]


async def test_redelivered_and_retried_reports_are_relayed_once(
    service: RelayService, ledger: SendLedger, dataverse_world: DataverseWorld
) -> None:
    _, message_id = await sent_message(ledger)
    job = delivered(message_id)
    await service.process(job)
    await service.process(job)  # the queue redelivered it
    await service.process(delivered(message_id))  # the provider posted it again
    await service.process(delivered(message_id, ChannelStatus.NOT_DELIVERED))  # another final status
    statuses = [n["Status"] for n in dataverse_world.dataverse.notification_payloads()]
    assert statuses == ["Delivered", "NotDelivered"]


async def test_concurrent_duplicates_are_relayed_once(
    service: RelayService, ledger: SendLedger, dataverse_world: DataverseWorld, relay_queues: RelayQueues
) -> None:
    _, message_id = await sent_message(ledger)
    await asyncio.gather(*(service.process(delivered(message_id)) for _ in range(4)))
    assert len(dataverse_world.dataverse.notifications) == 1
    # duplicates that found the event claimed were re-queued; when they come back it is done
    async with ledger.relay_claim("twilio", delivered(message_id).event_key, lease_seconds=1) as claim:
        assert claim.state is RelayClaimState.DONE


async def ambiguous_send(ledger: SendLedger, provider: str) -> SendRecord:
    """A send whose outcome was ambiguous: its row exists, its message id was never learnt."""
    record = send_record(provider, state=SendState.AMBIGUOUS)
    created, _ = await ledger.claim(record)
    assert created
    return record


async def test_echoed_reference_correlates_an_ambiguous_send(
    service: RelayService, ledger: SendLedger, dataverse_world: DataverseWorld
) -> None:
    send = await ambiguous_send(ledger, "twilio")
    await service.process(
        delivered("SMunrecorded", correlation=f"{send.channel_definition_id}/{send.request_id}")
    )
    [payload] = dataverse_world.dataverse.notification_payloads()
    assert (payload["ChannelDefinitionId"], payload["RequestId"], payload["From"]) == (
        str(send.channel_definition_id),
        send.request_id,
        OUR_NUMBER,
    )


async def test_a_takeover_whose_answer_was_lost_is_still_this_workers(
    ledger: SendLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claimant died; our takeover landed but its answer was lost, and redone it meets our own
    change (412). Taken for another worker's, the event would wait out another lease."""
    key = f"twilio|SM{uuid.uuid4().hex}|Delivered"
    async with ledger.relay_claim("twilio", key, lease_seconds=60) as first:
        assert first.state is RelayClaimState.CLAIMED  # the tables exist; now the dead claimant's row:
    past = datetime.now(timezone.utc) - timedelta(minutes=1)
    dead = {"PartitionKey": "twilio", "RowKey": row_key(key), "State": "Relaying", "LeaseUntil": past}
    await ledger._relayed.create_entity({**dead, "ExpiresAt": past + timedelta(days=1), "Owner": "dead"})
    write = ledger._relayed_writes.write

    async def landed_then_redone(change: Write) -> Mapping[str, Any]:
        if change.kind == "update":
            await write(change)  # applied; its answer never came back
        return await write(change)

    monkeypatch.setattr(ledger._relayed_writes, "write", landed_then_redone)
    async with ledger.relay_claim("twilio", key, lease_seconds=60) as takeover:
        assert takeover.state is RelayClaimState.CLAIMED
        takeover.relayed()
    monkeypatch.undo()
    async with ledger.relay_claim("twilio", key, lease_seconds=60) as later:
        assert later.state is RelayClaimState.DONE


async def test_a_send_whose_reports_name_it_is_found_by_its_row(
    service: RelayService, ledger: SendLedger, dataverse_world: DataverseWorld
) -> None:
    """Twilio reports to the URL given with the send, which names the request: no message record."""
    message_id = "SM" + uuid.uuid4().hex
    send = replace(send_record("twilio"), message_id=message_id)
    assert (await ledger.claim(send))[0]
    assert await ledger.find_message("twilio", message_id) is None

    await service.process(
        delivered(message_id, correlation=f"{send.channel_definition_id}/{send.request_id}")
    )

    [payload] = dataverse_world.dataverse.notification_payloads()
    assert (payload["ChannelDefinitionId"], payload["RequestId"], payload["MessageId"], payload["From"]) == (
        str(send.channel_definition_id),
        send.request_id,
        message_id,
        OUR_NUMBER,
    )


async def test_a_reference_is_not_taken_to_a_send_of_another_message(
    service: RelayService, ledger: SendLedger, dataverse_world: DataverseWorld
) -> None:
    """A reference outside what the provider signs (Telnyx signs only the body) cannot move a
    report to another request: the row it names must hold the reported message id."""
    send = replace(send_record("twilio"), message_id="SM" + uuid.uuid4().hex)
    assert (await ledger.claim(send))[0]
    _, recorded = await sent_message(ledger)
    reference = f"{send.channel_definition_id}/{send.request_id}"

    await service.process(delivered("SMother", correlation=reference, attempt=UNKNOWN_MESSAGE_ATTEMPTS - 1))
    await service.process(delivered(recorded, correlation=reference))

    [payload] = dataverse_world.dataverse.notification_payloads()
    assert payload["MessageId"] == recorded and payload["RequestId"] != send.request_id


async def test_a_reference_to_another_providers_send_is_not_trusted(
    service: RelayService, ledger: SendLedger, dataverse_world: DataverseWorld
) -> None:
    send = await ambiguous_send(ledger, "acs")
    reference = f"{send.channel_definition_id}/{send.request_id}"
    await service.process(delivered("SMforged", correlation=reference, attempt=UNKNOWN_MESSAGE_ATTEMPTS - 1))
    await service.process(
        delivered(
            "SMforged", correlation=f"{uuid.uuid4()}/no-such-request", attempt=UNKNOWN_MESSAGE_ATTEMPTS - 1
        )
    )
    assert dataverse_world.dataverse.notifications == []


async def test_unknown_message_id_is_looked_up_again_then_dropped(
    service: RelayService,
    relay_queues: RelayQueues,
    dataverse_world: DataverseWorld,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await service.process(delivered("SMunknown"))
    assert relay_queues.count(relay_queues.jobs) == 1  # back on the queue, invisible for a while
    await service.process(delivered("SMunknown", attempt=UNKNOWN_MESSAGE_ATTEMPTS - 1))
    assert relay_queues.count(relay_queues.jobs) == 1 and relay_queues.count(relay_queues.poison) == 0
    assert "no send of this app has this message id; dropped" in caplog.text
    assert dataverse_world.dataverse.notifications == []


async def test_rejected_relay_goes_to_the_poison_queue(
    service: RelayService, ledger: SendLedger, relay_queues: RelayQueues, dataverse_world: DataverseWorld
) -> None:
    _, message_id = await sent_message(ledger)
    await service.dataverse.organization_id()
    dataverse_world.dataverse.faults = [
        Reply(400, {"error": {"code": "0x80040265", "message": "bad payload"}})
    ]
    await service.process(delivered(message_id))
    [poisoned] = relay_queues.visible_jobs(relay_queues.poison)
    assert poisoned.message_id == message_id and "0x80040265" in (poisoned.last_error or "")
    assert relay_queues.count(relay_queues.jobs) == 0
    # not marked relayed: a replay after the fix can relay it
    async with ledger.relay_claim("twilio", poisoned.event_key, lease_seconds=1) as claim:
        assert claim.state is RelayClaimState.CLAIMED


async def test_unavailable_dataverse_is_retried_later_then_poisoned(
    service: RelayService, ledger: SendLedger, relay_queues: RelayQueues, dataverse_world: DataverseWorld
) -> None:
    _, message_id = await sent_message(ledger)
    await service.dataverse.organization_id()
    dataverse_world.dataverse.faults = [Reply(503, {}, {"Retry-After": "120"})] * 2
    await service.process(delivered(message_id))
    assert relay_queues.count(relay_queues.jobs) == 1  # re-queued, invisible for Retry-After
    await service.process(delivered(message_id, attempt=MAX_ATTEMPTS - 1))
    assert relay_queues.count(relay_queues.poison) == 1
    assert dataverse_world.dataverse.notifications == []


async def test_inbound_resolves_the_channel_definition_from_our_number(
    service: RelayService, dataverse_world: DataverseWorld, relay_queues: RelayQueues
) -> None:
    definition = str(uuid.uuid4())
    dataverse_world.dataverse.channel_instances[OUR_NUMBER] = definition
    await service.process(
        InboundJob(
            provider="acs",
            message_id="Incoming_1",
            customer=CUSTOMER.lstrip("+"),
            our_number=OUR_NUMBER,
            text="STOP",
        )
    )
    await service.process(
        InboundJob(
            provider="acs",
            message_id="Incoming_2",
            customer=CUSTOMER,
            our_number="+14155550199",
            text="hi",
        )
    )
    assert dataverse_world.dataverse.inbound_payloads() == [
        {
            "ChannelDefinitionId": definition,
            "To": OUR_NUMBER,
            "From": CUSTOMER,
            "OrganizationId": dataverse_world.dataverse.organization_id,
            "Message": {"text": "STOP"},
        }
    ]
    [poisoned] = relay_queues.visible_jobs(relay_queues.poison)
    assert poisoned.message_id == "Incoming_2" and "+1415****0199" in (poisoned.last_error or "")


async def test_dry_run_keeps_the_exact_bodies(ledger: SendLedger, queue: RelayQueue, tmp_path: Path) -> None:
    sink = tmp_path / "relays.jsonl"
    definition = uuid.uuid4()
    service = RelayService(
        ledger=ledger,
        queue=queue,
        dataverse=DryRunDataverse(sink, channel_definitions={OUR_NUMBER: definition}),
    )
    record, message_id = await sent_message(ledger)
    await service.process(delivered(message_id))
    await service.process(
        InboundJob(
            provider="twilio",
            message_id="SMin",
            customer=CUSTOMER,
            our_number=OUR_NUMBER,
            text="yes",
        )
    )
    notification, inbound = (json.loads(line) for line in sink.read_text().splitlines())
    assert notification["api"] == "msdyn_D365ChannelsNotification"
    assert json.loads(notification["body"]["notificationPayLoad"])["RequestId"] == record.request_id
    assert inbound["api"] == "msdyn_D365ChannelsInbound"
    assert json.loads(inbound["body"]["inboundPayLoad"])["ChannelDefinitionId"] == str(definition)


async def test_replay_puts_poisoned_jobs_back(
    azurite: Azurite, queue: RelayQueue, relay_queues: RelayQueues
) -> None:
    await queue.poison(delivered("SMpoisoned", attempt=5), "HTTP 400")
    await queue.poison_raw(b"not a job")
    replayed, unreadable = replay(azurite.connection_string)
    assert (replayed, unreadable) == (1, 1)
    [job] = relay_queues.visible_jobs(relay_queues.jobs)
    assert (job.message_id, job.attempt, job.last_error) == ("SMpoisoned", 0, None)


async def test_unreadable_queue_message_goes_to_poison(
    azurite: Azurite,
    relay_queues: RelayQueues,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    services = Services()
    await app_function(services, "relay")(msg=func.QueueMessage(id="m1", body=b'{"kind": "nonsense"}'))
    await services.aclose()
    [message] = list(relay_queues.poison.peek_messages())
    assert base64.b64decode(message.content) == b'{"kind": "nonsense"}'
    assert "not a relay job" in caplog.text


@pytest.mark.parametrize(
    "lost_answer",
    [
        # the SDK retried an insert whose answer it lost; the retry met the row the first try wrote
        ResourceExistsError("the retried insert meets the first one"),
        # the insert landed but its answer came after the read timeout (the SDK does not retry a POST)
        ServiceResponseTimeoutError("Timeout on reading data from socket"),
    ],
    ids=["retried-insert-conflicts", "insert-timed-out"],
)
async def test_a_claim_whose_answer_was_lost_is_still_this_workers(
    ledger: SendLedger, monkeypatch: pytest.MonkeyPatch, lost_answer: Exception
) -> None:
    """The row the insert wrote is this worker's claim, not another's (which would hold the event
    for the lease)."""
    table = ledger._relayed
    insert = table.create_entity

    async def insert_then_lose_the_answer(entity: dict[str, Any], **kwargs: Any) -> Any:
        await insert(entity, **kwargs)
        raise lost_answer

    monkeypatch.setattr(table, "create_entity", insert_then_lose_the_answer)
    key = f"notification|SM{uuid.uuid4().hex}|Delivered"
    async with ledger.relay_claim("twilio", key, lease_seconds=600) as claim:
        assert claim.state is RelayClaimState.CLAIMED
        claim.relayed()
    monkeypatch.undo()
    async with ledger.relay_claim("twilio", key, lease_seconds=600) as again:
        assert again.state is RelayClaimState.DONE


async def test_a_claim_whose_insert_failed_leaves_the_event_free(
    ledger: SendLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def time_out(entity: dict[str, Any], **kwargs: Any) -> Any:
        raise ServiceResponseTimeoutError("Timeout on reading data from socket")

    monkeypatch.setattr(ledger._relayed, "create_entity", time_out)
    key = f"notification|SM{uuid.uuid4().hex}|Delivered"
    with pytest.raises(StorageUnavailable):
        async with ledger.relay_claim("twilio", key, lease_seconds=600):
            pass
    monkeypatch.undo()
    async with ledger.relay_claim("twilio", key, lease_seconds=600) as claim:  # the next attempt
        assert claim.state is RelayClaimState.CLAIMED


async def test_a_completion_whose_answer_was_lost_is_not_taken_for_a_takeover(
    ledger: SendLedger, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The SDK retries the 'relayed' write after its answer was lost (a connection the server had
    closed); the retry's ETag no longer matches. That is this worker's own write, not another's."""
    table = ledger._relayed
    update = table.update_entity

    async def update_then_lose_the_answer(entity: dict[str, Any], **kwargs: Any) -> Any:
        await update(entity, **kwargs)
        raise ResourceModifiedError("the retried update meets the first one")

    key = f"notification|SM{uuid.uuid4().hex}|Delivered"
    async with ledger.relay_claim("twilio", key, lease_seconds=600) as claim:
        assert claim.state is RelayClaimState.CLAIMED
        monkeypatch.setattr(table, "update_entity", update_then_lose_the_answer)
        claim.relayed()
    monkeypatch.undo()
    assert "taken over" not in caplog.text
    async with ledger.relay_claim("twilio", key, lease_seconds=600) as again:
        assert again.state is RelayClaimState.DONE


async def test_a_completion_written_by_another_worker_is_still_reported(
    ledger: SendLedger, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Only our own 'relayed' row is taken for a lost answer: another worker's means Dataverse
    may have the event twice, and that must stay visible."""
    key = f"notification|SM{uuid.uuid4().hex}|Delivered"
    row = {"PartitionKey": "twilio", "RowKey": key.replace("|", "%7C")}

    async with ledger.relay_claim("twilio", key, lease_seconds=600) as claim:
        assert claim.state is RelayClaimState.CLAIMED
        # meanwhile another worker, having taken the claim over, relays and records it
        await ledger._relayed.upsert_entity({**row, "State": "Relayed", "Owner": "another"})
        claim.relayed()
    assert "taken over" in caplog.text


async def test_a_process_keeps_at_most_sixteen_table_requests_in_flight(
    ledger: SendLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The asyncio client has no limit of its own: the ledger caps what it puts on the account."""
    await ledger.get(SendKey(uuid.uuid4(), "tables-created"))
    table = ledger._sends
    read = table.get_entity
    in_flight = peak = 0
    full = asyncio.Event()  # requests are held until as many as the cap allows are in flight

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight >= TABLE_REQUESTS_AT_ONCE:
            full.set()
        try:
            await full.wait()
            return await read(*args, **kwargs)
        finally:
            in_flight -= 1

    monkeypatch.setattr(table, "get_entity", counted)
    records = await asyncio.gather(*(ledger.get(SendKey(uuid.uuid4(), f"cap-{n}")) for n in range(60)))
    assert records == [None] * 60
    assert peak == TABLE_REQUESTS_AT_ONCE
