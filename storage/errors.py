"""The one failure storage callers handle: the account could not be reached or answered oddly."""

from __future__ import annotations

__all__ = ["StorageUnavailable"]


class StorageUnavailable(Exception):
    """Table or queue storage could not be reached or answered an unexpected error."""
