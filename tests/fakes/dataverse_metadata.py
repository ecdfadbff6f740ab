"""A stateful Dataverse Web API (v9.2) for provisioning, played over real HTTPS.

It keeps the records and metadata provisioning touches and is as strict as Dataverse where a
provisioning tool can go wrong:

- every request needs a token the fake Entra issued (401 otherwise);
- a body property the table does not have is a 400, so are wrong types, option values outside the
  option set, strings over their maximum length and missing required columns (ApplicationRequired
  is enforced too: stricter than Dataverse, never looser); columns that never change after creation
  (custom API binding, type, allowed step types; parameter types) refuse a PATCH;
- ``<nav>@odata.bind`` must name a navigation property of the table and an existing row (404);
- a create answers 204 with ``OData-EntityId``; PATCH with ``If-Match: *`` never creates;
- ``$select``/``$filter`` (``eq``/``ne``/``and``, string/GUID/number/boolean/null literals,
  strings compared without case) and ``$expand`` (with a nested ``$select``) refuse unknown names;
- ``MSCRM.SolutionUniqueName`` is recorded with each write and must name an unmanaged solution;
  metadata schema names must start with that solution's publisher prefix;
- dependencies as Dataverse keeps them: a step blocks deleting its plug-in type, its secure
  configuration and its custom API; deleting a channel definition deletes its message parts and
  channel instances; deleting a table deletes its forms, privileges and relationships;
- a synchronous step on a custom API needs ``allowedcustomprocessingsteptype`` 2.

Executing a custom API whose main operation is a relay plug-in plays it as its contract says: the
base action executed with the one parameter unchanged (recorded in ``base_actions``).

Executing a custom API plays the forwarder plug-in as its contract says: the step's unsecure
configuration ``{"url", "timeoutSeconds"}``, the secure one ``{"functionKey"}`` sent as
``x-functions-key``, the body ``{"payload": …}``, the app's ``response`` returned; any other answer
fails the operation (HTTP 400, code 0x80040265, as an InvalidPluginExecutionException does).

Error codes are Dataverse's for the same situations where known (0x80040217 object does not exist,
0x80048d19 payload error, 0x80060888 unknown property in a query, 0x80040265 plug-in failure,
0x80040237 duplicate); the others are representative. The shape is always Dataverse's:
``{"error": {"code": "0x…", "message": "…"}}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

from tests.fakes.dataverse import FakeEntra
from tests.fakes.http import Recorded, Reply

API = "/api/data/v9.2/"
GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
FORWARDER = "SmsChannel.Plugin.OutboundForwarder"
#: The relay plug-ins (main operation of the channel's own custom APIs) -> the base action they execute.
RELAYS = {
    "SmsChannel.Plugin.DeliveryReportRelay": "msdyn_D365ChannelsNotification",
    "SmsChannel.Plugin.InboundRelay": "msdyn_D365ChannelsInbound",
}
#: Journeys' base actions and their one parameter.
BASE_ACTIONS = {
    "msdyn_D365ChannelsNotification": "notificationPayLoad",
    "msdyn_D365ChannelsInbound": "inboundPayLoad",
}

NOT_FOUND = "0x80040217"
PAYLOAD = "0x80048d19"
QUERY = "0x80060888"
INVALID = "0x80040203"
DUPLICATE = "0x80040237"
DEPENDENCY = "0x8004f01f"
PLUGIN_FAILED = "0x80040265"
NO_PRIVILEGE = "0x80040220"


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.reply = Reply(status, {"error": {"code": code, "message": message}})


def refuse(status: int, code: str, message: str) -> Refused:
    return Refused(status, code, message)


def no_property(name: str, type_name: str) -> Refused:
    """An unknown name in $select, $filter or $expand."""
    return Refused(
        400, QUERY, f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{type_name}'."
    )


def undeclared(name: str, type_name: str) -> Refused:
    """An unknown property in a request body."""
    return Refused(
        400,
        PAYLOAD,
        f"The property '{name}' does not exist on type 'Microsoft.Dynamics.CRM.{type_name}'. "
        "Make sure to only use property names that are defined by the type.",
    )


@dataclass(frozen=True)
class Col:
    kind: str  # str, int, bool, option, guid, managed
    required: bool = False
    options: tuple[int, ...] = ()
    max_length: int | None = None
    immutable: bool = False
    default: Any = None


@dataclass(frozen=True)
class Nav:
    target: str  # entity set
    lookup: str  # lookup column: read as _<lookup>_value
    required: bool = False


@dataclass
class Table:
    entity_set: str
    logical: str
    key: str
    cols: dict[str, Col]
    navs: dict[str, Nav] = field(default_factory=dict)
    #: collection-valued navigation property -> (child entity set, the child's lookup column)
    children: dict[str, tuple[str, str]] = field(default_factory=dict)
    creatable: bool = True
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    def queryable(self) -> set[str]:
        return {self.key, *self.cols, *(f"_{nav.lookup}_value" for nav in self.navs.values())}


@dataclass
class Write:
    method: str
    path: str
    solution: str | None
    body: Any


def s(max_length: int = 100, **kw: Any) -> Col:
    return Col("str", max_length=max_length, **kw)


def b(**kw: Any) -> Col:
    return Col("bool", **kw)


def opt(*values: int, **kw: Any) -> Col:
    return Col("option", options=values, **kw)


def _schema() -> dict[str, Table]:
    tables = [
        Table(
            "solutions",
            "solution",
            "solutionid",
            {"uniquename": s(65), "friendlyname": s(256), "ismanaged": b()},
            {"publisherid": Nav("publishers", "publisherid")},
            creatable=False,
        ),
        Table(
            "publishers",
            "publisher",
            "publisherid",
            {"uniquename": s(256), "customizationprefix": s(8)},
            creatable=False,
        ),
        Table(
            "organizations", "organization", "organizationid", {"languagecode": Col("int")}, creatable=False
        ),
        Table(
            "businessunits",
            "businessunit",
            "businessunitid",
            {"name": s(160)},
            {"parentbusinessunitid": Nav("businessunits", "parentbusinessunitid")},
            creatable=False,
        ),
        Table(
            "roles",
            "role",
            "roleid",
            {"name": s(100)},
            {
                "businessunitid": Nav("businessunits", "businessunitid"),
                "parentroleid": Nav("roles", "parentroleid"),
            },
            creatable=False,
        ),
        Table("privileges", "privilege", "privilegeid", {"name": s(100)}, creatable=False),
        Table("sdkmessages", "sdkmessage", "sdkmessageid", {"name": s(256)}, creatable=False),
        Table(
            "customapis",
            "customapi",
            "customapiid",
            {
                "uniquename": s(128, required=True, immutable=True),
                "name": s(100, required=True),
                "displayname": s(100, required=True),
                "description": s(300, required=True),
                "bindingtype": opt(0, 1, 2, immutable=True, default=0),
                "boundentitylogicalname": s(100, immutable=True),
                "isfunction": b(immutable=True, default=False),
                "isprivate": b(default=False),
                "allowedcustomprocessingsteptype": opt(0, 1, 2, immutable=True, default=0),
                "executeprivilegename": s(100),
                "workflowsdkstepenabled": b(default=False),
                "iscustomizable": Col("managed"),
            },
            {"PluginTypeId": Nav("plugintypes", "plugintypeid")},
            {
                "CustomAPIRequestParameters": ("customapirequestparameters", "customapiid"),
                "CustomAPIResponseProperties": ("customapiresponseproperties", "customapiid"),
            },
        ),
        Table(
            "customapirequestparameters",
            "customapirequestparameter",
            "customapirequestparameterid",
            {
                "uniquename": s(128, required=True, immutable=True),
                "name": s(100, required=True),
                "displayname": s(100, required=True),
                "description": s(300),
                "type": opt(*range(13), required=True, immutable=True),
                "isoptional": b(immutable=True, default=False),
                "logicalentityname": s(100, immutable=True),
                "iscustomizable": Col("managed"),
            },
            {"CustomAPIId": Nav("customapis", "customapiid", required=True)},
        ),
        Table(
            "customapiresponseproperties",
            "customapiresponseproperty",
            "customapiresponsepropertyid",
            {
                "uniquename": s(128, required=True, immutable=True),
                "name": s(100, required=True),
                "displayname": s(100, required=True),
                "description": s(300),
                "type": opt(*range(13), required=True, immutable=True),
                "logicalentityname": s(100, immutable=True),
                "iscustomizable": Col("managed"),
            },
            {"CustomAPIId": Nav("customapis", "customapiid", required=True)},
        ),
        Table(
            "pluginassemblies",
            "pluginassembly",
            "pluginassemblyid",
            {
                "name": s(256, required=True),
                "content": s(1073741823),
                "isolationmode": opt(1, 2, 3, required=True),
                "sourcetype": opt(0, 1, 2, 3, 4, required=True),
                "version": s(48),
                "culture": s(32),
                "publickeytoken": s(32),
                "description": s(256),
            },
        ),
        Table(
            "plugintypes",
            "plugintype",
            "plugintypeid",
            {
                "typename": s(256, required=True, immutable=True),
                "name": s(256),
                "friendlyname": s(256),
                "description": s(256),
            },
            {"pluginassemblyid": Nav("pluginassemblies", "pluginassemblyid", required=True)},
        ),
        Table(
            "sdkmessageprocessingstepsecureconfigs",
            "sdkmessageprocessingstepsecureconfig",
            "sdkmessageprocessingstepsecureconfigid",
            {"secureconfig": s(1073741823)},
        ),
        Table(
            "sdkmessageprocessingsteps",
            "sdkmessageprocessingstep",
            "sdkmessageprocessingstepid",
            {
                "name": s(256, required=True),
                "description": s(256),
                # 10 pre-validation, 20 pre-operation, 40 post-operation: the stages a step may use
                "stage": opt(10, 20, 40, required=True),
                "mode": opt(0, 1, required=True),
                "rank": Col("int", required=True),
                "supporteddeployment": opt(0, 1, 2, default=0),
                "invocationsource": opt(-1, 0, 1),
                "asyncautodelete": b(default=False),
                "configuration": s(1073741823),
                "filteringattributes": s(100000),
                "statecode": opt(0, 1, default=0),
                "statuscode": opt(1, 2, default=1),
            },
            {
                "sdkmessageid": Nav("sdkmessages", "sdkmessageid", required=True),
                "eventhandler_plugintype": Nav("plugintypes", "eventhandler", required=True),
                "plugintypeid": Nav("plugintypes", "plugintypeid"),
                "sdkmessageprocessingstepsecureconfigid": Nav(
                    "sdkmessageprocessingstepsecureconfigs", "sdkmessageprocessingstepsecureconfigid"
                ),
            },
        ),
        Table(
            "systemforms",
            "systemform",
            "formid",
            {
                "name": s(100, required=True),
                "description": s(100000),
                "objecttypecode": s(64, required=True, immutable=True),
                "type": opt(0, 1, 2, 4, 5, 6, 7, 8, 11, 12, required=True, immutable=True),
                "formxml": s(1073741823, required=True),
                "formactivationstate": opt(0, 1, default=1),
            },
        ),
        Table(
            "msdyn_channeldefinitions",
            "msdyn_channeldefinition",
            "msdyn_channeldefinitionid",
            {
                "msdyn_name": s(100, required=True),
                "msdyn_displayname": s(100),
                "msdyn_description": s(100),
                "msdyn_channeltype": s(100),
                "msdyn_outboundendpointurltemplate": s(1000),
                "msdyn_hasinbound": b(required=True),
                "msdyn_hasdeliveryreceipt": b(required=True),
                "msdyn_supportsaccount": b(required=True),
                "msdyn_supportsattachment": b(required=True),
                "msdyn_supportsbinary": b(default=False),
                "msdyn_specialconsentrequired": b(default=False),
                "msdyn_specialconsentlabel": s(1000),
                "msdyn_channeldefinitionexternalentity": s(100),
                "msdyn_channeldefinitionexternalformid": s(100),
                "msdyn_channeldefinitionaccountexternalentity": s(100),
                "msdyn_channeldefinitionaccountexternalformid": s(100),
                "msdyn_messageformid": s(100),
                "msdyn_instanceregistrationendpointurltemplate": s(1000),
                "statecode": opt(0, 1, default=0),
                "statuscode": opt(1, 2, default=1),
            },
        ),
        Table(
            "msdyn_channelmessageparts",
            "msdyn_channelmessagepart",
            "msdyn_channelmessagepartid",
            {
                "msdyn_name": s(100, required=True),
                "msdyn_displayname": s(100),
                "msdyn_description": s(100),
                "msdyn_type": opt(*range(192350000, 192350009), required=True),
                "msdyn_isrequired": b(),
                "msdyn_maxlength": Col("int"),
                "msdyn_maxvalue": Col("int"),
                "msdyn_minvalue": Col("int"),
                "msdyn_order": Col("int"),
                "msdyn_options": s(8000),
                "msdyn_entityname": s(100),
                "msdyn_entityviewid": s(100),
            },
            {
                "msdyn_ChannelDefinitionId": Nav(
                    "msdyn_channeldefinitions", "msdyn_channeldefinitionid", required=True
                )
            },
        ),
        Table(
            "msdyn_channelinstanceaccounts",
            "msdyn_channelinstanceaccount",
            "msdyn_channelinstanceaccountid",
            {"msdyn_name": s(100, required=True), "msdyn_description": s(100)},
            {
                "msdyn_ChannelDefinitionId": Nav(
                    "msdyn_channeldefinitions", "msdyn_channeldefinitionid", required=True
                )
            },
        ),
        Table(
            "msdyn_channelinstances",
            "msdyn_channelinstance",
            "msdyn_channelinstanceid",
            {
                "msdyn_name": s(100, required=True),
                "msdyn_contactpoint": s(100, required=True),
                "msdyn_description": s(100),
            },
            {
                "msdyn_ChannelDefinitionId": Nav(
                    "msdyn_channeldefinitions", "msdyn_channeldefinitionid", required=True
                ),
                "msdyn_ChannelInstanceAccountId": Nav(
                    "msdyn_channelinstanceaccounts", "msdyn_channelinstanceaccountid"
                ),
            },
        ),
    ]
    return {table.entity_set: table for table in tables}


ENTITY_SELECTABLE = {
    "MetadataId",
    "LogicalName",
    "SchemaName",
    "EntitySetName",
    "PrimaryNameAttribute",
    "PrimaryIdAttribute",
    "ObjectTypeCode",
    "OwnershipType",
    "IsCustomEntity",
}
ATTRIBUTE_SELECTABLE = {
    "MetadataId",
    "LogicalName",
    "SchemaName",
    "AttributeType",
    "IsPrimaryName",
    "IsCustomAttribute",
}
RELATIONSHIP_SELECTABLE = {
    "MetadataId",
    "SchemaName",
    "ReferencedEntity",
    "ReferencedAttribute",
    "ReferencingEntity",
    "ReferencingAttribute",
    "ReferencingEntityNavigationPropertyName",
    "ReferencedEntityNavigationPropertyName",
}
ENTITY_BODY = {
    "@odata.type",
    "SchemaName",
    "DisplayName",
    "DisplayCollectionName",
    "Description",
    "OwnershipType",
    "HasActivities",
    "HasNotes",
    "IsActivity",
    "Attributes",
}
STRING_ATTRIBUTE_BODY = {
    "@odata.type",
    "AttributeType",
    "AttributeTypeName",
    "SchemaName",
    "DisplayName",
    "Description",
    "RequiredLevel",
    "MaxLength",
    "FormatName",
    "IsPrimaryName",
}
RELATIONSHIP_BODY = {
    "@odata.type",
    "SchemaName",
    "ReferencedEntity",
    "ReferencedAttribute",
    "ReferencingEntity",
    "ReferencingEntityNavigationPropertyName",
    "ReferencedEntityNavigationPropertyName",
    "CascadeConfiguration",
    "AssociatedMenuConfiguration",
    "Lookup",
}
LOOKUP_BODY = {
    "@odata.type",
    "AttributeType",
    "AttributeTypeName",
    "SchemaName",
    "DisplayName",
    "Description",
    "RequiredLevel",
}
CASCADES = {"Cascade", "Active", "NoCascade", "UserOwned", "RemoveLink", "Restrict"}
DEPTHS = ("Basic", "Local", "Deep", "Global")


@dataclass
class FakeWebApi:
    entra: FakeEntra
    language: int = 1033
    writes: list[Write] = field(default_factory=list)
    calls: list[Recorded] = field(default_factory=list)
    #: (method, path prefix, reply): played once, instead of handling the first matching request.
    faults: list[tuple[str, str, Reply]] = field(default_factory=list)
    #: (solution unique name, kind, id) for each component created with the solution header.
    solution_components: list[tuple[str, str, str]] = field(default_factory=list)
    published: list[set[str]] = field(default_factory=list)
    #: role id -> privilege id -> depth
    role_privileges: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Roles whose privileges cannot be changed (AddPrivilegesRole answers 403).
    locked_roles: set[str] = field(default_factory=set)
    #: Answers of custom API executions the forwarder made: (url, headers, body).
    forwarded: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    #: Journeys' base actions the relay plug-ins executed: (action, parameters).
    base_actions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    tables: dict[str, Table] = field(default_factory=_schema)
    entities: dict[str, dict[str, Any]] = field(default_factory=dict)
    relationships: dict[str, dict[str, Any]] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.root_business_unit = self.seed("businessunits", {"name": "contoso"})
        child = self.seed("businessunits", {"name": "contoso-eu"})
        self.tables["businessunits"].rows[child]["_parentbusinessunitid_value"] = self.root_business_unit
        self.seed("organizations", {"languagecode": self.language})
        for logical, schema in (
            ("msdyn_channeldefinition", "msdyn_ChannelDefinition"),
            ("msdyn_channelmessagepart", "msdyn_ChannelMessagePart"),
            ("msdyn_channelinstance", "msdyn_ChannelInstance"),
            ("msdyn_channelinstanceaccount", "msdyn_ChannelInstanceAccount"),
            ("account", "Account"),
        ):
            self._register_entity(logical, schema, custom=False)
        for base in ("msdyn_channelinstance", "msdyn_channelinstanceaccount"):
            # the multi-table lookup a channel's configuration tables become targets of
            self.entities[base]["Attributes"].append(
                {
                    "MetadataId": _new(),
                    "LogicalName": "msdyn_extendedentityid",
                    "SchemaName": "msdyn_extendedentityId",
                    "AttributeType": "Lookup",
                    "IsPrimaryName": False,
                    "IsCustomAttribute": False,
                }
            )
        self._relate(
            "msdyn_msdyn_channelinstance_ChannelDefinition_m",
            "msdyn_channeldefinition",
            "msdyn_channelinstance",
            "msdyn_channeldefinitionid",
            "msdyn_ChannelDefinitionId",
        )
        self._relate(
            "msdyn_msdyn_channelinstanceaccount_ChannelDefinition",
            "msdyn_channeldefinition",
            "msdyn_channelinstanceaccount",
            "msdyn_channeldefinitionid",
            "msdyn_ChannelDefinitionId",
        )
        # Journeys' base actions, which the relay plug-ins execute
        for action in BASE_ACTIONS:
            self.seed("sdkmessages", {"name": action})

    # -- seeding (tests) ---------------------------------------------------------------------

    def seed(self, entity_set: str, values: dict[str, Any]) -> str:
        table = self.tables[entity_set]
        row_id = str(values.get(table.key) or _new())
        with self._lock:
            table.rows[row_id] = {table.key: row_id, **values}
        return row_id

    def seed_solution(self, unique_name: str, prefix: str, *, managed: bool = False) -> str:
        publisher = self.seed(
            "publishers", {"uniquename": f"{prefix}publisher", "customizationprefix": prefix}
        )
        solution = self.seed(
            "solutions", {"uniquename": unique_name, "friendlyname": unique_name, "ismanaged": managed}
        )
        self.tables["solutions"].rows[solution]["_publisherid_value"] = publisher
        return solution

    def seed_role(self, name: str) -> str:
        """A role in the root business unit and its copy in the child business unit."""
        root = self.seed("roles", {"name": name, "_businessunitid_value": self.root_business_unit})
        self.tables["roles"].rows[root]["_parentroleid_value"] = None
        child_bu = next(r for r in self.tables["businessunits"].rows if r != self.root_business_unit)
        self.seed("roles", {"name": name, "_businessunitid_value": child_bu, "_parentroleid_value": root})
        return root

    # -- reading state (tests) ---------------------------------------------------------------

    def rows(self, entity_set: str, **where: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [
                dict(row)
                for row in self.tables[entity_set].rows.values()
                if all(_equal(row.get(k), v) for k, v in where.items())
            ]

    def remove_row(self, entity_set: str, row_id: str) -> None:
        """Delete behind the tool's back (as an admin clicking Delete would, cascades included)."""
        with self._lock:
            self._delete(self.tables[entity_set], row_id)

    def insert(self, entity_set: str, body: dict[str, Any], *, solution: str | None = None) -> str:
        """Create a row through the same checks as a POST (for what a person does in the UI)."""
        with self._lock:
            return self._create(self.tables[entity_set], body, solution, "https://fake")

    def fail_next(self, method: str, path_prefix: str, reply: Reply) -> None:
        with self._lock:
            self.faults.append((method, path_prefix, reply))

    # -- HTTP --------------------------------------------------------------------------------

    def __call__(self, request: Recorded) -> Reply:
        with self._lock:
            self.calls.append(request)
            for fault in self.faults:
                method, prefix, reply = fault
                if request.method == method and request.path.removeprefix(API).startswith(prefix):
                    self.faults.remove(fault)
                    return reply
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self.entra.issued:
            return Reply(401, {"error": {"code": NO_PRIVILEGE, "message": "The user is not authenticated"}})
        if not request.path.startswith(API):
            return _error(404, QUERY, f"Resource not found for the segment '{request.path}'.")
        try:
            with self._lock:
                outcome = self._dispatch(request)
            return outcome() if callable(outcome) else outcome
        except Refused as refused:
            return refused.reply

    def _dispatch(self, request: Recorded) -> Reply | Callable[[], Reply]:
        path = unquote(request.path.removeprefix(API))
        query = parse_qs(urlsplit(request.target).query, keep_blank_values=True)
        base = f"https://{request.headers.get('host', 'localhost')}{API}"
        solution = request.headers.get("mscrm.solutionuniquename")
        body = request.json() if request.body else None
        method = request.method
        if method in ("POST", "PATCH", "DELETE"):
            if solution is not None:
                self._solution(solution)
            self.writes.append(Write(method, path, solution, body))
        if path == "EntityDefinitions" and method == "POST":
            return self._create_entity(body, solution, base)
        if m := re.fullmatch(r"EntityDefinitions\(LogicalName='(\w+)'\)", path):
            return self._entity_resource(method, self._entity(m.group(1)), query)
        if m := re.fullmatch(rf"EntityDefinitions\(({GUID})\)", path):
            entity = next((e for e in self.entities.values() if e["MetadataId"] == m.group(1).lower()), None)
            if entity is None:
                raise refuse(404, NOT_FOUND, f"Could not find entity with id {m.group(1)}")
            return self._entity_resource(method, entity, query)
        if m := re.fullmatch(r"EntityDefinitions\(LogicalName='(\w+)'\)/Attributes", path):
            entity = self._entity(m.group(1))
            if method == "POST":
                return self._create_attribute(entity, body, solution, base)
            return self._select_rows(entity["Attributes"], query, ATTRIBUTE_SELECTABLE)
        if m := re.fullmatch(r"EntityDefinitions\(LogicalName='(\w+)'\)/ManyToOneRelationships", path):
            entity = self._entity(m.group(1))
            rows = [r for r in self.relationships.values() if r["ReferencingEntity"] == entity["LogicalName"]]
            return self._select_rows(rows, query, RELATIONSHIP_SELECTABLE)
        if path == "RelationshipDefinitions" and method == "POST":
            return self._create_relationship(body, solution, base)
        if m := re.fullmatch(rf"RelationshipDefinitions\(({GUID})\)", path):
            if method != "DELETE":
                raise refuse(405, INVALID, "only DELETE is played here")
            return self._delete_relationship(m.group(1).lower())
        if path == "PublishXml" and method == "POST":
            return self._publish(body)
        if m := re.fullmatch(rf"roles\(({GUID})\)/Microsoft\.Dynamics\.CRM\.AddPrivilegesRole", path):
            return self._add_privileges(m.group(1).lower(), body)
        if m := re.fullmatch(rf"RetrieveRolePrivilegesRole\(RoleId=({GUID})\)", path):
            held = self.role_privileges.get(m.group(1).lower(), {})
            names = self.tables["privileges"].rows
            return Reply(
                200,
                {
                    "RolePrivileges": [
                        {
                            "Depth": depth,
                            "PrivilegeId": pid,
                            "BusinessUnitId": self.root_business_unit,
                            "PrivilegeName": names.get(pid, {}).get("name"),
                        }
                        for pid, depth in held.items()
                    ]
                },
            )
        if m := re.fullmatch(rf"(\w+)\(({GUID})\)", path):
            table = self._table(m.group(1))
            return self._record(method, table, m.group(2).lower(), body, query, solution, base, request)
        if re.fullmatch(r"\w+", path):
            if path in self.tables:
                table = self.tables[path]
                if method == "GET":
                    return self._select_rows(list(table.rows.values()), query, table.queryable(), table)
                if method == "POST":
                    if not table.creatable:
                        raise refuse(
                            405, INVALID, f"The '{table.logical}' entity cannot be created this way."
                        )
                    row_id = self._create(table, body, solution, base)
                    return Reply(204, b"", {"OData-EntityId": f"{base}{table.entity_set}({row_id})"})
            if method == "POST":
                return self._execute(path, body)
        raise refuse(404, QUERY, f"Resource not found for the segment '{path}'.")

    # -- records -----------------------------------------------------------------------------

    def _table(self, entity_set: str) -> Table:
        table = self.tables.get(entity_set)
        if table is None:
            raise refuse(404, QUERY, f"Resource not found for the segment '{entity_set}'.")
        return table

    def _solution(self, unique_name: str) -> dict[str, Any]:
        solution = next(
            (
                r
                for r in self.tables["solutions"].rows.values()
                if str(r["uniquename"]).lower() == unique_name.lower()
            ),
            None,
        )
        if solution is None:
            raise refuse(404, NOT_FOUND, f"The solution with the unique name '{unique_name}' does not exist.")
        if solution.get("ismanaged"):
            raise refuse(400, INVALID, f"Cannot add components to the managed solution '{unique_name}'.")
        return solution

    def _prefix(self, solution: str | None) -> str | None:
        if solution is None:
            return None
        publisher = self.tables["publishers"].rows.get(
            self._solution(solution).get("_publisherid_value") or ""
        )
        return str(publisher["customizationprefix"]) if publisher else None

    def _record(
        self,
        method: str,
        table: Table,
        row_id: str,
        body: Any,
        query: dict[str, list[str]],
        solution: str | None,
        base: str,
        request: Recorded,
    ) -> Reply:
        row = table.rows.get(row_id)
        if method == "GET":
            if row is None:
                raise refuse(404, NOT_FOUND, f"{table.logical} With Id = {row_id} Does Not Exist")
            return Reply(200, self._shape(table, row, query))
        if method == "DELETE":
            if row is None:
                raise refuse(404, NOT_FOUND, f"{table.logical} With Id = {row_id} Does Not Exist")
            self._delete(table, row_id)
            return Reply(204, b"")
        if method == "PATCH":
            if row is None:
                if request.headers.get("if-match") == "*":
                    raise refuse(404, NOT_FOUND, f"{table.logical} With Id = {row_id} Does Not Exist")
                self._create(table, {table.key: row_id, **(body or {})}, solution, base)  # upsert
                return Reply(204, b"")
            self._update(table, row, body)
            return Reply(204, b"")
        raise refuse(405, INVALID, f"{method} is not supported on {table.entity_set}({row_id})")

    def _validate(
        self,
        table: Table,
        body: Any,
        *,
        creating: bool,
        current: dict[str, Any] | None = None,
        implied: str | None = None,
    ) -> tuple[dict[str, Any], list[tuple[str, list[dict[str, Any]]]]]:
        """Checked values; ``implied`` is the lookup a deep insert sets to the parent."""
        if not isinstance(body, dict):
            raise refuse(400, PAYLOAD, "The request body must be a JSON object.")
        values: dict[str, Any] = {}
        children: list[tuple[str, list[dict[str, Any]]]] = []
        for key, value in body.items():
            if key == "@odata.type":
                if value != f"Microsoft.Dynamics.CRM.{table.logical}":
                    raise refuse(400, PAYLOAD, f"Invalid @odata.type {value!r} for {table.entity_set}.")
                continue
            if key.endswith("@odata.bind"):
                nav_name = key.removesuffix("@odata.bind")
                nav = table.navs.get(nav_name)
                if nav is None:
                    raise refuse(
                        400,
                        PAYLOAD,
                        f"An undeclared property '{nav_name}' which only has property annotations in the "
                        "payload but no property value was found in the payload. In OData, only declared "
                        "navigation properties and declared named streams can be represented as properties "
                        "without values.",
                    )
                target = self._bound(nav, value)
                values[f"_{nav.lookup}_value"] = target
                continue
            if key in table.children:
                if not creating or not isinstance(value, list):
                    raise refuse(400, PAYLOAD, f"Deep insert of '{key}' is only possible when creating.")
                children.append((key, value))
                continue
            if key == table.key and creating:
                if not isinstance(value, str) or not re.fullmatch(GUID, value):
                    raise refuse(400, PAYLOAD, f"Invalid value for the primary key {key}.")
                values[key] = value.lower()
                continue
            col = table.cols.get(key)
            if col is None:
                raise refuse(
                    400,
                    PAYLOAD,
                    f"Error identified in Payload provided by the user for Entity :'{table.entity_set}', "
                    "InnerException : Microsoft.OData.ODataException: "
                    f"The property '{key}' does not exist on type 'Microsoft.Dynamics.CRM.{table.logical}'. "
                    "Make sure to only use property names that are defined by the type or mark the type as "
                    "open type.",
                )
            _check_value(table, key, col, value)
            if not creating and col.immutable and current is not None and not _equal(current.get(key), value):
                raise refuse(
                    400, INVALID, f"{table.logical}.{key} cannot be changed after the record is created."
                )
            values[key] = value
        if creating:
            for name, col in table.cols.items():
                if name not in values and col.default is not None:
                    values[name] = col.default
                if col.required and values.get(name) in (None, ""):
                    raise refuse(400, INVALID, f"Required field '{name}' is missing ({table.logical}).")
            for nav_name, nav in table.navs.items():
                if nav.required and nav.lookup != implied and values.get(f"_{nav.lookup}_value") is None:
                    raise refuse(400, INVALID, f"Required lookup '{nav_name}' is missing ({table.logical}).")
        return values, children

    def _bound(self, nav: Nav, value: Any) -> str:
        match = re.fullmatch(rf"(?:.*/)?(\w+)\(({GUID})\)", str(value))
        if match is None:
            raise refuse(400, PAYLOAD, f"The @odata.bind value {value!r} is not an entity reference.")
        if match.group(1) != nav.target:
            raise refuse(
                400,
                PAYLOAD,
                f"{match.group(1)} is not the target of this navigation property ({nav.target}).",
            )
        target = self.tables[nav.target]
        target_id = match.group(2).lower()
        if target_id not in target.rows:
            raise refuse(404, NOT_FOUND, f"{target.logical} With Id = {target_id} Does Not Exist")
        return target_id

    def _create(self, table: Table, body: Any, solution: str | None, base: str) -> str:
        values, children = self._validate(table, body, creating=True)
        row_id = values.pop(table.key, None) or _new()
        if row_id in table.rows:
            raise refuse(412, DUPLICATE, f"A record with the id {row_id} already exists.")
        child_rows: list[tuple[Table, dict[str, Any]]] = []
        for nav_name, items in children:
            child_set, lookup = table.children[nav_name]
            child_table = self.tables[child_set]
            for item in items:
                child_values, _ = self._validate(child_table, item, creating=True, implied=lookup)
                child_values[f"_{lookup}_value"] = row_id
                child_rows.append((child_table, child_values))
        self._before_create(table, values, solution)
        row = {table.key: row_id, **values}
        table.rows[row_id] = row
        for child_table, child_values in child_rows:
            child_id = _new()
            child_table.rows[child_id] = {child_table.key: child_id, **child_values}
        self._after_create(table, row)
        if solution is not None:
            self.solution_components.append((solution, table.logical, row_id))
        return row_id

    def _update(self, table: Table, row: dict[str, Any], body: Any) -> None:
        values, _ = self._validate(table, body, creating=False, current=row)
        if table.entity_set == "pluginassemblies" and "content" in values:
            _check_assembly(values["content"])
        row.update(values)

    def _before_create(self, table: Table, values: dict[str, Any], solution: str | None) -> None:
        name = table.entity_set
        if name == "customapis":
            if any(_equal(r["uniquename"], values["uniquename"]) for r in table.rows.values()):
                raise refuse(412, DUPLICATE, "A record with matching key values already exists (uniquename).")
            privilege = values.get("executeprivilegename")
            if privilege and not any(
                _equal(p["name"], privilege) for p in self.tables["privileges"].rows.values()
            ):
                raise refuse(
                    400, INVALID, f"The privilege {privilege} named by executeprivilegename does not exist."
                )
        elif name == "pluginassemblies":
            if any(_equal(r["name"], values["name"]) for r in table.rows.values()):
                raise refuse(
                    412, DUPLICATE, f"A plug-in assembly named {values['name']} is already registered."
                )
            _check_assembly(values.get("content"))
            # Dataverse reads these from the assembly itself
            values.setdefault("version", "1.0.0.0")
            values.setdefault("culture", "neutral")
            values.setdefault("publickeytoken", "0123456789abcdef")
        elif name == "plugintypes":
            if any(
                r["_pluginassemblyid_value"] == values["_pluginassemblyid_value"]
                and r["typename"] == values["typename"]
                for r in table.rows.values()
            ):
                raise refuse(412, DUPLICATE, f"Plug-in type {values['typename']} is already registered.")
        elif name == "sdkmessageprocessingsteps":
            message = self.tables["sdkmessages"].rows[values["_sdkmessageid_value"]]
            api = next(
                (a for a in self.tables["customapis"].rows.values() if a["uniquename"] == message["name"]),
                None,
            )
            if api is not None:
                allowed = api["allowedcustomprocessingsteptype"]
                if (values["mode"] == 0 and allowed != 2) or (values["mode"] == 1 and allowed == 0):
                    raise refuse(
                        400,
                        INVALID,
                        f"The custom API {api['uniquename']} does not allow "
                        f"{'synchronous' if values['mode'] == 0 else 'asynchronous'} custom processing steps "
                        f"(allowedcustomprocessingsteptype {allowed}).",
                    )
            if values.get("asyncautodelete") and values["mode"] == 0:
                raise refuse(400, INVALID, "asyncautodelete is only for asynchronous steps.")
        elif name == "systemforms":
            entity = self.entities.get(str(values["objecttypecode"]))
            if entity is None:
                raise refuse(400, INVALID, f"objecttypecode {values['objecttypecode']!r} is not a table.")
            _check_form(values["formxml"], {a["LogicalName"] for a in entity["Attributes"]})

    def _after_create(self, table: Table, row: dict[str, Any]) -> None:
        if table.entity_set == "customapis":
            self.seed("sdkmessages", {"name": row["uniquename"]})

    def _delete(self, table: Table, row_id: str) -> None:
        row = table.rows[row_id]
        name = table.entity_set
        steps = self.tables["sdkmessageprocessingsteps"].rows
        if name == "plugintypes" and any(
            s.get("_eventhandler_value") == row_id or s.get("_plugintypeid_value") == row_id
            for s in steps.values()
        ):
            raise refuse(400, DEPENDENCY, "The plug-in type cannot be deleted: steps are registered on it.")
        if name == "plugintypes" and any(
            a.get("_plugintypeid_value") == row_id for a in self.tables["customapis"].rows.values()
        ):
            raise refuse(400, DEPENDENCY, "The plug-in type cannot be deleted: a custom API uses it.")
        if name == "pluginassemblies":
            types = [
                t
                for t, r in self.tables["plugintypes"].rows.items()
                if r["_pluginassemblyid_value"] == row_id
            ]
            if any(s.get("_eventhandler_value") in types for s in steps.values()):
                raise refuse(
                    400,
                    DEPENDENCY,
                    "You cannot delete any Plug-in Assemblies while existing Sdk Message Processing Steps "
                    "depend on them.",
                )
            for type_id in types:
                del self.tables["plugintypes"].rows[type_id]
        if name == "sdkmessageprocessingstepsecureconfigs" and any(
            s.get("_sdkmessageprocessingstepsecureconfigid_value") == row_id for s in steps.values()
        ):
            raise refuse(400, DEPENDENCY, "The secure configuration is used by a step.")
        if name == "customapis":
            message = next(
                (m for m, r in self.tables["sdkmessages"].rows.items() if r["name"] == row["uniquename"]),
                None,
            )
            if any(s.get("_sdkmessageid_value") == message for s in steps.values()):
                raise refuse(400, DEPENDENCY, "The custom API's message has steps registered on it.")
            for child in ("customapirequestparameters", "customapiresponseproperties"):
                rows = self.tables[child].rows
                for child_id in [c for c, r in rows.items() if r.get("_customapiid_value") == row_id]:
                    del rows[child_id]
            if message is not None:
                del self.tables["sdkmessages"].rows[message]
        if name == "msdyn_channeldefinitions":
            # inferred: a definition's accounts go with it, as its senders do
            for child in (
                "msdyn_channelmessageparts",
                "msdyn_channelinstances",
                "msdyn_channelinstanceaccounts",
            ):
                rows = self.tables[child].rows
                for child_id in [
                    c for c, r in rows.items() if r.get("_msdyn_channeldefinitionid_value") == row_id
                ]:
                    del rows[child_id]
        del table.rows[row_id]

    # -- queries -----------------------------------------------------------------------------

    def _shape(self, table: Table, row: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
        selected = _names(query.get("$select", [""])[0])
        unknown = selected - table.queryable()
        if unknown:
            raise no_property(sorted(unknown)[0], table.logical)
        shaped = {k: v for k, v in row.items() if not selected or k in selected or k == table.key}
        for name, options in _expansions(query.get("$expand", [""])[0]):
            shaped[name] = self._expand(table, row, name, options)
        return shaped

    def _expand(self, table: Table, row: dict[str, Any], name: str, options: dict[str, list[str]]) -> Any:
        if name in table.children:
            child_set, lookup = table.children[name]
            child = self.tables[child_set]
            rows = [r for r in child.rows.values() if r.get(f"_{lookup}_value") == row[table.key]]
            return [self._shape(child, r, options) for r in rows]
        nav = table.navs.get(name)
        if nav is None:
            raise no_property(name, table.logical)
        target = self.tables[nav.target]
        target_row = target.rows.get(row.get(f"_{nav.lookup}_value") or "")
        return self._shape(target, target_row, options) if target_row is not None else None

    def _select_rows(
        self,
        rows: list[dict[str, Any]],
        query: dict[str, list[str]],
        allowed: set[str],
        table: Table | None = None,
    ) -> Reply:
        conditions = _parse_filter(query.get("$filter", [""])[0])
        for column, _, _ in conditions:
            if column not in allowed:
                where = table.logical if table else "metadata"
                raise no_property(column, where)
        matched = [r for r in rows if all(_compare(r.get(c), op, v) for c, op, v in conditions)]
        if "$top" in query:
            matched = matched[: int(query["$top"][0])]
        if table is not None:
            return Reply(200, {"value": [self._shape(table, r, query) for r in matched]})
        selected = _names(query.get("$select", [""])[0])
        if selected - allowed:
            raise no_property(sorted(selected - allowed)[0], "metadata")
        return Reply(
            200, {"value": [{k: v for k, v in r.items() if not selected or k in selected} for r in matched]}
        )

    # -- metadata ----------------------------------------------------------------------------

    def _entity(self, logical: str) -> dict[str, Any]:
        entity = self.entities.get(logical)
        if entity is None:
            raise refuse(404, NOT_FOUND, f"Could not find an entity with the name {logical}.")
        return entity

    def _register_entity(self, logical: str, schema: str, *, custom: bool) -> dict[str, Any]:
        entity = {
            "MetadataId": _new(),
            "LogicalName": logical,
            "SchemaName": schema,
            "EntitySetName": self._entity_set_of(logical),
            "PrimaryIdAttribute": f"{logical}id",
            "PrimaryNameAttribute": None,
            "ObjectTypeCode": 10000 + len(self.entities),
            "OwnershipType": "UserOwned",
            "IsCustomEntity": custom,
            "Attributes": [
                {
                    "MetadataId": _new(),
                    "LogicalName": f"{logical}id",
                    "SchemaName": f"{schema}Id",
                    "AttributeType": "Uniqueidentifier",
                    "IsPrimaryName": False,
                    "IsCustomAttribute": False,
                },
                {
                    "MetadataId": _new(),
                    "LogicalName": "ownerid",
                    "SchemaName": "OwnerId",
                    "AttributeType": "Owner",
                    "IsPrimaryName": False,
                    "IsCustomAttribute": False,
                },
            ],
        }
        self.entities[logical] = entity
        return entity

    def _entity_set_of(self, logical: str) -> str:
        known = {t.logical: t.entity_set for t in self.tables.values()}
        return known.get(logical, logical + "s")

    def _entity_resource(self, method: str, entity: dict[str, Any], query: dict[str, list[str]]) -> Reply:
        if method == "DELETE":
            self._delete_entity(entity)
            return Reply(204, b"")
        if method != "GET":
            raise refuse(405, INVALID, f"{method} is not played on EntityDefinitions")
        selected = _names(query.get("$select", [""])[0])
        if selected - ENTITY_SELECTABLE:
            raise no_property(sorted(selected - ENTITY_SELECTABLE)[0], "EntityMetadata")
        shaped = {k: v for k, v in entity.items() if k != "Attributes" and (not selected or k in selected)}
        shaped["MetadataId"] = entity["MetadataId"]
        for name, options in _expansions(query.get("$expand", [""])[0]):
            if name != "Attributes":
                raise no_property(name, "EntityMetadata")
            attribute_select = _names(options.get("$select", [""])[0])
            if attribute_select - ATTRIBUTE_SELECTABLE:
                raise no_property(sorted(attribute_select - ATTRIBUTE_SELECTABLE)[0], "AttributeMetadata")
            shaped["Attributes"] = [
                {k: v for k, v in a.items() if not attribute_select or k in attribute_select}
                for a in entity["Attributes"]
            ]
        return Reply(200, shaped)

    def _labels(self, value: Any, what: str) -> None:
        labels = (value or {}).get("LocalizedLabels") if isinstance(value, dict) else None
        if not labels or not any(
            label.get("LanguageCode") == self.language and label.get("Label") for label in labels
        ):
            raise refuse(
                400, INVALID, f"{what} needs a label in the organization's base language ({self.language})."
            )

    def _schema_name(self, schema: Any, solution: str | None) -> str:
        if not isinstance(schema, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*_[A-Za-z0-9_]+", schema):
            raise refuse(400, INVALID, f"Invalid schema name {schema!r}.")
        prefix = self._prefix(solution)
        if prefix is not None and not schema.lower().startswith(prefix + "_"):
            raise refuse(
                400, INVALID, f"The schema name {schema} must start with the publisher prefix {prefix}_."
            )
        return schema

    def _string_attribute(self, body: Any, solution: str | None) -> dict[str, Any]:
        if not isinstance(body, dict) or set(body) - STRING_ATTRIBUTE_BODY:
            extra = (
                sorted(set(body) - STRING_ATTRIBUTE_BODY) if isinstance(body, dict) else ["(not an object)"]
            )
            raise undeclared(extra[0], "StringAttributeMetadata")
        if body.get("@odata.type") != "Microsoft.Dynamics.CRM.StringAttributeMetadata":
            raise refuse(400, PAYLOAD, "Only StringAttributeMetadata is played here.")
        schema = self._schema_name(body.get("SchemaName"), solution)
        self._labels(body.get("DisplayName"), f"attribute {schema} DisplayName")
        length = body.get("MaxLength")
        if not isinstance(length, int) or not 1 <= length <= 4000:
            raise refuse(400, INVALID, f"MaxLength of {schema} must be 1 to 4000.")
        level = (body.get("RequiredLevel") or {}).get("Value")
        if level not in ("None", "Recommended", "ApplicationRequired", "SystemRequired"):
            raise refuse(400, INVALID, f"RequiredLevel of {schema}: {level!r} is not a required level.")
        return {
            "MetadataId": _new(),
            "LogicalName": schema.lower(),
            "SchemaName": schema,
            "AttributeType": "String",
            "IsPrimaryName": bool(body.get("IsPrimaryName")),
            "IsCustomAttribute": True,
            "MaxLength": length,
            "Required": level in ("ApplicationRequired", "SystemRequired"),
        }

    def _create_entity(self, body: Any, solution: str | None, base: str) -> Reply:
        if not isinstance(body, dict):
            raise refuse(400, PAYLOAD, "The request body must be a JSON object.")
        extra = set(body) - ENTITY_BODY
        if extra:
            raise undeclared(sorted(extra)[0], "EntityMetadata")
        if body.get("@odata.type") != "Microsoft.Dynamics.CRM.EntityMetadata":
            raise refuse(400, PAYLOAD, "@odata.type must be Microsoft.Dynamics.CRM.EntityMetadata.")
        schema = self._schema_name(body.get("SchemaName"), solution)
        logical = schema.lower()
        if logical in self.entities:
            raise refuse(412, DUPLICATE, f"An entity with the name {logical} already exists.")
        for name in ("DisplayName", "DisplayCollectionName"):
            self._labels(body.get(name), f"table {schema} {name}")
        if body.get("OwnershipType") not in ("UserOwned", "OrganizationOwned"):
            raise refuse(400, INVALID, "OwnershipType must be UserOwned or OrganizationOwned.")
        if body.get("HasActivities") is None or body.get("HasNotes") is None:
            raise refuse(400, INVALID, "HasActivities and HasNotes are required.")
        attributes = [self._string_attribute(a, solution) for a in body.get("Attributes") or []]
        primary = [a for a in attributes if a["IsPrimaryName"]]
        if len(primary) != 1:
            raise refuse(
                400, INVALID, "A new table needs exactly one primary name attribute (IsPrimaryName)."
            )
        entity = self._register_entity(logical, schema, custom=True)
        entity["PrimaryNameAttribute"] = primary[0]["LogicalName"]
        entity["Attributes"].extend(attributes)
        entity["OwnershipType"] = body["OwnershipType"]
        self.tables[entity["EntitySetName"]] = Table(
            entity["EntitySetName"],
            logical,
            f"{logical}id",
            {a["LogicalName"]: s(a["MaxLength"], required=a["Required"]) for a in attributes},
        )
        for verb in ("Create", "Read", "Write", "Delete", "Append", "AppendTo", "Assign", "Share"):
            self.seed("privileges", {"name": f"prv{verb}{schema}"})
        # Dataverse gives every new table a main form, "Information"
        form = _new()
        primary_name = primary[0]["LogicalName"]
        self.tables["systemforms"].rows[form] = {
            "formid": form,
            "name": "Information",
            "objecttypecode": logical,
            "type": 2,
            "formxml": f"<form><tabs><tab><columns><column><sections><section><rows><row><cell>"
            f'<control id="{primary_name}" datafieldname="{primary_name}" /></cell></row></rows>'
            "</section></sections></column></columns></tab></tabs></form>",
            "formactivationstate": 1,
        }
        if solution is not None:
            self.solution_components.append((solution, "entity", entity["MetadataId"]))
        return Reply(204, b"", {"OData-EntityId": f"{base}EntityDefinitions({entity['MetadataId']})"})

    def _create_attribute(self, entity: dict[str, Any], body: Any, solution: str | None, base: str) -> Reply:
        attribute = self._string_attribute(body, solution)
        if attribute["IsPrimaryName"]:
            raise refuse(400, INVALID, "The table already has its primary name attribute.")
        if any(a["LogicalName"] == attribute["LogicalName"] for a in entity["Attributes"]):
            raise refuse(412, DUPLICATE, f"An attribute named {attribute['LogicalName']} already exists.")
        entity["Attributes"].append(attribute)
        table = self.tables[entity["EntitySetName"]]
        table.cols[attribute["LogicalName"]] = s(attribute["MaxLength"], required=attribute["Required"])
        if solution is not None:
            self.solution_components.append((solution, "attribute", attribute["MetadataId"]))
        return Reply(
            204,
            b"",
            {
                "OData-EntityId": f"{base}EntityDefinitions({entity['MetadataId']})"
                f"/Attributes({attribute['MetadataId']})"
            },
        )

    def _delete_entity(self, entity: dict[str, Any]) -> None:
        if not entity["IsCustomEntity"]:
            raise refuse(400, INVALID, f"The system table {entity['LogicalName']} cannot be deleted.")
        logical = entity["LogicalName"]
        for relationship_id, relationship in list(self.relationships.items()):
            if logical in (relationship["ReferencedEntity"], relationship["ReferencingEntity"]):
                self._delete_relationship(relationship_id)
        forms = self.tables["systemforms"].rows
        for form_id in [f for f, r in forms.items() if r["objecttypecode"] == logical]:
            del forms[form_id]
        privileges = self.tables["privileges"].rows
        gone = {
            p for p, r in privileges.items() if str(r["name"]).lower().endswith(entity["SchemaName"].lower())
        }
        for privilege in gone:
            del privileges[privilege]
        for held in self.role_privileges.values():
            for privilege in gone & set(held):
                del held[privilege]
        del self.tables[entity["EntitySetName"]]
        del self.entities[logical]

    def _relate(
        self, schema: str, referenced: str, referencing: str, lookup: str, navigation: str
    ) -> dict[str, Any]:
        relationship = {
            "MetadataId": _new(),
            "SchemaName": schema,
            "ReferencedEntity": referenced,
            "ReferencedAttribute": f"{referenced}id",
            "ReferencingEntity": referencing,
            "ReferencingAttribute": lookup,
            "ReferencingEntityNavigationPropertyName": navigation,
            "ReferencedEntityNavigationPropertyName": schema,
        }
        self.relationships[relationship["MetadataId"]] = relationship
        referencing_set = self.entities[referencing]["EntitySetName"]
        if referencing_set in self.tables:
            navs = self.tables[referencing_set].navs
            # a system lookup declared with the table keeps its requirement
            navs.setdefault(navigation, Nav(self.entities[referenced]["EntitySetName"], lookup))
        return relationship

    def _create_relationship(self, body: Any, solution: str | None, base: str) -> Reply:
        if not isinstance(body, dict) or set(body) - RELATIONSHIP_BODY:
            extra = sorted(set(body) - RELATIONSHIP_BODY) if isinstance(body, dict) else ["(not an object)"]
            raise undeclared(extra[0], "OneToManyRelationshipMetadata")
        if body.get("@odata.type") != "Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata":
            raise refuse(400, PAYLOAD, "Only OneToManyRelationshipMetadata is played here.")
        schema = self._schema_name(body.get("SchemaName"), solution)
        if any(r["SchemaName"].lower() == schema.lower() for r in self.relationships.values()):
            raise refuse(412, DUPLICATE, f"A relationship named {schema} already exists.")
        referenced = self._entity(str(body.get("ReferencedEntity")))
        referencing = self._entity(str(body.get("ReferencingEntity")))
        if body.get("ReferencedAttribute") not in (None, referenced["PrimaryIdAttribute"]):
            raise refuse(400, INVALID, "ReferencedAttribute must be the referenced table's primary key.")
        cascade = body.get("CascadeConfiguration") or {}
        if any(v not in CASCADES for v in cascade.values()):
            raise refuse(400, INVALID, "CascadeConfiguration has a value that is not a cascade type.")
        lookup = body.get("Lookup")
        if not isinstance(lookup, dict) or set(lookup) - LOOKUP_BODY or not lookup.get("SchemaName"):
            raise refuse(400, PAYLOAD, "Lookup must be a LookupAttributeMetadata with a SchemaName.")
        lookup_name = str(lookup["SchemaName"]).lower()
        existing = next((a for a in referencing["Attributes"] if a["LogicalName"] == lookup_name), None)
        if existing is None:
            self._schema_name(lookup["SchemaName"], solution)
            referencing["Attributes"].append(
                {
                    "MetadataId": _new(),
                    "LogicalName": lookup_name,
                    "SchemaName": lookup["SchemaName"],
                    "AttributeType": "Lookup",
                    "IsPrimaryName": False,
                    "IsCustomAttribute": True,
                }
            )
        elif existing["AttributeType"] != "Lookup":
            raise refuse(400, INVALID, f"{lookup_name} is not a lookup column.")
        navigation = body.get("ReferencingEntityNavigationPropertyName") or schema
        relationship = self._relate(
            schema, referenced["LogicalName"], referencing["LogicalName"], lookup_name, navigation
        )
        if solution is not None:
            self.solution_components.append((solution, "relationship", relationship["MetadataId"]))
        return Reply(
            204, b"", {"OData-EntityId": f"{base}RelationshipDefinitions({relationship['MetadataId']})"}
        )

    def _delete_relationship(self, relationship_id: str) -> Reply:
        relationship = self.relationships.pop(relationship_id, None)
        if relationship is None:
            raise refuse(404, NOT_FOUND, f"Could not find a relationship with id {relationship_id}.")
        referencing_set = self.entities[relationship["ReferencingEntity"]]["EntitySetName"]
        table = self.tables.get(referencing_set)
        if table is not None:
            navigation = relationship["ReferencingEntityNavigationPropertyName"]
            table.navs.pop(navigation, None)
            target_set = self.entities[relationship["ReferencedEntity"]]["EntitySetName"]
            lookup = f"_{relationship['ReferencingAttribute']}_value"
            targets = set(self.tables[target_set].rows) if target_set in self.tables else set()
            for row in table.rows.values():
                if row.get(lookup) in targets:
                    row[lookup] = None  # RemoveLink
        return Reply(204, b"")

    def _publish(self, body: Any) -> Reply:
        xml = (body or {}).get("ParameterXml") if isinstance(body, dict) else None
        try:
            root = ElementTree.fromstring(str(xml))
        except ElementTree.ParseError:
            raise refuse(400, INVALID, "ParameterXml is not well-formed XML.") from None
        names = {str(e.text) for e in root.iter("entity")}
        unknown = names - set(self.entities)
        if root.tag != "importexportxml" or unknown:
            raise refuse(400, INVALID, f"ParameterXml names unknown tables: {sorted(unknown)}")
        self.published.append(names)
        return Reply(204, b"")

    def _add_privileges(self, role_id: str, body: Any) -> Reply:
        if role_id not in self.tables["roles"].rows:
            raise refuse(404, NOT_FOUND, f"role With Id = {role_id} Does Not Exist")
        if role_id in self.locked_roles:
            raise refuse(403, NO_PRIVILEGE, "The privileges of this system role cannot be changed.")
        items = (body or {}).get("Privileges") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items or set(body) != {"Privileges"}:
            raise refuse(
                400, PAYLOAD, "AddPrivilegesRole takes one parameter, Privileges (a list of RolePrivilege)."
            )
        for item in items:
            if not isinstance(item, dict) or set(item) - {
                "Depth",
                "PrivilegeId",
                "BusinessUnitId",
                "PrivilegeName",
            }:
                raise refuse(
                    400, PAYLOAD, "A RolePrivilege has Depth, PrivilegeId, BusinessUnitId, PrivilegeName."
                )
            if item.get("Depth") not in DEPTHS:
                raise refuse(400, PAYLOAD, f"Depth {item.get('Depth')!r} is not a PrivilegeDepth.")
            privilege = str(item.get("PrivilegeId", "")).lower()
            if privilege not in self.tables["privileges"].rows:
                raise refuse(404, NOT_FOUND, f"privilege With Id = {privilege} Does Not Exist")
            self.role_privileges.setdefault(role_id, {})[privilege] = str(item["Depth"])
        return Reply(204, b"")

    # -- custom API execution -----------------------------------------------------------------

    def _execute(self, name: str, body: Any) -> Reply | Callable[[], Reply]:
        api = next((a for a in self.tables["customapis"].rows.values() if a["uniquename"] == name), None)
        if api is None or api["isfunction"]:
            raise refuse(404, QUERY, f"Resource not found for the segment '{name}'.")
        parameters = [
            p
            for p in self.tables["customapirequestparameters"].rows.values()
            if p["_customapiid_value"] == api["customapiid"]
        ]
        given = body if isinstance(body, dict) else {}
        known = {p["uniquename"] for p in parameters}
        if set(given) - known:
            raise refuse(
                400, PAYLOAD, f"The parameter '{sorted(set(given) - known)[0]}' is not a parameter of {name}."
            )
        for parameter in parameters:
            value = given.get(parameter["uniquename"])
            if value is None and not parameter["isoptional"]:
                raise refuse(400, INVALID, f"Required parameter '{parameter['uniquename']}' is missing.")
            if value is not None and parameter["type"] == 10 and not isinstance(value, str):
                raise refuse(400, PAYLOAD, f"Parameter '{parameter['uniquename']}' must be a string.")
        message = next(m for m, r in self.tables["sdkmessages"].rows.items() if r["name"] == name)
        steps = sorted(
            (
                s
                for s in self.tables["sdkmessageprocessingsteps"].rows.values()
                if s["_sdkmessageid_value"] == message
                and s["stage"] == 40
                and s["mode"] == 0
                and s["statecode"] == 0
            ),
            key=lambda s: s["rank"],
        )
        runs = []
        for step in steps:
            plugin_type = self.tables["plugintypes"].rows.get(step["_eventhandler_value"])
            if plugin_type is None or plugin_type["typename"] != FORWARDER:
                continue
            secure = self.tables["sdkmessageprocessingstepsecureconfigs"].rows.get(
                step.get("_sdkmessageprocessingstepsecureconfigid_value") or ""
            )
            runs.append((step.get("configuration"), secure.get("secureconfig") if secure else None))
        context = f"{API}$metadata#Microsoft.Dynamics.CRM.{name}Response"
        main = self.tables["plugintypes"].rows.get(api.get("_plugintypeid_value") or "")
        if main is not None and main["typename"] in RELAYS:
            return Reply(200, {"@odata.context": context, **self._relay(main["typename"], given)})

        def run() -> Reply:
            response: str | None = None
            for unsecure, secure in runs:
                response = self._forward(unsecure, secure, given)
            return Reply(200, {"@odata.context": context, "response": response})

        return _guarded(run)

    def _relay(self, typename: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """A relay plug-in, as its contract says: the base action with its parameter, unchanged."""
        action = RELAYS[typename]
        parameter = BASE_ACTIONS[action]
        if not isinstance(inputs.get(parameter), str) or not inputs[parameter]:
            raise refuse(
                400, PLUGIN_FAILED, f"{typename.rsplit('.', 1)[-1]}: the {parameter} parameter is missing"
            )
        self.base_actions.append((action, {parameter: inputs[parameter]}))
        return {"responseMessage": "ok"}

    def _forward(self, unsecure: Any, secure: Any, inputs: dict[str, Any]) -> str:
        """The forwarder plug-in, as its contract says."""
        try:
            config = json.loads(unsecure)
            url, timeout = str(config["url"]), float(config.get("timeoutSeconds", 15))
            key = json.loads(secure)["functionKey"] if secure else None
        except (TypeError, ValueError, KeyError):
            raise refuse(
                400, PLUGIN_FAILED, "OutboundForwarder: the step's configuration is not valid"
            ) from None
        if not key:
            raise refuse(400, PLUGIN_FAILED, "OutboundForwarder: the secure configuration has no functionKey")
        headers = {"x-functions-key": str(key), "Content-Type": "application/json"}
        body = {"payload": inputs.get("payload")}
        with self._lock:
            self.forwarded.append((url, headers, body))
        try:
            with httpx.Client(timeout=timeout) as client:
                answer = client.post(url, json=body, headers=headers)
        except httpx.TimeoutException:
            raise refuse(
                400, PLUGIN_FAILED, "OutboundForwarder: the app did not answer in time; retry later"
            ) from None
        except httpx.HTTPError as exc:
            raise refuse(
                400,
                PLUGIN_FAILED,
                f"OutboundForwarder: cannot reach the app ({type(exc).__name__}); retry later",
            ) from None
        if answer.status_code != 200:
            raise refuse(400, PLUGIN_FAILED, f"OutboundForwarder: the app answered HTTP {answer.status_code}")
        try:
            response = answer.json()["response"]
        except (ValueError, KeyError, TypeError):
            raise refuse(400, PLUGIN_FAILED, "OutboundForwarder: the app's answer has no response") from None
        return str(response)


def _guarded(run: Callable[[], Reply]) -> Callable[[], Reply]:
    def call() -> Reply:
        try:
            return run()
        except Refused as refused:
            return refused.reply

    return call


def _check_value(table: Table, name: str, col: Col, value: Any) -> None:
    where = f"{table.logical}.{name}"
    if value is None:
        if col.required:
            raise refuse(400, INVALID, f"{where} is required and cannot be null.")
        return
    if col.kind == "str":
        if not isinstance(value, str):
            raise refuse(
                400,
                PAYLOAD,
                f"Cannot convert the literal '{value}' to the expected type 'Edm.String' ({where}).",
            )
        if col.max_length is not None and len(value) > col.max_length:
            raise refuse(
                400,
                INVALID,
                f"A validation error occurred. The length of the '{name}' attribute of the '{table.logical}' "
                f"entity exceeded the maximum allowed length of '{col.max_length}'.",
            )
    elif col.kind == "bool":
        if not isinstance(value, bool):
            raise refuse(
                400,
                PAYLOAD,
                f"Cannot convert the literal '{value}' to the expected type 'Edm.Boolean' ({where}).",
            )
    elif col.kind in ("int", "option"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise refuse(
                400,
                PAYLOAD,
                f"Cannot convert the literal '{value}' to the expected type 'Edm.Int32' ({where}).",
            )
        if col.kind == "option" and value not in col.options:
            raise refuse(
                400,
                INVALID,
                f"A validation error occurred. The value {value} of '{name}' on record of type "
                f"'{table.logical}' is outside the valid range.",
            )
    elif col.kind == "managed" and (not isinstance(value, dict) or not isinstance(value.get("Value"), bool)):
        raise refuse(400, PAYLOAD, f'{where} is a managed property: {{"Value": true|false}}.')


def _check_assembly(content: Any) -> None:
    if not isinstance(content, str) or not content:
        raise refuse(400, INVALID, "pluginassembly.content is required: the assembly's bytes in base64.")
    try:
        base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        raise refuse(400, INVALID, "pluginassembly.content is not valid base64.") from None


def _check_form(formxml: Any, attributes: set[str]) -> None:
    try:
        root = ElementTree.fromstring(str(formxml))
    except ElementTree.ParseError:
        raise refuse(400, INVALID, "formxml is not well-formed XML.") from None
    if root.tag != "form":
        raise refuse(400, INVALID, "formxml must be a <form> document.")
    for control in root.iter("control"):
        field_name = control.get("datafieldname")
        if field_name and field_name not in attributes:
            raise refuse(
                400, INVALID, f"The form refers to the field {field_name}, which the table does not have."
            )


def _names(select: str) -> set[str]:
    return {name.strip() for name in select.split(",") if name.strip()}


def _expansions(expand: str) -> list[tuple[str, dict[str, list[str]]]]:
    items: list[tuple[str, dict[str, list[str]]]] = []
    depth, start = 0, 0
    parts: list[str] = []
    for i, char in enumerate(expand):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(expand[start:i])
            start = i + 1
    parts.append(expand[start:])
    for part in (p.strip() for p in parts):
        if not part:
            continue
        match = re.fullmatch(r"(\w+)(?:\((.*)\))?", part)
        if match is None:
            raise refuse(400, QUERY, f"Invalid $expand: {part}")
        options: dict[str, list[str]] = {}
        for option in (match.group(2) or "").split(";"):
            if option:
                key, _, value = option.partition("=")
                if key != "$select":
                    raise refuse(400, QUERY, f"Only $select is played inside $expand, not {key}.")
                options[key] = [value]
        items.append((match.group(1), options))
    return items


_CLAUSE = re.compile(rf"\s*(\w+)\s+(eq|ne)\s+('(?:[^']|'')*'|null|true|false|{GUID}|-?\d+)\s*(?:and\s+|$)")


def _parse_filter(text: str) -> list[tuple[str, str, Any]]:
    conditions: list[tuple[str, str, Any]] = []
    position = 0
    text = text.strip()
    while position < len(text):
        match = _CLAUSE.match(text, position)
        if match is None:
            raise refuse(400, QUERY, f"Syntax error in $filter at position {position}: {text[position:]!r}")
        column, operator, raw = match.groups()
        conditions.append((column, operator, _literal(raw)))
        position = match.end()
    return conditions


def _literal(raw: str) -> Any:
    if raw.startswith("'"):
        return raw[1:-1].replace("''", "'")
    if raw in ("null", "true", "false"):
        return {"null": None, "true": True, "false": False}[raw]
    if re.fullmatch(GUID, raw):
        return raw.lower()
    return int(raw)


def _equal(left: Any, right: Any) -> bool:
    if isinstance(left, str) and isinstance(right, str):
        return left.lower() == right.lower()
    return bool(left == right)


def _compare(value: Any, operator: str, literal: Any) -> bool:
    same = _equal(value, literal)
    return same if operator == "eq" else not same


def _new() -> str:
    return str(uuid.uuid4())


def _error(status: int, code: str, message: str) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message}})
