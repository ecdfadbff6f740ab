"""The desired state: every component ``apply`` creates, in dependency order.

:mod:`provisioning.outbound` holds the plug-in side (outbound custom API, plug-in assembly and types,
step, the relay custom APIs), :mod:`provisioning.channel` the channel side (sender and account tables
with their forms, relationships and Read for Journeys, the SMS channel definition, its message part);
:mod:`provisioning.base` what they share.
"""

from __future__ import annotations

from provisioning.base import CHANNEL_INSTANCE, Component, Context, Desired, Names
from provisioning.channel import (
    ChannelDefinition,
    ConfigTable,
    ExtendedEntityRelationship,
    MainForm,
    MessagePart,
    RoleRead,
)
from provisioning.outbound import CustomApi, PluginAssembly, PluginType, RelayApi, SecureConfig, Step

__all__ = [
    "CHANNEL_INSTANCE",
    "Component",
    "Context",
    "Desired",
    "ExtendedEntityRelationship",
    "Names",
    "RoleRead",
    "components",
]


def components(names: Names) -> list[Component]:
    """Every component, in the order apply creates them (remove deletes in reverse)."""
    tables = names.tables
    return [
        CustomApi(),
        PluginAssembly(),
        PluginType(),
        SecureConfig(),
        Step(),
        *(PluginType(relay) for relay in names.relay_apis),
        *(part for table in tables for part in (ConfigTable(table), MainForm(table))),
        *(ExtendedEntityRelationship(table) for table in tables),
        # after the account table: executing them takes its Write privilege
        *(RelayApi(relay) for relay in names.relay_apis),
        ChannelDefinition(),
        MessagePart(),
        # last: granting may be refused (Microsoft's pages disagree on whether these roles can be edited)
        *(RoleRead(table, role) for table in tables for role in table.roles),
    ]
