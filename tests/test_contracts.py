from __future__ import annotations

import json
import uuid

import pytest
from openapi_spec_validator import validate as validate_openapi
from pydantic import ValidationError

from contracts import (
    ChannelStatus,
    Details,
    InboundPayload,
    NotificationPayload,
    OutboundPayload,
    OutboundResponse,
)
from contracts.schemas import CONTRACTS, OPENAPI_PATH, render, render_openapi, schema_path

GUID = "3F2504E0-4F89-11D3-9A0C-0305E82C3301"


def test_outbound_payload_reads_the_wire_names_and_ignores_unknown_fields() -> None:
    payload = OutboundPayload.model_validate(
        {
            "ChannelDefinitionId": GUID,
            "RequestId": "r-1",
            "From": "+14155550100",
            "To": "+14155550123",
            "Message": {"text": "hi"},
            "Unexpected": {"nested": 1},
            "MarketingAppContext": {
                "CustomerJourneyId": None,
                "UserId": None,
                "UserEntityType": None,
                "IsTestSend": True,
            },
        }
    )
    assert payload.channel_definition_id == uuid.UUID(GUID)
    assert payload.from_ == "+14155550100"
    assert payload.is_test_send
    assert "Unexpected" not in payload.model_dump(by_alias=True)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"ChannelDefinitionId": "not-a-guid"}, "ChannelDefinitionId"),
        ({"RequestId": ""}, "RequestId"),
        ({"Message": {"text": 5}}, "Message.text"),
        ({"Message": "hi"}, "Message"),
        ({"To": None}, "To"),
    ],
)
def test_outbound_payload_names_the_offending_field(change: dict[str, object], field: str) -> None:
    document = {
        "ChannelDefinitionId": GUID,
        "RequestId": "r-1",
        "From": "a",
        "To": "b",
        "Message": {"text": "x"},
    }
    document.update(change)
    with pytest.raises(ValidationError) as caught:
        OutboundPayload.model_validate(document)
    assert [".".join(map(str, e["loc"])) for e in caught.value.errors()] == [field]


def test_outbound_response_serializes_lowercase_guid_and_omits_missing_message_id() -> None:
    sent = OutboundResponse(
        channel_definition_id=uuid.UUID(GUID), request_id="r-1", message_id="SM1", status=ChannelStatus.SENT
    )
    assert sent.to_wire() == {
        "ChannelDefinitionId": GUID.lower(),
        "MessageId": "SM1",
        "RequestId": "r-1",
        "Status": "Sent",
    }
    not_sent = OutboundResponse(
        channel_definition_id=uuid.UUID(GUID),
        request_id="r-2",
        status=ChannelStatus.NOT_SENT,
        details=Details(reason="EmptyMessage", message="The message has no text."),
    )
    assert json.loads(not_sent.to_wire_json()) == {
        "ChannelDefinitionId": GUID.lower(),
        "RequestId": "r-2",
        "Status": "NotSent",
        "Details": {"Reason": "EmptyMessage", "Message": "The message has no text."},
    }


def test_outbound_response_carries_details_exactly_when_not_sent() -> None:
    details = Details(reason="EmptyMessage", message="The message has no text.")
    with pytest.raises(ValidationError, match="NotSent answer carries Details"):
        OutboundResponse(channel_definition_id=uuid.UUID(GUID), request_id="r", status=ChannelStatus.NOT_SENT)
    with pytest.raises(ValidationError, match="only a NotSent answer"):
        OutboundResponse(
            channel_definition_id=uuid.UUID(GUID), request_id="r", status=ChannelStatus.SENT, details=details
        )


@pytest.mark.parametrize(
    "value, expected", [("7c9e-attempt-set", "7c9e-attempt-set"), ("", None), ("  ", None), (None, None)]
)
def test_idempotency_id_is_read_and_blank_counts_as_absent(value: object, expected: str | None) -> None:
    document = {
        "ChannelDefinitionId": GUID,
        "RequestId": "r-1",
        "IdempotencyId": value,
        "From": "a",
        "To": "b",
        "Message": {"text": "x"},
    }
    assert OutboundPayload.model_validate(document).idempotency_id == expected


@pytest.mark.parametrize("value", [42, ["a"], {"id": "a"}, True, "x" * 257])
def test_idempotency_id_of_another_type_or_too_long_names_the_field(value: object) -> None:
    document = {
        "ChannelDefinitionId": GUID,
        "RequestId": "r-1",
        "IdempotencyId": value,
        "From": "a",
        "To": "b",
        "Message": {"text": "x"},
    }
    with pytest.raises(ValidationError) as caught:
        OutboundPayload.model_validate(document)
    assert [".".join(map(str, e["loc"])) for e in caught.value.errors()] == ["IdempotencyId"]


def test_notification_payload_carries_status_details_and_details() -> None:
    notification = NotificationPayload(
        channel_definition_id=uuid.UUID(GUID),
        request_id="r-1",
        message_id="SM1",
        from_="+14155550100",
        organization_id="org",
        status=ChannelStatus.NOT_DELIVERED,
        status_details={"ProviderStatus": "undelivered", "ErrorCode": "30003"},
        details=Details(reason="Unreachable", message="handset off"),
    )
    assert notification.to_wire() == {
        "ChannelDefinitionId": GUID.lower(),
        "RequestId": "r-1",
        "MessageId": "SM1",
        "From": "+14155550100",
        "OrganizationId": "org",
        "Status": "NotDelivered",
        "StatusDetails": {"ProviderStatus": "undelivered", "ErrorCode": "30003"},
        "Details": {"Reason": "Unreachable", "Message": "handset off"},
    }


def test_inbound_payload_wire_names() -> None:
    inbound = InboundPayload(
        channel_definition_id=uuid.UUID(GUID),
        to="+14155550100",
        from_="+14155550123",
        organization_id="org",
        message={"text": "STOP"},
    )
    assert inbound.to_wire() == {
        "ChannelDefinitionId": GUID.lower(),
        "To": "+14155550100",
        "From": "+14155550123",
        "OrganizationId": "org",
        "Message": {"text": "STOP"},
    }


@pytest.mark.parametrize("stem", sorted(CONTRACTS))
def test_checked_in_schema_matches_the_model(stem: str) -> None:
    model, mode = CONTRACTS[stem]
    assert schema_path(stem).read_text(encoding="utf-8") == render(model, mode), (
        f"docs/schemas/{stem}.schema.json is stale: run `python -m contracts.schemas`"
    )


def test_schemas_use_wire_names() -> None:
    schema = json.loads(schema_path("outbound-payload").read_text(encoding="utf-8"))
    assert set(schema["required"]) == {"ChannelDefinitionId", "RequestId", "From", "To", "Message"}


def test_checked_in_openapi_document_matches_the_models() -> None:
    assert OPENAPI_PATH.read_text(encoding="utf-8") == render_openapi(), (
        "docs/openapi.json is stale: run `python -m contracts.schemas`"
    )


def test_openapi_document_is_valid_openapi_3_1_and_carries_the_2026_contract() -> None:
    document = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    validate_openapi(document)  # the OpenAPI 3.1 specification's own schema and rules
    assert document["openapi"] == "3.1.0"
    schemas = document["components"]["schemas"]
    assert "IdempotencyId" in schemas["OutboundPayload"]["properties"]
    assert schemas["OutboundResponse"]["properties"]["Details"]["anyOf"][0] == {
        "$ref": "#/components/schemas/Details"
    }
    assert set(document["paths"]) == {
        "/outbound",
        "/providers/{provider}/delivery-reports",
        "/providers/{provider}/inbound",
        "/health",
    }
