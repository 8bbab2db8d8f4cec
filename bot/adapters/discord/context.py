"""What a job must remember to reach Discord again, possibly from another process after a restart.
It is stored as JSON in the job's Destination.context (Postgres), so it holds only plain values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import discord

from bot.core.models import Destination

PLATFORM = "discord"
# Discord's default per-upload limit when an interaction doesn't tell us better (10 MiB).
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
# An interaction token lives 15 minutes. Stop using it a little earlier: an upload started at 14:59
# would fail half-way, and a channel message is just as good.
TOKEN_LIFETIME_SECONDS = 15 * 60
TOKEN_SAFETY_SECONDS = 60


@dataclass(frozen=True)
class ReplyContext:
    application_id: int
    token: str
    expires_at: float  # epoch seconds after which the token must not be used
    dm: bool
    upload_limit: int

    @classmethod
    def from_interaction(cls, interaction: discord.Interaction) -> ReplyContext:
        created = interaction.created_at.timestamp()
        return cls(
            application_id=interaction.application_id,
            token=interaction.token,
            expires_at=created + TOKEN_LIFETIME_SECONDS - TOKEN_SAFETY_SECONDS,
            dm=interaction.guild_id is None,
            upload_limit=interaction.filesize_limit or DEFAULT_UPLOAD_LIMIT,
        )

    @classmethod
    def from_destination(cls, destination: Destination) -> ReplyContext | None:
        """None when the job did not come from an interaction we can still describe (old or foreign rows)."""
        raw = destination.context
        try:
            return cls(
                application_id=int(raw["application_id"]),
                token=str(raw["token"]),
                expires_at=float(raw["expires_at"]),
                dm=bool(raw.get("dm", False)),
                upload_limit=int(raw.get("upload_limit") or DEFAULT_UPLOAD_LIMIT),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def to_json(self) -> dict[str, Any]:
        # Snowflakes as strings: JSON numbers lose precision above 2**53 in some readers.
        return {
            "application_id": str(self.application_id),
            "token": self.token,
            "expires_at": self.expires_at,
            "dm": self.dm,
            "upload_limit": self.upload_limit,
        }

    def token_alive(self, now: float) -> bool:
        return now < self.expires_at


def destination_for(interaction: discord.Interaction, message_id: int | None) -> Destination:
    """Where a job started by this interaction reports: its channel, its response message, its token."""
    assert interaction.channel_id is not None  # commands and buttons always come from a channel
    return Destination(
        platform=PLATFORM,
        chat_id=str(interaction.channel_id),
        message_id=str(message_id) if message_id is not None else None,
        context=ReplyContext.from_interaction(interaction).to_json(),
    )
