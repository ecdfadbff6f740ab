"""App settings (environment variables / Function App application settings).

Every setting is documented in README.md and local.settings.json.example. A missing or invalid
setting becomes a :class:`ConfigurationError` naming it; nothing is read at import time.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeAlias, TypeVar
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, HttpUrl, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = [
    "AppSettings",
    "ConfigurationError",
    "SettingProblem",
    "StorageConnectionString",
    "StorageIdentity",
    "StorageLocation",
    "load",
    "storage_location",
    "storage_location_from_environ",
]

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


#: The storage connection setting, as the Functions host names it (the queue trigger's ``connection``).
STORAGE_SETTING = "AzureWebJobsStorage"
#: An app setting still holding this text is a Key Vault reference App Service could not resolve.
KEY_VAULT_REFERENCE = re.compile(r"\s*@Microsoft\.KeyVault\(", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class StorageConnectionString:
    """Storage reached with a connection string (an account key or SAS; Azurite locally)."""

    value: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class StorageIdentity:
    """Storage reached with a managed identity: the identity-based ``AzureWebJobsStorage__*`` settings."""

    table_uri: str
    queue_uri: str
    #: A user-assigned identity's client id; None: the system-assigned identity.
    client_id: str | None = None


#: Where the app's tables and queues are, and how to authenticate to them.
StorageLocation: TypeAlias = StorageConnectionString | StorageIdentity


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
    #: Identity-based storage (used when AzureWebJobsStorage is unset), as the Functions host reads it.
    storage_account_name: str | None = Field(
        default=None, validation_alias="AzureWebJobsStorage__accountName"
    )
    storage_table_uri: str | None = Field(
        default=None, validation_alias="AzureWebJobsStorage__tableServiceUri"
    )
    storage_queue_uri: str | None = Field(
        default=None, validation_alias="AzureWebJobsStorage__queueServiceUri"
    )
    storage_credential: str | None = Field(default=None, validation_alias="AzureWebJobsStorage__credential")
    storage_client_id: str | None = Field(default=None, validation_alias="AzureWebJobsStorage__clientId")
    max_segments: int = Field(default=10, ge=1, le=50, validation_alias="MAX_SEGMENTS")
    #: The time within which an outbound request is answered: provider attempts are cut at its end.
    #: At most 9 s: with a cold start it must fit the plug-in's timeout (15 s), which must fit
    #: Journeys' 20 s (README "Twenty seconds, end to end").
    send_budget_seconds: float = Field(default=8.0, gt=0, le=9, validation_alias="SEND_BUDGET_SECONDS")
    #: Per provider call (each phase: connect at most 3 s, write, read); also cut at the send budget.
    provider_timeout_seconds: float = Field(
        default=5.0, gt=0, le=9, validation_alias="PROVIDER_TIMEOUT_SECONDS"
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
        return parse_sender_routes(value) if isinstance(value, str) else value

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

    def storage_location(self) -> StorageLocation:
        """The storage account for send state and queues; a ConfigurationError names a bad setting."""
        return storage_location(
            STORAGE_SETTING,
            self.storage_connection.get_secret_value() if self.storage_connection else None,
            account_name=self.storage_account_name,
            table_uri=self.storage_table_uri,
            queue_uri=self.storage_queue_uri,
            credential=self.storage_credential,
            client_id=self.storage_client_id,
        )

    def callback_url(self, path: str) -> str | None:
        if self.public_base_url is None:
            return None
        return str(self.public_base_url).rstrip("/") + "/" + path.lstrip("/")


SettingsT = TypeVar("SettingsT", bound=BaseSettings)

_ACCOUNT_NAME = re.compile(r"[a-z0-9]{3,24}")


def storage_location(
    setting: str,
    connection: str | None,
    *,
    account_name: str | None = None,
    table_uri: str | None = None,
    queue_uri: str | None = None,
    credential: str | None = None,
    client_id: str | None = None,
) -> StorageLocation:
    """Where storage is, resolved as the Functions host resolves a connection named ``setting``: the
    connection string ``<setting>`` if set, otherwise the identity-based ``<setting>__*`` settings
    (``__accountName`` or ``__tableServiceUri`` / ``__queueServiceUri``, ``__credential``, ``__clientId``).
    """
    if connection and connection.strip():
        value = connection.strip()
        if value.lower().replace(" ", "") == "usedevelopmentstorage=true":
            return StorageConnectionString(DEVELOPMENT_STORAGE)
        return StorageConnectionString(value)
    account_name, table_uri, queue_uri, credential, client_id = (
        value.strip() if value and value.strip() else None
        for value in (account_name, table_uri, queue_uri, credential, client_id)
    )
    if not (account_name or table_uri or queue_uri or credential or client_id):
        raise ConfigurationError.single(
            setting,
            f"required: a storage connection string, or the identity-based {setting}__accountName "
            f"(or {setting}__tableServiceUri and {setting}__queueServiceUri) settings",
        )
    problems: list[SettingProblem] = []
    if credential is not None and credential.lower() != "managedidentity":
        problems.append(SettingProblem(f"{setting}__credential", "only managedidentity is supported"))
    elif client_id is not None and credential is None:
        problems.append(
            SettingProblem(
                f"{setting}__credential", f"must be managedidentity when {setting}__clientId is set"
            )
        )
    if client_id is not None:
        try:
            uuid.UUID(client_id)
        except ValueError:
            problems.append(SettingProblem(f"{setting}__clientId", "not a client id (a GUID)"))
    if account_name is not None and not _ACCOUNT_NAME.fullmatch(account_name):
        problems.append(
            SettingProblem(
                f"{setting}__accountName", "not a storage account name (3-24 lowercase letters, digits)"
            )
        )
        account_name = None
    uris: dict[str, str] = {}
    for service, given in (("table", table_uri), ("queue", queue_uri)):
        name = f"{setting}__{service}ServiceUri"
        if given is None:
            if account_name is not None:
                uris[service] = f"https://{account_name}.{service}.core.windows.net"
            elif not any(p.setting == f"{setting}__accountName" for p in problems):
                problems.append(SettingProblem(name, f"required (or {setting}__accountName)"))
            continue
        parts = urlsplit(given)
        if parts.scheme.lower() != "https" or not parts.hostname or parts.query or parts.fragment:
            # the SDKs send a managed identity's token over TLS only
            problems.append(SettingProblem(name, "not an https:// service URL"))
        else:
            uris[service] = given.rstrip("/")
    if problems:
        raise ConfigurationError(problems)
    return StorageIdentity(table_uri=uris["table"], queue_uri=uris["queue"], client_id=client_id)


def storage_location_from_environ(setting: str, environ: Mapping[str, str] | None = None) -> StorageLocation:
    """:func:`storage_location` for a connection named ``setting`` in ``environ`` (names are matched
    without regard to case, as app settings are), e.g. a queue trigger's ``connection``."""
    values = {name.lower(): value for name, value in (os.environ if environ is None else environ).items()}

    def get(suffix: str) -> str | None:
        return values.get(f"{setting}{suffix}".lower())

    return storage_location(
        setting,
        get(""),
        account_name=get("__accountName"),
        table_uri=get("__tableServiceUri"),
        queue_uri=get("__queueServiceUri"),
        credential=get("__credential"),
        client_id=get("__clientId"),
    )


def parse_sender_routes(value: str) -> dict[str, tuple[str, str | None]]:
    """SENDER_ROUTES ``sender=provider[:account],…`` -> sender key -> (provider, account or None)."""
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
    unresolved = _unresolved_references(cls, prefix, overrides)
    try:
        settings = cls(**overrides)
    except ValidationError as exc:
        named = {problem.setting for problem in unresolved}
        problems = [_problem(cls, err, prefix) for err in exc.errors()]
        raise ConfigurationError(unresolved + [p for p in problems if p.setting not in named]) from None
    if unresolved:
        raise ConfigurationError(unresolved)
    return settings


def _env_names(cls: type[BaseSettings], field_name: str, prefix: str) -> list[str]:
    """The environment variables a field is read from; the first is how a problem names it."""
    alias = cls.model_fields[field_name].validation_alias
    if isinstance(alias, str):
        return [alias]
    choices = [c for c in alias.choices if isinstance(c, str)] if isinstance(alias, AliasChoices) else []
    return choices or [f"{prefix}{field_name}".upper()]


def _unresolved_references(
    cls: type[BaseSettings], prefix: str, overrides: dict[str, Any]
) -> list[SettingProblem]:
    """Settings still holding ``@Microsoft.KeyVault(...)``: App Service could not resolve the reference
    (and leaves its text in place), so the value is no secret but must not be used as one."""
    sensitive = bool(cls.model_config.get("case_sensitive", False))
    environ = {(k if sensitive else k.lower()): v for k, v in os.environ.items()}
    problems = []
    for field_name in cls.model_fields:
        names = _env_names(cls, field_name, prefix)
        given = [overrides[key] for key in (field_name, *names) if key in overrides]
        if not given:
            given = [environ.get(name if sensitive else name.lower()) for name in names]
        values = [v.get_secret_value() if isinstance(v, SecretStr) else v for v in given]
        if any(isinstance(v, str) and KEY_VAULT_REFERENCE.match(v) for v in values):
            problems.append(
                SettingProblem(
                    names[0],
                    "an unresolved Key Vault reference: App Service could not read the secret "
                    "(check the reference, the secret and the identity's access to the vault)",
                )
            )
    return problems


def _problem(cls: type[BaseSettings], error: Any, prefix: str) -> SettingProblem:
    # pydantic's message, never the input value (it may be a secret); settings named in a
    # model-level message get the account's prefix
    default_prefix = str(cls.model_config.get("env_prefix", ""))
    message = str(error["msg"])
    if default_prefix and prefix != default_prefix:
        message = re.sub(rf"\b{default_prefix}", prefix, message)
    field_name = str(error["loc"][0]) if error["loc"] else ""
    if field_name in cls.model_fields:
        setting = _env_names(cls, field_name, prefix)[0]
    elif field_name:
        setting = f"{prefix}{field_name}".upper()
    else:  # a rule across settings: name the first setting its message names
        named = re.search(rf"\b{prefix}[A-Z0-9_]+", message) if prefix else None
        setting = named.group(0) if named else prefix.rstrip("_") or "settings"
    return SettingProblem(setting, message.removeprefix("Value error, "))
