"""The app's long-lived parts, built on first use and kept for the life of the worker process.

Nothing here runs at import time, so a cold start pays only for imports, and a missing setting
surfaces as a ConfigurationError on the request that needs it (and in /api/health). Every setting
is read through :func:`core.settings.load`, from the environment.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from channels.registry import build_adapter
from core.settings import AppSettings, ConfigurationError, StorageConnectionString, StorageLocation, load
from dataverse.auth import MsalTokenProvider
from dataverse.client import DataverseClient, DataverseGateway
from dataverse.dry_run import DryRunDataverse
from dataverse.settings import DataverseSettings, IdentitySettings
from storage.ledger import SendLedger
from storage.relay_queue import RelayQueue
from usecases.intake import WebhookIntake
from usecases.observed import ObservedDataverse
from usecases.outbound import OutboundService
from usecases.relay import RelayService
from usecases.routing import AdapterBuilder, ProviderRouter

__all__ = ["Services"]

T = TypeVar("T")


class Services:
    def __init__(self, *, adapter_factory: AdapterBuilder = build_adapter) -> None:
        """``adapter_factory`` builds a provider adapter for (settings, provider, account)."""
        self._adapter_factory = adapter_factory
        self._settings: AppSettings | None = None
        self._ledger: SendLedger | None = None
        self._router: ProviderRouter | None = None
        self._outbound: OutboundService | None = None
        self._intake: WebhookIntake | None = None
        self._dataverse: DataverseGateway | None = None
        self._relay_queue: RelayQueue | None = None
        self._relay: RelayService | None = None

    def settings(self) -> AppSettings:
        if self._settings is None:
            self._settings = load(AppSettings)
        return self._settings

    def ledger(self) -> SendLedger:
        if self._ledger is None:
            retention = timedelta(days=self.settings().retention_days)
            self._ledger = self._storage(lambda where: SendLedger(where, retention=retention))
        return self._ledger

    def _storage(self, build: Callable[[StorageLocation], T]) -> T:
        """A storage client for AzureWebJobsStorage (or its identity-based settings); the SDKs'
        ValueError for a malformed connection string or URL becomes a problem naming the setting."""
        location = self.settings().storage_location()
        try:
            return build(location)
        except ValueError:
            if isinstance(location, StorageConnectionString):
                raise ConfigurationError.single(
                    "AzureWebJobsStorage", "not a storage connection string"
                ) from None
            raise ConfigurationError.single(
                "AzureWebJobsStorage__tableServiceUri", "service URLs or managed identity not usable"
            ) from None

    def router(self) -> ProviderRouter:
        if self._router is None:
            self._router = ProviderRouter(self.settings(), self._adapter_factory)
        return self._router

    def outbound(self) -> OutboundService:
        if self._outbound is None:
            settings = self.settings()
            router = self.router()
            problems = router.check()  # bad settings surface before anything is claimed
            if problems:
                raise ConfigurationError(problems)
            self._outbound = OutboundService(
                adapter_for=router.for_sender,
                ledger=self.ledger(),
                max_segments=settings.max_segments,
                send_budget_seconds=settings.send_budget_seconds,
                default_region=settings.default_region,
            )
        return self._outbound

    def intake(self) -> WebhookIntake:
        if self._intake is None:
            settings = self.settings()
            base = settings.public_base_url
            self._intake = WebhookIntake(
                router=self.router(),
                queue=self.relay_queue(),
                max_body_bytes=settings.max_body_bytes,
                public_base_url=str(base) if base else None,
            )
        return self._intake

    def dataverse(self) -> DataverseGateway:
        if self._dataverse is None:
            settings = load(DataverseSettings)
            if settings.base_url is None:
                self._dataverse = DryRunDataverse(
                    settings.dry_run_file,
                    organization_id=settings.organization_id,
                    channel_definitions=settings.channel_definitions,
                    apis=settings.channel_apis,
                )
            else:
                tokens = MsalTokenProvider(load(IdentitySettings), settings.base_url)
                self._dataverse = DataverseClient(settings, tokens)
            self._dataverse = ObservedDataverse(self._dataverse)  # spans; notes relayed jobs
        return self._dataverse

    def relay_queue(self) -> RelayQueue:
        if self._relay_queue is None:
            self._relay_queue = self._storage(RelayQueue)
        return self._relay_queue

    def relay(self) -> RelayService:
        if self._relay is None:
            self._relay = RelayService(
                ledger=self.ledger(), queue=self.relay_queue(), dataverse=self.dataverse()
            )
        return self._relay

    async def aclose(self) -> None:
        if self._router is not None:
            await self._router.aclose()
        if self._dataverse is not None:
            await self._dataverse.aclose()
        if self._relay_queue is not None:
            await self._relay_queue.aclose()
        if self._ledger is not None:
            await self._ledger.aclose()
