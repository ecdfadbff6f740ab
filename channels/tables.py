"""The shape every provider's status and error tables take, and the functions that read them.

Each adapter module starts with ``TABLES = ProviderTables(...)``: its delivery statuses (final and
intermediate, both listed), the reasons behind a NotDelivered status, and the reasons behind a send
refused for good. Statuses are keyed as the adapter normalizes them (lower-cased, except Infobip's
upper-case group names); codes are always text, whatever type the provider's JSON uses.
``tests/test_provider_tables.py`` walks every registered provider's tables.

How a delivery status is classified (:func:`classify_delivery`, pure; reason and description are
set for NOT_DELIVERED only):

    outcome       final_statuses[status]; a status in neither table is INTERMEDIATE with known=False
    reason        failure_by_status[status], else delivery_failures[code], else UNKNOWN
    description   the provider's own text, else description_by_status[status],
                  else delivery_failures[code], else fallback_description
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from channels.errors import NotSentReason
from channels.events import DeliveryFailure, DeliveryOutcome

__all__ = [
    "Classification",
    "ProviderTables",
    "classify_delivery",
    "log_unknown_status",
    "send_failure_reason",
]

log = logging.getLogger("sms.providers")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderTables:
    #: The provider's final delivery statuses -> DELIVERED or NOT_DELIVERED (never INTERMEDIATE).
    final_statuses: Mapping[str, DeliveryOutcome]
    #: Statuses acknowledged but never relayed (Sent was answered at send time), listed explicitly.
    intermediate_statuses: frozenset[str]
    #: Delivery error code -> (reason, description), for Details {Reason, Message}.
    delivery_failures: Mapping[str, tuple[DeliveryFailure, str]]
    #: Send error code -> NotSent reason; any other code refused for good is PROVIDER_REJECTED.
    send_failures: Mapping[str, NotSentReason]
    #: Details.Message of a NotDelivered status nothing more specific describes (``{status}`` is
    #: replaced). None: the event carries no description and the relay writes its own.
    fallback_description: str | None
    #: The reason a NotDelivered status itself gives; it wins over the error code's reason.
    failure_by_status: Mapping[str, DeliveryFailure] = field(default_factory=dict)
    #: The description a NotDelivered status itself gives; it wins over the error code's.
    description_by_status: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Classification:
    outcome: DeliveryOutcome
    #: Set for NOT_DELIVERED only.
    reason: DeliveryFailure | None = None
    description: str | None = None
    #: False when the status is in neither table (then INTERMEDIATE: nothing is relayed, and the
    #: adapter logs it, since it may be a status the provider added).
    known: bool = True


def classify_delivery(
    tables: ProviderTables, status: str, error_code: str | None = None, *, detail: str | None = None
) -> Classification:
    """Classify a normalized delivery ``status``; ``detail`` is the provider's own failure text."""
    outcome = tables.final_statuses.get(status)
    if outcome is None:
        return Classification(
            outcome=DeliveryOutcome.INTERMEDIATE, known=status in tables.intermediate_statuses
        )
    if outcome is not DeliveryOutcome.NOT_DELIVERED:
        return Classification(outcome=outcome)
    by_code = tables.delivery_failures.get(error_code or "")
    reason = tables.failure_by_status.get(status) or (by_code[0] if by_code else DeliveryFailure.UNKNOWN)
    fallback = tables.fallback_description
    description = (
        detail
        or tables.description_by_status.get(status)
        or (by_code[1] if by_code else None)
        or (fallback.format(status=status) if fallback is not None else None)
    )
    return Classification(outcome=outcome, reason=reason, description=description)


def log_unknown_status(provider: str, status: str, message_id: str) -> None:
    """Warn about a delivery status in neither of the provider's tables (it is kept as intermediate)."""
    log.warning(
        "%s delivery report MessageId=%s: unknown status %s, taken as intermediate (not relayed)",
        provider,
        repr(message_id)[:100],
        repr(status)[:60],
    )


def send_failure_reason(tables: ProviderTables, code: str | int | None) -> NotSentReason:
    """Why a send refused for good with this provider error code was not sent."""
    if code is None:
        return NotSentReason.PROVIDER_REJECTED
    return tables.send_failures.get(str(code), NotSentReason.PROVIDER_REJECTED)
