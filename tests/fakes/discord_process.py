"""`python -m bot <args>` with discord.py pointed at a local FakeDiscord: what `point_discord_py_at` does
in-process, for tests that start the bot as operators do. FAKE_DISCORD_API and FAKE_DISCORD_GATEWAY are the
fake's `api_url` and `gateway_url`."""

from __future__ import annotations

import os
import sys

import discord
import yarl

from bot.cli import main

if __name__ == "__main__":
    discord.http.Route.BASE = os.environ["FAKE_DISCORD_API"]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["FAKE_DISCORD_GATEWAY"])
    sys.exit(main(sys.argv[1:]))
