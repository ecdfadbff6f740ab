"""The outbound chain: the custom API, the forwarder plug-in (assembly and type), its step and the
step's secure configuration.

Journeys → custom API ``<prefix>_OutboundSms`` (payload → response) → synchronous PostOperation step
of the forwarder plug-in (URL in the unsecure configuration, function key in the secure one) → the
app's ``/api/outbound``.
"""

from __future__ import annotations

from typing import Any

from provisioning.base import (
    MODE_SYNCHRONOUS,
    SANDBOX,
    SOURCE_DATABASE,
    STAGE_POST_OPERATION,
    STRING,
    Component,
    Context,
    Names,
    bind,
)
from provisioning.plan import Change, Finding, differences, same_json
from provisioning.webapi import literal

# -- custom API ------------------------------------------------------------------------------


class CustomApi(Component):
    key = "customapi"
    IMMUTABLE = ("bindingtype", "isfunction", "allowedcustomprocessingsteptype")

    def label(self, names: Names) -> str:
        return f"custom API {names.api}"

    def body(self, names: Names) -> dict[str, Any]:
        return {
            "uniquename": names.api,
            "name": names.api,
            "displayname": "Outbound SMS",
            "description": "Customer Insights - Journeys custom SMS channel: sends through the SMS app",
            "bindingtype": 0,
            "isfunction": False,
            "isprivate": False,
            # Sync and Async steps: the forwarder runs as a PostOperation step (cannot change later)
            "allowedcustomprocessingsteptype": 2,
        }

    def parameter(self, names: Names) -> dict[str, Any]:
        return {
            "uniquename": "payload",
            "name": f"{names.api}.payload",
            "displayname": "payload",
            "description": "The outbound payload (JSON) Journeys sends",
            "type": STRING,
            "isoptional": False,
        }

    def property(self, names: Names) -> dict[str, Any]:
        return {
            "uniquename": "response",
            "name": f"{names.api}.response",
            "displayname": "response",
            "description": "The app's answer (JSON)",
            "type": STRING,
        }

    async def locate(self, ctx: Context) -> dict[str, Any] | None:
        row = await ctx.api.first(
            "customapis",
            select=[
                "customapiid",
                "uniquename",
                "displayname",
                "description",
                "bindingtype",
                "isfunction",
                "isprivate",
                "allowedcustomprocessingsteptype",
                "_plugintypeid_value",
            ],
            filter=f"uniquename eq {literal(ctx.names.api)}",
            expand="CustomAPIRequestParameters($select=uniquename,type,isoptional),"
            "CustomAPIResponseProperties($select=uniquename,type)",
        )
        ctx.found(self.key, row, "customapiid")
        await self._locate_message(ctx)
        return row

    async def _locate_message(self, ctx: Context) -> None:
        message = None
        if self.key in ctx.ids:
            message = await ctx.api.first(
                "sdkmessages", select=["sdkmessageid", "name"], filter=f"name eq {literal(ctx.names.api)}"
            )
        ctx.found("sdkmessage", message, "sdkmessageid")

    def compare(self, ctx: Context, row: dict[str, Any] | None) -> Finding:
        names = ctx.names
        if row is None:

            async def create() -> None:
                body = self.body(names) | {
                    "CustomAPIRequestParameters": [self.parameter(names)],
                    "CustomAPIResponseProperties": [self.property(names)],
                }
                ctx.ids[self.key] = await ctx.api.create("customapis", body)
                await self._locate_message(ctx)

            return self.finding(
                ctx, Change.CREATE, "payload -> response, Sync and Async steps", action=create
            )
        desired = self.body(names)
        blocked = [
            f"{column} is {row.get(column)!r}, must be {desired[column]!r}"
            for column in self.IMMUTABLE
            if row.get(column) != desired[column]
        ]
        if row.get("_plugintypeid_value"):
            blocked.append("a main-operation plug-in type is bound; unbind it (the forwarder runs as a step)")
        parameters = {p.get("uniquename"): p for p in row.get("CustomAPIRequestParameters") or []}
        properties = {p.get("uniquename"): p for p in row.get("CustomAPIResponseProperties") or []}
        payload, response = parameters.get("payload"), properties.get("response")
        if payload is not None and (payload.get("type") != STRING or payload.get("isoptional")):
            blocked.append("request parameter payload must be a String and not optional")
        if response is not None and response.get("type") != STRING:
            blocked.append("response property response must be a String")
        if "sdkmessage" not in ctx.ids:
            blocked.append(f"Dataverse has no message named {names.api}")
        if blocked:
            blocked.append("these never change after creation: run remove (or delete it), then apply")
            return self.finding(ctx, Change.BLOCKED, *blocked)
        changed, notes = differences(
            row, {k: desired[k] for k in ("displayname", "description", "isprivate")}
        )
        missing = [name for name, found in (("payload", payload), ("response", response)) if found is None]
        if not changed and not missing:
            return self.finding(ctx, Change.OK)
        api_id = ctx.ids[self.key]

        async def update() -> None:
            if changed:
                await ctx.api.update(f"customapis({api_id})", changed)
            link = {"CustomAPIId@odata.bind": bind("customapis", api_id)}
            if payload is None:
                await ctx.api.create("customapirequestparameters", self.parameter(names) | link)
            if response is None:
                await ctx.api.create("customapiresponseproperties", self.property(names) | link)

        notes += tuple(f"add {name}" for name in missing)
        return self.finding(ctx, Change.UPDATE, *notes, action=update)

    async def delete(self, ctx: Context, row: dict[str, Any]) -> Finding:
        await ctx.api.delete(f"customapis({ctx.ids[self.key]})")
        return self.finding(ctx, Change.DELETE, "with its parameter, response property and message")


# -- plug-in assembly, type, secure configuration, step ------------------------------------------


class PluginAssembly(Component):
    key = "assembly"

    def label(self, names: Names) -> str:
        return f"plug-in assembly {names.assembly}"

    async def locate(self, ctx: Context) -> dict[str, Any] | None:
        select = ["pluginassemblyid", "name", "isolationmode", "sourcetype"]
        if ctx.desired is not None:
            select.append("content")
        row = await ctx.api.first(
            "pluginassemblies", select=select, filter=f"name eq {literal(ctx.names.assembly)}"
        )
        return ctx.found(self.key, row, "pluginassemblyid")

    def compare(self, ctx: Context, row: dict[str, Any] | None) -> Finding:
        desired = {
            "content": ctx.want.plugin_base64,
            "isolationmode": SANDBOX,
            "sourcetype": SOURCE_DATABASE,
        }
        if row is None:

            async def create() -> None:
                # version, culture and public key token are read from the assembly by Dataverse
                body = {"name": ctx.names.assembly, **desired}
                ctx.ids[self.key] = await ctx.api.create("pluginassemblies", body)

            size = len(ctx.want.plugin_content)
            return self.finding(ctx, Change.CREATE, f"sandbox, {size} bytes", action=create)
        changed, notes = differences(row, desired, hidden=("content",))
        if "content" in changed:
            notes = tuple(
                n if n != "content differs" else "content is not the --plugin file (a rebuilt DLL?)"
                for n in notes
            )
        if not changed:
            return self.finding(ctx, Change.OK)
        assembly_id = ctx.ids[self.key]

        async def update() -> None:
            await ctx.api.update(f"pluginassemblies({assembly_id})", changed)

        return self.finding(ctx, Change.UPDATE, *notes, action=update)

    async def delete(self, ctx: Context, row: dict[str, Any]) -> Finding:
        assembly_id = ctx.ids[self.key]
        types = await ctx.api.list(
            "plugintypes", select=["plugintypeid"], filter=f"_pluginassemblyid_value eq {assembly_id}"
        )
        if types:
            return self.finding(ctx, Change.KEEP, f"it still has {len(types)} plug-in type(s) in use")
        await ctx.api.delete(f"pluginassemblies({assembly_id})")
        return self.finding(ctx, Change.DELETE)


class PluginType(Component):
    key = "plugintype"

    def label(self, names: Names) -> str:
        return f"plug-in type {names.plugin_type}"

    async def locate(self, ctx: Context) -> dict[str, Any] | None:
        row = None
        if "assembly" in ctx.ids:
            row = await ctx.api.first(
                "plugintypes",
                select=["plugintypeid", "typename"],
                filter=f"_pluginassemblyid_value eq {ctx.ids['assembly']} "
                f"and typename eq {literal(ctx.names.plugin_type)}",
            )
        return ctx.found(self.key, row, "plugintypeid")

    def compare(self, ctx: Context, row: dict[str, Any] | None) -> Finding:
        if row is not None:
            return self.finding(ctx, Change.OK)
        typename = ctx.names.plugin_type

        async def create() -> None:
            body = {
                "typename": typename,
                "name": typename,
                "friendlyname": typename.rsplit(".", 1)[-1],
                "pluginassemblyid@odata.bind": bind("pluginassemblies", ctx.ids["assembly"]),
            }
            ctx.ids[self.key] = await ctx.api.create("plugintypes", body)

        return self.finding(ctx, Change.CREATE, action=create)

    async def delete(self, ctx: Context, row: dict[str, Any]) -> Finding:
        type_id = ctx.ids[self.key]
        steps = await ctx.api.list(
            "sdkmessageprocessingsteps",
            select=["sdkmessageprocessingstepid"],
            filter=f"_eventhandler_value eq {type_id}",
        )
        if steps:
            return self.finding(ctx, Change.KEEP, f"{len(steps)} other step(s) use it")
        await ctx.api.delete(f"plugintypes({type_id})")
        return self.finding(ctx, Change.DELETE)


async def _steps_on_message(ctx: Context, select: list[str]) -> list[dict[str, Any]]:
    """Steps registered on the custom API's message: ours (the message is the prefix's)."""
    if "sdkmessage" not in ctx.ids:
        return []
    return await ctx.api.list(
        "sdkmessageprocessingsteps",
        select=select,
        filter=f"_sdkmessageid_value eq {ctx.ids['sdkmessage']} and stage eq {STAGE_POST_OPERATION}",
    )


class SecureConfig(Component):
    """The step's secure configuration: it holds the function key, so it is never read back."""

    key = "secureconfig"

    def label(self, names: Names) -> str:
        return "secure configuration of the step (function key)"

    async def locate(self, ctx: Context) -> dict[str, Any] | None:
        steps = await _steps_on_message(ctx, ["_sdkmessageprocessingstepsecureconfigid_value"])
        bound = [s["_sdkmessageprocessingstepsecureconfigid_value"] for s in steps]
        config_id = next((str(b) for b in bound if b), ctx.names.secure_config_id)
        row = await ctx.api.find(
            f"sdkmessageprocessingstepsecureconfigs({config_id})",
            select=["sdkmessageprocessingstepsecureconfigid"],
        )
        return ctx.found(self.key, row, "sdkmessageprocessingstepsecureconfigid")

    def compare(self, ctx: Context, row: dict[str, Any] | None) -> Finding:
        key = ctx.want.function_key
        if row is None:

            async def create() -> None:
                body = {
                    "sdkmessageprocessingstepsecureconfigid": ctx.names.secure_config_id,
                    "secureconfig": ctx.want.secure_config(),
                }
                # not a solution component: it never travels with a solution
                ctx.ids[self.key] = await ctx.api.create(
                    "sdkmessageprocessingstepsecureconfigs", body, in_solution=False
                )

            return self.finding(ctx, Change.CREATE, action=create if key is not None else None)
        config_id = ctx.ids[self.key]

        async def rewrite() -> None:
            body = {"secureconfig": ctx.want.secure_config()}
            await ctx.api.update(
                f"sdkmessageprocessingstepsecureconfigs({config_id})", body, in_solution=False
            )

        # it exists; what it holds cannot be read back (verify --send-test shows whether the key works)
        return self.finding(
            ctx, Change.REWRITE, "it cannot be read back", action=rewrite if key is not None else None
        )

    async def delete(self, ctx: Context, row: dict[str, Any]) -> Finding:
        await ctx.api.delete(f"sdkmessageprocessingstepsecureconfigs({ctx.ids[self.key]})")
        return self.finding(ctx, Change.DELETE)


class Step(Component):
    key = "step"
    SELECT = [
        "sdkmessageprocessingstepid",
        "name",
        "stage",
        "mode",
        "rank",
        "supporteddeployment",
        "configuration",
        "statecode",
        "_eventhandler_value",
        "_sdkmessageprocessingstepsecureconfigid_value",
    ]

    def label(self, names: Names) -> str:
        return f"step {names.api} PostOperation (synchronous) -> {names.plugin_type}"

    async def locate(self, ctx: Context) -> dict[str, Any] | None:
        steps = await _steps_on_message(ctx, self.SELECT)
        ours = [s for s in steps if str(s.get("_eventhandler_value")).lower() == ctx.ids.get("plugintype")]
        chosen = (ours or steps)[0] if ours or steps else None
        return ctx.found(self.key, chosen, "sdkmessageprocessingstepid")

    def compare(self, ctx: Context, row: dict[str, Any] | None) -> Finding:
        names = ctx.names
        desired: dict[str, Any] = {
            "stage": STAGE_POST_OPERATION,
            "mode": MODE_SYNCHRONOUS,
            "rank": 1,
            "supporteddeployment": 0,
        }
        if row is None:

            async def create() -> None:
                body = {
                    "name": names.step,
                    "description": "Forwards the custom API's payload to the SMS app and sets its response",
                    **desired,
                    "configuration": ctx.want.unsecure_config,
                    "sdkmessageid@odata.bind": bind("sdkmessages", ctx.ids["sdkmessage"]),
                    "eventhandler_plugintype@odata.bind": bind("plugintypes", ctx.ids["plugintype"]),
                    "sdkmessageprocessingstepsecureconfigid@odata.bind": bind(
                        "sdkmessageprocessingstepsecureconfigs", ctx.ids["secureconfig"]
                    ),
                }
                ctx.ids[self.key] = await ctx.api.create("sdkmessageprocessingsteps", body)

            return self.finding(ctx, Change.CREATE, "unsecure configuration: the app's URL", action=create)
        changed, notes = differences(row, desired)
        if not same_json(row.get("configuration"), ctx.want.unsecure_config):
            changed["configuration"] = ctx.want.unsecure_config
            notes += (f"configuration -> {ctx.want.unsecure_config}",)
        if row.get("statecode") != 0:
            changed |= {"statecode": 0, "statuscode": 1}
            notes += ("disabled -> enabled",)
        if str(row.get("_eventhandler_value")).lower() != ctx.ids.get("plugintype"):
            notes += ("another plug-in type handles it",)
        if str(row.get("_sdkmessageprocessingstepsecureconfigid_value")).lower() != ctx.ids.get(
            "secureconfig"
        ):
            notes += ("secure configuration not linked",)
        if not notes:
            return self.finding(ctx, Change.OK)
        step_id = ctx.ids[self.key]

        async def update() -> None:
            body = dict(changed)
            if str(row.get("_eventhandler_value")).lower() != ctx.ids["plugintype"]:
                body["eventhandler_plugintype@odata.bind"] = bind("plugintypes", ctx.ids["plugintype"])
            if (
                str(row.get("_sdkmessageprocessingstepsecureconfigid_value")).lower()
                != ctx.ids["secureconfig"]
            ):
                body["sdkmessageprocessingstepsecureconfigid@odata.bind"] = bind(
                    "sdkmessageprocessingstepsecureconfigs", ctx.ids["secureconfig"]
                )
            await ctx.api.update(f"sdkmessageprocessingsteps({step_id})", body)

        return self.finding(ctx, Change.UPDATE, *notes, action=update)

    async def delete(self, ctx: Context, row: dict[str, Any]) -> Finding:
        # every step on the prefix's own message was registered for it
        steps = await _steps_on_message(ctx, ["sdkmessageprocessingstepid"])
        for step in steps:
            await ctx.api.delete(f"sdkmessageprocessingsteps({step['sdkmessageprocessingstepid']})")
        return self.finding(ctx, Change.DELETE)
