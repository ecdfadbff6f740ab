"""Every registered provider's status and error tables, walked the same way (channels/tables.py).

Parametrized over the registry, so a new provider is checked as soon as it is registered.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from channels.base import ProviderAdapter
from channels.errors import NotSentReason
from channels.events import (
    ROUTE_PREFIX,
    DeliveryFailure,
    DeliveryOutcome,
    webhook_path,
    webhook_route,
)
from channels.registry import PROVIDERS
from channels.signatures import SIGNATURE_TOLERANCE_SECONDS, unix_time, within_tolerance
from channels.simulator import SimulatorAdapter, SimulatorSettings
from channels.tables import Classification, ProviderTables, classify_delivery, send_failure_reason
from core.settings import AppSettings

NAMES = sorted(PROVIDERS)
FINAL = {DeliveryOutcome.DELIVERED, DeliveryOutcome.NOT_DELIVERED}
#: What an error code may look like: digits, or a provider's code names (Infobip's REJECTED_SOURCE).
CODE = re.compile(r"[0-9A-Za-z_-]+")
PUBLIC = "https://sms.example.org"


def adapter_class(name: str) -> type[ProviderAdapter]:
    return PROVIDERS[name].__self__  # type: ignore[attr-defined, no-any-return]  # Class.from_settings


def tables_of(name: str) -> ProviderTables:
    return adapter_class(name).tables


def not_delivered(tables: ProviderTables) -> list[str]:
    return [s for s, outcome in tables.final_statuses.items() if outcome is DeliveryOutcome.NOT_DELIVERED]


@pytest.mark.parametrize("name", NAMES)
def test_the_adapter_exposes_its_modules_tables(name: str) -> None:
    cls = adapter_class(name)
    assert isinstance(cls.tables, ProviderTables)
    assert cls.tables is vars(sys.modules[cls.__module__])["TABLES"]


@pytest.mark.parametrize("name", NAMES)
def test_final_statuses_are_delivered_or_not_delivered(name: str) -> None:
    tables = tables_of(name)
    assert set(tables.final_statuses.values()) == FINAL  # both outcomes reachable, nothing else
    assert all(isinstance(status, str) and status for status in tables.final_statuses)


@pytest.mark.parametrize("name", NAMES)
def test_intermediate_statuses_are_listed_apart_and_never_relayed(name: str) -> None:
    tables = tables_of(name)
    assert isinstance(tables.intermediate_statuses, frozenset)
    assert not tables.intermediate_statuses & set(tables.final_statuses)
    for status in tables.intermediate_statuses:
        assert classify_delivery(tables, status, None) == Classification(
            outcome=DeliveryOutcome.INTERMEDIATE, known=True
        )


@pytest.mark.parametrize("name", NAMES)
def test_a_final_status_classifies_to_its_outcome(name: str) -> None:
    tables = tables_of(name)
    for status, outcome in tables.final_statuses.items():
        verdict = classify_delivery(tables, status, None)
        assert (verdict.outcome, verdict.known) == (outcome, True)
        if outcome is DeliveryOutcome.DELIVERED:
            assert (verdict.reason, verdict.description) == (None, None)
            continue
        assert isinstance(verdict.reason, DeliveryFailure)
        # without the provider's own text the tables describe it, unless they leave that to the
        # relay ("<provider> status <status>")
        assert verdict.description or tables.fallback_description is None
        with_text = classify_delivery(tables, status, None, detail="Carrier says no")
        assert (with_text.reason, with_text.description) == (verdict.reason, "Carrier says no")


@pytest.mark.parametrize("name", NAMES)
def test_every_delivery_error_code_gives_a_reason_and_description(name: str) -> None:
    tables = tables_of(name)
    for code, entry in tables.delivery_failures.items():
        assert isinstance(code, str) and CODE.fullmatch(code), code
        reason, description = entry
        assert isinstance(reason, DeliveryFailure) and isinstance(description, str) and description
        for status in not_delivered(tables):
            verdict = classify_delivery(tables, status, code)
            assert verdict.reason == tables.failure_by_status.get(status, reason)
            assert verdict.description == tables.description_by_status.get(status, description)


@pytest.mark.parametrize("name", NAMES)
def test_status_level_entries_name_not_delivered_statuses(name: str) -> None:
    tables = tables_of(name)
    assert set(tables.failure_by_status) <= set(not_delivered(tables))
    assert all(isinstance(reason, DeliveryFailure) for reason in tables.failure_by_status.values())
    assert set(tables.description_by_status) <= set(not_delivered(tables))
    assert all(isinstance(text, str) and text for text in tables.description_by_status.values())
    fallback = tables.fallback_description
    assert fallback is None or "{status}" in fallback


@pytest.mark.parametrize("name", NAMES)
def test_an_unknown_status_is_intermediate_and_flagged(name: str) -> None:
    verdict = classify_delivery(tables_of(name), "no-such-status", "1")
    assert verdict == Classification(outcome=DeliveryOutcome.INTERMEDIATE, known=False)


@pytest.mark.parametrize("name", NAMES)
def test_every_send_error_code_maps_to_a_not_sent_reason(name: str) -> None:
    tables = tables_of(name)
    for code, reason in tables.send_failures.items():
        assert isinstance(code, str) and CODE.fullmatch(code), code
        assert isinstance(reason, NotSentReason)
        assert reason is not NotSentReason.PROVIDER_REJECTED  # that is every unlisted code's already
        assert send_failure_reason(tables, code) is reason
        if code.isdigit():  # providers whose JSON holds numbers
            assert send_failure_reason(tables, int(code)) is reason


@pytest.mark.parametrize("name", NAMES)
def test_an_unknown_send_error_code_is_provider_rejected(name: str) -> None:
    tables = tables_of(name)
    for code in ("no-such-code", "999999", 999999, None):
        assert send_failure_reason(tables, code) is NotSentReason.PROVIDER_REJECTED


def test_how_a_not_delivered_status_is_classified() -> None:
    """Status-level entries win over the error code's; the provider's own text wins for the description."""
    nd = DeliveryOutcome.NOT_DELIVERED
    tables = ProviderTables(
        final_statuses={"ok": DeliveryOutcome.DELIVERED, "bad": nd, "old": nd, "stop": nd},
        intermediate_statuses=frozenset({"sent"}),
        delivery_failures={"7": (DeliveryFailure.BLOCKED, "Blocked by the carrier")},
        failure_by_status={"old": DeliveryFailure.EXPIRED, "stop": DeliveryFailure.CANCELED},
        description_by_status={"stop": "Canceled before sending"},
        fallback_description="Provider status {status}",
        send_failures={},
    )

    def verdict(status: str, code: str | None = None, detail: str | None = None) -> tuple[object, ...]:
        c = classify_delivery(tables, status, code, detail=detail)
        return c.outcome, c.reason, c.description

    assert verdict("bad", "7") == (nd, DeliveryFailure.BLOCKED, "Blocked by the carrier")
    assert verdict("bad", "8") == (nd, DeliveryFailure.UNKNOWN, "Provider status bad")
    assert verdict("bad") == (nd, DeliveryFailure.UNKNOWN, "Provider status bad")
    assert verdict("bad", "7", "As the carrier put it") == (
        nd,
        DeliveryFailure.BLOCKED,
        "As the carrier put it",
    )
    assert verdict("old", "7") == (nd, DeliveryFailure.EXPIRED, "Blocked by the carrier")
    assert verdict("old") == (nd, DeliveryFailure.EXPIRED, "Provider status old")
    assert verdict("stop", "7") == (nd, DeliveryFailure.CANCELED, "Canceled before sending")
    assert verdict("ok", "7", "text") == (DeliveryOutcome.DELIVERED, None, None)
    assert verdict("sent", "7", "text") == (DeliveryOutcome.INTERMEDIATE, None, None)


# -- the webhook path -----------------------------------------------------------------------------


def test_the_webhook_path_is_the_functions_route_under_its_prefix() -> None:
    host = json.loads((Path(__file__).parents[1] / "host.json").read_text())
    assert host["extensions"]["http"]["routePrefix"] == ROUTE_PREFIX
    assert webhook_route("inbound") == "providers/{provider}/inbound"
    assert webhook_path("twilio", "delivery-reports") == "/api/providers/twilio/delivery-reports"


@pytest.mark.parametrize("name", NAMES)
def test_no_adapter_spells_out_a_webhook_path(name: str) -> None:
    source = inspect.getsource(sys.modules[adapter_class(name).__module__])
    assert "providers/" not in source  # webhook_path builds it


#: The least each provider's settings need, so that the registry's factory can build its adapter.
MINIMAL_SETTINGS: dict[str, dict[str, str]] = {
    "simulator": {},
    "twilio": {"TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "token"},
    "acs": {"ACS_ENDPOINT": "https://contoso.communication.azure.com"},
    "telnyx": {"TELNYX_API_KEY": "KEY0"},
    "plivo": {"PLIVO_AUTH_ID": "MA" + "0" * 18, "PLIVO_AUTH_TOKEN": "token"},
    "vonage": {"VONAGE_API_KEY": "key", "VONAGE_API_SECRET": "secret"},
    "infobip": {"INFOBIP_API_KEY": "key", "INFOBIP_BASE_URL": "https://xxxxx.api.infobip.com"},
}


@pytest.fixture
def callback_paths(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The paths adapters turn into callback URLs (AppSettings.callback_url is how they all do it)."""
    paths: list[str] = []
    original = AppSettings.callback_url

    def recording(self: AppSettings, path: str) -> str | None:
        paths.append(path)
        return original(self, path)

    monkeypatch.setattr(AppSettings, "callback_url", recording)
    yield paths


@pytest.mark.parametrize("name", NAMES)
async def test_delivery_report_urls_are_the_webhook_route(
    name: str, callback_paths: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert name in MINIMAL_SETTINGS, f"add the least settings {name} needs to MINIMAL_SETTINGS"
    for setting, value in {"PUBLIC_BASE_URL": PUBLIC, **MINIMAL_SETTINGS[name]}.items():
        monkeypatch.setenv(setting, value)
    adapter = PROVIDERS[name](AppSettings(), None)
    try:
        expected = webhook_path(name, "delivery-reports")
        assert set(callback_paths) <= {expected}
        for attribute in ("delivery_report_url", "status_callback_url"):
            url = getattr(adapter, attribute, None)
            assert url is None or url == PUBLIC + expected
    finally:
        await adapter.aclose()


async def test_the_simulator_posts_to_the_webhook_route() -> None:
    posted: list[str] = []

    def app(request: httpx.Request) -> httpx.Response:
        posted.append(request.url.path)
        return httpx.Response(200)

    simulator = SimulatorAdapter(SimulatorSettings(webhook_secret=SecretStr("secret")), app_base_url=PUBLIC)
    simulator._http = httpx.AsyncClient(base_url=PUBLIC, transport=httpx.MockTransport(app))
    await simulator._post("delivery-reports", {"MessageId": "SM1", "Status": "delivered"})
    await simulator._post("inbound", {"MessageId": "SM2", "From": "+1", "To": "+2", "Text": "hi"})
    await simulator.aclose()
    assert posted == [webhook_path("simulator", "delivery-reports"), webhook_path("simulator", "inbound")]


# -- the signature timestamp --------------------------------------------------------------------


def test_a_signed_timestamp_is_accepted_within_the_tolerance_either_way() -> None:
    now = 1_800_000_000.0
    edge = SIGNATURE_TOLERANCE_SECONDS
    assert within_tolerance(now - edge, now=now) and within_tolerance(now + edge, now=now)
    assert not within_tolerance(now - edge - 1, now=now)
    assert not within_tolerance(now + edge + 1, now=now)
    assert within_tolerance(now - 50, tolerance_seconds=60, now=now)
    assert not within_tolerance(now - 61, tolerance_seconds=60, now=now)


@pytest.mark.parametrize(
    "stamp, value",
    [
        ("1800000000", 1800000000),
        ("0", 0),
        ("999999999999", 999999999999),
        ("", None),
        ("-1", None),
        ("1.5", None),
        (" 1", None),
        ("1234567890123", None),
        ("\u0661\u0662", None),
    ],
)
def test_a_signed_timestamp_is_plain_unix_seconds(stamp: str, value: int | None) -> None:
    assert unix_time(stamp) == value
