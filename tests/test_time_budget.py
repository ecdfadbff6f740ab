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
    rows = {
        line.split("|")[1].strip(): line
        for line in section.splitlines()
        if line.startswith("| ") and not line.startswith("| Piece")
    }

    def row(label: str) -> str:
        [found] = [line for name, line in rows.items() if name.startswith(label)]
        return found

    budget_default, budget_max = setting_bounds("send_budget_seconds")
    timeout_default, timeout_max = setting_bounds("provider_timeout_seconds")
    for label, numbers in [
        ("Journeys' limit", (JOURNEYS_LIMIT_SECONDS,)),
        ("plug-in's own work", (PLUGIN_WORK_ALLOWANCE_SECONDS,)),
        ("plug-in HTTP timeout", (PLUGIN_TIMEOUT_SECONDS, plugin_constant("MaxTimeoutSeconds"))),
        ("app cold start", (COLD_START_ALLOWANCE_SECONDS,)),
        ("app answer: `SEND_BUDGET_SECONDS`", (budget_default, budget_max)),
        ("each provider attempt", (timeout_default, timeout_max)),
        ("kept from the budget", (OUTCOME_RESERVE_SECONDS,)),
    ]:
        cells = row(label)
        for number in numbers:
            assert re.search(rf"\b{number:g} s\b", cells), (
                f"README's row {label!r} does not state {number:g} s"
            )
    plugin_max, cold, work = (
        plugin_constant("MaxTimeoutSeconds"),
        COLD_START_ALLOWANCE_SECONDS,
        PLUGIN_WORK_ALLOWANCE_SECONDS,
    )
    arithmetic = (
        f"{plugin_max} s + {work} s = {plugin_max + work} s < {JOURNEYS_LIMIT_SECONDS} s",
        f"{cold} s + {budget_max:g} s = {cold + budget_max:g} s < {PLUGIN_TIMEOUT_SECONDS} s",
    )
    for sum_line in arithmetic:
        assert sum_line in section, f"README's arithmetic should read {sum_line!r}"
