"""Findings: what a component looks like in Dataverse compared with what it should be.

A finding says what ``apply`` would do (create, update, rewrite, nothing) or that it cannot (blocked:
a column that Dataverse never lets change). ``plan`` prints findings, ``apply`` also runs their
actions, ``verify`` counts those that are not in place.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = ["Change", "Finding", "differences", "same_json", "show"]

Action = Callable[[], Awaitable[None]]


class Change(Enum):
    # symbol, what plan says, what apply says once done, what verify says
    OK = ("=", "in place", "in place", "in place")
    CREATE = ("+", "create", "created", "missing")
    UPDATE = ("~", "update", "updated", "differs")
    #: The secure configuration: it cannot be read back, so apply always writes it again.
    REWRITE = ("~", "rewrite", "rewritten", "in place")
    #: Not wanted here and not a problem (a Journeys role this environment does not have).
    SKIP = ("?", "skipped", "skipped", "skipped")
    #: Wrong, and apply cannot fix it (a column Dataverse never lets change).
    BLOCKED = ("!", "cannot be fixed by apply", "cannot be fixed by apply", "wrong, and apply cannot fix it")
    DELETE = ("-", "delete", "deleted", "")
    ABSENT = ("=", "already absent", "already absent", "")
    KEEP = ("=", "kept", "kept", "")

    def __init__(self, symbol: str, planned: str, done: str, verified: str) -> None:
        self.symbol = symbol
        self.planned = planned
        self.done = done
        self.verified = verified

    @property
    def action_verb(self) -> bool:
        return self in (Change.CREATE, Change.UPDATE, Change.REWRITE)

    @property
    def in_place(self) -> bool:
        """Whether verify counts the component as present and correct."""
        return self in (Change.OK, Change.REWRITE, Change.SKIP)


@dataclass
class Finding:
    label: str
    change: Change
    details: tuple[str, ...] = ()
    action: Action | None = field(default=None, repr=False)

    def line(self, *, done: bool = False, verify: bool = False) -> str:
        if verify:
            symbol = "=" if self.change.in_place else "!"
            text = f"  {symbol} {self.label}: {self.change.verified}"
        else:
            verb = self.change.done if done else self.change.planned
            text = f"  {self.change.symbol} {self.label}: {verb}"
        details = self.problems if verify else self.details
        if details:
            text += " (" + "; ".join(details) + ")"
        return text

    @property
    def problems(self) -> tuple[str, ...]:
        """The details that say what is wrong (a missing component's are only what apply would create)."""
        return () if self.change is Change.CREATE else self.details


def same_json(actual: Any, desired: str) -> bool:
    """Whether a JSON text column holds the desired document (formatting aside)."""
    if not isinstance(actual, str):
        return False
    try:
        return bool(json.loads(actual) == json.loads(desired))
    except ValueError:
        return False


def differences(
    actual: Mapping[str, Any], desired: Mapping[str, Any], *, hidden: Iterable[str] = ()
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The desired columns whose value differs, and a description of each for the admin.

    Columns in ``hidden`` are named but their values are not shown (assembly content).
    """
    hide = set(hidden)
    changed: dict[str, Any] = {}
    notes: list[str] = []
    for column, wanted in desired.items():
        if column.endswith("@odata.bind"):
            continue
        current = actual.get(column)
        if current == wanted or _same_guid(current, wanted):
            continue
        changed[column] = wanted
        notes.append(
            f"{column} differs" if column in hide else f"{column}: {show(current)} -> {show(wanted)}"
        )
    return changed, tuple(notes)


def show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _same_guid(current: Any, wanted: Any) -> bool:
    """GUID text compares without case (Dataverse may return upper case)."""
    return (
        isinstance(current, str)
        and isinstance(wanted, str)
        and len(wanted) == 36
        and wanted.count("-") == 4
        and current.lower() == wanted.lower()
    )
