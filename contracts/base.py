from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_pascal


class WireModel(BaseModel):
    """Base of every contract: PascalCase on the wire, unknown fields ignored, values immutable."""

    model_config = ConfigDict(
        alias_generator=to_pascal,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict the other side expects (wire names, GUIDs as lowercase strings)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_wire_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)


class StrEnum(str, Enum):
    """``enum.StrEnum`` for Python 3.10 too: members are their values, in str() and f-strings."""

    def __str__(self) -> str:
        return str(self.value)
