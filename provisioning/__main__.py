"""python -m provisioning {plan,apply,verify,remove}: the channel's components in Dataverse.

Exit codes: 0 done (verify: everything in place), 1 verify found problems / apply could not finish /
the test send was not sent, 2 a flag or setting is missing or wrong, 3 authentication failed,
4 Dataverse answered an error or could not be reached, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from provisioning.commands import Console, run
from provisioning.options import (
    ACCOUNT_ROLES,
    COMMANDS,
    DEFAULT_MAX_LENGTH,
    DEFAULT_PLUGIN_TYPE,
    JOURNEYS_ROLES,
    load_connection,
    load_options,
)
from provisioning.webapi import AuthenticationProblem, InputError, WebApiError

EXIT_PROBLEMS = 1
EXIT_INPUT = 2
EXIT_AUTHENTICATION = 3
EXIT_DATAVERSE = 4
EXIT_INTERRUPTED = 130
SECRET_SETTINGS = ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PASSWORD", "PROVISIONING_FUNCTION_KEY")

DESCRIPTIONS = {
    "plan": "print what apply would create or change; changes nothing",
    "apply": "create or repair every component (run it again to complete an interrupted run)",
    "verify": "exit 0 only when every component is in place; --send-test sends through Dataverse",
    "remove": "delete what apply created, in dependency order",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments"):
            message = "unrecognized arguments (not shown: one may be a secret)"
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--solution", metavar="UNIQUENAME", help="unmanaged solution to put the components in"
    )
    common.add_argument("--prefix", metavar="PREFIX", help="the customization prefix of its publisher")
    common.add_argument(
        "--function-url",
        metavar="URL",
        help="the app's outbound URL, https://<app>.azurewebsites.net/api/outbound",
    )
    common.add_argument(
        "--function-key", metavar="KEY", help="the Function's key (or set PROVISIONING_FUNCTION_KEY)"
    )
    common.add_argument("--plugin", metavar="PATH_TO_DLL", help="the forwarder plug-in assembly (plugin/)")
    common.add_argument(
        "--plugin-type", metavar="CLASS", help=f"the IPlugin class (default {DEFAULT_PLUGIN_TYPE})"
    )
    common.add_argument(
        "--channel-name", metavar="NAME", help="the channel's name in Journeys (default Custom SMS)"
    )
    common.add_argument(
        "--max-length",
        type=int,
        metavar="N",
        help=f"most characters of the text part (default {DEFAULT_MAX_LENGTH})",
    )
    common.add_argument(
        "--journeys-role",
        dest="roles",
        action="append",
        metavar="ROLE",
        help="role that gets Read on the sender table; repeatable (default: "
        + "; ".join(JOURNEYS_ROLES)
        + ")",
    )
    common.add_argument(
        "--account-role",
        dest="account_roles",
        action="append",
        metavar="ROLE",
        help="role that gets Read on the account table; repeatable (default: "
        + "; ".join(ACCOUNT_ROLES)
        + ")",
    )
    parser = _Parser(
        prog="python -m provisioning",
        description="Provision the custom SMS channel in Dataverse (Customer Insights - Journeys).",
        epilog="Connection: DATAVERSE_URL and AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET (or "
        "AZURE_CLIENT_CERTIFICATE_PATH), as for the app. Exit codes: 0 ok, 1 problems found, 2 bad input, "
        "3 authentication, 4 Dataverse error.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for command in COMMANDS:
        sub = commands.add_parser(command, parents=[common], help=DESCRIPTIONS[command])
        sub.error = parser.error  # type: ignore[method-assign]
        if command == "verify":
            sub.add_argument(
                "--send-test", metavar="NUMBER", help="also send a test SMS to NUMBER through Dataverse"
            )
            sub.add_argument(
                "--from", dest="sender", metavar="SENDER", help="the sender (default: the only one)"
            )
            sub.add_argument("--text", metavar="TEXT", help="the test message's text")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    console = Console()
    console.hide(*(os.environ.get(name) for name in SECRET_SETTINGS))
    args = vars(build_parser().parse_args(argv))
    console.hide(args.get("function_key"))
    command = str(args.pop("command"))
    identity_hint = ""
    try:
        options = load_options(command, args)
        connection = load_connection()
        console.hide(*connection.secrets())
        identity_hint = (
            "check AZURE_TENANT_ID, AZURE_CLIENT_ID and the client secret or certificate"
            if connection.identity.uses_app_registration
            else "without AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH a managed identity is used"
        )
        return asyncio.run(run(options, connection, console))
    except InputError as exc:
        console.err(f"error: {exc}")
        return EXIT_INPUT
    except AuthenticationProblem as exc:
        console.err(f"authentication problem: {exc}" + (f"; {identity_hint}" if identity_hint else ""))
        return EXIT_AUTHENTICATION
    except WebApiError as exc:
        after = (
            "; fix the cause and run apply again: it completes what was started" if command == "apply" else ""
        )
        console.err(f"error: {exc}{after}")
        return EXIT_DATAVERSE
    except KeyboardInterrupt:
        console.err("interrupted" + ("; run apply again to complete it" if command == "apply" else ""))
        return EXIT_INTERRUPTED
    except Exception as exc:  # never a traceback: it could carry request details
        console.err(f"error: unexpected {type(exc).__name__}: {exc}")
        return EXIT_PROBLEMS


if __name__ == "__main__":
    sys.exit(main())
