"""Images as files in a local directory."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from bot.core.storage.base import ImageStore, StorageError


class LocalStore(ImageStore):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path_for(self, key: str) -> Path:
        # Keys are ours (storage.base.new_key), but a path must never leave the root whatever it is given.
        normalised = os.path.normpath(key)
        if normalised.startswith(("/", "..")) or "\x00" in key:
            raise StorageError(f"key escapes the store: {key!r}")
        return self.root / normalised

    async def put(self, key: str, data: bytes, mime_type: str) -> None:
        path = self.path_for(key)
        await asyncio.to_thread(_write_atomically, path, data)

    async def get(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self.path_for(key).read_bytes)
        except OSError as error:
            raise StorageError(f"cannot read {key}: {error}") from error

    async def url(self, key: str) -> str:
        return self.path_for(key).as_uri()

    async def delete(self, key: str) -> None:
        self.path_for(key).unlink(missing_ok=True)


def _write_atomically(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(path.suffix + ".part")
        partial.write_bytes(data)
        os.replace(partial, path)
    except OSError as error:
        raise StorageError(f"cannot write {path.name}: {error}") from error
