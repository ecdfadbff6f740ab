"""The desired state: every component ``apply`` creates, in dependency order.

:mod:`provisioning.outbound` holds the outbound chain (custom API, plug-in, step), :mod:`provisioning.channel`
the channel side (sender table, form, relationship, Read for Journeys, channel definition, message part);
:mod:`provisioning.base` what they share.
"""

from __future__ import annotations

from provisioning.base import CHANNEL_INSTANCE, Component, Context, Desired, Names
from provisioning.channel import (
    ChannelDefinition,
    ExtendedEntityRelationship,
    MainForm,
    MessagePart,
    RoleRead,
    SenderTable,
)
from provisioning.outbound import CustomApi, PluginAssembly, PluginType, SecureConfig, Step

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
    return [
        CustomApi(),
        PluginAssembly(),
        PluginType(),
        SecureConfig(),
        Step(),
        SenderTable(),
        MainForm(),
        ExtendedEntityRelationship(),
        ChannelDefinition(),
        MessagePart(),
        # last: granting may be refused (Microsoft's pages disagree on whether these roles can be edited)
        *(RoleRead(role) for role in names.roles),
    ]
