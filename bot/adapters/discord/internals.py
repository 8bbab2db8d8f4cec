"""Every use of discord.py's and aiohttp's private parts, in one place, each for a gain the public API
can't give (bench/burst.py measures them). Checked against the versions in CHECKED_WITH (pyproject.toml
pins them); tests/test_discord_internals.py fails when either library changes what is relied on here:

- discord.py: `Client._connection.parsers`, the dict of gateway event handlers the websocket looks each
  event up in (it keeps a reference to this same dict, so it is changed in place), and its
  "INTERACTION_CREATE" entry, called with the event's raw payload. The early acknowledgements
  (bot.adapters.discord.acks) defer an interaction from here, before discord.py builds its objects.
- discord.py: `InteractionResponse._response_type`, which `is_done()` and `type` read and which discord.py
  sets after answering; set here after an answer discord.py didn't send itself (the early deferral).
- discord.py: `Webhook.type`, read by `Webhook.send` on every call. `Webhook.partial` has no way to say an
  interaction token's webhook is an application webhook, the only kind discord.py sends ephemeral
  messages through.
- discord.py: `Webhook.edit_message` puts the message id into the request's path as given, so Discord's
  "@original" (the interaction's response, whose id may be unknown) can stand in for it.
- aiohttp: `BytesIOPayload` (what aiohttp sends a BytesIO with) calls `getbuffer()` only to learn the size,
  then reads. BytesIO's `getbuffer()` copies the bytes the BytesIO shared with its creator; an
  ImageUpload answers it with a view of those bytes instead, so an upload in flight holds no second copy
  of its images."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import discord
from discord.enums import InteractionResponseType

# What this module was checked against (tests/test_discord_internals.py holds the installed versions to it):
# after an upgrade, check every item above, then add the version here.
CHECKED_WITH = {"discord.py": ("2.7.1",), "aiohttp": ("3.14.5",)}

INTERACTION_CREATE = "INTERACTION_CREATE"

RawHandler = Callable[[dict[str, Any]], None]

# For `Webhook.edit_message` on an interaction token's webhook: the interaction's original response.
ORIGINAL_RESPONSE: Any = "@original"


def intercept_interactions(client: discord.Client, handler: RawHandler) -> RawHandler:
    """From now on the gateway hands every raw INTERACTION_CREATE payload to `handler` instead of to
    discord.py; returns discord.py's own handler, for `handler` to call. Before `client` connects."""
    parsers: dict[str, RawHandler] = client._connection.parsers
    parse = parsers[INTERACTION_CREATE]
    parsers[INTERACTION_CREATE] = handler
    return parse


def mark_deferred(interaction: discord.Interaction) -> None:
    """What `interaction.response.defer(thinking=True)` records after its request succeeds."""
    interaction.response._response_type = InteractionResponseType.deferred_channel_message


def interaction_webhook(application_id: int, token: str, client: discord.Client) -> discord.Webhook:
    """The webhook an interaction token is: it can edit the interaction's messages for 15 minutes and
    send ephemeral followups."""
    webhook = discord.Webhook.partial(application_id, token, client=client)
    webhook.type = discord.WebhookType.application
    return webhook


class ImageUpload(io.BytesIO):
    """Image bytes for discord.File, which aiohttp sends without copying them (see the module's docstring).
    Read-only."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.data = data

    def getbuffer(self) -> memoryview:
        """All the bytes, as BytesIO's would be, but read-only and without copying them."""
        return memoryview(self.data)
