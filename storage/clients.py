"""Azure Storage clients for a :data:`~core.settings.StorageLocation`.

A connection string (an account key, a SAS, Azurite) gives clients as before; the identity-based
settings give clients for the service URLs that authenticate with a managed identity. One
:class:`StorageAccess` holds the credentials its clients share, and closes them.

The app's own clients are the SDKs' asyncio clients over aiohttp: measured against the same
Azurite, a table write costs about 30% less CPU than the synchronous client run in a thread
(requests, a thread hop and the GIL per call), and a send makes three of them. The synchronous
queue client remains for tools and the local host's queue trigger.
"""

from __future__ import annotations

import ssl
import urllib.request
from typing import TYPE_CHECKING, Any

import httpx
from azure.core.pipeline.transport import AioHttpTransport
from azure.data.tables.aio import TableServiceClient
from azure.storage.queue import QueueClient
from azure.storage.queue.aio import QueueClient as AsyncQueueClient

from core.settings import StorageConnectionString, StorageIdentity, StorageLocation

if TYPE_CHECKING:
    from azure.identity import ManagedIdentityCredential
    from azure.identity.aio import ManagedIdentityCredential as AsyncManagedIdentityCredential

__all__ = ["StorageAccess"]


class _StorageTransport(AioHttpTransport):  # type: ignore[misc]  # azure-core types it Any
    """azure-core's aiohttp transport with one TLS context for the client's life.

    Left alone it verifies with aiohttp's context made at import (blind to SSL_CERT_FILE set later)
    or, given a CA file, builds a new context on every request. This one trusts what httpx trusts
    (certifi, or SSL_CERT_FILE / SSL_CERT_DIR), as the requests-based client trusted certifi.
    """

    def __init__(self, **options: Any) -> None:
        # With env settings on, aiohttp looks up proxies and ~/.netrc in a thread on every request
        # (a tenth of a send's CPU); storage needs them only when a proxy is configured.
        super().__init__(use_env_settings=bool(urllib.request.getproxies()), **options)
        self._context = httpx.create_ssl_context()

    @classmethod
    def taking_timeouts(cls, options: dict[str, Any]) -> _StorageTransport:
        """A transport with ``connection_timeout`` / ``read_timeout``, taken out of ``options``."""
        timeouts = {key: options.pop(key) for key in ("connection_timeout", "read_timeout") if key in options}
        return cls(**timeouts)

    def _build_ssl_config(self, cert: Any, verify: Any) -> ssl.SSLContext | bool | str:
        if verify is True and not cert:
            return self._context
        built: ssl.SSLContext | bool | str = super()._build_ssl_config(cert, verify)
        return built


class StorageAccess:
    """Builds table and queue clients for one storage location, sharing one credential per kind.

    ``location`` may be a plain connection string (tests and tools use Azurite's).
    """

    def __init__(self, location: StorageLocation | str) -> None:
        self.location: StorageLocation = (
            StorageConnectionString(location) if isinstance(location, str) else location
        )
        self._credential: ManagedIdentityCredential | None = None
        self._async_credential: AsyncManagedIdentityCredential | None = None

    def _identity(self) -> ManagedIdentityCredential:
        assert isinstance(self.location, StorageIdentity)
        if self._credential is None:
            # imported on this path only: a cold start with a connection string never loads it
            from azure.identity import ManagedIdentityCredential

            self._credential = ManagedIdentityCredential(client_id=self.location.client_id)
        return self._credential

    def _async_identity(self) -> AsyncManagedIdentityCredential:
        assert isinstance(self.location, StorageIdentity)
        if self._async_credential is None:
            from azure.identity.aio import ManagedIdentityCredential

            self._async_credential = ManagedIdentityCredential(client_id=self.location.client_id)
        return self._async_credential

    def table_service(self, **options: Any) -> TableServiceClient:
        """An asyncio table service client; ``connection_timeout`` / ``read_timeout`` go to its transport."""
        transport = _StorageTransport.taking_timeouts(options)
        if isinstance(self.location, StorageConnectionString):
            return TableServiceClient.from_connection_string(
                self.location.value, transport=transport, **options
            )
        return TableServiceClient(
            self.location.table_uri, credential=self._async_identity(), transport=transport, **options
        )

    def async_queue(self, name: str, **options: Any) -> AsyncQueueClient:
        """An asyncio queue client sending messages as given (callers base64-encode them, as the
        host reads them)."""
        transport = _StorageTransport.taking_timeouts(options)
        if isinstance(self.location, StorageConnectionString):
            return AsyncQueueClient.from_connection_string(
                self.location.value, name, transport=transport, **options
            )
        return AsyncQueueClient(
            self.location.queue_uri, name, credential=self._async_identity(), transport=transport, **options
        )

    def queue(self, name: str, **options: Any) -> QueueClient:
        """A synchronous queue client (tools, the local host's trigger), messages sent as given."""
        if isinstance(self.location, StorageConnectionString):
            return QueueClient.from_connection_string(self.location.value, name, **options)
        return QueueClient(self.location.queue_uri, name, credential=self._identity(), **options)

    def close(self) -> None:
        """Close the synchronous credential (its token endpoint session)."""
        if self._credential is not None:
            self._credential.close()

    async def aclose(self) -> None:
        """Close both credentials; the clients are closed by their owner."""
        self.close()
        if self._async_credential is not None:
            await self._async_credential.close()
