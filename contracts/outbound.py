from __future__ import annotations

from typing import Annotated
from uuid import UUID

from pydantic import Field, StringConstraints

from contracts.base import WireModel
from contracts.status import ChannelStatus

#: Table Storage keys hold at most 1 KiB; a RequestId is a GUID-like token in practice.
MAX_REQUEST_ID_LENGTH = 256

RequestId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_REQUEST_ID_LENGTH)]
NonEmptyText = Annotated[str, StringConstraints(min_length=1)]


class MarketingAppContext(WireModel):
    """Present only when the send comes from the Journeys app; the ids are null on test sends."""

    customer_journey_id: str | None = None
    user_id: str | None = None
    user_entity_type: str | None = None
    is_test_send: bool = False


class OutboundPayload(WireModel):
    """The JSON inside the outbound custom API's ``payload`` input."""

    channel_definition_id: UUID
    request_id: RequestId
    from_: NonEmptyText = Field(alias="From")
    to: NonEmptyText
    #: Message-part name -> value; SMS channels have the single part ``text``.
    message: dict[str, str]
    marketing_app_context: MarketingAppContext | None = None

    @property
    def is_test_send(self) -> bool:
        return self.marketing_app_context is not None and self.marketing_app_context.is_test_send


class OutboundResponse(WireModel):
    """The JSON that goes into the outbound custom API's ``response`` output."""

    channel_definition_id: UUID
    message_id: str | None = None
    request_id: str
    status: ChannelStatus
