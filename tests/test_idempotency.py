"""Microsoft's 2026 outbound contract: IdempotencyId identifies the message across Journeys' attempts,
NotSent says why, and delivery reports name the latest attempt answered. Against real Table Storage
(Azurite) and, for the relays, the fake Dataverse over HTTPS."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from channels.base import SendReceipt
from channels.errors import (
    NOT_SENT_MESSAGES,
    NotSentReason,
    PermanentSendError,
    TransientSendError,
)
from contracts import ChannelStatus, Details, OutboundPayload
from storage.ledger import SendKey, SendLedger, SendRecord, SendState
from storage.relay_queue import NotificationJob, RelayQueue
from tests.conftest import DataverseWorld, payload_json
from tests.doubles import RecordingSleep, ScriptedAdapter
from usecases.outbound import OutboundService, SendOutcome, TryAgainLater
from usecases.relay import RelayService


def make_service(ledger: SendLedger, channel: ScriptedAdapter, *, budget: float = 8.0) -> OutboundService:
    return OutboundService(
        adapter_for=lambda _sender: channel,
        ledger=ledger,
        max_segments=3,
        send_budget_seconds=budget,
        sleep=RecordingSleep(),
    )


def attempt(
    channel_definition_id: uuid.UUID, request_id: str, idempotency_id: str | None, **kwargs: object
) -> OutboundPayload:
    document = payload_json(channel_definition_id, request_id, **kwargs)
    if idempotency_id is not None:
        document["IdempotencyId"] = idempotency_id
    return OutboundPayload.model_validate(document)


async def test_a_retry_with_a_new_request_id_sends_nothing_and_becomes_the_latest_attempt(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    channel = ScriptedAdapter(SendReceipt("SM-first"), SendReceipt("SM-never"))
    service = make_service(ledger, channel)

    first = await service.send(attempt(channel_definition_id, "attempt-1", "msg-1"))
    retry = await service.send(attempt(channel_definition_id, "attempt-2", "msg-1"))

    assert first == retry == SendOutcome(ChannelStatus.SENT, message_id="SM-first")
    assert len(channel.requests) == 1
    assert channel.requests[0].reference == f"{channel_definition_id}:msg-1"
    record = await ledger.get(SendKey(channel_definition_id, "msg-1", by_idempotency_id=True))
    assert record is not None
    assert (record.request_id, record.latest_request_id) == ("attempt-1", "attempt-2")


async def test_overlapping_attempts_at_one_message_send_one_sms(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    hold = asyncio.Event()
    channel = ScriptedAdapter(SendReceipt("SM-once"), hold=hold)
    service = make_service(ledger, channel)

    calls = [
        asyncio.create_task(service.send(attempt(channel_definition_id, f"overlap-{n}", "msg-overlap")))
        for n in range(6)
    ]
    await channel.entered.wait()  # one attempt is at the provider; the other five must wait for it
    hold.set()
    outcomes = await asyncio.gather(*calls)

    assert len(channel.requests) == 1
    assert set(outcomes) == {SendOutcome(ChannelStatus.SENT, message_id="SM-once")}


async def test_distinct_idempotency_ids_with_the_same_text_are_two_messages(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    channel = ScriptedAdapter(SendReceipt("SM-a"), SendReceipt("SM-b"))
    service = make_service(ledger, channel)
    # even under one RequestId: with IdempotencyId, RequestId names an attempt, not a message
    a = await service.send(attempt(channel_definition_id, "same-request", "msg-a"))
    b = await service.send(attempt(channel_definition_id, "same-request", "msg-b"))
    assert (a.message_id, b.message_id) == ("SM-a", "SM-b")  # type: ignore[union-attr]
    assert len(channel.requests) == 2


async def test_an_idempotency_id_and_an_equal_request_id_never_meet(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    channel = ScriptedAdapter(SendReceipt("SM-by-request"), SendReceipt("SM-by-idempotency"))
    service = make_service(ledger, channel)
    await service.send(attempt(channel_definition_id, "shared-value", None))
    await service.send(attempt(channel_definition_id, "other", "shared-value"))
    assert len(channel.requests) == 2


async def test_a_not_sent_outcome_comes_back_with_the_same_details_on_every_attempt(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    channel = ScriptedAdapter(
        PermanentSendError(NotSentReason.INVALID_RECIPIENT, "bad", provider_code="21211")
    )
    service = make_service(ledger, channel)
    answers = [
        await service.send(attempt(channel_definition_id, f"refused-{n}", "msg-refused")) for n in range(3)
    ]
    expected = Details(
        reason="InvalidRecipient",
        message="The recipient's phone number is not a valid mobile number (scripted code 21211).",
    )
    assert answers == [SendOutcome(ChannelStatus.NOT_SENT, details=expected)] * 3
    assert len(channel.requests) == 1


async def test_an_idempotency_id_reused_for_another_message(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    hold = asyncio.Event()
    channel = ScriptedAdapter(SendReceipt("SM-original"), hold=hold)
    service = make_service(ledger, channel)
    original = asyncio.create_task(service.send(attempt(channel_definition_id, "r-1", "msg-reused")))
    await channel.entered.wait()

    in_flight = await service.send(attempt(channel_definition_id, "r-2", "msg-reused", text="Other"))
    hold.set()
    assert await original == SendOutcome(ChannelStatus.SENT, message_id="SM-original")
    decided = await service.send(attempt(channel_definition_id, "r-3", "msg-reused", text="Other"))

    assert in_flight == SendOutcome.not_sent(NotSentReason.IDEMPOTENCY_ID_REUSED)
    assert in_flight.details == Details(  # type: ignore[union-attr]
        reason="IdempotencyIdReused", message=NOT_SENT_MESSAGES[NotSentReason.IDEMPOTENCY_ID_REUSED]
    )
    assert decided == SendOutcome(ChannelStatus.SENT, message_id="SM-original")  # the rule for RequestId
    assert len(channel.requests) == 1


async def test_a_retry_that_takes_over_an_unsent_message_is_the_attempt_reports_name(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    channel = ScriptedAdapter(TransientSendError("throttled", retry_after=60), SendReceipt("SM-later"))
    service = make_service(ledger, channel, budget=2.0)
    first = await service.send(attempt(channel_definition_id, "try-1", "msg-throttled"))
    second = await service.send(attempt(channel_definition_id, "try-2", "msg-throttled"))

    assert isinstance(first, TryAgainLater)
    assert second == SendOutcome(ChannelStatus.SENT, message_id="SM-later")
    record = await ledger.get(SendKey(channel_definition_id, "msg-throttled", by_idempotency_id=True))
    assert record is not None and record.latest_request_id == "try-2"


async def test_a_provider_that_never_answers_is_cut_at_the_budget_and_never_sent_again(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    never = asyncio.Event()  # never set: the provider keeps the request
    channel = ScriptedAdapter(SendReceipt("SM-never"), hold=never)
    service = make_service(ledger, channel, budget=1.0)

    started = time.monotonic()
    # the test's own bound only turns a regression into a failure instead of a hang
    outcome = await asyncio.wait_for(service.send(attempt(channel_definition_id, "hang-1", "msg-hang")), 10)
    elapsed = time.monotonic() - started
    retry = await service.send(attempt(channel_definition_id, "hang-2", "msg-hang"))

    assert outcome == retry == SendOutcome(ChannelStatus.SENT)  # ambiguous: Sent without a MessageId
    assert elapsed < 1.0 + 0.5  # the budget, plus storage round trips on a busy machine
    assert len(channel.requests) == 1
    record = await ledger.get(SendKey(channel_definition_id, "msg-hang", by_idempotency_id=True))
    assert record is not None and record.state is SendState.AMBIGUOUS


async def test_a_claim_that_took_the_budget_is_not_sent_in_its_last_instant(
    ledger: SendLedger, channel_definition_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage slow enough to eat the provider budget: no attempt is started and cut before it
    reaches the provider (which would be answered Sent, never sent); 503, and the retry sends."""
    channel = ScriptedAdapter(SendReceipt("SM-after-all"))
    service = make_service(ledger, channel, budget=1.0)
    claim = ledger.claim

    async def slow_claim(draft: SendRecord) -> tuple[bool, SendRecord]:
        await asyncio.sleep(0.6)  # storage under strain: more than the 0.5 s provider budget
        return await claim(draft)

    monkeypatch.setattr(ledger, "claim", slow_claim)
    first = await service.send(attempt(channel_definition_id, "slow-1", "msg-slow"))
    monkeypatch.setattr(ledger, "claim", claim)
    retry = await service.send(attempt(channel_definition_id, "slow-2", "msg-slow"))

    assert isinstance(first, TryAgainLater)
    assert retry == SendOutcome(ChannelStatus.SENT, message_id="SM-after-all")
    assert len(channel.requests) == 1


async def test_a_reused_idempotency_id_does_not_rename_the_first_messages_reports(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    channel = ScriptedAdapter(SendReceipt("SM-first-message"))
    service = make_service(ledger, channel)
    await service.send(attempt(channel_definition_id, "first", "msg-shared"))
    await service.send(attempt(channel_definition_id, "other", "msg-shared", text="Another message"))
    record = await ledger.get(SendKey(channel_definition_id, "msg-shared", by_idempotency_id=True))
    assert record is not None and record.latest_request_id == "first"


# -- delivery reports after a retried attempt -------------------------------------------------------


@pytest.fixture
async def relay(
    ledger: SendLedger, queue: RelayQueue, dataverse_world: DataverseWorld
) -> AsyncIterator[RelayService]:
    client = dataverse_world.client()
    yield RelayService(ledger=ledger, queue=queue, dataverse=client)
    await client.aclose()


def report(message_id: str, correlation: str | None) -> NotificationJob:
    return NotificationJob(
        provider="scripted",
        message_id=message_id,
        status=ChannelStatus.DELIVERED,
        provider_status="delivered",
        correlation=correlation,
    )


async def test_a_report_naming_the_send_after_a_retry_names_the_latest_attempt_once(
    ledger: SendLedger, relay: RelayService, dataverse_world: DataverseWorld, channel_definition_id: uuid.UUID
) -> None:
    channel = ScriptedAdapter(SendReceipt("SM-ref", reports_carry_reference=True))
    service = make_service(ledger, channel)
    await service.send(attempt(channel_definition_id, "ref-1", "msg-ref"))
    await service.send(attempt(channel_definition_id, "ref-2", "msg-ref"))
    reference = channel.requests[0].reference
    await relay.process(report("SM-ref", reference))
    await relay.process(report("SM-ref", reference))  # the provider posted it again

    assert [(n["RequestId"], n["MessageId"]) for n in dataverse_world.dataverse.notification_payloads()] == [
        ("ref-2", "SM-ref")
    ]
    assert await ledger.find_message("scripted", "SM-ref") is None  # the row was enough


async def test_a_report_found_by_message_id_after_a_retry_names_the_latest_attempt(
    ledger: SendLedger, relay: RelayService, dataverse_world: DataverseWorld, channel_definition_id: uuid.UUID
) -> None:
    channel = ScriptedAdapter(SendReceipt("SM-by-id"))
    service = make_service(ledger, channel)
    await service.send(attempt(channel_definition_id, "id-1", "msg-by-id"))
    recorded = await ledger.find_message("scripted", "SM-by-id")
    assert recorded is not None and recorded.request_id == "id-1"  # written before the retry came
    await service.send(attempt(channel_definition_id, "id-2", "msg-by-id"))
    await service.send(attempt(channel_definition_id, "id-3", "msg-by-id"))
    await relay.process(report("SM-by-id", None))

    assert [n["RequestId"] for n in dataverse_world.dataverse.notification_payloads()] == ["id-3"]
