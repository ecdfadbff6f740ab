"""Why a send failed, as the caller must treat it.

    SendError                  a message was not handed to the provider as asked
    ├── PermanentSendError     the provider (or our own rules) refused it: answer NotSent, never retry
    ├── TransientSendError     not accepted, nothing went out: retry the same request later
    └── AmbiguousSendError     the provider may have accepted it: re-sending could double-send

Adapters translate their provider's answers into exactly one of these, most specific first, so that
the outbound service decides retries and answers in one place.
"""

from __future__ import annotations

import re

from core.enums import StrEnum

__all__ = [
    "AmbiguousSendError",
    "NotSentReason",
    "PermanentSendError",
    "SendError",
    "TransientSendError",
    "not_sent_message",
]


class NotSentReason(StrEnum):
    """Closed vocabulary for why a message got Status NotSent: the answer's ``Details.Reason``
    (Journeys analytics groups by it), logged and stored with the send."""

    INVALID_RECIPIENT = "InvalidRecipient"
    RECIPIENT_OPTED_OUT = "RecipientOptedOut"
    EMPTY_MESSAGE = "EmptyMessage"
    TOO_MANY_SEGMENTS = "TooManySegments"
    INVALID_SENDER = "InvalidSender"
    PROVIDER_REJECTED = "ProviderRejected"
    REQUEST_ID_REUSED = "RequestIdReused"
    IDEMPOTENCY_ID_REUSED = "IdempotencyIdReused"


#: ``Details.Message`` of each reason: one sentence a marketer can act on.
NOT_SENT_MESSAGES: dict[NotSentReason, str] = {
    NotSentReason.INVALID_RECIPIENT: "The recipient's phone number is not a valid mobile number.",
    NotSentReason.RECIPIENT_OPTED_OUT: "The recipient has opted out of text messages from this sender.",
    NotSentReason.EMPTY_MESSAGE: "The message has no text.",
    NotSentReason.TOO_MANY_SEGMENTS: "The message is longer than this channel allows for one SMS.",
    NotSentReason.INVALID_SENDER: "The sender is not set up to send text messages through this channel.",
    NotSentReason.PROVIDER_REJECTED: "The SMS provider refused the message.",
    NotSentReason.REQUEST_ID_REUSED: "This RequestId was already used for a different message.",
    NotSentReason.IDEMPOTENCY_ID_REUSED: "This IdempotencyId was already used for a different message.",
}

#: A provider's error code shown to marketers: a short name or number, never long enough to be a
#: phone number.
_SHOWABLE_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}|[0-9]{1,6}")


def not_sent_message(
    reason: NotSentReason, *, provider: str | None = None, provider_code: str | None = None
) -> str:
    """``Details.Message`` for ``reason``, naming the provider's code when it can be shown."""
    sentence = NOT_SENT_MESSAGES[reason]
    if provider and provider_code and _SHOWABLE_CODE.fullmatch(provider_code):
        return f"{sentence[:-1]} ({provider} code {provider_code})."
    return sentence


class SendError(Exception):
    """Base of every send failure. ``detail`` never contains phone numbers, message text or secrets."""

    def __init__(self, detail: str, *, provider_code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.provider_code = provider_code


class PermanentSendError(SendError):
    def __init__(self, reason: NotSentReason, detail: str, *, provider_code: str | None = None) -> None:
        super().__init__(detail, provider_code=provider_code)
        self.reason = reason


class TransientSendError(SendError):
    def __init__(
        self, detail: str, *, retry_after: float | None = None, provider_code: str | None = None
    ) -> None:
        super().__init__(detail, provider_code=provider_code)
        #: Seconds the provider asked us to wait (its Retry-After), if it said.
        self.retry_after = retry_after


class AmbiguousSendError(SendError):
    """The request may have reached the provider (e.g. a read timeout after the body was sent)."""
