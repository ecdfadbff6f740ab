"""Wire contracts of the Customer Insights - Journeys custom channel, as pydantic v2 models.

Python attributes are snake_case; the wire names are the PascalCase aliases the Journeys runtime
and Dataverse use. Unknown input fields are ignored and never echoed back.
"""

from __future__ import annotations

from contracts.details import Details
from contracts.inbound import InboundPayload
from contracts.notification import NotificationPayload
from contracts.outbound import MarketingAppContext, OutboundPayload, OutboundResponse
from contracts.status import ChannelStatus

__all__ = [
    "ChannelStatus",
    "Details",
    "InboundPayload",
    "MarketingAppContext",
    "NotificationPayload",
    "OutboundPayload",
    "OutboundResponse",
]
