"""The plug-in side: the outbound custom API, the plug-in assembly and its types, the forwarder's
step and the step's secure configuration, and the channel's own relay custom APIs.

Journeys → custom API ``<prefix>_OutboundSms`` (payload → response) → synchronous PostOperation step
of the forwarder plug-in (URL in the unsecure configuration, function key in the secure one) → the
app's ``/api/outbound``. Back: the app → ``<prefix>_SmsDeliveryReport`` / ``<prefix>_SmsInbound``
(when DATAVERSE_CHANNEL_API_PREFIX names them) → their relay plug-ins → Journeys' msdyn_ actions.
"""

from __future__ import annotations

from typing import Any

from provisioning.base import (
    MODE_SYNCHRONOUS,
    NO_CUSTOM_STEPS,
    SANDBOX,
    SOURCE_DATABASE,
    STAGE_POST_OPERATION,
    STRING,
    Component,
    Context,
    Names,
    RelayApiSpec,
    bind,
)
from provisioning.plan import Change, Finding, differences, same_json
from provisioning.webapi import literal

#: The base actions' output, and so the relay APIs' (Microsoft's samples read it).
RESPONSE_MESSAGE = "responseMessage"

# -- custom API ------------------------------------------------------------------------------


async def _find_custom_api(ctx: Context, unique_name: str) -> dict[str, Any] | None:
    """A custom API with what provisioning compares: its columns, parameters and response properties."""
    return await ctx.api.first(
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
            "executeprivilegename",
            "_plugintypeid_value",
        ],
        filter=f"uniquename eq {literal(unique_name)}",
        expand="CustomAPIRequestParameters($select=uniquename,type,isoptional),"
        "CustomAPIResponseProperties($select=uniquename,type)",
    )


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
        row = await _find_custom_api(ctx, ctx.names.api)
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
    """A plug-in class of the assembly: the forwarder (``key`` plugintype, its name from --plugin-type)
    or a relay (its name next to the forwarder's)."""

    def __init__(self, relay: RelayApiSpec | None = None) -> None:
        self.relay = relay
        self.key = "plugintype" if relay is None else f"plugintype:{relay.kind}"

    def typename(self, names: Names) -> str:
        return names.plugin_type if self.relay is None else self.relay.plugin_type

    def label(self, names: Names) -> str:
        return f"plug-in type {self.typename(names)}"

    async def locate(self, ctx: Context) -> dict[str, Any] | None:
        row = None
        if "assembly" in ctx.ids:
            row = await ctx.api.first(
                "plugintypes",
                select=["plugintypeid", "typename"],
                filter=f"_pluginassemblyid_value eq {ctx.ids['assembly']} "
                f"and typename eq {literal(self.typename(ctx.names))}",
            )
        return ctx.found(self.key, row, "plugintypeid")

    def compare(self, ctx: Context, row: dict[str, Any] | None) -> Finding:
        if row is not None:
            return self.finding(ctx, Change.OK)
        typename = self.typename(ctx.names)

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
        apis = await ctx.api.list(
            "customapis", select=["uniquename"], filter=f"_plugintypeid_value eq {type_id}"
        )
        if apis:
            return self.finding(ctx, Change.KEEP, f"custom API {apis[0].get('uniquename')} runs it")
        await ctx.api.delete(f"plugintypes({type_id})")
        return self.finding(ctx, Change.DELETE)


class RelayApi(Component):
    """The channel's own delivery-report (or inbound) custom API: one String parameter named as the
    base action's, run by its relay plug-in as the main operation, which executes the base action
    with the payload unchanged ("Define custom APIs": it "must call the base solution's
    msdyn_D365ChannelsNotification API")."""

    IMMUTABLE = ("bindingtype", "isfunction", "allowedcustomprocessingsteptype")

    def __init__(self, relay: RelayApiSpec) -> None:
        self.relay = relay
        self.key = f"relayapi:{relay.kind}"

    def label(self, names: Names) -> str:
        return f"custom API {self.relay.unique_name} (-> {self.relay.base_action})"

    def body(self, names: Names) -> dict[str, Any]:
        relay = self.relay
        return {
            "uniquename": relay.unique_name,
            "name": relay.unique_name,
            "displayname": relay.display,
            "description": f"Custom SMS channel: passes {relay.parameter} to {relay.base_action}",
            "bindingtype": 0,
            "isfunction": False,
            "isprivate": False,
            "allowedcustomprocessingsteptype": NO_CUSTOM_STEPS,
            # its plug-in calls Journeys as the system user: only who may change the channel's
            # accounts (admins, and the app's user) may post reports and replies through it
            "executeprivilegename": names.account.write_privilege,
        }

    def parameter(self) -> dict[str, Any]:
        relay = self.relay
        return {
            "uniquename": relay.parameter,
            "name": f"{relay.unique_name}.{relay.parameter}",
            "displayname": relay.parameter,
            "description": f"The {relay.base_action} payload (JSON), passed on unchanged",
            "type": STRING,
            "isoptional": False,
        }

    def property(self) -> dict[str, Any]:
        relay = self.relay
        return {
            "uniquename": RESPONSE_MESSAGE,
            "name": f"{relay.unique_name}.{RESPONSE_MESSAGE}",
            "displayname": RESPONSE_MESSAGE,
            "description": f"What {relay.base_action} answered",
            "type": STRING,
        }

    async def locate(self, ctx: Context) -> dict[str, Any] | None:
        row = await _find_custom_api(ctx, self.relay.unique_name)
        return ctx.found(self.key, row, "customapiid")

    def compare(self, ctx: Context, row: dict[str, Any] | None) -> Finding:
        relay = self.relay
        type_key = f"plugintype:{relay.kind}"
        if row is None:

            async def create() -> None:
                body = self.body(ctx.names) | {
                    "PluginTypeId@odata.bind": bind("plugintypes", ctx.ids[type_key]),
                    "CustomAPIRequestParameters": [self.parameter()],
                    "CustomAPIResponseProperties": [self.property()],
                }
                ctx.ids[self.key] = await ctx.api.create("customapis", body)

            return self.finding(
                ctx, Change.CREATE, f"{relay.parameter} -> {relay.plugin_type}", action=create
            )
        desired = self.body(ctx.names)
        blocked = [
            f"{column} is {row.get(column)!r}, must be {desired[column]!r}"
            for column in self.IMMUTABLE
            if row.get(column) != desired[column]
        ]
        parameters = {p.get("uniquename"): p for p in row.get("CustomAPIRequestParameters") or []}
        properties = {p.get("uniquename"): p for p in row.get("CustomAPIResponseProperties") or []}
        wrong_parameters = set(parameters) - {relay.parameter}
        if wrong_parameters:
            blocked.append(
                f"request parameter(s) {', '.join(sorted(map(str, wrong_parameters)))} are not "
                f"{relay.parameter}"
            )
        payload, response = parameters.get(relay.parameter), properties.get(RESPONSE_MESSAGE)
        if payload is not None and (payload.get("type") != STRING or payload.get("isoptional")):
            blocked.append(f"request parameter {relay.parameter} must be a String and not optional")
        if blocked:
            blocked.append("these never change after creation: run remove (or delete it), then apply")
            return self.finding(ctx, Change.BLOCKED, *blocked)
        mutable = ("displayname", "description", "isprivate", "executeprivilegename")
        changed, notes = differences(row, {k: desired[k] for k in mutable})
        rebind = str(row.get("_plugintypeid_value")).lower() != ctx.ids.get(type_key)
        if rebind:
            notes += (f"its main operation must be {relay.plugin_type}",)
        missing = [
            name
            for name, found in ((relay.parameter, payload), (RESPONSE_MESSAGE, response))
            if found is None
        ]
        notes += tuple(f"add {name}" for name in missing)
        if not changed and not rebind and not missing:
            return self.finding(ctx, Change.OK)
        api_id = ctx.ids[self.key]

        async def update() -> None:
            body = dict(changed)
            if rebind:
                body["PluginTypeId@odata.bind"] = bind("plugintypes", ctx.ids[type_key])
            if body:
                await ctx.api.update(f"customapis({api_id})", body)
            link = {"CustomAPIId@odata.bind": bind("customapis", api_id)}
            if payload is None:
                await ctx.api.create("customapirequestparameters", self.parameter() | link)
            if response is None:
                await ctx.api.create("customapiresponseproperties", self.property() | link)

        return self.finding(ctx, Change.UPDATE, *notes, action=update)

    async def delete(self, ctx: Context, row: dict[str, Any]) -> Finding:
        await ctx.api.delete(f"customapis({ctx.ids[self.key]})")
        return self.finding(ctx, Change.DELETE, "with its parameter and response property")


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
