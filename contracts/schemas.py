"""The checked-in JSON Schemas of the wire contracts: ``python -m contracts.schemas`` rewrites them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contracts import InboundPayload, NotificationPayload, OutboundPayload, OutboundResponse
from contracts.base import WireModel

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "docs" / "schemas"

#: File stem -> (model, mode). Inputs we parse are described as validated; outputs as serialized.
CONTRACTS: dict[str, tuple[type[WireModel], str]] = {
    "outbound-payload": (OutboundPayload, "validation"),
    "outbound-response": (OutboundResponse, "serialization"),
    "notification-payload": (NotificationPayload, "serialization"),
    "inbound-payload": (InboundPayload, "serialization"),
}


def render(model: type[WireModel], mode: str) -> str:
    schema: dict[str, Any] = model.model_json_schema(by_alias=True, mode=mode)  # type: ignore[arg-type]
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def schema_path(stem: str) -> Path:
    return SCHEMA_DIR / f"{stem}.schema.json"


def write_all() -> list[Path]:
    SCHEMA_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, (model, mode) in CONTRACTS.items():
        path = schema_path(stem)
        path.write_text(render(model, mode), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_all():
        print(path)
