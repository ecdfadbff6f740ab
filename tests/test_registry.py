"""Completeness: every registered provider implements the whole seam; every status is mapped on purpose."""

from __future__ import annotations

import inspect

import pytest
from twilio.rest.api.v2010.account.message import MessageInstance

from channels import acs, simulator, twilio
from channels.base import ProviderAdapter
from channels.events import DeliveryOutcome
from channels.registry import PROVIDERS

SEAM = [
    name
    for name, member in inspect.getmembers(ProviderAdapter)
    if callable(member) and not name.startswith("_")
]


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_every_provider_implements_the_seam(name: str) -> None:
    factory = PROVIDERS[name]
    adapter = factory.__self__  # type: ignore[attr-defined]  # the registry holds Class.from_settings
    assert adapter.name == name
    missing = [method for method in SEAM if not callable(getattr(adapter, method, None))]
    assert missing == [], f"{name} lacks {missing}"
    assert {"send", "verify_webhook", "parse_delivery_reports", "parse_inbound", "acknowledge"} <= set(SEAM)


def test_every_twilio_status_of_the_sdk_has_a_deliberate_outcome() -> None:
    statuses = {v for k, v in vars(MessageInstance.Status).items() if not k.startswith("_")}
    final = {s for s in statuses if twilio.DELIVERY_OUTCOMES.get(s, DeliveryOutcome.INTERMEDIATE).is_final}
    assert set(twilio.DELIVERY_OUTCOMES) <= statuses  # no typo in the table
    assert final == {"delivered", "read", "undelivered", "failed", "canceled"}


def test_acs_and_simulator_maps_cover_their_final_statuses() -> None:
    assert set(acs.DELIVERY_OUTCOMES) == {"delivered", "failed"}
    assert {outcome for outcome, _ in simulator.DELIVERY_OUTCOMES.values()} == {
        DeliveryOutcome.DELIVERED,
        DeliveryOutcome.NOT_DELIVERED,
    }


def test_every_not_delivered_twilio_code_has_a_reason_and_description() -> None:
    for code, (reason, description) in twilio.DELIVERY_FAILURES.items():
        assert code.isdigit() and reason and description
