"""App settings (environment variables / Function App application settings).

Every setting is documented in README.md and local.settings.json.example. A missing or invalid
setting becomes a :class:`ConfigurationError` naming it; nothing is read at import time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import AliasChoices, Field, HttpUrl, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["AppSettings", "ConfigurationError", "SettingProblem", "load"]

#: Azurite's well-known development account (public, documented by Microsoft; not a secret).
AZURITE_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
DEVELOPMENT_STORAGE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    f"AccountKey={AZURITE_ACCOUNT_KEY};"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
    "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)


@dataclass(frozen=True, slots=True)
class SettingProblem:
    setting: str
    message: str

    def __str__(self) -> str:
        return f"{self.setting}: {self.message}"


class ConfigurationError(Exception):
    def __init__(self, problems: list[SettingProblem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems

    @classmethod
    def single(cls, setting: str, message: str) -> ConfigurationError:
        return cls([SettingProblem(setting, message)])


class AppSettings(BaseSettings):
    """Settings shared by every provider. Provider settings live in their adapter module."""

    model_config = SettingsConfigDict(extra="ignore", env_ignore_empty=True, case_sensitive=False)

    sms_provider: str = Field(default="simulator", validation_alias="SMS_PROVIDER")
    #: The app's externally visible base URL (e.g. https://contoso-sms.azurewebsites.net), used to
    #: build the callback URLs providers call and to verify their signatures.
    public_base_url: HttpUrl | None = Field(default=None, validation_alias="PUBLIC_BASE_URL")
    storage_connection: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("AzureWebJobsStorage", "AZUREWEBJOBSSTORAGE")
    )
    max_segments: int = Field(default=10, ge=1, le=50, validation_alias="MAX_SEGMENTS")
    #: Total time one outbound request may spend on provider retries before answering 503.
    send_budget_seconds: float = Field(default=8.0, gt=0, le=60, validation_alias="SEND_BUDGET_SECONDS")
    provider_timeout_seconds: float = Field(
        default=5.0, gt=0, le=30, validation_alias="PROVIDER_TIMEOUT_SECONDS"
    )
    retention_days: int = Field(default=30, ge=1, le=3650, validation_alias="RETENTION_DAYS")
    max_body_bytes: int = Field(default=65536, ge=1024, validation_alias="MAX_BODY_BYTES")
    #: ISO 3166 region for recipient numbers written without a leading + (unset: + is required).
    default_region: str | None = Field(default=None, validation_alias="DEFAULT_REGION")
    #: "sender=provider[:account],…": which provider (and account) sends for each channel-instance
    #: sender (the payload's From). Unset: every sender goes through SMS_PROVIDER.
    sender_routes: Annotated[dict[str, tuple[str, str | None]], NoDecode] = Field(
        default_factory=dict, validation_alias="SENDER_ROUTES"
    )

    @field_validator("sender_routes", mode="before")
    @classmethod
    def _routes(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        routes: dict[str, tuple[str, str | None]] = {}
        for item in value.split(","):
            if not item.strip():
                continue
            sender, sep, target = item.partition("=")
            provider, _, account = target.strip().partition(":")
            if not sep or not sender.strip() or not provider:
                raise ValueError("expected sender=provider[:account] pairs separated by commas")
            routes[sender_key(sender)] = (provider.lower(), account.strip().lower() or None)
        return routes

    @field_validator("default_region")
    @classmethod
    def _known_region(cls, value: str | None) -> str | None:
        if value is None:
            return None
        import phonenumbers

        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError("not an ISO 3166 region code that phone numbers are known for (e.g. GB, US)")
        return region

    def storage_connection_string(self) -> str:
        if self.storage_connection is None:
            raise ConfigurationError.single(
                "AzureWebJobsStorage", "required: the storage account for send state and queues"
            )
        value = self.storage_connection.get_secret_value().strip()
        if value.lower().replace(" ", "") == "usedevelopmentstorage=true":
            return DEVELOPMENT_STORAGE
        return value

    def callback_url(self, path: str) -> str | None:
        if self.public_base_url is None:
            return None
        return str(self.public_base_url).rstrip("/") + "/" + path.lstrip("/")


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def sender_key(sender: str) -> str:
    """A sender as routes are keyed: phone numbers in E.164, sender names as written."""
    from core.phones import InvalidPhoneNumber, to_e164

    text = sender.strip()
    try:
        return to_e164(text) if text.startswith("+") else text
    except InvalidPhoneNumber:
        return text


def load(cls: type[SettingsT], *, account: str | None = None, **overrides: Any) -> SettingsT:
    """Build settings from the environment (plus ``overrides``), naming each bad setting.

    With ``account``, a provider's settings of that named account are read: ``TWILIO_EU_ACCOUNT_SID``
    for account ``eu`` instead of ``TWILIO_ACCOUNT_SID``.
    """
    prefix = str(cls.model_config.get("env_prefix", ""))
    if account:
        prefix = f"{prefix}{account.upper()}_"
        overrides["_env_prefix"] = prefix
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigurationError([_problem(cls, err, prefix) for err in exc.errors()]) from None


def _problem(cls: type[BaseSettings], error: Any, prefix: str) -> SettingProblem:
    # pydantic's message, never the input value (it may be a secret); settings named in a
    # model-level message get the account's prefix
    default_prefix = str(cls.model_config.get("env_prefix", ""))
    message = str(error["msg"])
    if default_prefix and prefix != default_prefix:
        message = re.sub(rf"\b{default_prefix}", prefix, message)
    field_name = str(error["loc"][0]) if error["loc"] else ""
    field = cls.model_fields.get(field_name)
    alias = field.validation_alias if field is not None else None
    if isinstance(alias, str):
        setting = alias
    elif isinstance(alias, AliasChoices):
        setting = str(alias.choices[0])
    elif field_name:
        setting = f"{prefix}{field_name}".upper()
    else:  # a rule across settings: name the first setting its message names
        named = re.search(rf"\b{prefix}[A-Z0-9_]+", message) if prefix else None
        setting = named.group(0) if named else prefix.rstrip("_") or "settings"
    return SettingProblem(setting, message.removeprefix("Value error, "))
