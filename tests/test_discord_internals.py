"""The contract of bot/adapters/discord/internals.py: what it relies on in discord.py and aiohttp, checked
one by one, so that an upgrade that changes any of it fails here, by name, rather than somewhere in a
burst. Each test is named for the item of the module's docstring it holds."""

from __future__ import annotations

import importlib.metadata
import inspect
import io
import os
import tracemalloc
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import discord
import pytest
from aiohttp import payload
from discord.enums import InteractionResponseType
from discord.gateway import DiscordWebSocket

from bot.adapters.discord import internals
from tests.fakes.discord_harness import serving_fake
from tests.fakes.discord_server import FakeDiscord


@pytest.mark.parametrize("name", sorted(internals.CHECKED_WITH))
def test_the_installed_versions_are_those_checked(name: str) -> None:
    installed = importlib.metadata.version(name)
    assert installed in internals.CHECKED_WITH[name], (
        f"{name} {installed} is not among the versions bot/adapters/discord/internals.py was checked against: "
        "check every item of its docstring, then add the version to CHECKED_WITH"
    )


def test_the_gateway_hands_interactions_to_the_parsers_dict_we_change() -> None:
    client = discord.Client(intents=discord.Intents.none())
    state = client._connection
    seen: list[dict[str, Any]] = []
    parse = internals.intercept_interactions(client, seen.append)
    assert parse == state.parse_interaction_create  # discord.py's own handler, for ours to call
    assert state.parsers[internals.INTERACTION_CREATE] == seen.append
    assert list(inspect.signature(parse).parameters) == ["data"]  # called with the raw payload alone
    # The websocket looks every event up in that same dict (a reference taken when it connects).
    assert "ws._discord_parsers = client._connection.parsers" in inspect.getsource(DiscordWebSocket.from_client)
    assert "self._discord_parsers[event]" in inspect.getsource(DiscordWebSocket.received_message)


async def test_a_response_marked_deferred_is_done_for_discord_py() -> None:
    response = discord.InteractionResponse(cast(discord.Interaction, None))
    assert not response.is_done()
    internals.mark_deferred(cast(discord.Interaction, SimpleNamespace(response=response)))
    assert response.is_done() and response.type is InteractionResponseType.deferred_channel_message
    with pytest.raises(discord.InteractionResponded):  # discord.py won't acknowledge it a second time
        await response.defer(thinking=True)


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with serving_fake(monkeypatch) as fake:
        yield fake


async def test_only_an_application_webhook_sends_ephemeral_messages(fake: FakeDiscord) -> None:
    client = discord.Client(intents=discord.Intents.none())
    await client.login(fake.token)
    try:
        plain = discord.Webhook.partial(1, "token", client=client)
        with pytest.raises(ValueError, match="application webhooks"):  # still needed: partial can't say it
            await plain.send("hello", ephemeral=True)
        webhook = internals.interaction_webhook(1, "token", client)
        assert webhook.type is discord.WebhookType.application
        with pytest.raises(discord.HTTPException):  # sent: the fake knows no such interaction
            await webhook.send("hello", ephemeral=True)
    finally:
        await client.close()


async def test_editing_the_original_response_by_its_path_name(fake: FakeDiscord) -> None:
    # A deferral recorded before Discord answered it has no message id: "@original" goes into the path as is.
    client = discord.Client(intents=discord.Intents.none())
    await client.login(fake.token)
    try:
        webhook = internals.interaction_webhook(1, "token", client)
        with pytest.raises(discord.HTTPException):  # sent: the fake knows no such interaction
            await webhook.edit_message(internals.ORIGINAL_RESPONSE, content="not taken")
    finally:
        await client.close()
    assert any(r.method == "PATCH" and r.path.endswith("/webhooks/1/token/messages/@original") for r in fake.requests)


class _Sink:
    def __init__(self) -> None:
        self.received = 0

    async def write(self, chunk: bytes | memoryview) -> None:
        self.received += len(chunk)


async def _peak_while_sending(fp: io.BytesIO) -> tuple[type[payload.Payload], int, int]:
    """The payload class aiohttp picks for `fp`, the bytes it sent, and the peak of memory allocated meanwhile."""
    tracemalloc.start()
    try:
        body = payload.get_payload(fp)
        sink = _Sink()
        await body.write(sink)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return type(body), sink.received, peak


async def test_aiohttp_sends_an_image_upload_without_copying_it() -> None:
    data = os.urandom(4 * 2**20)
    kind, sent, peak = await _peak_while_sending(internals.ImageUpload(data))
    assert kind is payload.BytesIOPayload and sent == len(data)
    assert peak < len(data) // 4
    # Still needed: a plain BytesIO is copied whole (if this fails, aiohttp stopped: drop ImageUpload).
    _, sent, peak = await _peak_while_sending(io.BytesIO(data))
    assert sent == len(data) and peak >= len(data)


