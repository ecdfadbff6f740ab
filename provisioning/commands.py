"""plan, apply, verify and remove: one walk over the components each.

``apply`` finds and fixes the components one after the other, in dependency order, so a run that
stopped half-way (an error, a timeout, Ctrl-C) is completed by running it again.
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, TextIO

import httpx
from pydantic import ValidationError

from contracts import ChannelStatus, MarketingAppContext, OutboundPayload, OutboundResponse
from dataverse.auth import MsalTokenProvider
from provisioning.components import (
    Component,
    Context,
    Desired,
    ExtendedEntityRelationship,
    Names,
    RoleRead,
    components,
)
from provisioning.options import Connection, Options, load_app_routes
from provisioning.plan import Change, Finding
from provisioning.webapi import API_PATH, InputError, WebApi, literal

__all__ = ["Console", "run"]


@dataclass
class Console:
    """Output that never shows a secret: every known secret is masked on the way out."""

    secrets: list[str] = field(default_factory=list)

    def hide(self, *secrets: str | None) -> None:
        self.secrets.extend(s for s in secrets if s)
        self.secrets.sort(key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def out(self, text: str = "") -> None:
        self._write(sys.stdout, text)

    def err(self, text: str) -> None:
        self._write(sys.stderr, text)

    def _write(self, stream: TextIO, text: str) -> None:
        print(self.redact(text), file=stream, flush=True)


async def run(
    options: Options,
    connection: Connection,
    console: Console,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> int:
    tokens = MsalTokenProvider(connection.identity, connection.url)
    api = WebApi(connection.url, tokens, solution=options.solution, transport=transport)
    names = Names(
        prefix=options.prefix,
        solution=options.solution,
        assembly=options.assembly_name,
        plugin_type=options.plugin_type,
        roles=options.roles,
        account_roles=options.account_roles,
    )
    desired = None
    if options.command != "remove":
        assert options.function_url is not None
        desired = Desired(
            function_url=options.function_url,
            plugin_content=options.plugin_bytes(),
            channel_name=options.channel_name,
            max_length=options.max_length,
            function_key=options.function_key,
        )
    ctx = Context(api, names, desired)
    try:
        await _preflight(ctx, options, console)
        if options.command == "remove":
            return await _remove(ctx, console)
        return await _converge(ctx, options, connection, console)
    finally:
        await api.aclose()


async def _preflight(ctx: Context, options: Options, console: Console) -> None:
    api = ctx.api
    solution = await api.first(
        "solutions",
        select=["solutionid", "uniquename", "ismanaged"],
        filter=f"uniquename eq {literal(options.solution)}",
        expand="publisherid($select=customizationprefix)",
    )
    if solution is None:
        raise InputError(
            f"--solution: there is no solution {options.solution!r} in {api.base_url}; "
            "create it with your publisher first (Power Apps > Solutions > New solution)"
        )
    if solution.get("ismanaged"):
        raise InputError(
            f"--solution: {options.solution!r} is managed; components go into an unmanaged solution"
        )
    prefix = (solution.get("publisherid") or {}).get("customizationprefix")
    if prefix and prefix != options.prefix:
        raise InputError(
            f"--prefix: {options.prefix!r} is not the customization prefix of the publisher of "
            f"{options.solution!r} ({prefix!r})"
        )
    if (
        await api.find("EntityDefinitions(LogicalName='msdyn_channeldefinition')", select=["LogicalName"])
        is None
    ):
        raise InputError(
            f"DATAVERSE_URL: {api.base_url} has no msdyn_channeldefinition table: "
            "is Customer Insights - Journeys installed in this environment?"
        )
    organization = await api.first("organizations", select=["languagecode"])
    if organization and organization.get("languagecode"):
        ctx.language = int(organization["languagecode"])
    if (warning := options.function_url_warning()) is not None:
        console.err(f"warning: {warning}")
    console.out(f"{options.command} {ctx.names.solution} (prefix {ctx.names.prefix}) in {api.base_url}")


async def _converge(ctx: Context, options: Options, connection: Connection, console: Console) -> int:
    command = options.command
    findings: list[tuple[Component, Finding]] = []
    for component in components(ctx.names):
        row = await component.locate(ctx)
        finding = component.compare(ctx, row)
        findings.append((component, finding))
        if command == "apply" and finding.change is Change.BLOCKED:
            console.out(finding.line())
            console.err(
                f"apply stopped: {finding.label} {finding.change.planned}: " + "; ".join(finding.details)
            )
            return 1
        if command == "apply" and finding.action is not None:
            await finding.action()
            console.out(finding.line(done=True))
        else:
            console.out(finding.line(verify=command == "verify"))
        if (
            isinstance(component, ExtendedEntityRelationship)
            and component.table.key == ctx.names.tables[-1].key
        ):
            await _publish(ctx, command, findings, console)

    for table, flag in zip(ctx.names.tables, ("--journeys-role", "--account-role"), strict=True):
        roles = [f for c, f in findings if isinstance(c, RoleRead) and c.table.key == table.key]
        if roles and all(f.change is Change.SKIP for f in roles):
            missing_roles = Finding(
                f"Read on {table.logical} for Journeys",
                Change.BLOCKED,
                (
                    "none of the roles " + ", ".join(repr(r) for r in table.roles) + " exists here; "
                    f"grant it by hand, or name the role with {flag}",
                ),
            )
            findings.append((RoleRead(table, ""), missing_roles))
            console.out(missing_roles.line(verify=command == "verify"))

    await _print_channel_definition(ctx, command, console)
    unroutable = await _print_senders(ctx, console) if command == "verify" else []
    counts = _counts([f for _, f in findings])
    if command == "plan":
        console.out(f"Plan: {counts}. Nothing was changed.")
        return 0
    wrong = [f for _, f in findings if not f.change.in_place]
    if command == "apply":
        blocked = [f for f in wrong if f.change is Change.BLOCKED]
        console.out(f"Applied: {_counts([f for _, f in findings], done=True)}.")
        if blocked:
            console.err(
                "apply incomplete: " + "; ".join(f"{f.label}: {' '.join(f.details)}" for f in blocked)
            )
            return 1
        return 0
    if wrong:
        console.err(
            f"verify: {len(wrong)} component(s) missing or wrong: "
            + "; ".join(f"{f.label} ({'; '.join((f.change.verified, *f.problems))})" for f in wrong)
        )
        return 1
    console.out("Verified: every component is in place.")
    if unroutable:
        console.err(
            f"verify: the app has no route for {len(unroutable)} sender(s): {', '.join(unroutable)}; their "
            "sends are answered NotSent (InvalidSender): add them to the app's SENDER_ROUTES"
        )
        return 1
    if not await _check_relay_path(ctx, connection, console):
        return 1
    if options.send_test is not None:
        return await _send_test(ctx, options, console)
    return 0


async def _publish(
    ctx: Context, command: str, findings: list[tuple[Component, Finding]], console: Console
) -> None:
    """Forms and relationships take effect once published (the forms are what Journeys shows)."""
    entities = [name for table in ctx.names.tables for name in (table.logical, table.base_entity)]
    label = "customizations of " + ", ".join(entities)
    if command == "apply" and ctx.unpublished:
        xml = "".join(f"<entity>{name}</entity>" for name in entities)
        await ctx.api.action(
            "PublishXml", {"ParameterXml": f"<importexportxml><entities>{xml}</entities></importexportxml>"}
        )
        ctx.unpublished = False
        console.out(f"  + {label}: published")
    elif command == "plan" and any(
        c.key.endswith((":table", ":form", ":relationship")) and f.change in (Change.CREATE, Change.UPDATE)
        for c, f in findings
    ):
        console.out(f"  + {label}: publish")


async def _print_channel_definition(ctx: Context, command: str, console: Console) -> None:
    definition = ctx.names.channel_definition_id
    exists = "definition" in ctx.ids
    console.out(f"Channel definition id: {definition}" + ("" if exists else " (once applied)"))
    senders = []
    if exists:
        senders = await ctx.api.list(
            "msdyn_channelinstances",
            select=["msdyn_contactpoint"],
            filter=f"_msdyn_channeldefinitionid_value eq {definition}",
        )
    points = [str(s["msdyn_contactpoint"]) for s in senders if s.get("msdyn_contactpoint")]
    if points:
        pairs = ",".join(f"{point}={definition}" for point in points)
        console.out(f"App setting: DATAVERSE_CHANNEL_DEFINITIONS={pairs}")
    else:
        console.out(
            f"App setting (optional; one pair per sender, once senders are added in Journeys): "
            f"DATAVERSE_CHANNEL_DEFINITIONS=<sender number>={definition}"
        )
    notification, inbound = (relay.unique_name for relay in ctx.names.relay_apis)
    console.out(
        f"App setting (optional; relays through {notification} and {inbound} instead of the msdyn_ "
        f"actions): DATAVERSE_CHANNEL_API_PREFIX={ctx.names.prefix}"
    )


async def _print_senders(ctx: Context, console: Console) -> list[str]:
    """Every SMS account and sender of the channel, and whether the app can send for each sender
    (as its SENDER_ROUTES / SMS_PROVIDER, set where this runs, say). Returns the unroutable senders."""
    if "definition" not in ctx.ids:
        return []
    definition = ctx.ids["definition"]
    where = f"_msdyn_channeldefinitionid_value eq {definition}"
    accounts = await ctx.api.list(
        "msdyn_channelinstanceaccounts",
        select=["msdyn_channelinstanceaccountid", "msdyn_name", "_msdyn_extendedentityid_value"],
        filter=where,
    )
    senders = await ctx.api.list(
        "msdyn_channelinstances",
        select=["msdyn_name", "msdyn_contactpoint", "_msdyn_channelinstanceaccountid_value"],
        filter=where,
    )
    table = ctx.names.account
    settings: dict[str, dict[str, Any]] = {}
    if "account:table" in ctx.ids:
        rows = await ctx.api.list(
            table.entity_set, select=[f"{table.logical}id", *(table.column(c) for c in table.columns[1:])]
        )
        settings = {str(r[f"{table.logical}id"]).lower(): r for r in rows}

    def route_of(account: dict[str, Any]) -> str | None:
        row = settings.get(str(account.get("_msdyn_extendedentityid_value")).lower())
        if row is None or not row.get(f"{table.prefix}_provider"):
            return None
        provider, label = row[f"{table.prefix}_provider"], row.get(f"{table.prefix}_account")
        return f"{provider}:{label}".lower() if label else str(provider).lower()

    by_id = {str(a["msdyn_channelinstanceaccountid"]).lower(): a for a in accounts}
    console.out(f"SMS accounts of this channel ({len(accounts)}):")
    for account in accounts:
        route = route_of(account)
        shown = f"-> {route}" if route else "(no provider in its settings: open it in Journeys)"
        console.out(f"  {'=' if route else '!'} {account.get('msdyn_name')!r} {shown}")
    routes = load_app_routes()
    console.out(f"SMS senders of this channel ({len(senders)}):")
    unroutable = []
    for sender in senders:
        number = str(sender.get("msdyn_contactpoint"))
        owner = by_id.get(str(sender.get("_msdyn_channelinstanceaccountid_value")).lower())
        says = route_of(owner) if owner is not None else None
        where_from = f"account {owner.get('msdyn_name')!r}" if owner is not None else "no account"
        line = f"{number} {sender.get('msdyn_name')!r} ({where_from})"
        if not routes.known:
            console.out(
                f"  ? {line}: set SENDER_ROUTES or SMS_PROVIDER as the app has them to check its route"
            )
            continue
        route = routes.route_for(number)
        if route is None:
            unroutable.append(number)
            console.out(f"  ! {line}: the app has no route for it")
        elif says is not None and says != route:
            console.out(f"  ~ {line}: the app sends it through {route}, its account says {says}")
        else:
            console.out(f"  = {line}: the app sends it through {route}")
    return unroutable


async def _check_relay_path(ctx: Context, connection: Connection, console: Console) -> bool:
    """The way the app's relays reach Journeys, as DATAVERSE_CHANNEL_API_PREFIX says, is there."""
    prefix = connection.dataverse.channel_api_prefix
    apis = connection.dataverse.channel_apis
    if prefix is not None:
        if prefix != ctx.names.prefix:
            console.err(
                f"verify: DATAVERSE_CHANNEL_API_PREFIX is {prefix!r}: the app calls {apis.notification}, "
                f"but this channel's APIs are {ctx.names.prefix}_…"
            )
            return False
        console.out(f"Relays: through this channel's {apis.notification} and {apis.inbound} (in place).")
        return True
    missing = [
        name
        for name in (apis.notification, apis.inbound)
        if await ctx.api.first("sdkmessages", select=["sdkmessageid"], filter=f"name eq {literal(name)}")
        is None
    ]
    if missing:
        console.err(
            f"verify: Journeys' {' and '.join(missing)} not found in this environment; set "
            f"DATAVERSE_CHANNEL_API_PREFIX={ctx.names.prefix} to relay through this channel's own APIs"
        )
        return False
    console.out(f"Relays: directly to {apis.notification} and {apis.inbound} (found).")
    return True


def _counts(findings: list[Finding], *, done: bool = False) -> str:
    order = [Change.CREATE, Change.UPDATE, Change.REWRITE, Change.OK, Change.SKIP, Change.BLOCKED]
    parts = []
    for change in order:
        n = sum(1 for f in findings if f.change is change)
        if n:
            verb = change.done if done or not change.action_verb else f"to {change.planned}"
            parts.append(f"{n} {verb}")
    return ", ".join(parts) or "nothing"


async def _remove(ctx: Context, console: Console) -> int:
    everything = components(ctx.names)
    for component in everything:
        await component.locate(ctx)
    console.out("Deleting in dependency order:")
    for component in reversed(everything):
        row = ctx.rows.get(component.key)
        if row is None:
            console.out(Finding(component.label(ctx.names), Change.ABSENT).line())
            continue
        finding = await component.delete(ctx, row)
        console.out(finding.line(done=True))
    console.out("Removed. The solution itself and its publisher are left as they were.")
    return 0


async def _send_test(ctx: Context, options: Options, console: Console) -> int:
    """Executes the custom API through Dataverse: Dataverse -> plug-in -> the app -> the provider."""
    assert options.send_test is not None
    names = ctx.names
    sender = options.sender
    if sender is None:
        instances = await ctx.api.list(
            "msdyn_channelinstances",
            select=["msdyn_contactpoint", "msdyn_name"],
            filter=f"_msdyn_channeldefinitionid_value eq {names.channel_definition_id}",
        )
        points = sorted({str(i["msdyn_contactpoint"]) for i in instances if i.get("msdyn_contactpoint")})
        if len(points) != 1:
            problem = "no sender yet: add one in Journeys" if not points else f"{len(points)} senders"
            console.err(f"verify --send-test: {problem}; name the sender with --from")
            return 2
        sender = points[0]
    request_id = f"provisioning-test-{uuid.uuid4()}"
    try:
        payload = OutboundPayload(
            channel_definition_id=uuid.UUID(names.channel_definition_id),
            request_id=request_id,
            from_=sender,
            to=options.send_test,
            message={"text": options.text},
            marketing_app_context=MarketingAppContext(is_test_send=True),
        )
    except ValidationError:
        raise InputError("--send-test/--from: a phone number or sender is required") from None
    console.out(
        f"Test send: POST {ctx.api.base_url}{API_PATH}{names.api} "
        f"(From {sender}, To {options.send_test}, RequestId {request_id})"
    )
    answer = await ctx.api.action(names.api, {"payload": payload.to_wire_json()})
    response = answer.get("response")
    if not isinstance(response, str) or not response:
        console.err(
            "verify --send-test: the custom API answered without a response: the forwarder step did not run"
        )
        return 1
    console.out(f"Answer: {response}")
    try:
        outcome = OutboundResponse.model_validate_json(response)
    except ValidationError:
        console.err("verify --send-test: the answer is not the channel's response contract")
        return 1
    if outcome.status is ChannelStatus.SENT:
        console.out(f"Sent: the provider accepted it (MessageId {outcome.message_id or 'not given'}).")
        return 0
    console.err(
        f"verify --send-test: the app answered {outcome.status} for RequestId {request_id}: see its log"
    )
    return 1
