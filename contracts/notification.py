from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import Field

from contracts.base import WireModel
from contracts.details import Details
from contracts.status import ChannelStatus


class NotificationPayload(WireModel):
    """The JSON string passed as ``notificationPayLoad`` to ``msdyn_D365ChannelsNotification``."""

    channel_definition_id: UUID
    request_id: str
    message_id: str
    from_: str = Field(alias="From")
    organization_id: str
    status: ChannelStatus
    #: The provider's raw status and code (the field of the original contract and of Microsoft's samples).
    status_details: dict[str, Any] = Field(default_factory=dict)
    #: The documented failure reason (contract revision of 12/2025).
    details: Details | None = None
