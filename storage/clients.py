"""Azure Storage clients for a :data:`~core.settings.StorageLocation`.

A connection string (an account key, a SAS, Azurite) gives clients as before; the identity-based
settings give clients for the service URLs that authenticate with a managed identity. One
:class:`StorageAccess` holds the one credential its clients share, and closes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from azure.data.tables import TableServiceClient
from azure.storage.queue import QueueClient

from core.settings import StorageConnectionString, StorageIdentity, StorageLocation

if TYPE_CHECKING:
    from azure.identity import ManagedIdentityCredential

__all__ = ["StorageAccess"]


class StorageAccess:
    """Builds table and queue clients for one storage location, sharing one credential.

    ``location`` may be a plain connection string (tests and tools use Azurite's).
    """

    def __init__(self, location: StorageLocation | str) -> None:
        self.location: StorageLocation = (
            StorageConnectionString(location) if isinstance(location, str) else location
        )
        self._credential: ManagedIdentityCredential | None = None
        if isinstance(self.location, StorageIdentity):
            # imported on this path only: a cold start with a connection string never loads it
            from azure.identity import ManagedIdentityCredential

            self._credential = ManagedIdentityCredential(client_id=self.location.client_id)

    def table_service(self, **options: Any) -> TableServiceClient:
        if isinstance(self.location, StorageConnectionString):
            return TableServiceClient.from_connection_string(self.location.value, **options)
        return TableServiceClient(self.location.table_uri, credential=self._credential, **options)

    def queue(self, name: str, **options: Any) -> QueueClient:
        """A queue client sending messages as given (callers base64-encode them, as the host reads them)."""
        if isinstance(self.location, StorageConnectionString):
            return QueueClient.from_connection_string(self.location.value, name, **options)
        return QueueClient(self.location.queue_uri, name, credential=self._credential, **options)

    def close(self) -> None:
        """Close the credential (its token endpoint session); the clients are closed by their owner."""
        if self._credential is not None:
            self._credential.close()
