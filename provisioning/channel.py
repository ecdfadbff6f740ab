"""The channel side: the sender configuration table with its main form, the relationship that lets
channel instances point to it, Read on it for Journeys, the channel definition and its message part.
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
    SENDER_COLUMNS,
    TEXT_BOX,
    Component,
    Context,
    Names,
    SenderColumn,
    bind,
    label,
)
from provisioning.plan import Change, Finding, differences
from provisioning.webapi import WebApiError, literal

# -- the sender configuration table, its form, the relationship, Read for Journeys -----------------


def string_attribute(names: Names, column: SenderColumn, language: int, *, primary: bool) -> dict[str, Any]:
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
        "AttributeType": "String",
        "AttributeTypeName": {"Value": "StringType"},
        "SchemaName": f"{names.prefix}_{column.name.capitalize()}",
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


class SenderTable(Component):
    key = "table"

    def label(self, names: Names) -> str:
        return f"table {names.table} (sender configuration)"

    async def locate(self, ctx: Context) -> dict[str, Any] | None:
        row = await ctx.api.find(
            f"EntityDefinitions(LogicalName={literal(ctx.names.table)})",
            select=["MetadataId", "LogicalName", "SchemaName", "EntitySetName", "PrimaryNameAttribute"],
            expand="Attributes($select=LogicalName,AttributeType)",
        )
        return ctx.found(self.key, row, "MetadataId")

    def compare(self, ctx: Context, row: dict[str, Any] | None) -> Finding:
        names = ctx.names
        primary, *others = SENDER_COLUMNS
        if row is None:

            async def create() -> None:
                body = {
                    "@odata.type": "Microsoft.Dynamics.CRM.EntityMetadata",
                    "SchemaName": names.table_schema,
                    "DisplayName": label("SMS sender", ctx.language),
                    "DisplayCollectionName": label("SMS senders", ctx.language),
                    "Description": label(
                        "Sender configuration of the custom SMS channel (one row per channel instance)",
                        ctx.language,
                    ),
                    "OwnershipType": "UserOwned",
                    "HasActivities": False,
                    "HasNotes": False,
                    "IsActivity": False,
                    "Attributes": [string_attribute(names, primary, ctx.language, primary=True)],
                }
                ctx.ids[self.key] = await ctx.api.create("EntityDefinitions", body)
                ctx.unpublished = True
                for column in others:
                    await self._add(ctx, column)

            columns = ", ".join(names.column(c) for c in SENDER_COLUMNS)
            return self.finding(ctx, Change.CREATE, f"columns {columns}", action=create)
        attributes = {a.get("LogicalName"): a.get("AttributeType") for a in row.get("Attributes") or []}
        if row.get("PrimaryNameAttribute") != names.column(primary):
            return self.finding(
                ctx, Change.BLOCKED, f"its primary name column is {row.get('PrimaryNameAttribute')!r}"
            )
        wrong = [
            names.column(c) for c in SENDER_COLUMNS if attributes.get(names.column(c), "String") != "String"
        ]
        if wrong:
            return self.finding(ctx, Change.BLOCKED, *(f"column {w} is not a text column" for w in wrong))
        missing = [c for c in others if names.column(c) not in attributes]
        if not missing:
            return self.finding(ctx, Change.OK)

        async def add() -> None:
            for column in missing:
                await self._add(ctx, column)

        return self.finding(
            ctx, Change.UPDATE, *(f"add column {names.column(c)}" for c in missing), action=add
        )

    async def _add(self, ctx: Context, column: SenderColumn) -> None:
        await ctx.api.create(
            f"EntityDefinitions(LogicalName={literal(ctx.names.table)})/Attributes",
            string_attribute(ctx.names, column, ctx.language, primary=False),
        )
        ctx.unpublished = True

    async def delete(self, ctx: Context, row: dict[str, Any]) -> Finding:
        await ctx.api.delete(f"EntityDefinitions({ctx.ids[self.key]})")
        return self.finding(ctx, Change.DELETE, "with its form, its rows and its privileges")


def main_form_xml(names: Names, language: int) -> str:
    def part(name: str) -> str:
        return quoteattr("{" + names.derived_id(f"form/{name}") + "}")

    rows = "".join(
        f'<row><cell id={part(column.name)} showlabel="true"><labels>'
        f'<label description={quoteattr(column.display)} languagecode="{language}" /></labels>'
        f'<control id={quoteattr(names.column(column))} classid="{TEXT_BOX}" '
        f'datafieldname={quoteattr(names.column(column))} disabled="false" /></cell></row>'
        for column in SENDER_COLUMNS
    )
    return (
        f'<form><tabs><tab name="general" id={part("tab")} IsUserDefined="0" verticallayout="true" '
        f'expanded="true" showlabel="false"><labels><label description="General" '
        f'languagecode="{language}" /></labels><columns><column width="100%"><sections>'
        f'<section name="sender" id={part("section")} showlabel="false" showbar="false" '
        f'columns="1" IsUserDefined="0"><labels><label description="Sender" '
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
    key = "form"

    def label(self, names: Names) -> str:
        return f"main form {names.form!r} of {names.table}"

    async def locate(self, ctx: Context) -> dict[str, Any] | None:
        row = None
        if "table" in ctx.ids:
            row = await ctx.api.first(
                "systemforms",
                select=["formid", "name", "type", "formxml"],
                filter=f"objecttypecode eq {literal(ctx.names.table)} and type eq {MAIN_FORM} "
                f"and name eq {literal(ctx.names.form)}",
            )
        return ctx.found(self.key, row, "formid")

    def compare(self, ctx: Context, row: dict[str, Any] | None) -> Finding:
        names = ctx.names
        if row is None:

            async def create() -> None:
                body = {
                    "name": names.form,
                    "description": "Sender settings, shown when a sender is added in Journeys",
                    "objecttypecode": names.table,
                    "type": MAIN_FORM,
                    "formxml": main_form_xml(names, ctx.language),
                }
                ctx.ids[self.key] = await ctx.api.create("systemforms", body)
                ctx.unpublished = True

            return self.finding(ctx, Change.CREATE, action=create)
        missing = sorted({names.column(c) for c in SENDER_COLUMNS} - form_fields(row.get("formxml")))
        if not missing:
            return self.finding(ctx, Change.OK)
        form_id = ctx.ids[self.key]

        async def update() -> None:
            await ctx.api.update(f"systemforms({form_id})", {"formxml": main_form_xml(names, ctx.language)})
            ctx.unpublished = True

        return self.finding(ctx, Change.UPDATE, *(f"field {m} missing" for m in missing), action=update)

    async def delete(self, ctx: Context, row: dict[str, Any]) -> Finding:
        return self.finding(ctx, Change.DELETE, "with the table")


class ExtendedEntityRelationship(Component):
    """msdyn_channelinstance.msdyn_extendedentityid (a multi-table lookup) -> the sender table."""

    key = "relationship"

    def label(self, names: Names) -> str:
        return f"relationship {names.relationship}"

    async def locate(self, ctx: Context) -> dict[str, Any] | None:
        row = None
        if "table" in ctx.ids:
            row = await ctx.api.first(
                f"EntityDefinitions(LogicalName={literal(CHANNEL_INSTANCE)})/ManyToOneRelationships",
                select=[
                    "MetadataId",
                    "SchemaName",
                    "ReferencingAttribute",
                    "ReferencingEntityNavigationPropertyName",
                ],
                filter=f"ReferencedEntity eq {literal(ctx.names.table)} "
                f"and ReferencingAttribute eq {literal(EXTENDED_ENTITY_LOOKUP)}",
            )
        return ctx.found(self.key, row, "MetadataId")

    def compare(self, ctx: Context, row: dict[str, Any] | None) -> Finding:
        names = ctx.names
        if row is not None:
            nav = row.get("ReferencingEntityNavigationPropertyName")
            return self.finding(
                ctx, Change.OK, *(() if nav == names.navigation_property else (f"bind {nav}",))
            )

        async def create() -> None:
            body = {
                "@odata.type": "Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata",
                "SchemaName": names.relationship,
                "ReferencedEntity": names.table,
                "ReferencedAttribute": f"{names.table}id",
                "ReferencingEntity": CHANNEL_INSTANCE,
                "ReferencingEntityNavigationPropertyName": names.navigation_property,
                "ReferencedEntityNavigationPropertyName": names.relationship,
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

        return self.finding(
            ctx, Change.CREATE, f"channel instances bind {names.navigation_property}", action=create
        )

    async def delete(self, ctx: Context, row: dict[str, Any]) -> Finding:
        await ctx.api.delete(f"RelationshipDefinitions({ctx.ids[self.key]})")
        return self.finding(ctx, Change.DELETE)


class RoleRead(Component):
    """Read on the sender table, organization-wide, for a role the Journeys service uses."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.key = f"role:{role}"

    def label(self, names: Names) -> str:
        return f"Read on {names.table} for role {self.role!r}"

    async def locate(self, ctx: Context) -> dict[str, Any] | None:
        # the root business unit's role: its copies in child business units follow it
        role = await ctx.api.first(
            "roles",
            select=["roleid", "name", "_businessunitid_value"],
            filter=f"name eq {literal(self.role)} and _parentroleid_value eq null",
        )
        ctx.found(self.key, role, "roleid")
        if role is None or "table" not in ctx.ids:
            ctx.found("privilege", None, "privilegeid")
            return role
        privilege = await ctx.api.first(
            "privileges",
            select=["privilegeid", "name"],
            filter=f"name eq {literal(ctx.names.read_privilege)}",
        )
        ctx.found("privilege", privilege, "privilegeid")
        role["granted"] = False
        if privilege is not None:
            held = await ctx.api.get(f"RetrieveRolePrivilegesRole(RoleId={role['roleid']})")
            role["granted"] = any(
                str(p.get("PrivilegeId")).lower() == ctx.ids["privilege"] and p.get("Depth") == "Global"
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

        async def grant() -> None:
            privilege = await ctx.api.first(
                "privileges", select=["privilegeid"], filter=f"name eq {literal(ctx.names.read_privilege)}"
            )
            if privilege is None:
                raise WebApiError(
                    f"privilege {ctx.names.read_privilege} not found (Dataverse creates it with the table)"
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
    )

    def label(self, names: Names) -> str:
        return f"channel definition {names.channel_definition_id}"

    def body(self, ctx: Context) -> dict[str, Any]:
        names = ctx.names
        return {
            "msdyn_name": ctx.want.channel_name,
            "msdyn_displayname": ctx.want.channel_name,
            "msdyn_description": CHANNEL_DESCRIPTION,
            "msdyn_channeltype": "Custom",
            "msdyn_outboundendpointurltemplate": f"/{names.api}",
            "msdyn_hasinbound": True,
            "msdyn_hasdeliveryreceipt": True,
            "msdyn_supportsaccount": False,
            "msdyn_supportsattachment": False,
            "msdyn_supportsbinary": False,
            "msdyn_specialconsentrequired": False,
            "msdyn_channeldefinitionexternalentity": names.table,
            "msdyn_channeldefinitionexternalformid": ctx.ids.get("form", "(the form created above)"),
        }

    async def locate(self, ctx: Context) -> dict[str, Any] | None:
        row = await ctx.api.find(
            f"msdyn_channeldefinitions({ctx.names.channel_definition_id})",
            select=["msdyn_channeldefinitionid", *self.COLUMNS],
        )
        return ctx.found(self.key, row, "msdyn_channeldefinitionid")

    def compare(self, ctx: Context, row: dict[str, Any] | None) -> Finding:
        if row is None:

            async def create() -> None:
                body = {"msdyn_channeldefinitionid": ctx.names.channel_definition_id, **self.body(ctx)}
                ctx.ids[self.key] = await ctx.api.create("msdyn_channeldefinitions", body)

            return self.finding(ctx, Change.CREATE, f"{ctx.want.channel_name!r}, Custom", action=create)
        changed, notes = differences(row, self.body(ctx))
        if not changed:
            return self.finding(ctx, Change.OK)

        async def update() -> None:
            await ctx.api.update(f"msdyn_channeldefinitions({ctx.ids[self.key]})", changed)

        return self.finding(ctx, Change.UPDATE, *notes, action=update)

    async def delete(self, ctx: Context, row: dict[str, Any]) -> Finding:
        definition = ctx.ids[self.key]
        senders = await ctx.api.list(
            "msdyn_channelinstances",
            select=["msdyn_channelinstanceid"],
            filter=f"_msdyn_channeldefinitionid_value eq {definition}",
        )
        await ctx.api.delete(f"msdyn_channeldefinitions({definition})")
        note = f"Dataverse also deleted its {len(senders)} sender(s)" if senders else "it had no senders"
        return self.finding(ctx, Change.DELETE, note)


class MessagePart(Component):
    key = "part"

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
        if "definition" in ctx.ids:
            row = await ctx.api.first(
                "msdyn_channelmessageparts",
                select=["msdyn_channelmessagepartid", *self.body_columns()],
                filter=f"_msdyn_channeldefinitionid_value eq {ctx.ids['definition']} "
                "and msdyn_name eq 'text'",
            )
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
        if row is None:

            async def create() -> None:
                link = {
                    "msdyn_ChannelDefinitionId@odata.bind": bind(
                        "msdyn_channeldefinitions", ctx.ids["definition"]
                    )
                }
                ctx.ids[self.key] = await ctx.api.create("msdyn_channelmessageparts", self.body(ctx) | link)

            details = f"plain text, required, at most {ctx.want.max_length} characters"
            return self.finding(ctx, Change.CREATE, details, action=create)
        changed, notes = differences(row, self.body(ctx))
        if not changed:
            return self.finding(ctx, Change.OK)

        async def update() -> None:
            await ctx.api.update(f"msdyn_channelmessageparts({ctx.ids[self.key]})", changed)

        return self.finding(ctx, Change.UPDATE, *notes, action=update)

    async def delete(self, ctx: Context, row: dict[str, Any]) -> Finding:
        await ctx.api.delete(f"msdyn_channelmessageparts({ctx.ids[self.key]})")
        return self.finding(ctx, Change.DELETE)
