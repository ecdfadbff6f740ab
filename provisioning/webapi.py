"""A small Dataverse Web API v9.2 client for provisioning: records, metadata, actions.

It reuses the app's MSAL token provider and bearer authentication (:mod:`dataverse.auth`). Every
failure becomes one of three exceptions the CLI turns into a one-line message:

    AuthenticationProblem   no token (wrong secret, unknown client, no identity), or Dataverse
                            refused the token (401)
    WebApiError             Dataverse answered an error ({"error": {"code", "message"}}), or could
                            not be reached
    InputError              a setting is missing (raised by the token provider on first use)

Writes carry ``MSCRM.SolutionUniqueName`` when asked to, so each component lands in the solution.
A 429 (service protection) is waited out (``Retry-After``) and retried: Dataverse did not run it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx

from core.settings import ConfigurationError
from dataverse.auth import BearerAuth, MsalTokenProvider, TokenUnavailable

__all__ = [
    "API_PATH",
    "AuthenticationProblem",
    "InputError",
    "WebApi",
    "WebApiError",
    "literal",
]

API_PATH = "/api/data/v9.2/"
#: Creating a table can take a minute or more; a timed-out write is completed by running apply again.
TIMEOUT_SECONDS = 180.0
MAX_THROTTLED_ATTEMPTS = 5
MAX_RETRY_AFTER_SECONDS = 60.0
_ENTITY_ID = re.compile(r"\(([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})\)$")
#: Characters left as they are in a query string; everything else (a '+' above all) is %-encoded.
_QUERY_SAFE = "'(),=$:@/"


class InputError(Exception):
    """A flag or setting is missing or invalid: the message names it."""


class AuthenticationProblem(Exception):
    pass


class WebApiError(Exception):
    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "no answer"
        return f"Dataverse error {self.code or '(no code)'} ({where}): {self.message}"

    @classmethod
    def from_response(cls, response: httpx.Response) -> WebApiError:
        code: str | None = None
        message = response.reason_phrase or "error"
        try:
            error = response.json().get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, dict):
            code = str(error["code"]) if error.get("code") else None
            message = " ".join(str(error.get("message") or message).split())[:600]
        return cls(message, status=response.status_code, code=code)


def literal(value: str) -> str:
    """An OData string literal: ``'it''s'``."""
    return "'" + value.replace("'", "''") + "'"


def query(
    *,
    select: Sequence[str] = (),
    filter: str | None = None,
    expand: str | None = None,
    top: int | None = None,
) -> str:
    parts: list[str] = []
    if select:
        parts.append("$select=" + ",".join(select))
    if filter:
        parts.append("$filter=" + quote(filter, safe=_QUERY_SAFE))
    if expand:
        parts.append("$expand=" + quote(expand, safe=_QUERY_SAFE + ";"))
    if top is not None:
        parts.append(f"$top={top}")
    return "?" + "&".join(parts) if parts else ""


class WebApi:
    def __init__(
        self,
        base_url: str,
        tokens: MsalTokenProvider,
        *,
        solution: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.solution = solution
        self._http = httpx.AsyncClient(
            base_url=self.base_url + API_PATH,
            auth=BearerAuth(tokens),
            timeout=httpx.Timeout(TIMEOUT_SECONDS, connect=10.0),
            headers={
                "Accept": "application/json",
                "OData-MaxVersion": "4.0",
                "OData-Version": "4.0",
                "If-None-Match": "null",
            },
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- reads -------------------------------------------------------------------------------

    async def list(
        self,
        path: str,
        *,
        select: Sequence[str] = (),
        filter: str | None = None,
        expand: str | None = None,
        top: int | None = None,
    ) -> list[dict[str, Any]]:
        body = await self.get(path + query(select=select, filter=filter, expand=expand, top=top))
        rows = body.get("value", [])
        return [row for row in rows if isinstance(row, dict)]

    async def first(
        self, path: str, *, select: Sequence[str] = (), filter: str | None = None, expand: str | None = None
    ) -> dict[str, Any] | None:
        rows = await self.list(path, select=select, filter=filter, expand=expand)
        return rows[0] if rows else None

    async def get(self, path: str) -> dict[str, Any]:
        body = (await self._request("GET", path)).json()
        return body if isinstance(body, dict) else {}

    async def find(
        self, path: str, *, select: Sequence[str] = (), expand: str | None = None
    ) -> dict[str, Any] | None:
        """One record or definition, or None when Dataverse answers 404."""
        try:
            return await self.get(path + query(select=select, expand=expand))
        except WebApiError as exc:
            if exc.status == 404:
                return None
            raise

    # -- writes ------------------------------------------------------------------------------

    async def create(self, path: str, body: dict[str, Any], *, in_solution: bool = True) -> str:
        """POST a record (or definition); the new id, from the ``OData-EntityId`` header."""
        response = await self._request("POST", path, json=body, in_solution=in_solution)
        entity_id = response.headers.get("OData-EntityId", "")
        match = _ENTITY_ID.search(entity_id)
        if match is None:
            raise WebApiError(
                f"no OData-EntityId in the answer to POST {path.split('?')[0]}", status=response.status_code
            )
        return match.group(1).lower()

    async def update(self, path: str, body: dict[str, Any], *, in_solution: bool = True) -> None:
        # If-Match: * makes PATCH an update only: without it, a row deleted meanwhile would be re-created
        await self._request("PATCH", path, json=body, headers={"If-Match": "*"}, in_solution=in_solution)

    async def delete(self, path: str) -> bool:
        """False when it was already gone."""
        try:
            await self._request("DELETE", path)
        except WebApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def action(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST an action (or custom API); its answer, ``{}`` for 204 No Content."""
        response = await self._request("POST", path, json=body)
        if response.status_code == 204 or not response.content:
            return {}
        answer = response.json()
        return answer if isinstance(answer, dict) else {}

    # -- transport ---------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        in_solution: bool = False,
    ) -> httpx.Response:
        sent = dict(headers or {})
        if in_solution and self.solution:
            sent["MSCRM.SolutionUniqueName"] = self.solution
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(method, path, json=json, headers=sent)
            except TokenUnavailable as exc:
                raise AuthenticationProblem(str(exc)) from None
            except ConfigurationError as exc:
                raise InputError(str(exc)) from None
            except httpx.HTTPError as exc:
                raise WebApiError(
                    f"cannot reach Dataverse at {self.base_url} ({type(exc).__name__})"
                ) from None
            except Exception as exc:  # MSAL's first discovery raises what requests raises
                raise AuthenticationProblem(f"token request failed ({type(exc).__name__})") from None
            if response.status_code == 429 and attempt < MAX_THROTTLED_ATTEMPTS:
                await asyncio.sleep(_retry_after(response))
                continue
            break
        if response.status_code == 401:
            raise AuthenticationProblem(
                "Dataverse refused the token (HTTP 401): is this identity an application user "
                "of the environment, and is DATAVERSE_URL the environment's URL?"
            )
        if not response.is_success:
            raise WebApiError.from_response(response)
        return response


def _retry_after(response: httpx.Response) -> float:
    try:
        seconds = float(response.headers.get("Retry-After", "5"))
    except ValueError:
        seconds = 5.0
    return max(0.0, min(seconds, MAX_RETRY_AFTER_SECONDS))
