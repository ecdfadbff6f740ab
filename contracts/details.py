from __future__ import annotations

from contracts.base import WireModel


class Details(WireModel):
    """Why a message was not sent or not delivered: Journeys shows it under "Delivery and interaction
    details" on the analytics page. ``reason`` comes from a closed list (analytics groups by it);
    ``message`` is one sentence for a marketer, never a phone number, a message text or a secret."""

    reason: str
    message: str
