"""S3Store against moto's S3 server on 127.0.0.1 (fixtures in tests/plugins/s3.py)."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest

from bot.core.storage.base import StorageError, new_key
from bot.core.storage.s3 import S3Store
from tests.plugins.s3 import make_store

PNG = b"\x89PNG\r\n\x1a\n" + b"not really an image, but bytes are bytes" * 10


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_put_then_get_round_trips(s3_store: S3Store) -> None:
    key = new_key("image/png")

    await s3_store.put(key, PNG, "image/png")

    assert await s3_store.get(key) == PNG


async def test_keys_live_under_the_prefix(s3_server: str, s3_bucket: str) -> None:
    store = make_store(s3_server, s3_bucket, prefix="tenant-a/")
    other = make_store(s3_server, s3_bucket, prefix="tenant-b/")
    try:
        await store.put("same.png", PNG, "image/png")
        with pytest.raises(StorageError):
            await other.get("same.png")
    finally:
        await store.aclose()
        await other.aclose()


async def test_presigned_url_serves_the_bytes(s3_store: S3Store) -> None:
    key = new_key("image/png")
    await s3_store.put(key, PNG, "image/png")

    url = await s3_store.url(key)

    assert "X-Amz-Signature=" in url and f"/images/{key}" in url
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"


async def test_public_base_url_is_used_when_configured(s3_server: str, s3_bucket: str) -> None:
    store = make_store(s3_server, s3_bucket, public_base_url="https://cdn.example.com/media/")
    try:
        assert await store.url("2025/01/abc_DEF-12.png") == "https://cdn.example.com/media/images/2025/01/abc_DEF-12.png"
    finally:
        await store.aclose()


async def test_delete_then_get_is_a_storage_error(s3_store: S3Store) -> None:
    key = new_key("image/png")
    await s3_store.put(key, PNG, "image/png")

    await s3_store.delete(key)

    with pytest.raises(StorageError) as caught:
        await s3_store.get(key)
    assert "NoSuchKey" in str(caught.value)


async def test_delete_of_a_missing_key_is_fine(s3_store: S3Store) -> None:
    await s3_store.delete("never/was.png")


async def test_missing_bucket_is_a_storage_error(s3_server: str) -> None:
    store = make_store(s3_server, "no-such-bucket-here")
    try:
        with pytest.raises(StorageError):
            await store.put("a.png", PNG, "image/png")
    finally:
        await store.aclose()


async def test_concurrent_use_shares_one_client(s3_store: S3Store) -> None:
    keys = [new_key("image/png") for _ in range(8)]

    await asyncio.gather(*(s3_store.put(key, PNG + key.encode(), "image/png") for key in keys))
    bodies = await asyncio.gather(*(s3_store.get(key) for key in keys))

    assert bodies == [PNG + key.encode() for key in keys]


async def test_unreachable_endpoint_fails_fast(s3_bucket: str) -> None:
    store = make_store(
        f"http://127.0.0.1:{closed_port()}", s3_bucket, connect_timeout=0.5, read_timeout=0.5, max_attempts=1
    )
    started = time.monotonic()
    try:
        with pytest.raises(StorageError):
            await store.put("a.png", PNG, "image/png")
        with pytest.raises(StorageError):
            await store.get("a.png")
    finally:
        await store.aclose()

    assert time.monotonic() - started < 3.0


async def test_aclose_is_idempotent_and_reopens(s3_store: S3Store) -> None:
    await s3_store.put("k.png", PNG, "image/png")
    await s3_store.aclose()
    await s3_store.aclose()

    assert await s3_store.get("k.png") == PNG
