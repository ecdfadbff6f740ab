"""SMS encoding and segment count, as carriers bill them.

GSM-7 carries 160 septets in one SMS and 153 per part of a concatenated one; extension-table
characters take two septets and never straddle two parts. One character outside GSM-7 makes the
whole message UCS-2: 70 UTF-16 code units alone, 67 per part, surrogate pairs kept whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.enums import StrEnum

__all__ = ["SegmentCount", "SmsEncoding", "count_segments"]

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")


class SmsEncoding(StrEnum):
    GSM7 = "GSM-7"
    UCS2 = "UCS-2"


@dataclass(frozen=True, slots=True)
class SegmentCount:
    encoding: SmsEncoding
    #: Septets (GSM-7) or UTF-16 code units (UCS-2).
    units: int
    segments: int


def _pack(costs: list[int], single: int, per_part: int) -> int:
    total = sum(costs)
    if total == 0:
        return 0
    if total <= single:
        return 1
    parts, used = 1, 0
    for cost in costs:
        if used + cost > per_part:
            parts, used = parts + 1, 0
        used += cost
    return parts


def count_segments(text: str) -> SegmentCount:
    if all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text):
        costs = [2 if ch in GSM7_EXTENSION else 1 for ch in text]
        return SegmentCount(SmsEncoding.GSM7, sum(costs), _pack(costs, 160, 153))
    costs = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    return SegmentCount(SmsEncoding.UCS2, sum(costs), _pack(costs, 70, 67))
