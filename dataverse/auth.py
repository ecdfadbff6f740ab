"""Entra tokens for Dataverse through MSAL: client secret, certificate, or managed identity.

The MSAL object is built on first use (its constructor does network discovery) and kept for the
process, so its token cache serves one token per lifetime. Tokens are never logged.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import httpx

from core.settings import ConfigurationError
from dataverse.settings import IdentitySettings

__all__ = ["BearerAuth", "MsalTokenProvider", "TokenUnavailable"]


TOKEN_TIMEOUT_SECONDS = 10


class TokenUnavailable(Exception):
    """No token could be had (identity endpoint unreachable, credentials refused)."""


class MsalTokenProvider:
    def __init__(self, identity: IdentitySettings, resource: str) -> None:
        self.identity = identity
        self.resource = resource.rstrip("/")
        self._app: Any = None
        self._lock = threading.RLock()
        self._current: str | None = None

    def _build(self) -> Any:
        import msal
        import requests

        identity = self.identity
        if not identity.uses_app_registration:
            managed = (
                msal.UserAssignedManagedIdentity(client_id=identity.client_id)
                if identity.client_id
                else msal.SystemAssignedManagedIdentity()
            )
            return msal.ManagedIdentityClient(managed, http_client=requests.Session())
        missing = [
            name
            for name, value in (
                ("AZURE_TENANT_ID", identity.tenant_id),
                ("AZURE_CLIENT_ID", identity.client_id),
            )
            if not value
        ]
        if missing:
            raise ConfigurationError.single(missing[0], "required with a client secret or certificate")
        return msal.ConfidentialClientApplication(
            identity.client_id,
            client_credential=self._credential(),
            authority=f"{str(identity.authority_host).rstrip('/')}/{identity.tenant_id}",
            # the authority comes from trusted settings; discovery would only add a round trip
            instance_discovery=False,
            timeout=TOKEN_TIMEOUT_SECONDS,
        )

    def _credential(self) -> Any:
        identity = self.identity
        if identity.client_secret is not None:
            return identity.client_secret.get_secret_value()
        assert identity.client_certificate_path is not None
        path = identity.client_certificate_path
        password = (
            identity.client_certificate_password.get_secret_value()
            if identity.client_certificate_password
            else None
        )
        if path.suffix.lower() in (".pfx", ".p12"):
            return {"private_key_pfx_path": str(path), "passphrase": password}
        return _pem_credential(path, password)

    def acquire(self) -> str:
        """A valid access token (blocking: call it in a thread)."""
        # One caller at a time: concurrent cache misses would each ask the identity provider.
        with self._lock:
            if self._app is None:
                self._app = self._build()
            try:
                if not self.identity.uses_app_registration:  # msal.ManagedIdentityClient
                    result = self._app.acquire_token_for_client(resource=self.resource)
                else:
                    result = self._app.acquire_token_for_client(scopes=[f"{self.resource}/.default"])
            except Exception as exc:  # msal and requests raise many types
                raise TokenUnavailable(f"token request failed ({type(exc).__name__})") from None
        token = result.get("access_token")
        if not token:
            raise TokenUnavailable(f"token refused: {result.get('error', 'unknown error')}")
        self._current = str(token)
        return self._current

    def invalidate(self, rejected: str | None = None) -> None:
        """Forget cached tokens, so the next :meth:`acquire` asks the identity provider again;
        with ``rejected``, only if that is still the current token (another request may have
        refreshed it already). Blocking: call it in a thread."""
        with self._lock:
            app = self._app
            if app is None or (rejected is not None and rejected != self._current):
                return
            if hasattr(app, "remove_tokens_for_client"):
                app.remove_tokens_for_client()
            else:  # managed identity: a new client has an empty cache
                self._app = None


def _pem_credential(path: Path, password: str | None) -> dict[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = path.read_bytes()
    certificate = x509.load_pem_x509_certificate(pem)
    credential = {
        "private_key": pem.decode("ascii"),
        "thumbprint": certificate.fingerprint(hashes.SHA1()).hex(),
        "public_certificate": certificate.public_bytes(Encoding.PEM).decode("ascii"),
    }
    if password:
        credential["passphrase"] = password
    return credential


class BearerAuth(httpx.Auth):
    """Adds the token; after a 401 forgets it and retries once with a fresh one."""

    def __init__(self, tokens: MsalTokenProvider) -> None:
        self.tokens = tokens

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await asyncio.to_thread(self.tokens.acquire)
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            await response.aread()
            await asyncio.to_thread(self.tokens.invalidate, token)
            request.headers["Authorization"] = f"Bearer {await asyncio.to_thread(self.tokens.acquire)}"
            yield request
