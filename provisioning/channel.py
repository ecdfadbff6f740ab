"""The channel side: the sender and account configuration tables, each with its main form, the
relationship that lets channel instances (accounts) point to it and Read on it for Journeys; the SMS
channel definition and its one message part.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from typing import Any
from xml.sax.saxutils import quoteattr

from provisioning.base import (
    CHANNEL_DESCRIPTION,
    CHANNEL_INSTANCE,
    EXTENDED_ENTITY_LOOKUP,
    MAIN_FORM,
    PLAIN_TEXT,
    TEXT_BOX,
    Component,
    Context,
    ExtensionTable,
    Names,
    TableColumn,
    bind,
    label,
)
from provisioning.plan import Change, Finding, differences
from provisioning.webapi import WebApiError, literal

# -- the extended configuration tables, their forms, their relationships, Read for Journeys ---------


def string_attribute(
    table: ExtensionTable, column: TableColumn, language: int, *, primary: bool
) -> dict[str, Any]:
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
        "AttributeType": "String",
        "AttributeTypeName": {"Value": "StringType"},
        "SchemaName": f"{table.prefix}_{column.name.capitalize()}",
        "DisplayName": label(column.display, language),
        "Description": label(column.description, language),
        "RequiredLevel": {
            "Value": "ApplicationRequired" if column.required else "None",
            "CanBeChanged": True,
            "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings",
        },
        "MaxLength": column.max_length,
        "FormatName": {"Value": "Text"},
        "IsPrimaryName": primary,
    }


class ConfigTable(Component):
    """The sender or account configuration table."""

    def __init__(self, table: ExtensionTable) -> None:
        self.table = table
        self.key = f"{table.key}:table"

    def label(self, names: Names) -> str:
        return f"table {self.table.logical} ({self.table.key} configuration)"

    async def locate(self, ctx: Context) -> dict[str, Any] | None:
        row = await ctx.api.find(
            f"EntityDefinitions(LogicalName={literal(self.table.logical)})",
            select=["MetadataId", "LogicalName", "SchemaName", "EntitySetName", "PrimaryNameAttribute"],
            expand="Attributes($select=LogicalName,AttributeType)",
        )
        return ctx.found(self.key, row, "MetadataId")

    def compare(self, ctx: Context, row: dict[str, Any] | None) -> Finding:
        table = self.table
        primary, *others = table.columns
        if row is None:

            async def create() -> None:
                body = {
                    "@odata.type": "Microsoft.Dynamics.CRM.EntityMetadata",
                    "SchemaName": table.schema,
                    "DisplayName": label(table.display, ctx.language),
                    "DisplayCollectionName": label(table.display_plural, ctx.language),
                    "Description": label(table.description, ctx.language),
                    "OwnershipType": "UserOwned",
                    "HasActivities": False,
                    "HasNotes": False,
                    "IsActivity": False,
                    "Attributes": [string_attribute(table, primary, ctx.language, primary=True)],
                }
                ctx.ids[self.key] = await ctx.api.create("EntityDefinitions", body)
                ctx.unpublished = True
                for column in others:
                    await self._add(ctx, column)

            columns = ", ".join(table.column(c) for c in table.columns)
            return self.finding(ctx, Change.CREATE, f"columns {columns}", action=create)
        attributes = {a.get("LogicalName"): a.get("AttributeType") for a in row.get("Attributes") or []}
        if row.get("PrimaryNameAttribute") != table.column(primary):
            return self.finding(
                ctx, Change.BLOCKED, f"its primary name column is {row.get('PrimaryNameAttribute')!r}"
            )
        wrong = [
            table.column(c) for c in table.columns if attributes.get(table.column(c), "String") != "String"
        ]
        if wrong:
            return self.finding(ctx, Change.BLOCKED, *(f"column {w} is not a text column" for w in wrong))
        missing = [c for c in others if table.column(c) not in attributes]
        if not missing:
            return self.finding(ctx, Change.OK)

        async def add() -> None:
            for column in missing:
                await self._add(ctx, column)

        return self.finding(
            ctx, Change.UPDATE, *(f"add column {table.column(c)}" for c in missing), action=add
        )

    async def _add(self, ctx: Context, column: TableColumn) -> None:
        await ctx.api.create(
            f"EntityDefinitions(LogicalName={literal(self.table.logical)})/Attributes",
            string_attribute(self.table, column, ctx.language, primary=False),
        )
        ctx.unpublished = True

    async def delete(self, ctx: Context, row: dict[str, Any]) -> Finding:
        await ctx.api.delete(f"EntityDefinitions({ctx.ids[self.key]})")
        return self.finding(ctx, Change.DELETE, "with its form, its rows and its privileges")


def main_form_xml(table: ExtensionTable, names: Names, language: int) -> str:
    def part(name: str) -> str:
        return quoteattr("{" + names.derived_id(f"form/{table.key}/{name}") + "}")

    rows = "".join(
        f'<row><cell id={part(column.name)} showlabel="true"><labels>'
        f'<label description={quoteattr(column.display)} languagecode="{language}" /></labels>'
        f'<control id={quoteattr(table.column(column))} classid="{TEXT_BOX}" '
        f'datafieldname={quoteattr(table.column(column))} disabled="false" /></cell></row>'
        for column in table.form_columns
    )
    return (
        f'<form><tabs><tab name="general" id={part("tab")} IsUserDefined="0" verticallayout="true" '
        f'expanded="true" showlabel="false"><labels><label description="General" '
        f'languagecode="{language}" /></labels><columns><column width="100%"><sections>'
        f'<section name="{table.key}" id={part("section")} showlabel="false" showbar="false" '
        f'columns="1" IsUserDefined="0"><labels><label description={quoteattr(table.display)} '
        f'languagecode="{language}" /></labels><rows>{rows}</rows></section></sections></column>'
        f"</columns></tab></tabs></form>"
    )


def form_fields(formxml: Any) -> set[str]:
    if not isinstance(formxml, str):
        return set()
    try:
        root = ElementTree.fromstring(formxml)
    except ElementTree.ParseError:
        return set()
    return {
        str(control.get("datafieldname")) for control in root.iter("control") if control.get("datafieldname")
    }


class MainForm(Component):
    """The table's main form: Journeys loads it (its id is in the channel definition)."""

    def __init__(self, table: ExtensionTable) -> None:
        self.table = table
        self.key = f"{table.key}:form"

    def label(self, names: Names) -> str:
        return f"main form {self.table.form!r} of {self.table.logical}"

    async def locate(self, ctx: Context) -> dict[str, Any] | None:
        row = None
        if f"{self.table.key}:table" in ctx.ids:
            row = await ctx.api.first(
                "systemforms",
                select=["formid", "name", "type", "formxml"],
                filter=f"objecttypecode eq {literal(self.table.logical)} and type eq {MAIN_FORM} "
                f"and name eq {literal(self.table.form)}",
            )
        return ctx.found(self.key, row, "formid")

    def compare(self, ctx: Context, row: dict[str, Any] | None) -> Finding:
        table = self.table
        if row is None:

            async def create() -> None:
                body = {
                    "name": table.form,
                    "description": table.form_description,
                    "objecttypecode": table.logical,
                    "type": MAIN_FORM,
                    "formxml": main_form_xml(table, ctx.names, ctx.language),
                }
                ctx.ids[self.key] = await ctx.api.create("systemforms", body)
                ctx.unpublished = True

            return self.finding(ctx, Change.CREATE, action=create)
        missing = sorted({table.column(c) for c in table.form_columns} - form_fields(row.get("formxml")))
        if not missing:
            return self.finding(ctx, Change.OK)
        form_id = ctx.ids[self.key]

        async def update() -> None:
            await ctx.api.update(
                f"systemforms({form_id})", {"formxml": main_form_xml(table, ctx.names, ctx.language)}
            )
            ctx.unpublished = True

        return self.finding(ctx, Change.UPDATE, *(f"field {m} missing" for m in missing), action=update)

    async def delete(self, ctx: Context, row: dict[str, Any]) -> Finding:
        return self.finding(ctx, Change.DELETE, "with the table")


class ExtendedEntityRelationship(Component):
    """<base record>.msdyn_extendedentityid (a multi-table lookup) -> the configuration table."""

    def __init__(self, table: ExtensionTable) -> None:
        self.table = table
        self.key = f"{table.key}:relationship"

    def label(self, names: Names) -> str:
        return f"relationship {self.table.relationship}"

    async def locate(self, ctx: Context) -> dict[str, Any] | None:
        row = None
        if f"{self.table.key}:table" in ctx.ids:
            row = await ctx.api.first(
                f"EntityDefinitions(LogicalName={literal(self.table.base_entity)})/ManyToOneRelationships",
                select=[
                    "MetadataId",
                    "SchemaName",
                    "ReferencingAttribute",
                    "ReferencingEntityNavigationPropertyName",
                ],
                filter=f"ReferencedEntity eq {literal(self.table.logical)} "
                f"and ReferencingAttribute eq {literal(EXTENDED_ENTITY_LOOKUP)}",
            )
        return ctx.found(self.key, row, "MetadataId")

    def compare(self, ctx: Context, row: dict[str, Any] | None) -> Finding:
        table = self.table
        if row is not None:
            nav = row.get("ReferencingEntityNavigationPropertyName")
            if nav == table.navigation_property:
                return self.finding(ctx, Change.OK)
            # Journeys binds msdyn_extendedentityid_<table>: another name fails its wizard
            return self.finding(
                ctx,
                Change.BLOCKED,
                f"its navigation property is {nav!r}, Journeys binds {table.navigation_property!r}",
                "delete the relationship, then apply",
            )

        async def create() -> None:
            body = {
                "@odata.type": "Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata",
                "SchemaName": table.relationship,
                "ReferencedEntity": table.logical,
                "ReferencedAttribute": f"{table.logical}id",
                "ReferencingEntity": table.base_entity,
                "ReferencingEntityNavigationPropertyName": table.navigation_property,
                "ReferencedEntityNavigationPropertyName": table.relationship,
                "CascadeConfiguration": {
                    "Assign": "NoCascade",
                    "Delete": "RemoveLink",
                    "Merge": "NoCascade",
                    "Reparent": "NoCascade",
                    "Share": "NoCascade",
                    "Unshare": "NoCascade",
                },
                # the existing multi-table lookup: adding a target is creating a relationship whose
                # Lookup has the lookup's SchemaName (Microsoft's multi-table lookup docs)
                "Lookup": {
                    "@odata.type": "Microsoft.Dynamics.CRM.LookupAttributeMetadata",
                    "AttributeType": "Lookup",
                    "AttributeTypeName": {"Value": "LookupType"},
                    "SchemaName": "msdyn_extendedentityId",
                    "DisplayName": label("Extended entity", ctx.language),
                    "RequiredLevel": {"Value": "None", "CanBeChanged": True},
                },
            }
            ctx.ids[self.key] = await ctx.api.create("RelationshipDefinitions", body)
            ctx.unpublished = True

        base = "channel instances" if table.base_entity == CHANNEL_INSTANCE else "channel instance accounts"
        return self.finding(ctx, Change.CREATE, f"{base} bind {table.navigation_property}", action=create)

    async def delete(self, ctx: Context, row: dict[str, Any]) -> Finding:
        await ctx.api.delete(f"RelationshipDefinitions({ctx.ids[self.key]})")
        return self.finding(ctx, Change.DELETE)


class RoleRead(Component):
    """Read on a configuration table, organization-wide, for a role the Journeys service uses."""

    def __init__(self, table: ExtensionTable, role: str) -> None:
        self.table = table
        self.role = role
        self.key = f"{table.key}:role:{role}"

    def label(self, names: Names) -> str:
        return f"Read on {self.table.logical} for role {self.role!r}"

    async def locate(self, ctx: Context) -> dict[str, Any] | None:
        # the root business unit's role: its copies in child business units follow it
        role = await ctx.api.first(
            "roles",
            select=["roleid", "name", "_businessunitid_value"],
            filter=f"name eq {literal(self.role)} and _parentroleid_value eq null",
        )
        ctx.found(self.key, role, "roleid")
        privilege_key = f"{self.key}:privilege"
        if role is None or f"{self.table.key}:table" not in ctx.ids:
            ctx.found(privilege_key, None, "privilegeid")
            return role
        privilege = await ctx.api.first(
            "privileges",
            select=["privilegeid", "name"],
            filter=f"name eq {literal(self.table.read_privilege)}",
        )
        ctx.found(privilege_key, privilege, "privilegeid")
        role["granted"] = False
        if privilege is not None:
            held = await ctx.api.get(f"RetrieveRolePrivilegesRole(RoleId={role['roleid']})")
            role["granted"] = any(
                str(p.get("PrivilegeId")).lower() == ctx.ids[privilege_key] and p.get("Depth") == "Global"
                for p in held.get("RolePrivileges") or []
            )
        return role

    def compare(self, ctx: Context, row: dict[str, Any] | None) -> Finding:
        if row is None:
            return self.finding(ctx, Change.SKIP, "no such role in this environment")
        if row.get("granted"):
            return self.finding(ctx, Change.OK)
        role_id = ctx.ids[self.key]
        business_unit = row.get("_businessunitid_value")
        read_privilege = self.table.read_privilege

        async def grant() -> None:
            privilege = await ctx.api.first(
                "privileges", select=["privilegeid"], filter=f"name eq {literal(read_privilege)}"
            )
            if privilege is None:
                raise WebApiError(
                    f"privilege {read_privilege} not found (Dataverse creates it with the table)"
                )
            body = {
                "Privileges": [
                    {
                        "Depth": "Global",
                        "PrivilegeId": privilege["privilegeid"],
                        "BusinessUnitId": business_unit,
                    }
                ]
            }
            await ctx.api.action(f"roles({role_id})/Microsoft.Dynamics.CRM.AddPrivilegesRole", body)

        return self.finding(ctx, Change.CREATE, "organization-wide", action=grant)

    async def delete(self, ctx: Context, row: dict[str, Any]) -> Finding:
        if not row.get("granted"):
            return self.finding(ctx, Change.ABSENT)
        return self.finding(ctx, Change.DELETE, "with the table")


# -- the channel definition and its message part -------------------------------------------------


class ChannelDefinition(Component):
    key = "definition"
    COLUMNS = (
        "msdyn_name",
        "msdyn_displayname",
        "msdyn_description",
        "msdyn_channeltype",
        "msdyn_outboundendpointurltemplate",
        "msdyn_hasinbound",
        "msdyn_hasdeliveryreceipt",
        "msdyn_supportsaccount",
        "msdyn_supportsattachment",
        "msdyn_supportsbinary",
        "msdyn_specialconsentrequired",
        "msdyn_channeldefinitionexternalentity",
        "msdyn_channeldefinitionexternalformid",
        "msdyn_channeldefinitionaccountexternalentity",
        "msdyn_channeldefinitionaccountexternalformid",
        "msdyn_messageformid",
    )

    def label(self, names: Names) -> str:
        return f"channel definition {names.channel_definition_id}"

    def body(self, ctx: Context) -> dict[str, Any]:
        names = ctx.names
        pending = "(the form created above)"
        return {
            "msdyn_name": ctx.want.channel_name,
            "msdyn_displayname": ctx.want.channel_name,
            "msdyn_description": CHANNEL_DESCRIPTION,
            # an SMS channel: Journeys' SMS editor, its "Add SMS number" wizard with the account
            # step, and inbound messages (Microsoft's table of what each channel type needs)
            "msdyn_channeltype": "SMS",
            "msdyn_outboundendpointurltemplate": f"/{names.api}",
            "msdyn_hasinbound": True,
            "msdyn_hasdeliveryreceipt": True,
            "msdyn_supportsaccount": True,
            "msdyn_supportsattachment": False,
            "msdyn_supportsbinary": False,
            "msdyn_specialconsentrequired": False,
            "msdyn_channeldefinitionexternalentity": names.sender.logical,
            "msdyn_channeldefinitionexternalformid": ctx.ids.get("sender:form", pending),
            "msdyn_channeldefinitionaccountexternalentity": names.account.logical,
            "msdyn_channeldefinitionaccountexternalformid": ctx.ids.get("account:form", pending),
        }

    async def locate(self, ctx: Context) -> dict[str, Any] | None:
        row = await ctx.api.find(
            f"msdyn_channeldefinitions({ctx.names.channel_definition_id})",
            select=["msdyn_channeldefinitionid", *self.COLUMNS],
        )
        if row is not None:
            senders = await ctx.api.list(
                "msdyn_channelinstances",
                select=["msdyn_channelinstanceid"],
                filter=f"_msdyn_channeldefinitionid_value eq {ctx.names.channel_definition_id}",
            )
            row["senders"] = len(senders)
        return ctx.found(self.key, row, "msdyn_channeldefinitionid")

    def compare(self, ctx: Context, row: dict[str, Any] | None) -> Finding:
        if row is None:

            async def create() -> None:
                body = {"msdyn_channeldefinitionid": ctx.names.channel_definition_id, **self.body(ctx)}
                ctx.ids[self.key] = await ctx.api.create("msdyn_channeldefinitions", body)

            return self.finding(ctx, Change.CREATE, f"{ctx.want.channel_name!r}, SMS", action=create)
        # no message form: SMS channels use Journeys' own SMS editor
        changed, notes = differences(row, self.body(ctx) | {"msdyn_messageformid": None})
        if not changed:
            return self.finding(ctx, Change.OK)
        if row.get("msdyn_channeltype") == "Custom":
            notes = (
                "provisioned by an earlier version as a Custom channel: apply makes it an SMS channel in "
                f"place, keeping its id and its {row.get('senders', 0)} sender(s)",
                *notes,
            )

        async def update() -> None:
            await ctx.api.update(f"msdyn_channeldefinitions({ctx.ids[self.key]})", changed)

        return self.finding(ctx, Change.UPDATE, *notes, action=update)

    async def delete(self, ctx: Context, row: dict[str, Any]) -> Finding:
        definition = ctx.ids[self.key]
        await ctx.api.delete(f"msdyn_channeldefinitions({definition})")
        senders = row.get("senders", 0)
        note = f"Dataverse also deleted its {senders} sender(s)" if senders else "it had no senders"
        return self.finding(ctx, Change.DELETE, note)


class MessagePart(Component):
    key = "part"

    def __init__(self) -> None:
        #: Parts of another name on the definition: an SMS channel has only "text".
        self.others: list[dict[str, Any]] = []

    def label(self, names: Names) -> str:
        return "message part text"

    def body(self, ctx: Context) -> dict[str, Any]:
        return {
            "msdyn_name": "text",
            "msdyn_displayname": "Text",
            "msdyn_description": "The text of the SMS",
            "msdyn_type": PLAIN_TEXT,
            "msdyn_isrequired": True,
            "msdyn_maxlength": ctx.want.max_length,
        }

    async def locate(self, ctx: Context) -> dict[str, Any] | None:
        row = None
        self.others = []
        if "definition" in ctx.ids:
            parts = await ctx.api.list(
                "msdyn_channelmessageparts",
                select=["msdyn_channelmessagepartid", *self.body_columns()],
                filter=f"_msdyn_channeldefinitionid_value eq {ctx.ids['definition']}",
            )
            row = next((p for p in parts if p.get("msdyn_name") == "text"), None)
            # an SMS channel has exactly one part, "text" (Microsoft's table)
            self.others = [p for p in parts if p is not row]
        return ctx.found(self.key, row, "msdyn_channelmessagepartid")

    @staticmethod
    def body_columns() -> list[str]:
        return [
            "msdyn_name",
            "msdyn_displayname",
            "msdyn_description",
            "msdyn_type",
            "msdyn_isrequired",
            "msdyn_maxlength",
        ]

    def compare(self, ctx: Context, row: dict[str, Any] | None) -> Finding:
        others = self.others
        removals = tuple(f"remove part {p.get('msdyn_name')!r}: an SMS channel has only text" for p in others)
        if row is None:

            async def create() -> None:
                link = {
                    "msdyn_ChannelDefinitionId@odata.bind": bind(
                        "msdyn_channeldefinitions", ctx.ids["definition"]
                    )
                }
                ctx.ids[self.key] = await ctx.api.create("msdyn_channelmessageparts", self.body(ctx) | link)
                await self._remove(ctx, others)

            details = f"plain text, required, at most {ctx.want.max_length} characters"
            return self.finding(ctx, Change.CREATE, details, *removals, action=create)
        changed, notes = differences(row, self.body(ctx))
        notes += removals
        if not changed and not others:
            return self.finding(ctx, Change.OK)
        part_id = ctx.ids[self.key]

        async def update() -> None:
            if changed:
                await ctx.api.update(f"msdyn_channelmessageparts({part_id})", changed)
            await self._remove(ctx, others)

        return self.finding(ctx, Change.UPDATE, *notes, action=update)

    @staticmethod
    async def _remove(ctx: Context, parts: list[dict[str, Any]]) -> None:
        for part in parts:
            await ctx.api.delete(f"msdyn_channelmessageparts({part['msdyn_channelmessagepartid']})")

    async def delete(self, ctx: Context, row: dict[str, Any]) -> Finding:
        await ctx.api.delete(f"msdyn_channelmessageparts({ctx.ids[self.key]})")
        return self.finding(ctx, Change.DELETE)
