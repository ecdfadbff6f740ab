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
    tables = twilio.TABLES
    final = {s for s in statuses if tables.final_statuses.get(s, DeliveryOutcome.INTERMEDIATE).is_final}
    assert set(tables.final_statuses) <= statuses  # no typo in the table
    assert final == {"delivered", "read", "undelivered", "failed", "canceled"}
    assert set(tables.final_statuses) | tables.intermediate_statuses == statuses  # each one listed


def test_acs_and_simulator_maps_cover_their_final_statuses() -> None:
    assert set(acs.TABLES.final_statuses) == {"delivered", "failed"}
    assert set(simulator.TABLES.final_statuses.values()) == {
        DeliveryOutcome.DELIVERED,
        DeliveryOutcome.NOT_DELIVERED,
    }


def test_every_not_delivered_twilio_code_has_a_reason_and_description() -> None:
    for code, (reason, description) in twilio.TABLES.delivery_failures.items():
        assert code.isdigit() and reason and description
