"""Dataverse and Entra settings, named as in azure-identity's environment convention."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit
from uuid import UUID

from pydantic import Field, HttpUrl, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.phones import to_e164

__all__ = ["ChannelApis", "DataverseSettings", "IdentitySettings", "channel_apis_of"]


@dataclass(frozen=True, slots=True)
class ChannelApis:
    """The Dataverse actions relays call. Both paths take the same parameter names
    (``notificationPayLoad``, ``inboundPayLoad``) and the same payloads."""

    notification: str = "msdyn_D365ChannelsNotification"
    inbound: str = "msdyn_D365ChannelsInbound"


def channel_apis_of(prefix: str | None) -> ChannelApis:
    """Journeys' base actions directly (no prefix), or the channel's own delivery-report and inbound
    custom APIs that ``python -m provisioning`` creates under ``prefix``; their plug-ins call the
    base actions with the payload unchanged."""
    if prefix is None:
        return ChannelApis()
    return ChannelApis(notification=f"{prefix}_SmsDeliveryReport", inbound=f"{prefix}_SmsInbound")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class DataverseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DATAVERSE_", extra="ignore", env_ignore_empty=True)

    #: e.g. https://contoso.crm.dynamics.com; unset = dry run (relays written to ``dry_run_file``).
    url: HttpUrl | None = None
    #: Skips the WhoAmI call when set.
    organization_id: str | None = None
    #: Requests in flight per process (Dataverse refuses more than 52 per user and web server).
    max_concurrency: int = Field(default=8, ge=1, le=52)
    timeout_seconds: float = Field(default=30.0, gt=0, le=120)
    #: Notifications and inbound messages per $batch request at most (1: every relay its own request).
    batch_size: int = Field(default=100, ge=1, le=1000)
    dry_run_file: Path = Path("dataverse-dry-run.jsonl")
    #: "number=ChannelDefinitionId,…": our numbers' channel definitions, skipping the lookup in Dataverse.
    channel_definitions: Annotated[dict[str, UUID], NoDecode] = Field(default_factory=dict)
    #: Unset: relays call Journeys' msdyn_ actions directly. A publisher prefix: they call the channel's
    #: own custom APIs <prefix>_SmsDeliveryReport and <prefix>_SmsInbound (python -m provisioning).
    channel_api_prefix: str | None = None

    @field_validator("channel_api_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z][a-z0-9]{1,7}", value.strip()):
            raise ValueError("a publisher customization prefix: 2 to 8 lower-case letters or digits")
        return value.strip() if value is not None else None

    @property
    def channel_apis(self) -> ChannelApis:
        return channel_apis_of(self.channel_api_prefix)

    @field_validator("url")
    @classmethod
    def _https_unless_loopback(cls, value: HttpUrl | None) -> HttpUrl | None:
        if (
            value is not None
            and value.scheme != "https"
            and not _is_loopback(urlsplit(str(value)).hostname or "")
        ):
            raise ValueError("must be https (plain http is accepted for loopback addresses only)")
        return value

    @field_validator("channel_definitions", mode="before")
    @classmethod
    def _pairs(cls, value: object) -> object:
        if isinstance(value, str):
            pairs: dict[str, str] = {}
            for item in value.split(","):
                if not item.strip():
                    continue
                number, sep, definition = item.partition("=")
                if not sep:
                    raise ValueError("expected number=ChannelDefinitionId pairs separated by commas")
                pairs[to_e164(number.strip())] = definition.strip()
            return pairs
        return value

    @property
    def base_url(self) -> str | None:
        return str(self.url).rstrip("/") if self.url is not None else None


class IdentitySettings(BaseSettings):
    """Client secret, else certificate, else managed identity (AZURE_CLIENT_ID = user-assigned)."""

    model_config = SettingsConfigDict(env_prefix="AZURE_", extra="ignore", env_ignore_empty=True)

    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_certificate_path: Path | None = None
    client_certificate_password: SecretStr | None = None
    authority_host: HttpUrl = HttpUrl("https://login.microsoftonline.com")

    @property
    def uses_app_registration(self) -> bool:
        return self.client_secret is not None or self.client_certificate_path is not None
