"""The local image store: round trip, atomic writes, keys that cannot leave its folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.core.storage.base import StorageError, new_key
from bot.core.storage.local import LocalStore


def partial_files(root: Path) -> list[Path]:
    return list(root.rglob("*.part"))


async def test_round_trip_and_delete(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    key = new_key("image/png")
    await store.put(key, b"\x89PNG fake", "image/png")
    assert await store.get(key) == b"\x89PNG fake"
    assert (await store.url(key)).startswith("file://") and key in await store.url(key)
    assert not partial_files(tmp_path)  # written atomically, nothing half-written left behind
    await store.delete(key)
    await store.delete(key)  # deleting what is gone is fine
    with pytest.raises(StorageError):
        await store.get(key)


@pytest.mark.parametrize("key", ["../outside.png", "/etc/passwd", "a/../../outside.png", "bad\x00key"])
async def test_keys_cannot_escape_the_folder(tmp_path: Path, key: str) -> None:
    store = LocalStore(tmp_path / "images")
    with pytest.raises(StorageError):
        await store.put(key, b"data", "image/png")
    assert not (tmp_path / "outside.png").exists()


def test_keys_are_unguessable_and_typed() -> None:
    keys = {new_key("image/webp") for _ in range(1000)}
    assert len(keys) == 1000 and all(k.endswith(".webp") for k in keys)
    assert all(len(k.rsplit("/", 1)[1]) >= 22 for k in keys)  # 128 random bits in the name
