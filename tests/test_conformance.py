"""The conformance suite: every provider adapter, the same checks. See tests/kits.py."""

from __future__ import annotations

import pytest

from channels.errors import PermanentSendError, TransientSendError
from channels.events import DeliveryOutcome, WebhookRejected
from channels.registry import PROVIDERS
from tests.fakes.tls import LocalCA
from tests.kits import CUSTOMER, KITS, OUR_NUMBER, REJECTED, THROTTLED, ProviderKit, send_request


@pytest.fixture(params=KITS, ids=lambda kit: kit.__name__.removesuffix("Kit").lower())
def kit(request: pytest.FixtureRequest, trust_test_ca: LocalCA) -> ProviderKit:
    return request.param(trust_test_ca)  # type: ignore[no-any-return]


def test_every_registered_provider_has_a_kit() -> None:
    assert sorted(PROVIDERS) == sorted({kit.name for kit in KITS})


async def test_send_success(kit: ProviderKit) -> None:
    with kit.channel() as channel:
        receipt = await channel.send(send_request())
        await channel.aclose()
    assert receipt.message_id


async def test_permanent_rejection(kit: ProviderKit) -> None:
    with kit.channel() as channel:
        with pytest.raises(PermanentSendError):
            await channel.send(send_request(REJECTED))
        await channel.aclose()


async def test_transient_failure(kit: ProviderKit) -> None:
    with kit.channel() as channel:
        with pytest.raises(TransientSendError):
            await channel.send(send_request(THROTTLED))
        await channel.aclose()


@pytest.mark.parametrize(
    "status, outcome",
    [
        ("delivered", DeliveryOutcome.DELIVERED),
        ("failed", DeliveryOutcome.NOT_DELIVERED),
        ("intermediate", DeliveryOutcome.INTERMEDIATE),
    ],
)
async def test_delivery_statuses(kit: ProviderKit, status: str, outcome: DeliveryOutcome) -> None:
    request = kit.delivery_report("msg-42", status)
    with kit.channel() as channel:
        channel.verify_webhook(request)
        parsed = channel.parse_delivery_reports(request)
        await channel.aclose()
    events = parsed.delivery_events
    if outcome is DeliveryOutcome.INTERMEDIATE:
        assert all(not e.outcome.is_final for e in events)
    else:
        [event] = events
        assert (event.provider, event.message_id, event.outcome) == (kit.name, "msg-42", outcome)
        if outcome is DeliveryOutcome.NOT_DELIVERED:
            assert event.reason and event.description


async def test_inbound_unicode_text(kit: ProviderKit) -> None:
    text = "Hello \u2013 grüße, 你好 👋"  # an en dash, non-Latin script and an emoji
    request = kit.inbound(text)
    with kit.channel() as channel:
        channel.verify_webhook(request)
        [message] = channel.parse_inbound(request).inbound
        await channel.aclose()
    assert (message.text, message.sender.lstrip("+"), message.recipient) == (
        text,
        CUSTOMER.lstrip("+"),
        OUR_NUMBER,
    )


async def test_forged_and_unsigned_webhooks_are_refused(kit: ProviderKit) -> None:
    genuine = kit.delivery_report("msg-43", "delivered")
    with kit.channel() as channel:
        with pytest.raises(WebhookRejected) as forged:
            channel.verify_webhook(kit.forged(genuine))
        with pytest.raises(WebhookRejected) as unsigned:
            channel.verify_webhook(kit.unsigned(genuine))
        await channel.aclose()
    assert (forged.value.status_code, unsigned.value.status_code) == (403, 401)


@pytest.mark.parametrize("kit_type", [k for k in KITS if k.timestamped], ids=lambda k: k.name)
async def test_stale_signature_is_refused(kit_type: type[ProviderKit], trust_test_ca: LocalCA) -> None:
    """Only for providers whose signatures carry a timestamp; the others' webhooks cannot be stale."""
    kit = kit_type(trust_test_ca)
    with kit.channel() as channel:
        with pytest.raises(WebhookRejected) as stale:
            channel.verify_webhook(kit.stale("msg-44"))
        await channel.aclose()
    assert stale.value.status_code == 403
