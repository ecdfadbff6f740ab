"""The checked-in JSON Schemas of the wire contracts and the OpenAPI document of the HTTP API:
``python -m contracts.schemas`` rewrites them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contracts import InboundPayload, NotificationPayload, OutboundPayload, OutboundResponse, openapi
from contracts.base import WireModel

DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"
SCHEMA_DIR = DOCS_DIR / "schemas"
OPENAPI_PATH = DOCS_DIR / "openapi.json"

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


def render_openapi() -> str:
    return json.dumps(openapi.build(), indent=2, sort_keys=True) + "\n"


def write_all() -> list[Path]:
    SCHEMA_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, (model, mode) in CONTRACTS.items():
        path = schema_path(stem)
        path.write_text(render(model, mode), encoding="utf-8")
        written.append(path)
    OPENAPI_PATH.write_text(render_openapi(), encoding="utf-8")
    written.append(OPENAPI_PATH)
    return written


if __name__ == "__main__":
    for path in write_all():
        print(path)
