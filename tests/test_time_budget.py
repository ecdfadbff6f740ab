"""Journeys gives the outbound custom API 20 seconds; the pieces' limits, as the code holds them, must
add up below that, and the README's arithmetic must state the same numbers."""

from __future__ import annotations

import re

from core.settings import AppSettings
from provisioning.base import PLUGIN_TIMEOUT_SECONDS
from tests.conftest import ROOT
from usecases.outbound import OUTCOME_RESERVE_SECONDS

JOURNEYS_LIMIT_SECONDS = 20
#: The plug-in's own work (configuration, envelope, answer) and Dataverse's pipeline around it.
PLUGIN_WORK_ALLOWANCE_SECONDS = 3
#: A Flex Consumption cold start of the app before its code runs (unverified without Azure).
COLD_START_ALLOWANCE_SECONDS = 5


def plugin_constant(name: str) -> int:
    source = (ROOT / "plugin" / "ForwardingPlugin.cs").read_text(encoding="utf-8")
    match = re.search(rf"public const int {name} = (\d+);", source)
    assert match, name
    return int(match.group(1))


def setting_bounds(field: str) -> tuple[float, float]:
    info = AppSettings.model_fields[field]
    [upper] = [m.le for m in info.metadata if getattr(m, "le", None) is not None]
    return float(info.default), float(upper)


def test_the_pieces_add_up_below_twenty_seconds() -> None:
    plugin_default, plugin_max = (
        plugin_constant("DefaultTimeoutSeconds"),
        plugin_constant("MaxTimeoutSeconds"),
    )
    budget_default, budget_max = setting_bounds("send_budget_seconds")
    assert plugin_max + PLUGIN_WORK_ALLOWANCE_SECONDS < JOURNEYS_LIMIT_SECONDS
    assert PLUGIN_TIMEOUT_SECONDS == plugin_default <= plugin_max
    # the app answers inside the plug-in's default timeout even from a cold start, at its largest budget
    assert COLD_START_ALLOWANCE_SECONDS + budget_max < plugin_default
    assert budget_default <= budget_max
    # a provider attempt never outlives the budget: it is cut there, the reserve stores the outcome
    assert budget_default > OUTCOME_RESERVE_SECONDS


def test_the_readme_states_the_same_numbers() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Twenty seconds, end to end") :]
    section = section[: section.index("\n## ")]
    budget_default, budget_max = setting_bounds("send_budget_seconds")
    timeout_default, _ = setting_bounds("provider_timeout_seconds")
    for number, what in [
        (JOURNEYS_LIMIT_SECONDS, "Journeys' limit"),
        (plugin_constant("MaxTimeoutSeconds"), "the plug-in's largest timeout"),
        (PLUGIN_TIMEOUT_SECONDS, "the step's timeout"),
        (PLUGIN_WORK_ALLOWANCE_SECONDS, "the plug-in's work"),
        (COLD_START_ALLOWANCE_SECONDS, "a cold start"),
        (budget_default, "SEND_BUDGET_SECONDS"),
        (budget_max, "SEND_BUDGET_SECONDS at most"),
        (timeout_default, "PROVIDER_TIMEOUT_SECONDS"),
        (OUTCOME_RESERVE_SECONDS, "the outcome's reserve"),
    ]:
        assert re.search(rf"\b{number:g} s\b", section), (
            f"README's arithmetic does not state {what} ({number:g} s)"
        )
