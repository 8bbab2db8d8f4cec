"""/history: one generation per page, its images and buttons in one message, with ◀ ▶ to turn pages.
In a server the pages go to the user's DMs (one's history is nobody else's business); if the DMs are
closed, the first page is shown privately (ephemeral) instead."""

from __future__ import annotations

import asyncio
import logging

import discord

from bot.adapters.discord import media, render
from bot.adapters.discord.buttons import history_view
from bot.adapters.discord.context import DEFAULT_UPLOAD_LIMIT
from bot.core.models import HistoryPage, UserIdentity
from bot.core.service import GenerationService

log = logging.getLogger(__name__)

HISTORY_PAGE_SIZE = 1  # one generation per page: its images and buttons fit one message
DM_CLOSED_NOTE = (
    "I couldn't send you a DM: your DMs are closed for me (Privacy Settings → Direct Messages). "
    "Here is your history instead; only you can see it."
)


class HistorySender:
    def __init__(self, service: GenerationService) -> None:
        self.service = service

    async def show(self, interaction: discord.Interaction, who: UserIdentity) -> None:
        """The first page, for an interaction already deferred (privately in a server)."""
        in_dm = interaction.guild_id is None
        page = await self.service.history(who, 0, HISTORY_PAGE_SIZE)
        if in_dm or not page.items:
            await self._send_page(interaction.followup, page, interaction.filesize_limit, ephemeral=not in_dm)
            return
        try:
            dm = await interaction.user.create_dm()
            message = await self._send_page(dm, page, DEFAULT_UPLOAD_LIMIT)
        except discord.Forbidden as error:
            # 50007: the user doesn't accept DMs from us. Show the first page here, privately.
            log.info("history: DM to %s refused (%s)", interaction.user.id, error.code)
            await self._send_page(
                interaction.followup, page, interaction.filesize_limit, ephemeral=True, intro=DM_CLOSED_NOTE
            )
            return
        await interaction.followup.send(f"I sent your history to your DMs: {message.jump_url}", ephemeral=True)

    async def turn(self, interaction: discord.Interaction, who: UserIdentity, page_number: int) -> None:
        """A ◀ ▶ press, already deferred: the page's message shows the other page. Always the presser's
        own history: a page button can't show anyone else's."""
        page = await self.service.history(who, page_number, HISTORY_PAGE_SIZE)
        uploads, content, view = await self._page(page, interaction.filesize_limit)
        await interaction.edit_original_response(content=content, attachments=[u.file() for u in uploads], view=view)

    async def _page(self, page: HistoryPage, limit: int) -> tuple[list[media.Upload], str, discord.ui.View]:
        uploads: list[media.Upload] = []
        notes: list[str] = []
        if page.items and page.items[0].images:
            images = await self.service.load_files(page.items[0].images)
            # One message per page: every image gets an equal share of the upload limit.
            fitted = await asyncio.to_thread(media.fit_images, images, max(1, limit // len(images)))
            uploads = [u for group in fitted.messages for u in group]
            notes = fitted.notes()
        content = render.history_text(page) + "".join(f"\n-# {note}" for note in notes)
        return uploads, content, history_view(page)

    async def _send_page(
        self,
        target: discord.abc.Messageable | discord.Webhook,
        page: HistoryPage,
        limit: int,
        *,
        ephemeral: bool = False,
        intro: str = "",
    ) -> discord.Message:
        uploads, content, view = await self._page(page, limit)
        if intro:
            content = f"{intro}\n\n{content}"[: render.MESSAGE_LIMIT]
        files = [u.file() for u in uploads]
        if isinstance(target, discord.Webhook):
            return await target.send(content, files=files, view=view, ephemeral=ephemeral, wait=True)
        return await target.send(content, files=files, view=view)
