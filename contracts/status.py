from __future__ import annotations

from contracts.base import StrEnum


class ChannelStatus(StrEnum):
    """Message statuses of the custom-channel contract.

    The outbound response uses only ``Sent`` and ``NotSent``; delivery notifications use only
    ``Delivered`` and ``NotDelivered``.
    """

    NOT_SENT = "NotSent"
    SENT = "Sent"
    DELIVERED = "Delivered"
    NOT_DELIVERED = "NotDelivered"
