"""The Azure deployment (azure.yaml, infra/), checked offline.

Every Bicep file parses (pycep-parser), checkov passes with each skipped check justified, the properties a
reviewer looks for hold in the parsed templates, and every setting the deployed app reads is either set by
the deployment or listed as optional in docs/deploy.md. checkov runs from its own venv (.venv-infra): its
pins conflict with the project's (packaging<24 against pytest's packaging>=24).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import pkgutil
import re
import subprocess
import time
import typing
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pycep import BicepParser
from pydantic import AliasChoices, SecretStr
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
CHECKOV = ROOT / ".venv-infra" / "bin" / "checkov"
CHECKOV_TIMEOUT_SECONDS = 180
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

#: Built-in role definition ids (the same in every tenant).
ROLE_IDS = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Key Vault Secrets Officer": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
}
KEY_VAULT_REFERENCE = re.compile(
    r"^@Microsoft\.KeyVault\(VaultName=\$\{keyVaultName\};SecretName=\$\{[^}]+\}\)$"
)
#: A secret setting never deployed: the identity-based AzureWebJobsStorage__* settings replace it.
NEVER_DEPLOYED = {"AZUREWEBJOBSSTORAGE"}


# --- parsing -------------------------------------------------------------------------------------------


@cache
def bicep(relative: str) -> dict[str, Any]:
    parsed: dict[str, Any] = BicepParser().parse(text=(INFRA / relative).read_text(encoding="utf-8"))
    return parsed


def resource(relative: str, resource_type: str) -> dict[str, Any]:
    """The body of the one resource of a type in a file (of each instance, for a resource loop)."""
    found = [r for r in bicep(relative)["resources"].values() if r["type"] == resource_type]
    assert len(found) == 1, f"{relative}: expected one {resource_type}, found {len(found)}"
    return body(found[0])


def body(declared: dict[str, Any]) -> dict[str, Any]:
    """A resource's properties, under its loop (``[for ...]``) or condition (``if (...)``) if it has one."""
    config: dict[str, Any] = declared["config"]
    while "config" in config and ("loop_type" in config or "condition" in config):
        config = config["config"]
    return config


def variable(relative: str, name: str) -> Any:
    return bicep(relative)["variables"][name]["value"]


def render(node: Any) -> Any:
    """A property access (``workspace.id``) as the dotted text it was written as; anything else as is."""
    if isinstance(node, dict) and node.get("operator", {}).get("type") == "property_accessor":
        operands = node["operator"]["operands"]
        return f"{render(operands['operand_1'])}.{render(operands['operand_2'])}"
    return node


def leaves(node: Any) -> Iterator[Any]:
    """Every scalar and property access in a pycep expression tree (references and strings alike)."""
    node = render(node)
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "type" and ("operands" in node or "parameters" in node):
                continue  # the operator's or function's name
            yield from leaves(value)
    elif isinstance(node, list):
        for value in node:
            yield from leaves(value)
    else:
        yield node


def parameters_file() -> dict[str, Any]:
    parameters: dict[str, Any] = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))[
        "parameters"
    ]
    return parameters


def base_settings() -> dict[str, Any]:
    settings: dict[str, Any] = variable("app/function.bicep", "baseSettings")
    return settings


def secret_patterns() -> set[str]:
    return set(variable("app/function.bicep", "secretSettingPatterns"))


def classified_secret(name: str, patterns: set[str]) -> bool:
    """The template's rule (infra/app/function.bicep, isSecret) for a name outside baseSettings."""
    words = name.split("_")
    return any(f"{words[0]}:{'_'.join(words[-n:])}" in patterns for n in (1, 2, 3))


# --- what the deployed app reads -------------------------------------------------------------------------


def deployed_packages() -> list[str]:
    """Top-level packages that go into the Function App package: every package .funcignore keeps."""
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".funcignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    return sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in ignored)


@cache
def deployed_modules() -> tuple[ModuleType, ...]:
    """Every module of the deployed packages, found by walking them (survives modules moving about)."""
    modules: list[ModuleType] = []
    failures: list[str] = []
    for package_name in deployed_packages():
        package = importlib.import_module(package_name)
        modules.append(package)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            try:
                modules.append(importlib.import_module(info.name))
            except Exception as exc:  # a module that does not import is a finding, not a crash
                failures.append(f"{info.name}: {type(exc).__name__}: {exc}")
    assert not failures, "modules of the deployed app that do not import:\n" + "\n".join(failures)
    return tuple(modules)


def deployed_sources() -> str:
    return "\n".join(
        path.read_text(encoding="utf-8")
        for package in deployed_packages()
        for path in sorted((ROOT / package).rglob("*.py"))
    )


def settings_classes() -> list[type[BaseSettings]]:
    classes = {
        cls
        for module in deployed_modules()
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, BaseSettings) and cls is not BaseSettings and cls.__module__ == module.__name__
    }
    assert classes, "no pydantic-settings classes found in the deployed packages"
    return sorted(classes, key=lambda cls: f"{cls.__module__}.{cls.__name__}")


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or any(_is_secret(arg) for arg in typing.get_args(annotation))


def env_names() -> dict[str, tuple[str, bool]]:
    """{UPPER-CASED ENV NAME: (name as written, is a secret)} of every setting the deployed app reads:
    the pydantic-settings fields, plus literal os.environ / os.getenv look-ups in its source."""
    names: dict[str, tuple[str, bool]] = {}
    for cls in settings_classes():
        prefix = str(cls.model_config.get("env_prefix", ""))
        for field_name, field in cls.model_fields.items():
            alias = field.validation_alias or field.alias
            if isinstance(alias, str):
                choices = [alias]
            elif isinstance(alias, AliasChoices):
                choices = [c for c in alias.choices if isinstance(c, str)]
            else:
                choices = [f"{prefix}{field_name}".upper()]
            for choice in choices:
                names.setdefault(choice.upper(), (choices[0], _is_secret(field.annotation)))
    for package in deployed_packages():
        for path in (ROOT / package).rglob("*.py"):
            for name in _environ_lookups(ast.parse(path.read_text(encoding="utf-8"))):
                names.setdefault(name.upper(), (name, False))
    return names


def _environ_lookups(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        key: ast.expr | None = None
        if isinstance(node, ast.Call) and node.args:
            func = ast.unparse(node.func)
            if func in ("os.getenv", "os.environ.get", "getenv", "environ.get"):
                key = node.args[0]
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("os.environ", "environ"):
            key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            yield key.value


def secret_env_names() -> dict[str, str]:
    return {upper: written for upper, (written, secret) in env_names().items() if secret}


def secret_patterns_of_app() -> set[str]:
    """The "<PREFIX>:<FIELD>" of every secret field of a settings class with an env prefix."""
    patterns = set()
    for cls in settings_classes():
        prefix = str(cls.model_config.get("env_prefix", "")).rstrip("_")
        for field_name, field in cls.model_fields.items():
            if prefix and _is_secret(field.annotation) and not (field.validation_alias or field.alias):
                patterns.add(f"{prefix.upper()}:{field_name.upper()}")
    return patterns


def module_attribute(name: str) -> Any:
    values = {repr(getattr(m, name)): getattr(m, name) for m in deployed_modules() if hasattr(m, name)}
    assert len(values) == 1, f"expected one {name} in the deployed app, found {len(values)}"
    return next(iter(values.values()))


# --- docs/deploy.md tables -------------------------------------------------------------------------------


def doc_table(heading: str) -> list[list[str]]:
    """The rows (cells) of the first table under a '## heading' of docs/deploy.md, header excluded."""
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)
    assert len(section) == 2, f"docs/deploy.md has no '## {heading}' section"
    rows = []
    for line in section[1].split("\n## ", 1)[0].splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[-| :]+\|", line):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    assert len(rows) > 1, f"no table under '## {heading}'"
    return rows[1:]


def optional_settings() -> tuple[set[str], list[str]]:
    """(upper-cased names, patterns) of the optional-settings table."""
    names: set[str] = set()
    patterns = []
    for cells in doc_table("Optional settings"):
        for name in re.findall(r"`([^`]+)`", cells[0]):
            if "<" in name:
                patterns.append(name)
            else:
                names.add(name.upper())
    return names, patterns


# --- the templates parse and pass checkov ----------------------------------------------------------------


def test_infra_has_the_azd_layout() -> None:
    assert (INFRA / "main.bicep").is_file()
    assert (INFRA / "main.parameters.json").is_file()
    assert len(BICEP_FILES) >= 7, [str(p) for p in BICEP_FILES]


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_bicep_file_parses(path: Path) -> None:
    parsed = BicepParser().parse(text=path.read_text(encoding="utf-8"))
    assert parsed.get("resources") or parsed.get("modules"), f"{path.name}: nothing declared"


def test_modules_are_local_files() -> None:
    """Registry modules (br:, ts:) cannot be fetched or scanned offline."""
    for path in BICEP_FILES:
        for name, module in (
            BicepParser().parse(text=path.read_text(encoding="utf-8")).get("modules", {}).items()
        ):
            assert module["type"] == "local", f"{path.name}: module {name} is not a local file"
            assert (path.parent / module["detail"]["path"]).is_file(), f"{path.name}: module {name} missing"


def test_checkov_passes_with_justified_skips() -> None:
    assert CHECKOV.exists(), f"{CHECKOV} is missing: scripts/setup installs requirements-infra.txt there"
    env = {
        **os.environ,
        # offline: no update check, no policy metadata download, no upload
        "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",
        "BC_SKIP_MAPPING": "TRUE",
        "LOG_LEVEL": "WARNING",
    }
    started = time.monotonic()
    run = subprocess.run(
        [
            str(CHECKOV),
            "--directory",
            str(INFRA),
            "--framework",
            "bicep",
            "--skip-download",
            "--skip-results-upload",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=CHECKOV_TIMEOUT_SECONDS,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert run.stdout.strip(), f"checkov printed nothing (exit {run.returncode}): {run.stderr[-2000:]}"
    report = json.loads(run.stdout)
    summary, results = report["summary"], report["results"]
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in results["failed_checks"]]
    assert summary["parsing_errors"] == 0, f"checkov could not parse: {results.get('parsing_errors')}"
    assert not failed, "checkov failures:\n" + "\n".join(failed)
    assert run.returncode == 0, run.stderr[-2000:]
    unjustified = [
        f"{c['check_id']} {c['resource']}"
        for c in results["skipped_checks"]
        if len(c["check_result"].get("suppress_comment", "").strip()) < 20
        or c["check_result"]["suppress_comment"] == "No comment provided"
    ]
    assert not unjustified, f"skipped without a reason: {unjustified}"
    scanned = {
        c["file_path"].lstrip("/") for kind in ("passed_checks", "skipped_checks") for c in results[kind]
    }
    for expected in ("app/function.bicep", "core/storage.bicep", "core/keyvault.bicep"):
        assert expected in scanned, f"checkov ran no check on {expected}"
    print(f"checkov: {summary['passed']} passed, {summary['skipped']} skipped in {elapsed:.1f}s")


# --- what a reviewer checks ------------------------------------------------------------------------------


def test_storage_allows_no_shared_key_access() -> None:
    storage = resource("core/storage.bicep", "Microsoft.Storage/storageAccounts")["properties"]
    assert storage["allowSharedKeyAccess"] is False
    assert storage["allowBlobPublicAccess"] is False
    assert storage["minimumTlsVersion"] == "TLS1_2"
    for path in BICEP_FILES:
        text = path.read_text(encoding="utf-8")
        assert "listKeys(" not in text and "AccountKey=" not in text, f"{path.name} uses storage account keys"


def test_plan_is_flex_consumption_fc1() -> None:
    plan = resource("app/function.bicep", "Microsoft.Web/serverfarms")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["properties"]["reserved"] is True


def test_function_app_runs_python_3_11_on_linux_with_the_user_assigned_identity() -> None:
    site = resource("app/function.bicep", "Microsoft.Web/sites")
    assert "linux" in site["kind"].split(",")
    config = site["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    deployment = config["deployment"]["storage"]
    assert deployment["type"] == "blobContainer"
    assert deployment["authentication"] == {
        "type": "UserAssignedIdentity",
        "userAssignedIdentityResourceId": "identityId",
    }
    assert site["identity"]["type"] == "UserAssigned"
    assert site["properties"]["keyVaultReferenceIdentity"] == "identityId"
    assert site["properties"]["httpsOnly"] is True


def test_key_vault_uses_rbac_authorization() -> None:
    vault = resource("core/keyvault.bicep", "Microsoft.KeyVault/vaults")["properties"]
    assert vault["enableRbacAuthorization"] is True
    assert vault["enablePurgeProtection"] is True
    assert "accessPolicies" not in vault


def test_application_insights_disables_local_auth() -> None:
    insights = resource("core/monitoring.bicep", "Microsoft.Insights/components")["properties"]
    assert insights["DisableLocalAuth"] is True
    assert render(insights["WorkspaceResourceId"]) == "workspace.id"


def test_host_storage_settings_are_identity_based() -> None:
    settings = base_settings()
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == "identityClientId"
    assert "AzureWebJobsStorage__accountName" in settings or "AzureWebJobsStorage__blobServiceUri" in settings
    for service in ("queue", "table"):
        assert f"AzureWebJobsStorage__{service}ServiceUri" in settings
    deployed = {name.upper() for name in settings} | {name.upper() for name in provider_settings()}
    assert "AZUREWEBJOBSSTORAGE" not in deployed, "a storage connection string would need account keys"


def test_telemetry_is_entra_authenticated_opentelemetry() -> None:
    settings = base_settings()
    assert settings["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"] == "true"
    assert settings["APPLICATIONINSIGHTS_CONNECTION_STRING"] == "applicationInsightsConnectionString"
    assert (
        settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
        == "ClientId=${identityClientId};Authorization=AAD"
    )


def test_role_assignments_use_the_builtin_role_ids() -> None:
    roles = variable("app/access.bicep", "roles")
    assert set(roles.values()) == set(ROLE_IDS.values())
    storage_roles = set(leaves(variable("app/access.bicep", "storageRoles")))
    assert storage_roles == {
        "roles.storageBlobDataOwner",
        "roles.storageQueueDataContributor",
        "roles.storageTableDataContributor",
    }
    assert roles["storageBlobDataOwner"] == ROLE_IDS["Storage Blob Data Owner"]
    assert roles["monitoringMetricsPublisher"] == ROLE_IDS["Monitoring Metrics Publisher"]
    assert roles["keyVaultSecretsUser"] == ROLE_IDS["Key Vault Secrets User"]
    assignments = [
        r
        for r in bicep("app/access.bicep")["resources"].values()
        if r["type"] == "Microsoft.Authorization/roleAssignments"
    ]
    used = {leaf for r in assignments for leaf in leaves(body(r)["properties"]["roleDefinitionId"])}
    for name in (
        "roles.monitoringMetricsPublisher",
        "roles.keyVaultSecretsUser",
        "roles.keyVaultSecretsOfficer",
        "roleId",
    ):
        assert name in used, f"no role assignment uses {name}"


# --- secrets ---------------------------------------------------------------------------------------------


def provider_settings() -> dict[str, str]:
    settings: dict[str, str] = parameters_file()["providerSettings"]["value"]
    return settings


def test_the_template_knows_every_secret_setting_of_the_app() -> None:
    """secretSettingPatterns is what turns a secret setting into a Key Vault reference: it must list every
    SecretStr field of the app, so that a new secret cannot be passed as a plain value."""
    assert secret_patterns() == secret_patterns_of_app()
    patterns = secret_patterns()
    unguarded = [
        written
        for upper, written in secret_env_names().items()
        if upper not in NEVER_DEPLOYED and not classified_secret(written, patterns)
    ]
    assert not unguarded, f"secret settings the template would write as plain values: {unguarded}"
    # the same holds for accounts named in SENDER_ROUTES (TWILIO_EU_AUTH_TOKEN)
    for pattern in patterns:
        prefix, field = pattern.split(":")
        assert classified_secret(f"{prefix}_EU_{field}", patterns)


def test_secret_settings_are_only_key_vault_references() -> None:
    app_settings = variable("app/function.bicep", "appSettings")
    value = app_settings["config"]["value"]["operator"]
    assert value["type"] == "conditional"
    assert value["operands"]["condition"]["operator"]["operands"]["operand_1"] == "isSecret"
    assert KEY_VAULT_REFERENCE.match(value["operands"]["true_value"]), value["operands"]["true_value"]
    assert "settingValues" in set(leaves(value["operands"]["false_value"]))
    is_secret = set(leaves(variable("app/function.bicep", "isSecret")))
    assert {"secretSettingPatterns", "keyVaultSettingNames", "baseSettings"} <= is_secret
    site = resource("app/function.bicep", "Microsoft.Web/sites")
    assert site["properties"]["siteConfig"]["appSettings"] == "appSettings"


def test_no_secret_value_is_a_template_input() -> None:
    patterns = secret_patterns()
    base = base_settings()
    secret_names = set(secret_env_names())
    assert not {name.upper() for name in base} & secret_names, "a secret among the fixed app settings"
    assert not [name for name in base if classified_secret(name, patterns)], "base settings are never secrets"
    for name, value in provider_settings().items():
        assert not classified_secret(name, patterns), f"main.parameters.json passes secret {name}"
        assert value == f"${{{name}}}", f"main.parameters.json: {name} should come from the azd environment"
    # secrets reach Key Vault out of band (az keyvault secret set, the postprovision hook), never as
    # deployment parameters
    for path in BICEP_FILES:
        for name, parameter in (
            BicepParser().parse(text=path.read_text(encoding="utf-8"))["parameters"].items()
        ):
            assert "secure" not in {d["type"] for d in parameter["decorators"]}, (
                f"{path.name}: @secure {name}"
            )


def test_docs_list_every_secret_with_its_key_vault_name() -> None:
    rows = {
        re.findall(r"`([^`]+)`", cells[0])[0]: re.findall(r"`([^`]+)`", cells[1])[0]
        for cells in doc_table("Secrets: Key Vault only")
    }
    expected = {written for upper, written in secret_env_names().items() if upper not in NEVER_DEPLOYED}
    assert set(rows) == expected
    for setting, secret in rows.items():
        assert secret == setting.lower().replace("_", "-")


# --- drift between the app's settings, the template and the docs -----------------------------------------


def test_every_setting_the_app_reads_is_deployed_or_documented() -> None:
    deployed = {name.upper() for name in base_settings()} | {name.upper() for name in provider_settings()}
    patterns = secret_patterns()
    optional, _ = optional_settings()
    missing = [
        written
        for upper, (written, secret) in sorted(env_names().items())
        if upper not in deployed
        and upper not in optional
        and not (secret and classified_secret(written, patterns))
    ]
    assert not missing, (
        "settings the app reads that the deployment neither sets nor docs/deploy.md lists as optional: "
        + ", ".join(missing)
    )


def test_optional_settings_table_names_only_settings_the_app_reads() -> None:
    optional, patterns = optional_settings()
    stale = sorted(optional - set(env_names()))
    assert not stale, f"docs/deploy.md lists settings the app no longer reads: {stale}"
    assert any("<ACCOUNT>" in p for p in patterns), (
        "the SENDER_ROUTES account settings pattern is undocumented"
    )
    deployed = {name.upper() for name in base_settings()} | {name.upper() for name in provider_settings()}
    assert not optional & deployed, f"listed as optional but set by the deployment: {optional & deployed}"


def test_provider_choices_match_the_registry() -> None:
    allowed = next(
        d["argument"]
        for d in bicep("main.bicep")["parameters"]["smsProvider"]["decorators"]
        if d["type"] == "allowed"
    )
    assert set(allowed) == set(module_attribute("PROVIDERS"))


def test_app_can_reach_its_tables_and_queues_with_the_identity() -> None:
    source = deployed_sources()
    assert "tableServiceUri" in source and "queueServiceUri" in source


# --- alerts and outputs ----------------------------------------------------------------------------------


def test_alerts_cover_poison_queue_relay_failures_and_5xx() -> None:
    queries = {alert["name"]: alert["query"] for alert in variable("app/alerts.bicep", "alerts")}
    assert len(queries) == 3

    def query(suffix: str) -> str:
        return next(text for name, text in queries.items() if name.endswith(f"-{suffix}"))

    poison, relay, http = query("poison-queue"), query("relay-failures"), query("http-5xx")
    assert module_attribute("POISON_QUEUE") in poison
    assert "AppRequests" in http and ">= 500" in http
    source = deployed_sources()
    for text in (poison, relay):
        phrases = re.findall(r'contains "([^"]+)"', text)
        assert phrases, text
        for phrase in phrases:
            assert phrase in source or phrase == module_attribute("POISON_QUEUE"), (
                f"the alert looks for {phrase!r}, which the app never logs"
            )
    group = resource("app/alerts.bicep", "Microsoft.Insights/actionGroups")
    assert "alertEmail" in set(leaves(group["properties"]["emailReceivers"]))
    rules = resource("app/alerts.bicep", "Microsoft.Insights/scheduledQueryRules")
    assert "actionGroup.id" in set(leaves(rules["properties"]["actions"]))


def test_outputs_give_provisioning_the_outbound_url_and_app_name() -> None:
    outputs = bicep("main.bicep")["outputs"]
    assert outputs["OUTBOUND_URL"]["value"] == "https://${functionApp.outputs.defaultHostName}/api/outbound"
    assert "AZURE_FUNCTION_APP_NAME" in outputs
    import function_app

    app = function_app.create_app(function_app.services)  # get_functions() registers anew on every call
    routes = {f.get_function_name(): f.get_trigger() for f in app.get_functions()}
    assert routes["outbound"].route == "outbound"


def test_azd_wiring() -> None:
    azure_yaml = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    for line in ("host: function", "language: python", "project: .", "path: infra"):
        assert re.search(rf"^\s+{re.escape(line)}\s*$", azure_yaml, re.MULTILINE), line
    assert (ROOT / "infra/scripts/set-key-vault-secrets.sh").is_file()
    main = bicep("main.bicep")
    assert main["globals"]["scope"]["value"] == "subscription"
    assert [r["type"] for r in main["resources"].values()] == ["Microsoft.Resources/resourceGroups"]
    values = {name: p["value"] for name, p in parameters_file().items()}
    assert values["environmentName"] == "${AZURE_ENV_NAME}"
    assert values["location"] == "${AZURE_LOCATION}"
    assert values["principalId"] == "${AZURE_PRINCIPAL_ID}"
    assert set(values) <= set(main["parameters"]), set(values) - set(main["parameters"])


# --- the postprovision hook ------------------------------------------------------------------------------


def test_hook_copies_listed_secrets_without_putting_them_on_a_command_line(tmp_path: Path) -> None:
    log = tmp_path / "az.log"
    fake_az = tmp_path / "az"
    fake_az.write_text(  # records its arguments and the content of the file it is given
        "#!/bin/sh\n"
        'echo "ARGS $*" >> "$AZ_LOG"\n'
        "while [ $# -gt 0 ]; do\n"
        '  if [ "$1" = --file ]; then printf "VALUE %s\\n" "$(cat "$2")" >> "$AZ_LOG"; fi\n'
        "  shift\n"
        "done\n",
        encoding="utf-8",
    )
    fake_az.chmod(0o755)
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "AZ_LOG": str(log),
        "KEY_VAULT_SECRETS": "TWILIO_AUTH_TOKEN, TWILIO_EU_AUTH_TOKEN,ACS_WEBHOOK_SECRET",
        "AZURE_KEY_VAULT_NAME": "kv-test",
        "TWILIO_AUTH_TOKEN": "s3cr3t-token",
        "TWILIO_EU_AUTH_TOKEN": "eu-token",
    }
    run = subprocess.run(
        ["sh", str(INFRA / "scripts/set-key-vault-secrets.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    calls = log.read_text(encoding="utf-8").splitlines()
    args = [c for c in calls if c.startswith("ARGS ")]
    assert len(args) == 2
    assert "--vault-name kv-test --name twilio-auth-token --file" in args[0]
    assert "--name twilio-eu-auth-token" in args[1]
    assert "VALUE s3cr3t-token" in calls and "VALUE eu-token" in calls
    assert "s3cr3t-token" not in " ".join(args) and "s3cr3t-token" not in run.stderr + run.stdout
    assert "ACS_WEBHOOK_SECRET: no value" in run.stderr

    # a name list is never globbed: "*" must not become the names of files in the working directory
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    (workdir / "SMUGGLED").touch()
    env.update(KEY_VAULT_SECRETS="*", SMUGGLED="file-name-as-setting")
    refused = subprocess.run(
        ["sh", str(INFRA / "scripts/set-key-vault-secrets.sh")],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode != 0 and "not an app setting name" in refused.stderr
    assert "smuggled" not in log.read_text(encoding="utf-8")
