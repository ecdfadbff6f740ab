"""Why a send failed, as the caller must treat it.

    SendError                  a message was not handed to the provider as asked
    ├── PermanentSendError     the provider (or our own rules) refused it: answer NotSent, never retry
    ├── TransientSendError     not accepted, nothing went out: retry the same request later
    └── AmbiguousSendError     the provider may have accepted it: re-sending could double-send

Adapters translate their provider's answers into exactly one of these, most specific first, so that
the outbound service decides retries and answers in one place.
"""

from __future__ import annotations

from core.enums import StrEnum

__all__ = [
    "AmbiguousSendError",
    "NotSentReason",
    "PermanentSendError",
    "SendError",
    "TransientSendError",
]


class NotSentReason(StrEnum):
    """Closed vocabulary for why a message got Status NotSent (logged and stored with the request)."""

    INVALID_RECIPIENT = "InvalidRecipient"
    RECIPIENT_OPTED_OUT = "RecipientOptedOut"
    EMPTY_MESSAGE = "EmptyMessage"
    TOO_MANY_SEGMENTS = "TooManySegments"
    INVALID_SENDER = "InvalidSender"
    PROVIDER_REJECTED = "ProviderRejected"
    REQUEST_ID_REUSED = "RequestIdReused"


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
