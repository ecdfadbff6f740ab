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
EXTENDED_ENTITY_LOOKUP = "msdyn_extendedentityid"
TEXT_BOX = "{4273EDBD-AC1D-40d3-9FB2-095C621B552D}"
#: The forwarding step's timeoutSeconds: the app's SEND_BUDGET_SECONDS (at most 9) plus a cold start fit
#: in it, and it plus the plug-in's own work fits in Journeys' 20 s (README "Twenty seconds, end to end").
PLUGIN_TIMEOUT_SECONDS = 15
#: At most 100 characters (msdyn_channeldefinition.msdyn_description is String(100)).
CHANNEL_DESCRIPTION = "SMS through the custom channel's Azure Functions app"


@dataclass(frozen=True)
class SenderColumn:
    name: str
    display: str
    description: str
    max_length: int = 100
    required: bool = False


#: The sender configuration table: one row per sender (channel instance). The number is the
#: channel instance's own contact point and the provider credentials live in the app's settings,
#: so a sender needs a name and, for the admin's reference, the route the app sends it through.
SENDER_COLUMNS = (
    SenderColumn("name", "Name", "The sender's name", required=True),
    SenderColumn(
        "route",
        "Provider route",
        "Provider and account the app sends this sender through, as in its SENDER_ROUTES "
        "(e.g. twilio or twilio:eu); the app's settings decide",
    ),
)


@dataclass(frozen=True)
class Names:
    """Names and ids of everything provisioned, from the prefix and the flags."""

    prefix: str
    solution: str
    assembly: str
    plugin_type: str
    roles: tuple[str, ...]

    @property
    def api(self) -> str:
        return f"{self.prefix}_OutboundSms"

    @property
    def table(self) -> str:
        return f"{self.prefix}_smssender"

    @property
    def table_schema(self) -> str:
        return f"{self.prefix}_SmsSender"

    @property
    def form(self) -> str:
        return "SMS sender"

    @property
    def relationship(self) -> str:
        # Microsoft's sample names it msdyn_ChannelInstance_extendedentityid_<table>; every name this
        # tool creates starts with the publisher's prefix instead (Journeys follows the lookup and its
        # navigation property, not this name: inferred)
        return f"{self.prefix}_ChannelInstance_extendedentityid_smssender"

    @property
    def navigation_property(self) -> str:
        return f"{EXTENDED_ENTITY_LOOKUP}_{self.table}"

    @property
    def read_privilege(self) -> str:
        return f"prvRead{self.table_schema}"

    @property
    def step(self) -> str:
        return f"{self.api}: PostOperation forwarder to the SMS app"

    def column(self, column: SenderColumn) -> str:
        return f"{self.prefix}_{column.name}"

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
