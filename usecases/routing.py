"""Which adapter, with which account's settings, serves a sender or a provider's webhooks.

With SENDER_ROUTES unset every sender goes through SMS_PROVIDER. With it, each adapter-instance
sender (the outbound payload's From) names its provider and optional account
(``+14155550100=twilio,+14155550101=twilio:eu,ContosoInfo=vonage``); account ``eu`` reads
``TWILIO_EU_*`` instead of ``TWILIO_*``. A sender with no route is not sent (NotSent, InvalidSender).
Webhooks of a provider are verified against each of its configured accounts in turn.
"""

from __future__ import annotations

from collections.abc import Callable

from channels.base import ProviderAdapter
from channels.registry import build_adapter
from core.settings import AppSettings, ConfigurationError, SettingProblem, sender_key

AdapterBuilder = Callable[[AppSettings, str | None, str | None], ProviderAdapter]


class ProviderRouter:
    def __init__(self, settings: AppSettings, build: AdapterBuilder = build_adapter) -> None:
        self.settings = settings
        self._build = build
        self._adapters: dict[tuple[str, str | None], ProviderAdapter] = {}

    def _adapter(self, provider: str | None, account: str | None) -> ProviderAdapter:
        """``provider`` None: SMS_PROVIDER's (so a bad value is reported under that setting's name)."""
        key = (provider or self.default_provider, account)
        if key not in self._adapters:
            self._adapters[key] = self._build(self.settings, provider, account)
        return self._adapters[key]

    @property
    def default_provider(self) -> str:
        return self.settings.sms_provider.strip().lower()

    def for_sender(self, sender: str) -> ProviderAdapter | None:
        """The adapter that sends for ``sender``; None when routes are set and none matches."""
        routes = self.settings.sender_routes
        if not routes:
            return self._adapter(None, None)
        route = routes.get(sender_key(sender))
        return self._adapter(*route) if route is not None else None

    def for_webhooks(self, provider: str) -> list[ProviderAdapter]:
        """Every account's adapter of ``provider``, if the app sends through it: the providers in
        SENDER_ROUTES, or SMS_PROVIDER without routes. Empty for any other provider, so that
        credentials left in the settings of a provider not in use open no webhook."""
        routes = self.settings.sender_routes
        if not routes:
            return [self._adapter(None, None)] if provider == self.default_provider else []
        accounts = {account for routed, account in routes.values() if routed == provider}
        return [self._adapter(provider, account) for account in sorted(accounts, key=lambda a: a or "")]

    def check(self) -> list[SettingProblem]:
        """Build every routed adapter (or the single SMS_PROVIDER one); return what is misconfigured."""
        targets: set[tuple[str | None, str | None]] = set(self.settings.sender_routes.values()) or {
            (None, None)
        }
        problems: list[SettingProblem] = []
        for provider, account in sorted(targets, key=lambda t: (t[0] or "", t[1] or "")):
            try:
                self._adapter(provider, account)
            except ConfigurationError as exc:
                problems.extend(p for p in exc.problems if p not in problems)
        return problems

    async def aclose(self) -> None:
        for adapter in self._adapters.values():
            await adapter.aclose()
