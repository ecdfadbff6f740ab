"""The outbound decision and idempotency logic, against real Table Storage (Azurite)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from azure.core.exceptions import ServiceResponseTimeoutError

from channels.base import SendReceipt, SendRequest
from channels.errors import AmbiguousSendError, NotSentReason, PermanentSendError, TransientSendError
from contracts import ChannelStatus, Details, OutboundPayload
from storage.errors import StorageUnavailable
from storage.ledger import SendKey, SendLedger, SendRecord, SendState
from tests.conftest import CUSTOMER, payload_json
from tests.doubles import IdempotentScriptedAdapter, RecordingSleep, ScriptedAdapter
from tests.fakes.azurite import Azurite
from usecases.outbound import OutboundService, SendOutcome, TryAgainLater


def make_service(
    ledger: SendLedger,
    channel: ScriptedAdapter,
    *,
    budget: float = 8.0,
    sleep: RecordingSleep | None = None,
    max_segments: int = 3,
) -> OutboundService:
    return OutboundService(
        adapter_for=lambda _sender: channel,
        ledger=ledger,
        max_segments=max_segments,
        send_budget_seconds=budget,
        sleep=sleep or RecordingSleep(),
    )


def payload(
    channel_definition_id: uuid.UUID, request_id: str | None = None, **kwargs: object
) -> OutboundPayload:
    return OutboundPayload.model_validate(payload_json(channel_definition_id, request_id, **kwargs))


async def test_sent_is_recorded_for_delivery_reports_and_repeats_do_not_send_again(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    channel = ScriptedAdapter(SendReceipt("SM-1"))
    service = make_service(ledger, channel)
    request = payload(channel_definition_id, "req-1")

    first = await service.send(request)
    second = await service.send(request)

    assert first == second == SendOutcome(ChannelStatus.SENT, message_id="SM-1")
    assert len(channel.requests) == 1
    assert channel.requests[0].recipient == CUSTOMER
    message = await ledger.find_message("scripted", "SM-1")
    assert message is not None
    assert (message.request_id, message.channel_definition_id, message.sender) == (
        "req-1",
        channel_definition_id,
        request.from_,
    )
    record = await ledger.get(SendKey(channel_definition_id, "req-1"))
    assert record is not None and record.state is SendState.SENT and record.segments == 1
    assert record.expires_at - datetime.now(timezone.utc) > timedelta(days=29)


async def test_concurrent_duplicates_send_exactly_once(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    hold = asyncio.Event()
    channel = ScriptedAdapter(SendReceipt("SM-2"), hold=hold)
    service = OutboundService(
        adapter_for=lambda _sender: channel, ledger=ledger, max_segments=3, send_budget_seconds=8.0
    )
    request = payload(channel_definition_id, "req-concurrent")

    calls = [asyncio.create_task(service.send(request)) for _ in range(12)]
    await channel.entered.wait()  # the winner is inside the provider call; the others must wait
    hold.set()
    outcomes = await asyncio.gather(*calls)

    assert len(channel.requests) == 1
    assert set(outcomes) == {SendOutcome(ChannelStatus.SENT, message_id="SM-2")}


async def test_request_id_is_scoped_by_channel_definition(ledger: SendLedger) -> None:
    channel = ScriptedAdapter(SendReceipt("SM-a"), SendReceipt("SM-b"))
    service = make_service(ledger, channel)
    await service.send(payload(uuid.uuid4(), "same-id"))
    await service.send(payload(uuid.uuid4(), "same-id"))
    assert len(channel.requests) == 2


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"to": "not a number"}, NotSentReason.INVALID_RECIPIENT),
        ({"to": "+44 123"}, NotSentReason.INVALID_RECIPIENT),
        ({"text": "   "}, NotSentReason.EMPTY_MESSAGE),
        ({"text": "x" * (153 * 3 + 1)}, NotSentReason.TOO_MANY_SEGMENTS),
        ({"text": "ł" * (67 * 3 + 1)}, NotSentReason.TOO_MANY_SEGMENTS),
    ],
)
async def test_business_rejections_answer_not_sent_without_calling_the_provider(
    ledger: SendLedger,
    channel_definition_id: uuid.UUID,
    change: dict[str, str],
    reason: NotSentReason,
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = ScriptedAdapter(SendReceipt("never"))
    service = make_service(ledger, channel)
    caplog.set_level(logging.INFO, "sms.outbound")

    outcome = await service.send(payload(channel_definition_id, "rejected-1", **change))

    assert outcome == SendOutcome.not_sent(reason)
    assert channel.requests == []
    assert f"reason={reason.value}" in caplog.text and "RequestId=rejected-1" in caplog.text


async def test_message_without_text_part_is_not_sent(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    channel = ScriptedAdapter(SendReceipt("never"))
    document = payload_json(channel_definition_id, "no-text")
    document["Message"] = {"subject": "hello"}
    outcome = await make_service(ledger, channel).send(OutboundPayload.model_validate(document))
    assert outcome.status is ChannelStatus.NOT_SENT and outcome.reason == "EmptyMessage"  # type: ignore[union-attr]
    assert channel.requests == []


async def test_provider_rejection_is_final(ledger: SendLedger, channel_definition_id: uuid.UUID) -> None:
    channel = ScriptedAdapter(
        PermanentSendError(NotSentReason.RECIPIENT_OPTED_OUT, "opted out", provider_code="21610")
    )
    service = make_service(ledger, channel)
    request = payload(channel_definition_id, "optout")

    first, repeat = await service.send(request), await service.send(request)
    opted_out = "The recipient has opted out of text messages from this sender (scripted code 21610)."
    expected = SendOutcome(
        ChannelStatus.NOT_SENT, details=Details(reason="RecipientOptedOut", message=opted_out)
    )
    assert first == repeat == expected
    assert len(channel.requests) == 1


async def test_transient_failures_are_retried_honouring_retry_after(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    channel = ScriptedAdapter(
        TransientSendError("429", retry_after=2.5), TransientSendError("503"), SendReceipt("SM-3")
    )
    sleep = RecordingSleep()
    outcome = await make_service(ledger, channel, sleep=sleep).send(payload(channel_definition_id))

    assert outcome == SendOutcome(ChannelStatus.SENT, message_id="SM-3")
    assert len(channel.requests) == 3
    assert sleep.calls[0] == 2.5 and 0 < sleep.calls[1] <= 2.0
    assert len({r.idempotency_key for r in channel.requests}) == 1


async def test_still_failing_within_the_budget_answers_try_again_and_a_repeat_sends(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    channel = ScriptedAdapter(TransientSendError("503"))
    request = payload(channel_definition_id, "retry-later")
    outcome = await make_service(ledger, channel, budget=0.5, sleep=RecordingSleep()).send(request)

    assert isinstance(outcome, TryAgainLater) and outcome.retry_after >= 1
    record = await ledger.get(SendKey(channel_definition_id, "retry-later"))
    assert record is not None and record.state is SendState.RETRYABLE

    channel.script = [SendReceipt("SM-4")]
    attempts_before = len(channel.requests)
    assert await make_service(ledger, channel).send(request) == SendOutcome(
        ChannelStatus.SENT, message_id="SM-4"
    )
    assert len(channel.requests) == attempts_before + 1


async def test_retry_after_beyond_the_budget_is_passed_to_the_caller(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    channel = ScriptedAdapter(TransientSendError("429", retry_after=30))
    sleep = RecordingSleep()
    outcome = await make_service(ledger, channel, budget=5, sleep=sleep).send(payload(channel_definition_id))
    assert outcome == TryAgainLater(30, "the SMS provider is unavailable; retry the same RequestId")
    assert len(channel.requests) == 1 and sleep.calls == []


async def test_ambiguous_outcome_is_never_sent_again(
    ledger: SendLedger, channel_definition_id: uuid.UUID, caplog: pytest.LogCaptureFixture
) -> None:
    channel = ScriptedAdapter(AmbiguousSendError("read timeout"))
    service = make_service(ledger, channel)
    request = payload(channel_definition_id, "ambiguous")

    assert await service.send(request) == SendOutcome(ChannelStatus.SENT)
    assert await service.send(request) == SendOutcome(ChannelStatus.SENT)
    assert len(channel.requests) == 1
    record = await ledger.get(SendKey(channel_definition_id, "ambiguous"))
    assert record is not None and record.state is SendState.AMBIGUOUS
    assert "never re-sending" in caplog.text


async def test_ambiguous_outcome_is_retried_when_the_provider_deduplicates(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    channel = IdempotentScriptedAdapter(AmbiguousSendError("read timeout"), SendReceipt("acs-1"))
    outcome = await make_service(ledger, channel).send(payload(channel_definition_id))
    assert outcome == SendOutcome(ChannelStatus.SENT, message_id="acs-1")
    first, second = channel.requests
    assert (first.idempotency_key, first.first_attempt_at) == (
        second.idempotency_key,
        second.first_attempt_at,
    )


async def _crashed_mid_send(
    ledger: SendLedger, channel_definition_id: uuid.UUID, request_id: str, first_attempt_ago: timedelta
) -> None:
    """Leave the row a process that died inside the provider call leaves behind."""
    channel = ScriptedAdapter(SendReceipt("lost"), hold=asyncio.Event())
    task = asyncio.create_task(make_service(ledger, channel).send(payload(channel_definition_id, request_id)))
    await channel.entered.wait()
    task.cancel()
    record = await ledger.get(SendKey(channel_definition_id, request_id))
    assert record is not None and record.state is SendState.SENDING
    now = datetime.now(timezone.utc)
    await ledger.replace_if_unchanged(
        record, lease_until=now - timedelta(seconds=1), first_attempt_at=now - first_attempt_ago
    )


async def test_send_interrupted_by_a_crash_is_not_repeated(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    await _crashed_mid_send(ledger, channel_definition_id, "crashed", timedelta(seconds=20))
    channel = ScriptedAdapter(SendReceipt("SM-second"))

    outcome = await make_service(ledger, channel).send(payload(channel_definition_id, "crashed"))

    assert outcome == SendOutcome(ChannelStatus.SENT)
    assert channel.requests == []
    record = await ledger.get(SendKey(channel_definition_id, "crashed"))
    assert record is not None and record.state is SendState.AMBIGUOUS


async def test_send_interrupted_by_a_crash_is_resumed_inside_the_providers_repeatability_window(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    await _crashed_mid_send(ledger, channel_definition_id, "resume", timedelta(seconds=20))
    channel = IdempotentScriptedAdapter(SendReceipt("acs-2"))
    outcome = await make_service(ledger, channel).send(payload(channel_definition_id, "resume"))
    assert outcome == SendOutcome(ChannelStatus.SENT, message_id="acs-2")

    await _crashed_mid_send(ledger, channel_definition_id, "too-late", timedelta(minutes=10))
    late = IdempotentScriptedAdapter(SendReceipt("acs-3"))
    assert await make_service(ledger, late).send(payload(channel_definition_id, "too-late")) == SendOutcome(
        ChannelStatus.SENT
    )
    assert late.requests == []


async def test_reused_request_id_with_other_content_is_never_sent(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    channel = ScriptedAdapter(TransientSendError("503"))
    service = make_service(ledger, channel, budget=0.1)
    assert isinstance(
        await service.send(payload(channel_definition_id, "reused-2", text="first")), TryAgainLater
    )
    channel.script = [SendReceipt("SM-other")]
    outcome = await service.send(payload(channel_definition_id, "reused-2", text="second"))
    assert outcome == SendOutcome.not_sent(NotSentReason.REQUEST_ID_REUSED)
    assert [r.text for r in channel.requests] == ["first"]


async def test_ambiguous_then_transient_is_not_retried_later(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    channel = IdempotentScriptedAdapter(AmbiguousSendError("read timeout"), TransientSendError("503"))
    request = payload(channel_definition_id, "amb-then-503")
    assert await make_service(ledger, channel, budget=0.3).send(request) == SendOutcome(ChannelStatus.SENT)
    sent_so_far = len(channel.requests)
    assert await make_service(ledger, channel).send(request) == SendOutcome(ChannelStatus.SENT)
    assert len(channel.requests) == sent_so_far
    record = await ledger.get(SendKey(channel_definition_id, "amb-then-503"))
    assert record is not None and record.state is SendState.AMBIGUOUS


async def test_a_retry_after_a_clean_failure_gets_fresh_provider_idempotency_data(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    channel = IdempotentScriptedAdapter(TransientSendError("503"))
    request = payload(channel_definition_id, "fresh-attempt")
    await make_service(ledger, channel, budget=0.1).send(request)
    first = channel.requests[-1]
    channel.script = [SendReceipt("acs-fresh")]
    assert await make_service(ledger, channel).send(request) == SendOutcome(
        ChannelStatus.SENT, message_id="acs-fresh"
    )
    retry = channel.requests[-1]
    assert retry.idempotency_key != first.idempotency_key
    assert retry.first_attempt_at > first.first_attempt_at


class _BrokenChannel(ScriptedAdapter):
    async def send(self, request: SendRequest) -> SendReceipt:
        self.requests.append(request)
        raise KeyError("bug")


async def test_an_unexpected_error_while_sending_is_treated_as_ambiguous(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    channel = _BrokenChannel(SendReceipt("never"))
    request = payload(channel_definition_id, "bug")
    assert await make_service(ledger, channel).send(request) == SendOutcome(ChannelStatus.SENT)
    assert await make_service(ledger, channel).send(request) == SendOutcome(ChannelStatus.SENT)
    assert len(channel.requests) == 1


class _LedgerFailingAfterSend(SendLedger):
    async def replace_if_unchanged(self, record: SendRecord, **changes: object) -> SendRecord | None:
        if changes.get("state") is SendState.SENT:
            raise StorageUnavailable("table storage: ServiceRequestError")
        return await super().replace_if_unchanged(record, **changes)

    async def remember_message(
        self, record: SendRecord, message_id: str, part_ids: tuple[str, ...] = (), refused_parts: int = 0
    ) -> None:
        raise StorageUnavailable("table storage: ServiceRequestError")


async def test_storage_failing_after_the_provider_accepted_still_answers_sent(
    azurite: Azurite, channel_definition_id: uuid.UUID, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = _LedgerFailingAfterSend(azurite.connection_string, retention=timedelta(days=1))
    outcome = await make_service(ledger, ScriptedAdapter(SendReceipt("SM-kept"))).send(
        payload(channel_definition_id)
    )
    await ledger.aclose()
    assert outcome == SendOutcome(ChannelStatus.SENT, message_id="SM-kept")
    assert "not stored" in caplog.text


async def test_reused_request_id_with_other_content_answers_the_first_outcome(
    ledger: SendLedger, channel_definition_id: uuid.UUID, caplog: pytest.LogCaptureFixture
) -> None:
    channel = ScriptedAdapter(SendReceipt("SM-5"))
    service = make_service(ledger, channel)
    await service.send(payload(channel_definition_id, "reused", text="first"))
    outcome = await service.send(payload(channel_definition_id, "reused", text="second"))
    assert outcome == SendOutcome(ChannelStatus.SENT, message_id="SM-5")
    assert len(channel.requests) == 1
    assert "RequestId reused with a different message" in caplog.text


async def test_test_sends_are_logged_and_sent(
    ledger: SendLedger, channel_definition_id: uuid.UUID, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "sms.outbound")
    channel = ScriptedAdapter(SendReceipt("SM-6"))
    request = payload(channel_definition_id, "test-send", MarketingAppContext={"IsTestSend": True})
    assert await make_service(ledger, channel).send(request) == SendOutcome(
        ChannelStatus.SENT, message_id="SM-6"
    )
    assert "test send RequestId=test-send" in caplog.text
    record = await ledger.get(SendKey(channel_definition_id, "test-send"))
    assert record is not None and record.is_test_send


async def test_logs_mask_the_recipient(
    ledger: SendLedger, channel_definition_id: uuid.UUID, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await make_service(ledger, ScriptedAdapter(SendReceipt("SM-7"))).send(payload(channel_definition_id))
    assert CUSTOMER not in caplog.text and "+1415****0123" in caplog.text


async def test_unreachable_storage_sends_nothing(channel_definition_id: uuid.UUID) -> None:
    dead = SendLedger(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;",
        retention=timedelta(days=1),
    )
    channel = ScriptedAdapter(SendReceipt("never"))
    with pytest.raises(StorageUnavailable):
        await make_service(dead, channel).send(payload(channel_definition_id))
    assert channel.requests == []


async def test_retention_purges_only_expired_records(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    service = make_service(ledger, ScriptedAdapter(SendReceipt("SM-old"), SendReceipt("SM-new")))
    await service.send(payload(channel_definition_id, "old"))
    await service.send(payload(channel_definition_id, "new"))
    old = await ledger.get(SendKey(channel_definition_id, "old"))
    assert old is not None
    past = datetime.now(timezone.utc) - timedelta(days=1)
    expired = await ledger.replace_if_unchanged(old, expires_at=past)
    assert expired is not None
    await ledger.remember_message(replace(expired, expires_at=past), "SM-old")

    deleted = await ledger.purge_expired()

    assert deleted >= 2
    assert await ledger.get(SendKey(channel_definition_id, "old")) is None
    assert await ledger.find_message("scripted", "SM-old") is None
    assert await ledger.get(SendKey(channel_definition_id, "new")) is not None
    assert await ledger.find_message("scripted", "SM-new") is not None


@pytest.mark.parametrize("request_id", ["a/b\\c#d?e%f", "tab\there", "🙂" * 256])
async def test_any_request_id_is_a_valid_storage_key(
    ledger: SendLedger, channel_definition_id: uuid.UUID, request_id: str
) -> None:
    channel = ScriptedAdapter(SendReceipt("SM-key"))
    service = make_service(ledger, channel)
    assert await service.send(payload(channel_definition_id, request_id)) == SendOutcome(
        ChannelStatus.SENT, message_id="SM-key"
    )
    assert await service.send(payload(channel_definition_id, request_id)) == SendOutcome(
        ChannelStatus.SENT, message_id="SM-key"
    )
    assert len(channel.requests) == 1
    record = await ledger.get(SendKey(channel_definition_id, request_id))
    assert record is not None and record.request_id == request_id


async def test_every_part_of_a_multipart_send_is_recorded(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    channel = ScriptedAdapter(SendReceipt("P1", part_message_ids=("P1", "P2", "P3")))
    outcome = await make_service(ledger, channel).send(payload(channel_definition_id, "multipart"))
    assert outcome == SendOutcome(ChannelStatus.SENT, message_id="P1")
    for part in ("P1", "P2", "P3"):
        record = await ledger.find_message("scripted", part)
        assert record is not None and (record.message_id, record.parts, record.request_id) == (
            "P1",
            3,
            "multipart",
        )


async def test_a_send_whose_reports_carry_its_reference_keeps_its_message_id_in_its_own_row(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    channel = ScriptedAdapter(SendReceipt("SM-ref", reports_carry_reference=True))
    outcome = await make_service(ledger, channel).send(payload(channel_definition_id, "by-reference"))
    assert outcome == SendOutcome(ChannelStatus.SENT, message_id="SM-ref")
    record = await ledger.get(SendKey(channel_definition_id, "by-reference"))
    assert record is not None and (record.state, record.message_id, record.parts) == (
        SendState.SENT,
        "SM-ref",
        1,
    )
    assert await ledger.find_message("scripted", "SM-ref") is None


async def test_parts_are_recorded_by_message_id_even_when_reports_carry_the_reference(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    """Part 2's report names part 2's id, which the send's row does not hold."""
    receipt = SendReceipt("P1", part_message_ids=("P1", "P2"), reports_carry_reference=True)
    await make_service(ledger, ScriptedAdapter(receipt)).send(payload(channel_definition_id, "ref-parts"))
    record = await ledger.get(SendKey(channel_definition_id, "ref-parts"))
    assert record is not None and record.parts == 2
    part = await ledger.find_message("scripted", "P2")
    assert part is not None and (part.message_id, part.parts) == ("P1", 2)


class _LedgerLosingTheOutcome(SendLedger):
    async def replace_if_unchanged(self, record: SendRecord, **changes: object) -> SendRecord | None:
        if changes.get("state") is SendState.SENT:
            raise StorageUnavailable("table storage: ServiceResponseTimeoutError")
        return await super().replace_if_unchanged(record, **changes)


async def test_the_message_record_is_written_when_the_outcome_could_not_be(
    azurite: Azurite, channel_definition_id: uuid.UUID
) -> None:
    """Reports that carry the reference find a row without the message id: the record is the
    other way to them."""
    ledger = _LedgerLosingTheOutcome(azurite.connection_string, retention=timedelta(days=1))
    channel = ScriptedAdapter(SendReceipt("SM-lost", reports_carry_reference=True))
    outcome = await make_service(ledger, channel).send(payload(channel_definition_id, "lost-outcome"))
    message = await ledger.find_message("scripted", "SM-lost")
    await ledger.aclose()
    assert outcome == SendOutcome(ChannelStatus.SENT, message_id="SM-lost")
    assert message is not None and message.request_id == "lost-outcome"


async def test_an_interrupted_send_is_not_resumed_through_another_provider(
    ledger: SendLedger, channel_definition_id: uuid.UUID
) -> None:
    """The route of the sender changed to a deduplicating provider after the first attempt died."""
    await _crashed_mid_send(ledger, channel_definition_id, "rerouted", timedelta(seconds=20))
    other = IdempotentScriptedAdapter(SendReceipt("acs-other"))
    other.name = "acs"  # type: ignore[misc]  # a different provider than the first attempt's
    outcome = await make_service(ledger, other).send(payload(channel_definition_id, "rerouted"))
    assert outcome == SendOutcome(ChannelStatus.SENT)
    assert other.requests == []


async def test_a_claim_whose_insert_timed_out_but_landed_still_sends(
    ledger: SendLedger, channel_definition_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage wrote the claim but answered too late. Taken for a failure, the row would make every
    repeat wait out the lease and then answer Sent for a message that never went out."""
    insert = ledger._sends.create_entity

    async def insert_then_time_out(entity: dict[str, object], **kwargs: object) -> object:
        await insert(entity, **kwargs)
        raise ServiceResponseTimeoutError("Timeout on reading data from socket")

    monkeypatch.setattr(ledger._sends, "create_entity", insert_then_time_out)
    channel = ScriptedAdapter(SendReceipt("SM-late-claim"))
    outcome = await make_service(ledger, channel).send(payload(channel_definition_id, "late-claim"))

    assert outcome == SendOutcome(ChannelStatus.SENT, message_id="SM-late-claim")
    assert len(channel.requests) == 1
    record = await ledger.get(SendKey(channel_definition_id, "late-claim"))
    assert record is not None and record.state is SendState.SENT


async def test_a_claim_that_did_not_land_sends_nothing_and_asks_for_a_retry(
    ledger: SendLedger, channel_definition_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def time_out(entity: dict[str, object], **kwargs: object) -> object:
        raise ServiceResponseTimeoutError("Timeout on reading data from socket")

    monkeypatch.setattr(ledger._sends, "create_entity", time_out)
    channel = ScriptedAdapter(SendReceipt("SM-never"))
    with pytest.raises(StorageUnavailable):
        await make_service(ledger, channel).send(payload(channel_definition_id, "no-claim"))
    assert channel.requests == []
    monkeypatch.undo()
    retried = await make_service(ledger, channel).send(payload(channel_definition_id, "no-claim"))
    assert retried == SendOutcome(ChannelStatus.SENT, message_id="SM-never")
    assert len(channel.requests) == 1
