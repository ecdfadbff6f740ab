"""What every component shares: names and ids from the prefix, the desired content, the run's context.

A component knows how to find itself in Dataverse (:meth:`Component.locate`), how it differs from what
it should be (:meth:`Component.compare`, whose finding carries the action that fixes it) and how to
delete itself (:meth:`Component.delete`). Components are found by names that start with the prefix
(or by ids derived from it), so ``apply`` can run any number of times, complete a run that stopped
half-way, and ``remove`` touches nothing it did not create.
"""

from __future__ import annotations

import base64
import json
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from dataverse.settings import ChannelApis, channel_apis_of
from provisioning.plan import Change, Finding
from provisioning.webapi import WebApi

#: Ids derived from the prefix (channel definition, secure configuration, form parts) are stable
#: across runs and environments, so a run that stopped half-way finds what it created.
NAMESPACE = uuid.UUID("bce02656-1371-4c9d-9def-7eb18b7a0d29")

STRING = 10  # custom API parameter type
STAGE_POST_OPERATION = 40
MODE_SYNCHRONOUS = 0
SANDBOX = 2
SOURCE_DATABASE = 0
MAIN_FORM = 2
PLAIN_TEXT = 192350000
CHANNEL_INSTANCE = "msdyn_channelinstance"
CHANNEL_INSTANCE_ACCOUNT = "msdyn_channelinstanceaccount"
EXTENDED_ENTITY_LOOKUP = "msdyn_extendedentityid"
TEXT_BOX = "{4273EDBD-AC1D-40d3-9FB2-095C621B552D}"
#: The forwarding step's timeoutSeconds: the app's SEND_BUDGET_SECONDS (at most 9) plus a cold start fit
#: in it, and it plus the plug-in's own work fits in Journeys' 20 s (README "Twenty seconds, end to end").
PLUGIN_TIMEOUT_SECONDS = 15
#: At most 100 characters (msdyn_channeldefinition.msdyn_description is String(100)).
CHANNEL_DESCRIPTION = "SMS through the custom channel's Azure Functions app"
#: A custom API whose main operation is its plug-in: no other steps.
NO_CUSTOM_STEPS = 0


@dataclass(frozen=True)
class TableColumn:
    name: str
    display: str
    description: str
    max_length: int = 100
    required: bool = False


@dataclass(frozen=True)
class ExtensionTable:
    """A table holding the extended configuration of one of Journeys' channel records: the sender
    (``msdyn_channelinstance``) or, for SMS channels, the account (``msdyn_channelinstanceaccount``).
    Journeys finds it through the base record's multi-table lookup ``msdyn_extendedentityid`` and
    shows its main form in its SMS wizard."""

    key: str
    prefix: str
    #: The part after the prefix: ``smssender`` -> table ``<prefix>_smssender``.
    stem: str
    display: str
    display_plural: str
    description: str
    #: The primary name column first.
    columns: tuple[TableColumn, ...]
    #: The columns its main form shows.
    form_columns: tuple[TableColumn, ...]
    form: str
    form_description: str
    base_entity: str
    base_schema: str
    #: Roles that get Read on it, as Microsoft's page for this table names them.
    roles: tuple[str, ...]

    @property
    def logical(self) -> str:
        return f"{self.prefix}_{self.stem}"

    @property
    def schema(self) -> str:
        return f"{self.prefix}_{self.display.title().replace(' ', '')}"

    @property
    def entity_set(self) -> str:
        return f"{self.logical}s"

    @property
    def relationship(self) -> str:
        # Microsoft's sample names it <base>_extendedentityid_<table>; every name this tool creates
        # starts with the publisher's prefix instead (Journeys follows the lookup and its navigation
        # property, not this name: inferred)
        return f"{self.prefix}_{self.base_schema.removeprefix('msdyn_')}_extendedentityid_{self.stem}"

    @property
    def navigation_property(self) -> str:
        """What a base record binds the table's row with: ``msdyn_extendedentityid_<table>``."""
        return f"{EXTENDED_ENTITY_LOOKUP}_{self.logical}"

    @property
    def read_privilege(self) -> str:
        return f"prvRead{self.schema}"

    @property
    def write_privilege(self) -> str:
        return f"prvWrite{self.schema}"

    def column(self, column: TableColumn) -> str:
        return f"{self.prefix}_{column.name}"


#: The sender configuration table: one row per sender (channel instance). Its number is the channel
#: instance's own contact point and its provider route is its account's, so a sender has a name.
SENDER_COLUMNS = (TableColumn("name", "Name", "The sender's name", required=True),)
#: The account configuration table: one row per provider account (an account has many senders). No
#: secrets: the credentials stay in the app's settings (Key Vault); the row names the route the app's
#: SENDER_ROUTES knows, so that verify can tell which senders the app cannot route.
ACCOUNT_COLUMNS = (
    TableColumn("name", "Name", "The account's name", required=True),
    TableColumn(
        "provider",
        "Provider",
        "The SMS provider, as the app names it in SMS_PROVIDER and SENDER_ROUTES (e.g. twilio)",
        max_length=40,
        required=True,
    ),
    TableColumn(
        "account",
        "Account label",
        "The account's label in the app's SENDER_ROUTES (twilio:eu -> eu); empty for the provider's "
        "default settings",
        max_length=40,
    ),
)
SENDER_ROLE = "Cxp Channel Definitions Services User"
ACCOUNT_ROLE = "Marketing Services User Extensible"


@dataclass(frozen=True)
class RelayApiSpec:
    """One of the channel's own custom APIs in front of a Journeys base action."""

    kind: str
    unique_name: str
    display: str
    parameter: str
    base_action: str
    plugin_type: str


@dataclass(frozen=True)
class Names:
    """Names and ids of everything provisioned, from the prefix and the flags."""

    prefix: str
    solution: str
    assembly: str
    plugin_type: str
    roles: tuple[str, ...] = (SENDER_ROLE,)
    account_roles: tuple[str, ...] = (ACCOUNT_ROLE,)

    @property
    def api(self) -> str:
        return f"{self.prefix}_OutboundSms"

    @property
    def sender(self) -> ExtensionTable:
        return ExtensionTable(
            key="sender",
            prefix=self.prefix,
            stem="smssender",
            display="SMS sender",
            display_plural="SMS senders",
            description="Sender configuration of the SMS channel (one row per channel instance)",
            columns=SENDER_COLUMNS,
            form_columns=SENDER_COLUMNS,
            form="SMS sender",
            form_description="Sender settings, shown when a sender is added in Journeys",
            base_entity=CHANNEL_INSTANCE,
            base_schema="msdyn_ChannelInstance",
            roles=self.roles,
        )

    @property
    def account(self) -> ExtensionTable:
        return ExtensionTable(
            key="account",
            prefix=self.prefix,
            stem="smsaccount",
            display="SMS account",
            display_plural="SMS accounts",
            description="Account configuration of the SMS channel (one row per provider account)",
            columns=ACCOUNT_COLUMNS,
            # no name or description: Journeys' own controls provide them (Microsoft's page)
            form_columns=ACCOUNT_COLUMNS[1:],
            form="SMS account",
            form_description="Provider account, shown in the settings step of Journeys' SMS wizard",
            base_entity=CHANNEL_INSTANCE_ACCOUNT,
            base_schema="msdyn_ChannelInstanceAccount",
            roles=self.account_roles,
        )

    @property
    def tables(self) -> tuple[ExtensionTable, ExtensionTable]:
        return (self.sender, self.account)

    @property
    def relay_apis(self) -> tuple[RelayApiSpec, RelayApiSpec]:
        # the names the app calls with DATAVERSE_CHANNEL_API_PREFIX, in front of Journeys' own
        own, base = channel_apis_of(self.prefix), ChannelApis()
        namespace = self.plugin_type.rpartition(".")[0] or "SmsChannel.Plugin"
        return (
            RelayApiSpec(
                "notification",
                own.notification,
                "SMS delivery report",
                "notificationPayLoad",
                base.notification,
                f"{namespace}.DeliveryReportRelay",
            ),
            RelayApiSpec(
                "inbound",
                own.inbound,
                "SMS inbound message",
                "inboundPayLoad",
                base.inbound,
                f"{namespace}.InboundRelay",
            ),
        )

    @property
    def step(self) -> str:
        return f"{self.api}: PostOperation forwarder to the SMS app"

    def derived_id(self, part: str) -> str:
        return str(uuid.uuid5(NAMESPACE, f"{self.prefix}/{part}"))

    @property
    def channel_definition_id(self) -> str:
        return self.derived_id("channeldefinition")

    @property
    def secure_config_id(self) -> str:
        return self.derived_id("stepsecureconfig")


@dataclass(frozen=True)
class Desired:
    """What only plan, apply and verify need: the app's URL, its key and the plug-in."""

    function_url: str
    plugin_content: bytes
    channel_name: str
    max_length: int
    function_key: SecretStr | None = None

    @property
    def unsecure_config(self) -> str:
        return json.dumps({"url": self.function_url, "timeoutSeconds": PLUGIN_TIMEOUT_SECONDS})

    def secure_config(self) -> str:
        assert self.function_key is not None
        return json.dumps({"functionKey": self.function_key.get_secret_value()})

    @property
    def plugin_base64(self) -> str:
        return base64.b64encode(self.plugin_content).decode("ascii")


@dataclass
class Context:
    api: WebApi
    names: Names
    desired: Desired | None = None
    #: The organization's base language: metadata labels must have one in it.
    language: int = 1033
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)
    #: Metadata changed in this run: the sender table's customizations must be published.
    unpublished: bool = False

    def found(self, key: str, row: dict[str, Any] | None, id_column: str) -> dict[str, Any] | None:
        self.rows.pop(key, None)
        self.ids.pop(key, None)
        if row is not None:
            self.rows[key] = row
            self.ids[key] = str(row[id_column]).lower()
        return row

    @property
    def want(self) -> Desired:
        assert self.desired is not None
        return self.desired


def bind(entity_set: str, record_id: str) -> str:
    return f"/{entity_set}({record_id})"


def label(text: str, language: int) -> dict[str, Any]:
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.Label",
        "LocalizedLabels": [
            {"@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel", "Label": text, "LanguageCode": language}
        ],
    }


class Component(ABC):
    key: str

    @abstractmethod
    def label(self, names: Names) -> str: ...

    @abstractmethod
    async def locate(self, ctx: Context) -> dict[str, Any] | None:
        """Find the component (None: absent, or its parent is); remembers its id in ``ctx``."""

    @abstractmethod
    def compare(self, ctx: Context, row: dict[str, Any] | None) -> Finding:
        """What apply does about it; the finding's action does it."""

    async def delete(self, ctx: Context, row: dict[str, Any]) -> Finding:
        raise NotImplementedError  # pragma: no cover

    def finding(self, ctx: Context, change: Change, *details: str, action: Any = None) -> Finding:
        return Finding(self.label(ctx.names), change, tuple(details), action)
