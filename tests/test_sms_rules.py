from __future__ import annotations

import pytest

from core.phones import InvalidPhoneNumber, mask, to_e164
from core.segments import SmsEncoding, count_segments


@pytest.mark.parametrize(
    "text, encoding, units, segments",
    [
        ("", SmsEncoding.GSM7, 0, 0),
        ("a" * 160, SmsEncoding.GSM7, 160, 1),
        ("a" * 161, SmsEncoding.GSM7, 161, 2),
        ("a" * 306, SmsEncoding.GSM7, 306, 2),
        ("a" * 307, SmsEncoding.GSM7, 307, 3),
        ("€" * 80, SmsEncoding.GSM7, 160, 1),  # extension characters count double
        ("{" * 81, SmsEncoding.GSM7, 162, 2),
        ("a" * 152 + "€" + "a" * 10, SmsEncoding.GSM7, 164, 2),
        ("a" * 152 + "€" + "a" * 152, SmsEncoding.GSM7, 306, 3),  # the escape pair is not split
        ("ł" * 70, SmsEncoding.UCS2, 70, 1),
        ("ł" * 71, SmsEncoding.UCS2, 71, 2),
        ("a" * 159 + "ł", SmsEncoding.UCS2, 160, 3),  # one non-GSM character makes it all UCS-2
        ("😀" * 35, SmsEncoding.UCS2, 70, 1),  # astral characters are two UTF-16 units
        ("a" * 66 + "😀" + "aaa", SmsEncoding.UCS2, 71, 2),
        ("a" * 66 + "😀" + "a" * 66, SmsEncoding.UCS2, 134, 3),  # the surrogate pair stays whole
        ("Hello\r\nWorld", SmsEncoding.GSM7, 12, 1),
    ],
)
def test_segment_count(text: str, encoding: SmsEncoding, units: int, segments: int) -> None:
    count = count_segments(text)
    assert (count.encoding, count.units, count.segments) == (encoding, units, segments)


def test_e164_normalization() -> None:
    assert to_e164("+1 (415) 555-0123") == "+14155550123"
    assert to_e164("(415) 555-0123", default_region="US") == "+14155550123"


@pytest.mark.parametrize("raw", ["not a number", "+44 123", "(415) 555-0123", "+447700900123", ""])
def test_invalid_numbers_are_refused(raw: str) -> None:
    with pytest.raises(InvalidPhoneNumber):
        to_e164(raw)


def test_mask_keeps_prefix_and_last_four() -> None:
    assert mask("+14155550123") == "+1415****0123"
    assert mask(None) == "<none>"
    assert "5550123" not in mask("14155550123")
