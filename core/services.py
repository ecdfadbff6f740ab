"""The app's long-lived parts, built on first use and kept for the life of the worker process.

Nothing here runs at import time, so a cold start pays only for imports, and a missing setting
surfaces as a ConfigurationError on the request that needs it (and in /api/health).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from channels.base import SmsChannel
from channels.registry import build_channel
from core.ledger import SendLedger
from core.outbound import OutboundService
from core.settings import AppSettings, ConfigurationError, load

T = TypeVar("T")


class Services:
    def __init__(
        self,
        settings_factory: Callable[[], AppSettings] = lambda: load(AppSettings),
        *,
        channel_factory: Callable[[AppSettings], SmsChannel] = build_channel,
    ) -> None:
        self._settings_factory = settings_factory
        self._channel_factory = channel_factory
        self._settings: AppSettings | None = None
        self._ledger: SendLedger | None = None
        self._channel: SmsChannel | None = None
        self._outbound: OutboundService | None = None

    def settings(self) -> AppSettings:
        if self._settings is None:
            self._settings = self._settings_factory()
        return self._settings

    def ledger(self) -> SendLedger:
        if self._ledger is None:
            settings = self.settings()
            try:
                self._ledger = SendLedger(
                    settings.storage_connection_string(),
                    retention=timedelta(days=settings.retention_days),
                )
            except ValueError:
                raise ConfigurationError.single(
                    "AzureWebJobsStorage", "not a storage connection string"
                ) from None
        return self._ledger

    def channel(self) -> SmsChannel:
        if self._channel is None:
            self._channel = self._channel_factory(self.settings())
        return self._channel

    def outbound(self) -> OutboundService:
        if self._outbound is None:
            settings = self.settings()
            self._outbound = OutboundService(
                channel=self.channel(),
                ledger=self.ledger(),
                max_segments=settings.max_segments,
                send_budget_seconds=settings.send_budget_seconds,
                provider_timeout_seconds=settings.provider_timeout_seconds,
                default_region=settings.default_region,
            )
        return self._outbound

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.aclose()
        if self._ledger is not None:
            await asyncio.to_thread(self._ledger.close)
