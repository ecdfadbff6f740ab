"""Retry-After, as providers and Dataverse send it."""

from __future__ import annotations

import email.utils
from datetime import datetime

__all__ = ["parse_retry_after"]


def parse_retry_after(value: str | None, *, default: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return default
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return max((when - datetime.now(when.tzinfo)).total_seconds(), 0.0)
