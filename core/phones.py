"""Phone numbers: E.164 normalization and masking for logs."""

from __future__ import annotations

import phonenumbers

__all__ = ["InvalidPhoneNumber", "mask", "to_e164"]


class InvalidPhoneNumber(ValueError):
    """The text is not a valid, dialable phone number."""


def to_e164(raw: str, *, default_region: str | None = None) -> str:
    """Parse ``raw`` and return it as ``+<country><number>``.

    Numbers without a leading ``+`` need ``default_region`` (an ISO 3166 code such as ``GB``).
    """
    try:
        parsed = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhoneNumber("not a phone number") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidPhoneNumber("not a valid number for its country")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def mask(number: str | None) -> str:
    """Keep a number recognisable in logs without disclosing it: ``+14155550123`` -> ``+1415****0123``."""
    if not number:
        return "<none>"
    if len(number) <= 8:
        return number[:1] + "*" * max(len(number) - 1, 0)
    head = 5 if number.startswith("+") else 4
    return number[:head] + "****" + number[-4:]
