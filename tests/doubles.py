"""In-process stand-ins for unit tests (end-to-end tests use real servers instead)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

from channels.base import SendReceipt, SendRequest
from channels.errors import SendError
from function_app import create_app
from storage.ledger import SendRecord, SendState
from tests.conftest import OUR_NUMBER
from usecases.composition import Services


class ScriptedAdapter:
    """A provider whose answers are scripted; each item is a receipt or an exception to raise."""

    name: ClassVar[str] = "scripted"
    idempotent_resend_window: ClassVar[timedelta | None] = None

    def __init__(self, *script: SendReceipt | SendError, hold: asyncio.Event | None = None) -> None:
        self.script = list(script)
        self.requests: list[SendRequest] = []
        self.hold = hold
        #: Set once a send has reached the provider call.
        self.entered = asyncio.Event()

    async def send(self, request: SendRequest) -> SendReceipt:
        self.requests.append(request)
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        outcome = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(outcome, SendError):
            raise outcome
        return outcome

    async def aclose(self) -> None:
        return None


class IdempotentScriptedAdapter(ScriptedAdapter):
    idempotent_resend_window: ClassVar[timedelta | None] = timedelta(minutes=4)


class RecordingSleep:
    """Records requested sleeps and returns at once (the retry policy is under test, not time)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await asyncio.sleep(0)


def send_record(provider: str, *, state: SendState = SendState.SENT, segments: int = 1) -> SendRecord:
    """A send row as the outbound service leaves it, for tests that start after the send."""
    now = datetime.now(timezone.utc)
    return SendRecord(
        channel_definition_id=uuid.uuid4(),
        request_id=f"req-{uuid.uuid4().hex[:8]}",
        state=state,
        provider=provider,
        sender=OUR_NUMBER,
        fingerprint="f",
        idempotency_key=uuid.uuid4(),
        first_attempt_at=now,
        lease_until=now,
        expires_at=now + timedelta(days=1),
        segments=segments,
        encoding="GSM-7",
    )


def app_function(services: Services, name: str) -> Any:
    """The user function ``name`` of the app as function_app builds it, over ``services``."""
    [function] = [f for f in create_app(services).get_functions() if f.get_function_name() == name]
    return function.get_user_function()
