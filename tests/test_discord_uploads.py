"""Image uploads as discord.py hands them to aiohttp: sent whole, and again after a rewind, to a real
aiohttp server on 127.0.0.1. (That aiohttp sends them without copying their bytes is a contract of
bot/adapters/discord/internals.py, tested in test_discord_internals.py.)"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import aiohttp
import discord
import pytest
from aiohttp import web

from bot.adapters.discord.internals import ImageUpload


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[bytes]]]:
    received: list[bytes] = []

    async def upload(request: web.Request) -> web.Response:
        reader = await request.multipart()
        async for part in reader:
            received.append(await part.read())  # type: ignore[union-attr]
        return web.json_response({"parts": len(received)})

    app = web.Application(client_max_size=16 * 2**20)
    app.router.add_post("/upload", upload)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/upload", received
    finally:
        await runner.cleanup()


async def test_an_upload_goes_out_whole_and_again_after_a_rewind(receiver: tuple[str, list[bytes]]) -> None:
    url, received = receiver
    data = os.urandom(3 * 2**16 + 123)  # several of aiohttp's chunks, the last one short
    file = discord.File(ImageUpload(data), filename="image-1.png")
    async with aiohttp.ClientSession() as session:
        for attempt in range(2):  # what discord.py does to retry: rewind the file, build the form again
            file.reset(seek=attempt)
            form = aiohttp.FormData(quote_fields=False)
            form.add_field("files[0]", file.fp, filename=file.filename, content_type="application/octet-stream")
            async with session.post(url, data=form()) as response:
                assert response.status == 200
    assert received == [data, data]


def test_an_upload_starts_where_the_file_stands() -> None:
    upload = ImageUpload(b"0123456789")
    upload.seek(4)
    payload = aiohttp.payload.get_payload(upload)
    assert payload.size == 6
    assert payload.decode() == "456789"
