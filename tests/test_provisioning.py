"""python -m provisioning against a strict fake Dataverse Web API over HTTPS, with real MSAL.

Each test runs the CLI as an admin would (flags, the app's settings in the environment) and checks
what an admin would: the records in Dataverse, the printed ids, the exit code, and that no secret
ever reaches the output.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dataverse.auth import MsalTokenProvider
from provisioning.__main__ import main
from provisioning.components import Names
from provisioning.options import load_connection
from provisioning.webapi import WebApi, WebApiError
from tests.conftest import CLIENT_ID, CUSTOMER, OUR_NUMBER, ROOT, TENANT_ID
from tests.fakes.dataverse import FakeEntra
from tests.fakes.dataverse_metadata import FakeWebApi
from tests.fakes.http import FakeHttpServer, Recorded, Reply
from tests.fakes.tls import LocalCA

SOLUTION = "ContosoSms"
PREFIX = "contoso"
CXP_ROLE = "Cxp Channel Definitions Services User"
MARKETING_ROLE = "Marketing Services User Extensible"
NAMES = Names(PREFIX, SOLUTION, "SmsChannel.Plugin", "SmsChannel.Plugin.OutboundForwarder", (CXP_ROLE,))
DEFINITION = NAMES.channel_definition_id


@dataclass
class FakeFunctionApp:
    """The app's /api/outbound: checks the function key and answers the response contract."""

    key: str
    requests: list[Recorded] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Recorded) -> Reply:
        with self._lock:
            self.requests.append(request)
        if request.method != "POST" or request.path != "/api/outbound":
            return Reply(404, b"")
        if request.headers.get("x-functions-key") != self.key:
            return Reply(401, b"")
        payload = json.loads(request.json()["payload"])
        answer = {
            "ChannelDefinitionId": payload["ChannelDefinitionId"],
            "MessageId": "SM0001",
            "RequestId": payload["RequestId"],
            "Status": "Sent",
        }
        return Reply(200, {"response": json.dumps(answer)})


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def error(self) -> str:
        """The one-line message a failure ends with (warnings may come before it)."""
        lines = self.err.strip().splitlines()
        return lines[-1] if lines else ""


@dataclass
class World:
    entra: FakeEntra
    api: FakeWebApi
    app: FakeFunctionApp
    dataverse_url: str
    app_url: str
    client_secret: str
    function_key: str
    plugin: Path
    capsys: pytest.CaptureFixture[str]
    #: Every secret a test used: none may ever be printed.
    secrets: set[str] = field(default_factory=set)

    def flags(self, *, key: str | None = None, prefix: str = PREFIX, solution: str = SOLUTION) -> list[str]:
        flags = [
            "--solution",
            solution,
            "--prefix",
            prefix,
            "--function-url",
            f"{self.app_url}/api/outbound",
            "--plugin",
            str(self.plugin),
        ]
        # the = form: a key may start with "-"
        return [*flags, f"--function-key={key or self.function_key}"]

    def run(self, *args: str) -> Result:
        code = main(list(args))
        captured = self.capsys.readouterr()
        printed = captured.out + captured.err
        for secret in self.secrets:
            assert secret not in printed
        assert "Traceback" not in printed
        return Result(code, captured.out, captured.err)

    def apply(self, **flags: Any) -> Result:
        result = self.run("apply", *self.flags(**flags))
        assert result.code == 0, result.err
        return result

    def verify(self, *extra: str, **flags: Any) -> Result:
        return self.run("verify", *self.flags(**flags), *extra)

    def writes_since(self, start: int) -> list[tuple[str, str]]:
        return [(w.method, w.path) for w in self.api.writes[start:]]

    def one(self, entity_set: str, **where: Any) -> dict[str, Any]:
        rows = self.api.rows(entity_set, **where)
        assert len(rows) == 1, rows
        return rows[0]


@dataclass
class Servers:
    entra: FakeHttpServer
    dataverse: FakeHttpServer
    app: FakeHttpServer


@pytest.fixture(scope="module")
def servers(test_ca: LocalCA) -> Iterator[Servers]:
    """Started once: each test plugs its own fakes in (stopping a server takes half a second)."""

    def unset(request: Recorded) -> Reply:
        return Reply(503, b"")

    with (
        FakeHttpServer(unset, tls=test_ca.server_context()) as entra,
        FakeHttpServer(unset, tls=test_ca.server_context()) as dataverse,
        FakeHttpServer(unset, tls=test_ca.server_context()) as app,
    ):
        yield Servers(entra, dataverse, app)


@pytest.fixture
def world(
    servers: Servers,
    trust_test_ca: LocalCA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> World:
    client_secret = secrets.token_urlsafe(16)
    function_key = secrets.token_urlsafe(24)
    entra = FakeEntra(TENANT_ID, CLIENT_ID, client_secret=client_secret)
    api = FakeWebApi(entra)
    api.seed_solution(SOLUTION, PREFIX)
    api.seed_role(CXP_ROLE)
    api.seed_role(MARKETING_ROLE)
    api.seed_role("System Administrator")
    app = FakeFunctionApp(function_key)
    servers.entra.set_handler(entra)
    servers.dataverse.set_handler(api)
    servers.app.set_handler(app)
    plugin = tmp_path / "SmsChannel.Plugin.dll"
    plugin.write_bytes(b"MZ" + secrets.token_bytes(2048))
    for name, value in {
        "DATAVERSE_URL": servers.dataverse.url,
        "AZURE_TENANT_ID": TENANT_ID,
        "AZURE_CLIENT_ID": CLIENT_ID,
        "AZURE_CLIENT_SECRET": client_secret,
        "AZURE_AUTHORITY_HOST": servers.entra.url,
    }.items():
        monkeypatch.setenv(name, value)
    for name in (
        "PROVISIONING_FUNCTION_KEY",
        "SENDER_ROUTES",
        "SMS_PROVIDER",
        "DATAVERSE_CHANNEL_API_PREFIX",
    ):
        monkeypatch.delenv(name, raising=False)
    # only the test CA: loading the whole certifi bundle costs 60 ms per TLS context, several per run
    ca_only = tmp_path / "test-ca.pem"
    trust_test_ca.ca.cert_pem.write_to_path(str(ca_only))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_only))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_only))
    return World(
        entra,
        api,
        app,
        servers.dataverse.url,
        servers.app.url,
        client_secret,
        function_key,
        plugin,
        capsys,
        {client_secret, function_key},
    )


def add_account(
    world: World, name: str = "Twilio US", provider: str = "twilio", label: str | None = None
) -> str:
    """What the admin does in Journeys' SMS wizard, account step: an account row and its settings."""
    account = NAMES.account
    settings = world.api.insert(
        account.entity_set,
        {f"{PREFIX}_name": name, f"{PREFIX}_provider": provider}
        | ({f"{PREFIX}_account": label} if label else {}),
    )
    return world.api.insert(
        "msdyn_channelinstanceaccounts",
        {
            "msdyn_name": name,
            "msdyn_ChannelDefinitionId@odata.bind": f"/msdyn_channeldefinitions({DEFINITION})",
            # only an account whose relationship exists can bind this navigation property
            f"{account.navigation_property}@odata.bind": f"/{account.entity_set}({settings})",
        },
    )


def add_sender(
    world: World, number: str = OUR_NUMBER, *, account: str | None = None, name: str = "Main number"
) -> str:
    """What the admin does in Journeys: "Add SMS number", an account, the sender's row."""
    account = account or add_account(world)
    sender = NAMES.sender
    row = world.api.insert(sender.entity_set, {f"{PREFIX}_name": name})
    return world.api.insert(
        "msdyn_channelinstances",
        {
            "msdyn_name": name,
            "msdyn_contactpoint": number,
            "msdyn_ChannelDefinitionId@odata.bind": f"/msdyn_channeldefinitions({DEFINITION})",
            "msdyn_ChannelInstanceAccountId@odata.bind": f"/msdyn_channelinstanceaccounts({account})",
            f"{sender.navigation_property}@odata.bind": f"/{sender.entity_set}({row})",
        },
    )


# -- plan --------------------------------------------------------------------------------------


def test_plan_lists_every_component_and_changes_nothing(world: World) -> None:
    world.api.fail_next(
        "GET", "customapis", Reply(429, {"error": {"code": "0x80072322"}}, {"Retry-After": "0"})
    )

    result = world.run("plan", *world.flags())

    assert result.code == 0, result.err
    for line in (
        "+ custom API contoso_OutboundSms: create",
        "+ plug-in assembly SmsChannel.Plugin: create",
        "+ plug-in type SmsChannel.Plugin.OutboundForwarder: create",
        "+ secure configuration of the step (function key): create",
        "+ step contoso_OutboundSms PostOperation (synchronous)",
        "+ plug-in type SmsChannel.Plugin.DeliveryReportRelay: create",
        "+ plug-in type SmsChannel.Plugin.InboundRelay: create",
        "+ custom API contoso_SmsDeliveryReport (-> msdyn_D365ChannelsNotification): create "
        "(notificationPayLoad -> SmsChannel.Plugin.DeliveryReportRelay)",
        "+ custom API contoso_SmsInbound (-> msdyn_D365ChannelsInbound): create "
        "(inboundPayLoad -> SmsChannel.Plugin.InboundRelay)",
        "+ table contoso_smssender (sender configuration): create",
        "+ main form 'SMS sender' of contoso_smssender: create",
        "+ table contoso_smsaccount (account configuration): create "
        "(columns contoso_name, contoso_provider, contoso_account)",
        "+ main form 'SMS account' of contoso_smsaccount: create",
        "+ relationship contoso_ChannelInstance_extendedentityid_smssender: create",
        "+ relationship contoso_ChannelInstanceAccount_extendedentityid_smsaccount: create "
        "(channel instance accounts bind msdyn_extendedentityid_contoso_smsaccount)",
        f"+ channel definition {DEFINITION}: create ('Custom SMS', SMS)",
        "+ message part text: create",
        f"+ Read on contoso_smssender for role '{CXP_ROLE}': create",
        f"+ Read on contoso_smsaccount for role '{MARKETING_ROLE}': create",
        f"Channel definition id: {DEFINITION} (once applied)",
        "DATAVERSE_CHANNEL_API_PREFIX=contoso",
        "Nothing was changed.",
    ):
        assert line in result.out
    assert world.api.writes == []
    assert world.api.rows("customapis") == []
    assert "sandbox cannot call IP addresses or localhost" in result.err  # the fakes run on localhost


# -- apply ---------------------------------------------------------------------------------------


def test_apply_creates_every_component_once_in_the_solution(world: World) -> None:
    result = world.apply()

    api = world.one("customapis", uniquename="contoso_OutboundSms")
    assert (
        api["bindingtype"],
        api["isfunction"],
        api["isprivate"],
        api["allowedcustomprocessingsteptype"],
    ) == (
        0,
        False,
        False,
        2,
    )
    assert api["description"]
    payload = world.one("customapirequestparameters", _customapiid_value=api["customapiid"])
    assert (payload["uniquename"], payload["type"], payload["isoptional"]) == ("payload", 10, False)
    response = world.one("customapiresponseproperties", _customapiid_value=api["customapiid"])
    assert (response["uniquename"], response["type"]) == ("response", 10)
    message = world.one("sdkmessages", name="contoso_OutboundSms")

    assembly = world.one("pluginassemblies", name="SmsChannel.Plugin")
    assert base64.b64decode(assembly["content"]) == world.plugin.read_bytes()
    assert (assembly["isolationmode"], assembly["sourcetype"]) == (2, 0)
    plugin_type = world.one("plugintypes", typename="SmsChannel.Plugin.OutboundForwarder")
    assert plugin_type["_pluginassemblyid_value"] == assembly["pluginassemblyid"]

    step = world.one("sdkmessageprocessingsteps")
    assert (step["stage"], step["mode"], step["statecode"]) == (40, 0, 0)
    assert step["_sdkmessageid_value"] == message["sdkmessageid"]
    assert step["_eventhandler_value"] == plugin_type["plugintypeid"]
    assert json.loads(step["configuration"]) == {"url": f"{world.app_url}/api/outbound", "timeoutSeconds": 15}
    secure = world.one("sdkmessageprocessingstepsecureconfigs")
    assert (
        step["_sdkmessageprocessingstepsecureconfigid_value"]
        == secure["sdkmessageprocessingstepsecureconfigid"]
    )
    assert json.loads(secure["secureconfig"]) == {"functionKey": world.function_key}

    table = world.api.entities["contoso_smssender"]
    assert table["PrimaryNameAttribute"] == "contoso_name"
    form = world.one("systemforms", objecttypecode="contoso_smssender", name="SMS sender")
    assert form["type"] == 2
    assert 'datafieldname="contoso_name"' in form["formxml"]
    accounts = world.api.entities["contoso_smsaccount"]
    assert accounts["PrimaryNameAttribute"] == "contoso_name"
    assert {"contoso_provider", "contoso_account"} <= {a["LogicalName"] for a in accounts["Attributes"]}
    account_form = world.one("systemforms", objecttypecode="contoso_smsaccount", name="SMS account")
    assert account_form["type"] == 2
    # the wizard shows name and description itself: the form holds the route only
    assert 'datafieldname="contoso_provider"' in account_form["formxml"]
    assert 'datafieldname="contoso_name"' not in account_form["formxml"]
    relationships = {r["ReferencedEntity"]: r for r in world.api.relationships.values()}
    for table_name, base in (
        ("contoso_smssender", "msdyn_channelinstance"),
        ("contoso_smsaccount", "msdyn_channelinstanceaccount"),
    ):
        relationship = relationships[table_name]
        assert relationship["ReferencingEntity"] == base
        assert relationship["ReferencingAttribute"] == "msdyn_extendedentityid"
        assert (
            relationship["ReferencingEntityNavigationPropertyName"] == f"msdyn_extendedentityid_{table_name}"
        )
    assert {
        "contoso_smssender",
        "msdyn_channelinstance",
        "contoso_smsaccount",
        "msdyn_channelinstanceaccount",
    } <= (world.api.published[-1])

    # Read as Microsoft's pages say: the sender table for one role, the account table for another
    for role, privilege in (
        (CXP_ROLE, "prvReadcontoso_SmsSender"),
        (MARKETING_ROLE, "prvReadcontoso_SmsAccount"),
    ):
        [root] = [r for r in world.api.rows("roles", name=role) if r.get("_parentroleid_value") is None]
        read = world.one("privileges", name=privilege)
        assert world.api.role_privileges[root["roleid"]] == {read["privilegeid"]: "Global"}

    definition = world.one("msdyn_channeldefinitions")
    assert definition["msdyn_channeldefinitionid"] == DEFINITION
    assert (definition["msdyn_channeltype"], definition["msdyn_supportsaccount"]) == ("SMS", True)
    assert definition["msdyn_outboundendpointurltemplate"] == "/contoso_OutboundSms"
    assert (definition["msdyn_hasinbound"], definition["msdyn_hasdeliveryreceipt"]) == (True, True)
    assert definition["msdyn_channeldefinitionexternalentity"] == "contoso_smssender"
    assert definition["msdyn_channeldefinitionexternalformid"] == form["formid"]
    assert definition["msdyn_channeldefinitionaccountexternalentity"] == "contoso_smsaccount"
    assert definition["msdyn_channeldefinitionaccountexternalformid"] == account_form["formid"]
    assert definition.get("msdyn_messageformid") is None  # Journeys' own SMS editor
    assert len(definition["msdyn_description"]) <= 100

    for unique_name, parameter, relay in (
        ("contoso_SmsDeliveryReport", "notificationPayLoad", "SmsChannel.Plugin.DeliveryReportRelay"),
        ("contoso_SmsInbound", "inboundPayLoad", "SmsChannel.Plugin.InboundRelay"),
    ):
        own = world.one("customapis", uniquename=unique_name)
        assert (own["bindingtype"], own["isfunction"], own["allowedcustomprocessingsteptype"]) == (
            0,
            False,
            0,
        )
        # its plug-in calls Journeys as the system user: not for everyone to execute
        assert own["executeprivilegename"] == "prvWritecontoso_SmsAccount"
        assert own["_plugintypeid_value"] == world.one("plugintypes", typename=relay)["plugintypeid"]
        [request] = world.api.rows("customapirequestparameters", _customapiid_value=own["customapiid"])
        assert (request["uniquename"], request["type"], request["isoptional"]) == (parameter, 10, False)
        [answer] = world.api.rows("customapiresponseproperties", _customapiid_value=own["customapiid"])
        assert (answer["uniquename"], answer["type"]) == ("responseMessage", 10)
    part = world.one("msdyn_channelmessageparts")
    assert part["_msdyn_channeldefinitionid_value"] == DEFINITION
    assert (part["msdyn_name"], part["msdyn_type"], part["msdyn_isrequired"]) == ("text", 192350000, True)
    assert part["msdyn_maxlength"] == 1530

    # every component went into the solution
    components = [w for w in world.api.writes if w.method == "POST" and w.path[0].islower()]
    components = [
        w for w in components if not w.path.startswith(("sdkmessageprocessingstepsecureconfigs", "roles("))
    ]
    metadata = [
        w for w in world.api.writes if w.path.startswith(("EntityDefinitions", "RelationshipDefinitions"))
    ]
    assert [w.path for w in components] == [
        "customapis",
        "pluginassemblies",
        "plugintypes",
        "sdkmessageprocessingsteps",
        "plugintypes",
        "plugintypes",
        "systemforms",
        "systemforms",
        "customapis",
        "customapis",
        "msdyn_channeldefinitions",
        "msdyn_channelmessageparts",
    ]
    assert len(metadata) == 6  # two tables, their extra columns (account: 2), two relationships
    assert all(w.solution == SOLUTION for w in components + metadata)
    in_solution = {kind for solution, kind, _ in world.api.solution_components if solution == SOLUTION}
    # the secure configuration never travels with a solution: apply writes it in each environment
    assert "sdkmessageprocessingstepsecureconfig" not in in_solution
    assert {
        "customapi",
        "pluginassembly",
        "plugintype",
        "sdkmessageprocessingstep",
        "entity",
        "systemform",
        "relationship",
        "msdyn_channeldefinition",
        "msdyn_channelmessagepart",
    } <= in_solution

    assert f"Channel definition id: {DEFINITION}\n" in result.out
    assert f"DATAVERSE_CHANNEL_DEFINITIONS=<sender number>={DEFINITION}" in result.out


def test_apply_again_only_rewrites_the_secure_configuration_and_a_new_key_lands_in_the_same_row(
    world: World,
) -> None:
    world.apply()
    counts = {name: len(table.rows) for name, table in world.api.tables.items()}
    start = len(world.api.writes)

    again = world.apply()

    secure = world.one("sdkmessageprocessingstepsecureconfigs")
    config_path = f"sdkmessageprocessingstepsecureconfigs({secure['sdkmessageprocessingstepsecureconfigid']})"
    assert world.writes_since(start) == [("PATCH", config_path)]
    assert {name: len(table.rows) for name, table in world.api.tables.items()} == counts
    assert "= custom API contoso_OutboundSms: in place" in again.out
    assert (
        "~ secure configuration of the step (function key): rewritten (it cannot be read back)" in again.out
    )

    rotated = secrets.token_urlsafe(24)
    world.secrets.add(rotated)
    world.apply(key=rotated)
    assert json.loads(world.one("sdkmessageprocessingstepsecureconfigs")["secureconfig"]) == {
        "functionKey": rotated
    }


# -- verify ----------------------------------------------------------------------------------------


def test_verify_names_components_deleted_behind_its_back_and_apply_repairs_them(world: World) -> None:
    assert world.verify().code == 1  # nothing yet
    world.apply()
    assert world.verify().code == 0

    step = world.one("sdkmessageprocessingsteps")
    world.api.remove_row("sdkmessageprocessingsteps", step["sdkmessageprocessingstepid"])
    world.api.remove_row(
        "msdyn_channelmessageparts", world.one("msdyn_channelmessageparts")["msdyn_channelmessagepartid"]
    )
    world.api.role_privileges.clear()
    broken = world.verify()

    assert broken.code == 1
    assert "verify: 4 component(s) missing or wrong:" in broken.err
    for name in (
        "step contoso_OutboundSms PostOperation",
        "message part text",
        f"for role '{CXP_ROLE}'",
        f"for role '{MARKETING_ROLE}'",
    ):
        assert name in broken.err
    assert "custom API" not in broken.err

    repaired = world.apply()
    created = "+ step contoso_OutboundSms PostOperation (synchronous) -> SmsChannel.Plugin.OutboundForwarder"
    created += ": created"
    assert created in repaired.out
    assert world.verify().code == 0
    # the step came back bound to the same secure configuration row: nothing orphaned
    secure = world.one("sdkmessageprocessingstepsecureconfigs")
    step = world.one("sdkmessageprocessingsteps")
    assert (
        step["_sdkmessageprocessingstepsecureconfigid_value"]
        == secure["sdkmessageprocessingstepsecureconfigid"]
    )


def test_a_rebuilt_plugin_fails_verify_and_apply_updates_the_same_assembly(world: World) -> None:
    world.apply()
    assembly_id = world.one("pluginassemblies")["pluginassemblyid"]
    world.plugin.write_bytes(b"MZ" + secrets.token_bytes(4096))

    stale = world.verify()
    assert stale.code == 1
    assert (
        "plug-in assembly SmsChannel.Plugin (differs; content is not the --plugin file (a rebuilt DLL?))"
        in stale.error
    )

    world.apply()
    assembly = world.one("pluginassemblies")
    assert assembly["pluginassemblyid"] == assembly_id
    assert base64.b64decode(assembly["content"]) == world.plugin.read_bytes()
    assert world.verify().code == 0


def test_send_test_runs_dataverse_plugin_app_and_prints_the_answer(world: World) -> None:
    world.apply()
    add_sender(world)

    result = world.verify("--send-test", CUSTOMER)

    assert result.code == 0, result.err
    assert "Verified: every component is in place." in result.out
    assert f"DATAVERSE_CHANNEL_DEFINITIONS={OUR_NUMBER}={DEFINITION}" in result.out
    assert '"Status": "Sent"' in result.out
    assert "MessageId SM0001" in result.out
    [request] = world.app.requests
    assert request.headers["x-functions-key"] == world.function_key
    payload = json.loads(request.json()["payload"])
    assert payload["ChannelDefinitionId"] == DEFINITION
    assert (payload["From"], payload["To"]) == (OUR_NUMBER, CUSTOMER)
    assert payload["MarketingAppContext"]["IsTestSend"] is True
    assert payload["RequestId"] in result.out


def test_send_test_shows_the_plugin_error_for_a_wrong_key_until_apply_writes_the_right_one(
    world: World,
) -> None:
    stale_key = secrets.token_urlsafe(24)
    world.secrets.add(stale_key)
    world.apply(key=stale_key)
    add_sender(world)

    refused = world.verify("--send-test", CUSTOMER)

    assert refused.code == 4
    assert (
        "Dataverse error 0x80040265 (HTTP 400): OutboundForwarder: the app answered HTTP 401" in refused.err
    )
    world.apply()
    assert world.verify("--send-test", CUSTOMER).code == 0


def test_send_test_needs_a_sender(world: World) -> None:
    world.apply()

    result = world.verify("--send-test", CUSTOMER)

    assert result.code == 2
    assert "no sender yet: add one in Journeys; name the sender with --from" in result.err
    assert world.app.requests == []


# -- the SMS channel: upgrade, drift, relays, senders -----------------------------------------------


def earlier_custom_shape(world: World) -> None:
    """What the earlier version left: a Custom definition without an account table or relay APIs."""
    world.apply()
    account = NAMES.account
    for relationship_id, relationship in list(world.api.relationships.items()):
        if relationship["ReferencedEntity"] == account.logical:
            world.api._delete_relationship(relationship_id)
    world.api._delete_entity(world.api.entities[account.logical])
    for relay in NAMES.relay_apis:
        world.api.remove_row(
            "customapis", world.one("customapis", uniquename=relay.unique_name)["customapiid"]
        )
        world.api.remove_row(
            "plugintypes", world.one("plugintypes", typename=relay.plugin_type)["plugintypeid"]
        )
    # the sender table had a route column, on its form too
    sender = NAMES.sender
    route = {
        "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
        "SchemaName": f"{PREFIX}_Route",
        "DisplayName": {"LocalizedLabels": [{"Label": "Provider route", "LanguageCode": 1033}]},
        "RequiredLevel": {"Value": "None"},
        "MaxLength": 100,
    }
    world.api._create_attribute(world.api.entities[sender.logical], route, SOLUTION, "https://fake")
    form = world.one("systemforms", objecttypecode=sender.logical, name=sender.form)
    old_field = f'<row><cell><control id="{PREFIX}_route" datafieldname="{PREFIX}_route" /></cell></row>'
    world.api.tables["systemforms"].rows[form["formid"]]["formxml"] = form["formxml"].replace(
        "</rows>", old_field + "</rows>"
    )
    definition = world.api.tables["msdyn_channeldefinitions"].rows[DEFINITION]
    definition.update(
        {
            "msdyn_channeltype": "Custom",
            "msdyn_supportsaccount": False,
            "msdyn_channeldefinitionaccountexternalentity": None,
            "msdyn_channeldefinitionaccountexternalformid": None,
        }
    )


def test_an_earlier_custom_channel_is_shown_as_such_and_becomes_sms_in_place(world: World) -> None:
    earlier_custom_shape(world)
    sender_row = world.api.insert(NAMES.sender.entity_set, {f"{PREFIX}_name": "Main number"})
    sender = world.api.insert(
        "msdyn_channelinstances",
        {
            "msdyn_name": "Main number",
            "msdyn_contactpoint": OUR_NUMBER,
            "msdyn_ChannelDefinitionId@odata.bind": f"/msdyn_channeldefinitions({DEFINITION})",
            f"{NAMES.sender.navigation_property}@odata.bind": f"/{NAMES.sender.entity_set}({sender_row})",
        },
    )

    plan = world.run("plan", *world.flags())
    verify = world.verify()
    upgraded = world.apply()

    shape = (
        "provisioned by an earlier version as a Custom channel: apply makes it an SMS channel in place, "
        "keeping its id and its 1 sender(s)"
    )
    assert f"~ channel definition {DEFINITION}: update ({shape}" in plan.out
    assert "msdyn_channeltype: 'Custom' -> 'SMS'" in plan.out
    assert "+ table contoso_smsaccount (account configuration): create" in plan.out
    assert verify.code == 1 and shape in verify.err
    assert f"~ channel definition {DEFINITION}: updated ({shape}" in upgraded.out
    [definition] = world.api.rows("msdyn_channeldefinitions")
    assert definition["msdyn_channeldefinitionid"] == DEFINITION  # the same record
    assert (definition["msdyn_channeltype"], definition["msdyn_supportsaccount"]) == ("SMS", True)
    assert definition["msdyn_channeldefinitionaccountexternalentity"] == "contoso_smsaccount"
    [kept] = world.api.rows("msdyn_channelinstances")
    assert kept["msdyn_channelinstanceid"] == sender
    assert kept["_msdyn_channeldefinitionid_value"] == DEFINITION
    assert world.verify().code == 0
    again = world.apply()
    assert f"= channel definition {DEFINITION}: in place" in again.out
    # the earlier sender table keeps its route column and form field: nothing is deleted
    columns = {a["LogicalName"] for a in world.api.entities["contoso_smssender"]["Attributes"]}
    assert "contoso_route" in columns
    assert 'datafieldname="contoso_route"' in world.one("systemforms", name="SMS sender")["formxml"]


def test_drift_is_named_by_verify_and_repaired_by_apply(world: World) -> None:
    world.apply()
    definition = world.api.tables["msdyn_channeldefinitions"].rows[DEFINITION]
    definition["msdyn_messageformid"] = "4b7a3d6e-0000-0000-0000-000000000001"  # a message editor set by hand
    world.api.insert(
        "msdyn_channelmessageparts",
        {
            "msdyn_name": "image",
            "msdyn_type": 192350004,
            "msdyn_ChannelDefinitionId@odata.bind": f"/msdyn_channeldefinitions({DEFINITION})",
        },
    )
    relay = world.api.tables["customapis"].rows[
        world.one("customapis", uniquename="contoso_SmsInbound")["customapiid"]
    ]
    relay["_plugintypeid_value"] = None  # its main operation unbound
    relay["executeprivilegename"] = None  # open to every user

    drifted = world.verify()

    assert drifted.code == 1
    assert "verify: 3 component(s) missing or wrong:" in drifted.err
    assert "executeprivilegename: null -> 'prvWritecontoso_SmsAccount'" in drifted.err
    assert "msdyn_messageformid: '4b7a3d6e-0000-0000-0000-000000000001' -> null" in drifted.err
    assert "remove part 'image': an SMS channel has only text" in drifted.err
    assert "its main operation must be SmsChannel.Plugin.InboundRelay" in drifted.err

    world.apply()
    assert world.verify().code == 0
    assert [p["msdyn_name"] for p in world.api.rows("msdyn_channelmessageparts")] == ["text"]
    assert world.one("msdyn_channeldefinitions").get("msdyn_messageformid") is None
    relay = world.one("customapis", uniquename="contoso_SmsInbound")
    assert relay["executeprivilegename"] == "prvWritecontoso_SmsAccount"
    assert (
        relay["_plugintypeid_value"]
        == world.one("plugintypes", typename="SmsChannel.Plugin.InboundRelay")["plugintypeid"]
    )


def test_the_relay_apis_pass_their_payload_to_journeys_actions_unchanged(world: World) -> None:
    """What the app calls with DATAVERSE_CHANNEL_API_PREFIX, executed through the Web API as applied."""
    world.apply()
    notification = json.dumps({"ChannelDefinitionId": DEFINITION, "RequestId": "r-1", "Status": "Delivered"})
    inbound = json.dumps({"ChannelDefinitionId": DEFINITION, "Message": {"text": 'Grüße "STOP"'}})

    async def execute() -> tuple[dict[str, Any], WebApiError]:
        connection = load_connection()
        tokens = MsalTokenProvider(connection.identity, connection.url)
        api = WebApi(connection.url, tokens, solution=SOLUTION)
        try:
            answered = await api.action("contoso_SmsDeliveryReport", {"notificationPayLoad": notification})
            await api.action("contoso_SmsInbound", {"inboundPayLoad": inbound})
            with pytest.raises(WebApiError) as wrong_name:
                await api.action("contoso_SmsInbound", {"payload": inbound})
            return answered, wrong_name.value
        finally:
            await api.aclose()

    answered, refused = asyncio.run(execute())

    assert answered["responseMessage"] == "ok"
    assert world.api.base_actions == [
        ("msdyn_D365ChannelsNotification", {"notificationPayLoad": notification}),
        ("msdyn_D365ChannelsInbound", {"inboundPayLoad": inbound}),
    ]
    assert refused.status == 400  # the parameter is named as the base action's


def test_verify_lists_accounts_and_senders_and_which_the_app_cannot_route(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.apply()
    us = add_account(world, "Twilio US", "twilio")
    eu = add_account(world, "Twilio EU", "twilio", "eu")
    add_sender(world, OUR_NUMBER, account=us)
    add_sender(world, "+14155550101", account=eu, name="EU number")
    add_sender(world, "+14155550102", account=eu, name="Forgotten")

    unknown = world.verify()
    monkeypatch.setenv("SENDER_ROUTES", f"{OUR_NUMBER}=twilio,+14155550101=twilio")
    routed = world.verify()

    assert unknown.code == 0
    assert (
        "? +14155550102 'Forgotten' (account 'Twilio EU'): set SENDER_ROUTES or SMS_PROVIDER" in unknown.out
    )
    assert "SMS accounts of this channel (2):" in routed.out
    assert "= 'Twilio EU' -> twilio:eu" in routed.out
    assert (
        f"= {OUR_NUMBER} 'Main number' (account 'Twilio US'): the app sends it through twilio" in routed.out
    )
    assert (
        "~ +14155550101 'EU number' (account 'Twilio EU'): the app sends it through twilio, "
        "its account says twilio:eu"
    ) in routed.out
    assert "! +14155550102 'Forgotten' (account 'Twilio EU'): the app has no route for it" in routed.out
    assert routed.code == 1
    assert routed.error.startswith("verify: the app has no route for 1 sender(s): +14155550102")

    monkeypatch.setenv("SENDER_ROUTES", "")
    monkeypatch.setenv("SMS_PROVIDER", "twilio")
    assert world.verify().code == 0  # without routes every sender goes through SMS_PROVIDER


def test_verify_checks_the_relay_path_the_app_is_set_to(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.apply()

    direct = world.verify()
    monkeypatch.setenv("DATAVERSE_CHANNEL_API_PREFIX", PREFIX)
    own = world.verify()
    monkeypatch.setenv("DATAVERSE_CHANNEL_API_PREFIX", "fab")
    other = world.verify()
    monkeypatch.delenv("DATAVERSE_CHANNEL_API_PREFIX")
    for message in world.api.rows("sdkmessages", name="msdyn_D365ChannelsInbound"):
        world.api.remove_row("sdkmessages", message["sdkmessageid"])
    no_journeys = world.verify()

    assert direct.code == 0
    assert (
        "Relays: directly to msdyn_D365ChannelsNotification and msdyn_D365ChannelsInbound (found)."
        in direct.out
    )
    assert own.code == 0
    assert "Relays: through this channel's contoso_SmsDeliveryReport and contoso_SmsInbound" in own.out
    assert other.code == 1
    assert "DATAVERSE_CHANNEL_API_PREFIX is 'fab'" in other.error
    assert no_journeys.code == 1
    assert "msdyn_D365ChannelsInbound not found in this environment" in no_journeys.error
    assert "DATAVERSE_CHANNEL_API_PREFIX=contoso" in no_journeys.error


def test_without_the_marketing_role_the_account_table_is_left_to_the_admin(world: World) -> None:
    for role in world.api.rows("roles", name=MARKETING_ROLE):
        world.api.remove_row("roles", role["roleid"])

    result = world.run("apply", *world.flags())

    assert result.code == 1
    assert "Read on contoso_smsaccount for Journeys: none of the roles" in result.error
    assert "--account-role" in result.error
    reader = world.api.seed_role("SMS account reader")
    assert world.run("apply", *world.flags(), "--account-role", "SMS account reader").code == 0
    assert list(world.api.role_privileges[reader].values()) == ["Global"]


# -- bad input and failures --------------------------------------------------------------------------


def test_a_wrong_client_secret_is_an_authentication_problem(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = secrets.token_urlsafe(16)
    world.secrets.add(wrong)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", wrong)

    result = world.run("plan", *world.flags())

    assert result.code == 3
    assert result.error.startswith("authentication problem: token refused: invalid_client")
    assert world.api.calls == []


@pytest.mark.parametrize(
    ("command", "change", "message"),
    [
        ("plan", {"--solution": None}, "error: missing --solution"),
        ("apply", {"--function-key": None}, "error: apply: missing --function-key"),
        ("verify", {"--plugin": None}, "error: verify: missing --plugin"),
        ("plan", {"--prefix": "Contoso!"}, "error: --prefix: a publisher customization prefix"),
        ("plan", {"--plugin": "/nowhere/SmsChannel.Plugin.dll"}, "error: --plugin: no such file"),
        (
            "plan",
            {"--function-url": "http://contoso.example/api/outbound"},
            "error: --function-url: must be an https",
        ),
        (
            "plan",
            {"--function-url": "https://contoso.example/api/outbound?code=c0de-s3cret"},
            "error: --function-url: must not carry",
        ),
        (
            "plan",
            {"--channel-name": "x" * 101},
            "error: --channel-name: String should have at most 100 characters",
        ),
    ],
)
def test_a_missing_or_wrong_flag_is_named(
    world: World, command: str, change: dict[str, str | None], message: str
) -> None:
    flags = [part for flag in world.flags() for part in flag.split("=", 1)]
    pairs = dict(zip(flags[::2], flags[1::2], strict=True)) | change
    args = [f"{flag}={value}" for flag, value in pairs.items() if value is not None]

    result = world.run(command, *args)

    assert result.code == 2
    assert result.error.startswith(message)
    assert "c0de-s3cret" not in result.err
    assert world.api.writes == []


@pytest.mark.parametrize("missing", ["DATAVERSE_URL", "AZURE_TENANT_ID"])
def test_a_missing_setting_is_named(world: World, monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    monkeypatch.delenv(missing)

    result = world.run("plan", *world.flags())

    assert result.code == 2
    assert result.error.startswith(f"error: {missing}: required")


def test_unknown_solution_wrong_prefix_and_managed_solution_are_refused_before_any_change(
    world: World,
) -> None:
    world.api.seed_solution("Managed", "contoso", managed=True)
    world.api.seed_solution("Fabrikam", "fab")

    unknown = world.run("apply", *world.flags(solution="Nope"))
    wrong_prefix = world.run("apply", *world.flags(solution="Fabrikam"))
    managed = world.run("apply", *world.flags(solution="Managed"))

    assert (unknown.code, wrong_prefix.code, managed.code) == (2, 2, 2)
    assert "error: --solution: there is no solution 'Nope'" in unknown.err
    assert (
        "error: --prefix: 'contoso' is not the customization prefix of the publisher of 'Fabrikam' ('fab')"
        in (wrong_prefix.err)
    )
    assert "'Managed' is managed" in managed.err
    assert world.api.writes == []


def test_a_dataverse_error_is_shown_with_its_code_and_apply_again_completes_the_run(world: World) -> None:
    world.api.fail_next(
        "POST",
        "sdkmessageprocessingsteps",
        Reply(500, {"error": {"code": "0x80040216", "message": "An unexpected error occurred."}}),
    )

    interrupted = world.run("apply", *world.flags())

    assert interrupted.code == 4
    assert interrupted.error.startswith(
        "error: Dataverse error 0x80040216 (HTTP 500): An unexpected error occurred."
    )
    assert "run apply again" in interrupted.error
    assert world.api.rows("sdkmessageprocessingsteps") == []
    assert world.api.rows("msdyn_channeldefinitions") == []

    world.apply()
    for entity_set, count in (
        ("customapis", 3),  # outbound, delivery report, inbound
        ("pluginassemblies", 1),
        ("plugintypes", 3),  # forwarder and two relays
        ("sdkmessageprocessingstepsecureconfigs", 1),
        ("sdkmessageprocessingsteps", 1),
        ("msdyn_channeldefinitions", 1),
        ("msdyn_channelmessageparts", 1),
    ):
        assert len(world.api.rows(entity_set)) == count, entity_set
    assert world.verify().code == 0


def test_an_error_message_that_quotes_the_key_is_printed_without_it(world: World) -> None:
    echoed = json.dumps({"functionKey": world.function_key})
    world.api.fail_next(
        "POST",
        "sdkmessageprocessingstepsecureconfigs",
        Reply(400, {"error": {"code": "0x80040203", "message": f"Invalid value {echoed}"}}),
    )

    result = world.run("apply", *world.flags())  # World.run asserts the key is not printed

    assert result.code == 4
    assert 'Invalid value {"functionKey": "***"}' in result.err


def test_a_custom_api_that_cannot_take_steps_blocks_apply(world: World) -> None:
    world.api.insert(
        "customapis",
        {
            "uniquename": "contoso_OutboundSms",
            "name": "contoso_OutboundSms",
            "displayname": "Outbound SMS",
            "description": "made by hand",
            "allowedcustomprocessingsteptype": 0,
        },
        solution=SOLUTION,
    )

    plan = world.run("plan", *world.flags())
    applied = world.run("apply", *world.flags())

    assert plan.code == 0
    assert (
        "! custom API contoso_OutboundSms: cannot be fixed by apply (allowedcustomprocessingsteptype is 0"
        in plan.out
    )
    assert applied.code == 1
    assert applied.error.startswith("apply stopped: custom API contoso_OutboundSms cannot be fixed by apply")
    assert "run remove (or delete it), then apply" in applied.error
    assert world.api.rows("pluginassemblies") == []
    assert world.verify().code == 1


def test_a_role_that_cannot_be_changed_is_reported_and_another_role_can_be_named(world: World) -> None:
    [cxp] = [r for r in world.api.rows("roles", name=CXP_ROLE) if r.get("_parentroleid_value") is None]
    world.api.locked_roles.add(cxp["roleid"])
    reader = world.api.seed_role("SMS channel reader")

    refused = world.run("apply", *world.flags())

    assert refused.code == 4
    assert "Dataverse error 0x80040220 (HTTP 403): The privileges of this system role cannot be changed." in (
        refused.err
    )
    assert len(world.api.rows("msdyn_channelmessageparts")) == 1  # the rest is in place
    unverified = world.verify()
    assert unverified.code == 1
    assert f"Read on contoso_smssender for role '{CXP_ROLE}'" in unverified.err

    named = ["--journeys-role", "SMS channel reader"]
    assert world.run("apply", *world.flags(), *named).code == 0
    assert world.run("verify", *world.flags(), *named).code == 0
    assert list(world.api.role_privileges[reader].values()) == ["Global"]


def test_without_any_journeys_role_apply_finishes_the_rest_and_says_what_is_left(world: World) -> None:
    for role in world.api.rows("roles", name=CXP_ROLE):
        world.api.remove_row("roles", role["roleid"])

    result = world.run("apply", *world.flags())

    assert result.code == 1
    assert result.error.startswith(
        "apply incomplete: Read on contoso_smssender for Journeys: none of the roles"
    )
    assert "name the role with --journeys-role" in result.error
    assert len(world.api.rows("msdyn_channelmessageparts")) == 1
    assert world.verify().code == 1


# -- the fake itself ----------------------------------------------------------------------------------


async def test_the_fake_refuses_what_dataverse_refuses(world: World) -> None:
    """The flows above pass against a fake that would have caught these mistakes."""
    connection = load_connection()
    tokens = MsalTokenProvider(connection.identity, connection.url)
    api = WebApi(connection.url, tokens, solution=SOLUTION)
    unknown_solution = WebApi(connection.url, tokens, solution="Nope")
    custom_api = {"uniquename": "contoso_A", "name": "contoso_A", "displayname": "A", "description": "A"}
    definition = {
        "msdyn_name": "x",
        "msdyn_hasinbound": True,
        "msdyn_hasdeliveryreceipt": True,
        "msdyn_supportsaccount": False,
        "msdyn_supportsattachment": False,
    }
    try:
        api_id = await api.create("customapis", custom_api)  # allowedcustomprocessingsteptype: 0
        definition_id = await api.create("msdyn_channeldefinitions", definition)
        message = await api.first("sdkmessages", select=["sdkmessageid"], filter="name eq 'contoso_A'")
        assert message is not None
        sandbox = {"isolationmode": 2, "sourcetype": 0}
        content = base64.b64encode(b"MZ").decode()
        assembly = await api.create("pluginassemblies", {"name": "A", "content": content, **sandbox})
        plugin_type = await api.create(
            "plugintypes",
            {"typename": "A.B", "pluginassemblyid@odata.bind": f"/pluginassemblies({assembly})"},
        )
        part = {
            "msdyn_name": "text",
            "msdyn_ChannelDefinitionId@odata.bind": f"/msdyn_channeldefinitions({definition_id})",
        }
        refusals: list[tuple[Callable[[], Awaitable[Any]], int, str]] = [
            (
                lambda: api.create("customapis", custom_api | {"uniquename": "contoso_B", "colour": "red"}),
                400,
                "0x80048d19",
            ),
            (lambda: api.create("msdyn_channeldefinitions", {"msdyn_name": "y"}), 400, "0x80040203"),
            (lambda: api.create("msdyn_channelmessageparts", part | {"msdyn_type": 5}), 400, "0x80040203"),
            (
                lambda: api.create("msdyn_channeldefinitions", definition | {"msdyn_description": "d" * 101}),
                400,
                "0x80040203",
            ),
            (
                lambda: api.create(
                    "msdyn_channelmessageparts",
                    part
                    | {
                        "msdyn_type": 192350000,
                        "msdyn_ChannelDefinitionId@odata.bind": f"/msdyn_channeldefinitions({DEFINITION})",
                    },
                ),
                404,
                "0x80040217",
            ),
            (
                lambda: api.create(
                    "msdyn_channelmessageparts",
                    part | {"msdyn_type": 192350000, "msdyn_Wrong@odata.bind": "/x"},
                ),
                400,
                "0x80048d19",
            ),
            (lambda: api.list("customapis", select=["uniquename", "colour"]), 400, "0x80060888"),
            (lambda: api.list("customapis", filter="colour eq 'red'"), 400, "0x80060888"),
            (
                lambda: unknown_solution.create("customapis", custom_api | {"uniquename": "contoso_C"}),
                404,
                "0x80040217",
            ),
            (
                lambda: api.update(f"customapis({api_id})", {"allowedcustomprocessingsteptype": 2}),
                400,
                "0x80040203",
            ),
            (lambda: api.update(f"customapis({DEFINITION})", {"displayname": "gone"}), 404, "0x80040217"),
            (
                lambda: api.create(
                    "sdkmessageprocessingsteps",
                    {
                        "name": "sync step",
                        "stage": 40,
                        "mode": 0,
                        "rank": 1,
                        "sdkmessageid@odata.bind": f"/sdkmessages({message['sdkmessageid']})",
                        "eventhandler_plugintype@odata.bind": f"/plugintypes({plugin_type})",
                    },
                ),
                400,
                "0x80040203",
            ),
            (
                lambda: api.create("pluginassemblies", {"name": "B", "content": "not base64!", **sandbox}),
                400,
                "0x80040203",
            ),
            # a lookup bound to a row of another table
            (
                lambda: api.create(
                    "msdyn_channelinstanceaccounts",
                    {
                        "msdyn_name": "a",
                        "msdyn_ChannelDefinitionId@odata.bind": f"/plugintypes({plugin_type})",
                    },
                ),
                400,
                "0x80048d19",
            ),
            # a navigation property no relationship gives the table (yet)
            (
                lambda: api.create(
                    "msdyn_channelinstanceaccounts",
                    {
                        "msdyn_name": "a",
                        "msdyn_ChannelDefinitionId@odata.bind": f"/msdyn_channeldefinitions({definition_id})",
                        f"{NAMES.account.navigation_property}@odata.bind": f"/{NAMES.account.entity_set}(x)",
                    },
                ),
                400,
                "0x80048d19",
            ),
            # an account without its definition
            (lambda: api.create("msdyn_channelinstanceaccounts", {"msdyn_name": "a"}), 400, "0x80040203"),
        ]
        for number, (call, status, code) in enumerate(refusals):
            with pytest.raises(WebApiError) as refused:
                await call()
                pytest.fail(f"refusal {number} was accepted")
            assert (refused.value.status, refused.value.code) == (status, code), refused.value
        assert world.api.rows("customapis", uniquename="contoso_B") == []
        # a plug-in type a custom API runs as its main operation cannot be deleted
        await api.update(f"customapis({api_id})", {"PluginTypeId@odata.bind": f"/plugintypes({plugin_type})"})
        with pytest.raises(WebApiError) as in_use:
            await api.delete(f"plugintypes({plugin_type})")
        assert (in_use.value.status, in_use.value.code) == (400, "0x8004f01f")
    finally:
        await api.aclose()
        await unknown_solution.aclose()


# -- remove --------------------------------------------------------------------------------------


def test_remove_deletes_in_dependency_order_and_spares_everything_else(world: World) -> None:
    world.api.seed_solution("FabrikamSms", "fab")
    other_vendor = world.api.insert(
        "msdyn_channeldefinitions",
        {
            "msdyn_name": "Other vendor's channel",
            "msdyn_hasinbound": False,
            "msdyn_hasdeliveryreceipt": False,
            "msdyn_supportsaccount": False,
            "msdyn_supportsattachment": False,
        },
    )
    world.apply()
    world.apply(prefix="fab", solution="FabrikamSms")  # a second channel sharing the plug-in assembly
    add_sender(world)
    outbound_api = world.one("customapis", uniquename="contoso_OutboundSms")["customapiid"]
    relay_api = world.one("customapis", uniquename="contoso_SmsDeliveryReport")["customapiid"]
    start = len(world.api.writes)

    removed = world.run("remove", "--solution", SOLUTION, "--prefix", PREFIX)

    assert removed.code == 0, removed.err
    deletes = [path for method, path in world.writes_since(start) if method == "DELETE"]
    kinds = (
        "msdyn_channelmessageparts",
        "msdyn_channeldefinitions",
        "RelationshipDefinitions",
        "EntityDefinitions",
        "sdkmessageprocessingsteps(",
        "sdkmessageprocessingstepsecureconfigs",
        f"customapis({outbound_api})",
        f"customapis({relay_api})",
    )
    first = {kind: next(i for i, path in enumerate(deletes) if path.startswith(kind)) for kind in kinds}
    assert first["msdyn_channelmessageparts"] < first["msdyn_channeldefinitions"]
    assert first["RelationshipDefinitions"] < first["EntityDefinitions"]
    assert (
        first["sdkmessageprocessingsteps("]
        < first["sdkmessageprocessingstepsecureconfigs"]
        < first[f"customapis({outbound_api})"]
    )
    # the other channel's relay API runs the same plug-in type of the shared assembly
    assert (
        "plug-in type SmsChannel.Plugin.DeliveryReportRelay: kept (custom API fab_SmsDeliveryReport runs it)"
        in (removed.out)
    )
    assert world.api.rows("customapis", uniquename="contoso_OutboundSms") == []
    assert [a["uniquename"] for a in world.api.rows("customapis")] == [
        "fab_OutboundSms",
        "fab_SmsDeliveryReport",
        "fab_SmsInbound",
    ]
    assert "contoso_smsaccount" not in world.api.entities
    assert world.api.rows("msdyn_channelinstanceaccounts") == []  # with their definition (inferred)
    assert world.api.rows("msdyn_channeldefinitions", msdyn_channeldefinitionid=DEFINITION) == []
    assert world.api.rows("msdyn_channelinstances") == []  # Dataverse deleted the sender with its definition
    assert "contoso_smssender" not in world.api.entities
    assert "Dataverse also deleted its 1 sender(s)" in removed.out
    assert "plug-in assembly SmsChannel.Plugin: kept (it still has 3 plug-in type(s) in use)" in removed.out

    # the other channel and the other vendor's definition are untouched
    assert world.api.rows("msdyn_channeldefinitions", msdyn_channeldefinitionid=other_vendor)
    assert world.run("verify", *world.flags(prefix="fab", solution="FabrikamSms")).code == 0

    assert world.run("remove", "--solution", "FabrikamSms", "--prefix", "fab").code == 0
    assert world.api.rows("pluginassemblies") == world.api.rows("plugintypes") == []
    again = world.run("remove", "--solution", SOLUTION, "--prefix", PREFIX)
    assert again.code == 0
    assert "= custom API contoso_OutboundSms: already absent" in again.out
    gone = world.verify()
    assert gone.code == 1
    assert "custom API contoso_OutboundSms" in gone.err


def test_the_module_runs_as_a_program_and_names_a_missing_setting(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATAVERSE_", "AZURE_", "PROVISIONING_"))}
    plugin = tmp_path / "SmsChannel.Plugin.dll"
    plugin.write_bytes(b"MZ")
    args = ["--solution", SOLUTION, "--prefix", PREFIX, "--function-url", "https://contoso.example"]

    completed = subprocess.run(
        [sys.executable, "-m", "provisioning", "plan", *args, "--plugin", str(plugin)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 2
    assert completed.stderr == (
        "error: DATAVERSE_URL: required: the environment's URL, e.g. https://contoso.crm.dynamics.com\n"
    )
