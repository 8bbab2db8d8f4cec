"""Images as files in a local directory."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import quote_from_bytes

from bot.core.storage.base import ImageStore, StorageError


class LocalStore(ImageStore):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        # Plain strings: pathlib's parsing showed up in the per-image cost.
        self._root = str(self.root).rstrip("/")
        self._root_uri = self.root.as_uri().rstrip("/")

    def path_for(self, key: str) -> Path:
        return Path(f"{self._root}/{_checked(key)}")

    async def put(self, key: str, data: bytes, mime_type: str) -> None:
        await asyncio.to_thread(_write_atomically, self.path_for(key), data)

    async def get(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self.path_for(key).read_bytes)
        except OSError as error:
            raise StorageError(f"cannot read {key}: {error}") from error

    async def url(self, key: str) -> str:
        # What Path.as_uri() gives, without building the Path.
        return f"{self._root_uri}/{quote_from_bytes(os.fsencode(_checked(key)))}"

    async def delete(self, key: str) -> None:
        self.path_for(key).unlink(missing_ok=True)


def _checked(key: str) -> str:
    """Keys are ours (storage.base.new_key), but a path must never leave the root whatever it is given."""
    normalised = os.path.normpath(key)
    if normalised.startswith(("/", "..")) or "\x00" in key:
        raise StorageError(f"key escapes the store: {key!r}")
    return normalised


def _write_atomically(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(path.suffix + ".part")
        with partial.open("wb") as file:
            file.write(data)
            file.flush()
            _settle_on_disk(file.fileno())
        os.replace(partial, path)
    except OSError as error:
        raise StorageError(f"cannot write {path.name}: {error}") from error


def _settle_on_disk(fd: int) -> None:
    """On disk before the job that owns it is recorded (the record's commit is durable, so should the file
    be), then out of the page cache: nothing re-reads a fresh image soon (front ends get the bytes in
    memory), and evicting it now costs less CPU than the cache turning over later (see the commit that
    added this for the measurement)."""
    os.fdatasync(fd)
    if hasattr(os, "posix_fadvise"):  # not on macOS
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
