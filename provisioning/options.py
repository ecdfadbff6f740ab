"""Flags and settings, validated: each problem names the flag or setting, never its value.

The connection comes from the app's own settings (``DATAVERSE_URL``, ``AZURE_*``: see
:mod:`dataverse.settings`); what to provision comes from flags. The function key can come from
``PROVISIONING_FUNCTION_KEY`` instead of ``--function-key``, which keeps it out of shell history.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.settings import parse_sender_routes, sender_key
from dataverse.settings import DataverseSettings, IdentitySettings
from provisioning.base import ACCOUNT_ROLE, SENDER_ROLE
from provisioning.webapi import InputError

__all__ = [
    "ACCOUNT_ROLES",
    "COMMANDS",
    "DEFAULT_PLUGIN_TYPE",
    "JOURNEYS_ROLES",
    "AppRoutes",
    "Connection",
    "Options",
    "load_connection",
    "load_options",
]

COMMANDS = ("plan", "apply", "verify", "remove")
DEFAULT_PLUGIN_TYPE = "SmsChannel.Plugin.OutboundForwarder"
#: The assembly `remove` looks for when --plugin is not given (the plug-in project's assembly name).
DEFAULT_ASSEMBLY = "SmsChannel.Plugin"
#: The roles that get Read on each table, as Microsoft's pages name them: the sender table for the
#: "Cxp Channel Definitions Services User" ("Define channel instance"), the account table for the
#: "Marketing Services User Extensible" ("Define channel instance account", since 2025-09).
JOURNEYS_ROLES = (SENDER_ROLE,)
ACCOUNT_ROLES = (ACCOUNT_ROLE,)
#: Dataverse refuses larger plug-in assemblies.
MAX_ASSEMBLY_BYTES = 16 * 1024 * 1024
#: The app's default MAX_SEGMENTS (10) times 153 GSM-7 characters per part.
DEFAULT_MAX_LENGTH = 1530

FLAGS = {
    "solution": "--solution",
    "prefix": "--prefix",
    "function_url": "--function-url",
    "function_key": "--function-key",
    "plugin": "--plugin",
    "plugin_type": "--plugin-type",
    "channel_name": "--channel-name",
    "max_length": "--max-length",
    "roles": "--journeys-role",
    "account_roles": "--account-role",
    "send_test": "--send-test",
    "sender": "--from",
    "text": "--text",
}
REQUIRED = {
    "plan": ("function_url", "plugin"),
    "apply": ("function_url", "function_key", "plugin"),
    "verify": ("function_url", "plugin"),
    "remove": (),
}
HINTS = {
    "solution": "the unique name of the unmanaged solution to create the components in",
    "prefix": "the customization prefix of that solution's publisher",
    "function_url": "the app's outbound URL, e.g. https://<app>.azurewebsites.net/api/outbound",
    "function_key": "the Function's key for /api/outbound (or set PROVISIONING_FUNCTION_KEY)",
    "plugin": "the plug-in DLL built from plugin/ (dotnet build)",
}


class Options(BaseModel):
    model_config = ConfigDict(frozen=True)

    command: str
    solution: str
    prefix: str
    function_url: str | None = None
    function_key: SecretStr | None = None
    plugin: Path | None = None
    plugin_type: str = DEFAULT_PLUGIN_TYPE
    channel_name: str = Field(default="Custom SMS", min_length=1, max_length=100)
    max_length: int = Field(default=DEFAULT_MAX_LENGTH, ge=1, le=100_000)
    roles: tuple[str, ...] = JOURNEYS_ROLES
    account_roles: tuple[str, ...] = ACCOUNT_ROLES
    send_test: str | None = None
    sender: str | None = None
    text: str = Field(default="Test message from the SMS channel set-up (provisioning verify)", min_length=1)

    @field_validator("solution")
    @classmethod
    def _solution(cls, value: str) -> str:
        if not value or not (value[0].isalpha() or value[0] == "_") or not value.replace("_", "").isalnum():
            raise ValueError(
                "a solution unique name: letters, digits and underscores, not starting with a digit"
            )
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not (
            2 <= len(value) <= 8
            and value.isascii()
            and value.isalnum()
            and value[0].isalpha()
            and value == value.lower()
            and not value.startswith("mscrm")
        ):
            raise ValueError(
                "a publisher customization prefix: 2 to 8 lower-case letters or digits, "
                "starting with a letter"
            )
        return value

    @field_validator("function_url")
    @classmethod
    def _function_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("must be an https URL")
        if any(key.lower() == "code" for key in parse_qs(parts.query, keep_blank_values=True)):
            # the URL goes into the step's unsecure configuration, which every customizer can read
            raise ValueError("must not carry the function key (code=...): pass it with --function-key")
        path = parts.path if parts.path not in ("", "/") else "/api/outbound"
        return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))

    @field_validator("plugin")
    @classmethod
    def _plugin(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if not value.is_file():
            raise ValueError("no such file")
        size = value.stat().st_size
        if size == 0:
            raise ValueError("the file is empty")
        if size > MAX_ASSEMBLY_BYTES:
            raise ValueError("larger than the 16 MB Dataverse accepts for a plug-in assembly")
        return value

    @field_validator("plugin_type")
    @classmethod
    def _plugin_type(cls, value: str) -> str:
        if not all(part.replace("_", "a").isalnum() for part in value.split(".")):
            raise ValueError("the full name of the IPlugin class, e.g. " + DEFAULT_PLUGIN_TYPE)
        return value

    @property
    def assembly_name(self) -> str:
        """The plug-in assembly's name: the DLL's file name without .dll (as dotnet build names it)."""
        return self.plugin.stem if self.plugin is not None else DEFAULT_ASSEMBLY

    def plugin_bytes(self) -> bytes:
        assert self.plugin is not None
        try:
            return self.plugin.read_bytes()
        except OSError as exc:
            raise InputError(f"--plugin: cannot read the file ({exc.strerror})") from None

    def function_url_warning(self) -> str | None:
        """The Dataverse sandbox refuses loopback and IP-address URLs (Microsoft's sandbox rules)."""
        if self.function_url is None:
            return None
        host = urlsplit(self.function_url).hostname or ""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host != "localhost":
                return None
        return "--function-url: plug-ins in the Dataverse sandbox cannot call IP addresses or localhost"


class _FunctionKeySetting(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROVISIONING_", extra="ignore", env_ignore_empty=True)

    function_key: SecretStr | None = None


def load_options(command: str, values: dict[str, Any]) -> Options:
    """Options from the parsed flags; an :class:`InputError` names the first problem."""
    given = {name: value for name, value in values.items() if value is not None}
    for name in ("solution", "prefix"):
        if not given.get(name):
            raise InputError(f"missing {FLAGS[name]}: {HINTS[name]}")
    if "function_key" not in given:
        key = _FunctionKeySetting().function_key
        if key is not None:
            given["function_key"] = key
    for name in REQUIRED[command]:
        if name not in given:
            raise InputError(f"{command}: missing {FLAGS[name]}: {HINTS[name]}")
    for roles in ("roles", "account_roles"):
        if roles in given:
            given[roles] = tuple(dict.fromkeys(given[roles]))
    try:
        return Options(command=command, **given)
    except ValidationError as exc:
        raise InputError(_first_problem(exc, FLAGS)) from None


class AppRoutes(BaseSettings):
    """How the app routes senders, from its settings where this tool runs (SMS_PROVIDER, SENDER_ROUTES):
    verify tells from them which senders the app cannot send for."""

    model_config = SettingsConfigDict(extra="ignore", env_ignore_empty=True)

    sms_provider: str | None = Field(default=None, validation_alias="SMS_PROVIDER")
    sender_routes: Annotated[dict[str, tuple[str, str | None]], NoDecode] = Field(
        default_factory=dict, validation_alias="SENDER_ROUTES"
    )

    @field_validator("sender_routes", mode="before")
    @classmethod
    def _routes(cls, value: object) -> object:
        return parse_sender_routes(value) if isinstance(value, str) else value

    @property
    def known(self) -> bool:
        return bool(self.sms_provider or self.sender_routes)

    def route_for(self, sender: str) -> str | None:
        """``provider`` or ``provider:account`` the app sends ``sender`` through; None: no route."""
        if not self.sender_routes:
            return (self.sms_provider or "simulator").strip().lower()
        route = self.sender_routes.get(sender_key(sender))
        if route is None:
            return None
        provider, account = route
        return f"{provider}:{account}" if account else provider


def load_app_routes() -> AppRoutes:
    try:
        return AppRoutes()
    except ValidationError as exc:
        raise InputError(
            _first_problem(exc, {"sender_routes": "SENDER_ROUTES", "sms_provider": "SMS_PROVIDER"})
        ) from None


class Connection(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    dataverse: DataverseSettings
    identity: IdentitySettings

    @property
    def url(self) -> str:
        assert self.dataverse.base_url is not None
        return self.dataverse.base_url

    def secrets(self) -> list[str]:
        found = [self.identity.client_secret, self.identity.client_certificate_password]
        return [secret.get_secret_value() for secret in found if secret is not None]


def load_connection() -> Connection:
    """The app's Dataverse settings; an :class:`InputError` names the first missing or invalid one."""
    try:
        dataverse = DataverseSettings()
    except ValidationError as exc:
        raise InputError(_first_problem(exc, prefix="DATAVERSE_")) from None
    try:
        identity = IdentitySettings()
    except ValidationError as exc:
        raise InputError(_first_problem(exc, prefix="AZURE_")) from None
    if dataverse.url is None:
        raise InputError(
            "DATAVERSE_URL: required: the environment's URL, e.g. https://contoso.crm.dynamics.com"
        )
    if identity.uses_app_registration:
        for setting, value in (
            ("AZURE_TENANT_ID", identity.tenant_id),
            ("AZURE_CLIENT_ID", identity.client_id),
        ):
            if not value:
                raise InputError(f"{setting}: required with a client secret or certificate")
        path = identity.client_certificate_path
        if identity.client_secret is None and path is not None and not path.is_file():
            raise InputError("AZURE_CLIENT_CERTIFICATE_PATH: no such file")
    return Connection(dataverse=dataverse, identity=identity)


def _first_problem(exc: ValidationError, names: dict[str, str] | None = None, *, prefix: str = "") -> str:
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else ""
    name = names.get(field, field) if names is not None else f"{prefix}{field}".upper()
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{name}: {message}"
