"""Enumerations whose members are their values."""

from __future__ import annotations

from enum import Enum

__all__ = ["StrEnum"]


class StrEnum(str, Enum):
    """``enum.StrEnum`` for Python 3.10 too: members are their values, in str() and f-strings."""

    def __str__(self) -> str:
        return str(self.value)
