"""Dry run: with DATAVERSE_URL unset, relays are logged and appended to a JSON Lines file.

Each line is ``{"at": …, "api": "msdyn_D365ChannelsNotification", "body": {"notificationPayLoad": "…"}}``
(the channel's own API where DATAVERSE_CHANNEL_API_PREFIX names it), exactly the body the real call
would post (``DATAVERSE_DRY_RUN_FILE``, default
``dataverse-dry-run.jsonl`` in the app's folder).
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

from contracts import InboundPayload, NotificationPayload
from dataverse.settings import ChannelApis

log = logging.getLogger("sms.dataverse")

DRY_RUN_ORGANIZATION_ID = "00000000-0000-0000-0000-000000000000"


class DryRunDataverse:
    mode = "dry-run"

    def __init__(
        self,
        sink: Path,
        *,
        organization_id: str | None = None,
        channel_definitions: dict[str, UUID] | None = None,
        apis: ChannelApis | None = None,
    ) -> None:
        self.sink = sink
        self.apis = apis or ChannelApis()
        self._organization_id = organization_id or DRY_RUN_ORGANIZATION_ID
        self._definitions = channel_definitions or {}

    async def notify(self, payload: NotificationPayload) -> None:
        await self._write(self.apis.notification, {"notificationPayLoad": payload.to_wire_json()})
        log.info(
            "dry run: notification RequestId=%s Status=%s kept in %s",
            payload.request_id,
            payload.status,
            self.sink,
        )

    async def inbound(self, payload: InboundPayload) -> None:
        await self._write(self.apis.inbound, {"inboundPayLoad": payload.to_wire_json()})
        log.info(
            "dry run: inbound message for ChannelDefinitionId=%s kept in %s",
            payload.channel_definition_id,
            self.sink,
        )

    async def organization_id(self) -> str:
        return self._organization_id

    async def channel_definition_for(self, contact_point: str) -> UUID | None:
        return self._definitions.get(contact_point)

    async def aclose(self) -> None:
        return None

    async def _write(self, api: str, body: dict[str, Any]) -> None:
        line = json.dumps({"at": datetime.now(timezone.utc).isoformat(), "api": api, "body": body}) + "\n"

        def append() -> None:
            self.sink.parent.mkdir(parents=True, exist_ok=True)
            with self.sink.open("a", encoding="utf-8") as out:
                out.write(line)

        await asyncio.to_thread(append)
