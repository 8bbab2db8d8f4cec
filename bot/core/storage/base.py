"""The image store interface."""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from datetime import UTC, datetime

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


class StorageError(Exception):
    """The store could not keep or return an object."""


def new_key(mime_type: str) -> str:
    """A key nobody can guess: a month folder (for operators) and 128 random bits."""
    month = datetime.now(UTC).strftime("%Y/%m")
    return f"{month}/{secrets.token_urlsafe(16)}.{EXTENSIONS.get(mime_type, 'bin')}"


class ImageStore(ABC):
    @abstractmethod
    async def put(self, key: str, data: bytes, mime_type: str) -> None:
        """Store the object; raise StorageError if it could not be kept."""

    @abstractmethod
    async def get(self, key: str) -> bytes:
        """Return the object; raise StorageError if it is missing or unreachable."""

    @abstractmethod
    async def url(self, key: str) -> str:
        """An address the image can be fetched from (public or presigned, or a local path)."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
