from __future__ import annotations

from uuid import UUID

from pydantic import Field

from contracts.base import WireModel


class InboundPayload(WireModel):
    """The JSON string passed as ``inboundPayLoad`` to ``msdyn_D365ChannelsInbound``."""

    channel_definition_id: UUID
    #: Our number: the channel instance's contact point the customer texted.
    to: str
    #: The customer's number.
    from_: str = Field(alias="From")
    organization_id: str
    message: dict[str, str]
