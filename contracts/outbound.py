from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from pydantic import Field, StringConstraints, field_validator, model_validator

from contracts.base import WireModel
from contracts.details import Details
from contracts.status import ChannelStatus

#: Table Storage keys hold at most 1 KiB; a RequestId is a GUID-like token in practice.
MAX_REQUEST_ID_LENGTH = 256
#: The same bound for IdempotencyId, which keys the send's row in its place.
MAX_IDEMPOTENCY_ID_LENGTH = 256

RequestId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_REQUEST_ID_LENGTH)]
IdempotencyId = Annotated[str, StringConstraints(max_length=MAX_IDEMPOTENCY_ID_LENGTH, strict=True)]
NonEmptyText = Annotated[str, StringConstraints(min_length=1)]


class MarketingAppContext(WireModel):
    """Present only when the send comes from the Journeys app; the ids are null on test sends."""

    customer_journey_id: str | None = None
    user_id: str | None = None
    user_entity_type: str | None = None
    is_test_send: bool = False


class OutboundPayload(WireModel):
    """The JSON inside the outbound custom API's ``payload`` input (Microsoft's contract of 2026)."""

    channel_definition_id: UUID
    #: One attempt at the message: Journeys' answer must echo it.
    request_id: RequestId
    #: The message across Journeys' attempts (a retry after a timeout carries the same one): when
    #: present it, not RequestId, decides what was already sent. Empty counts as absent.
    idempotency_id: IdempotencyId | None = None
    from_: NonEmptyText = Field(alias="From")
    to: NonEmptyText
    #: Message-part name -> value; SMS channels have the single part ``text``.
    message: dict[str, str]
    marketing_app_context: MarketingAppContext | None = None

    @field_validator("idempotency_id")
    @classmethod
    def _blank_is_absent(cls, value: str | None) -> str | None:
        return value if value and value.strip() else None

    @property
    def is_test_send(self) -> bool:
        return self.marketing_app_context is not None and self.marketing_app_context.is_test_send


class OutboundResponse(WireModel):
    """The JSON that goes into the outbound custom API's ``response`` output."""

    channel_definition_id: UUID
    message_id: str | None = None
    #: The RequestId of the attempt being answered (a retry gets its own, not the first attempt's).
    request_id: str
    status: ChannelStatus
    #: Why the message was not sent: on every NotSent, never on Sent.
    details: Details | None = None

    @model_validator(mode="after")
    def _details_only_when_not_sent(self) -> Any:
        if self.status is ChannelStatus.NOT_SENT and self.details is None:
            raise ValueError("a NotSent answer carries Details")
        if self.status is not ChannelStatus.NOT_SENT and self.details is not None:
            raise ValueError("only a NotSent answer carries Details")
        return self
