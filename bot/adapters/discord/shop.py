"""Buying credits on Discord (consumable SKUs, one per pack) and /link. A purchase arrives as an
entitlement: it is credited once per entitlement id (bot.core.shop), then consumed, so Discord lets the
user buy the pack again. Entitlements that arrived while the bot was down are settled at start-up; a
deleted one (Discord refunded it) takes its credits back as far as the balance allows."""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands

from bot.adapters.discord.context import PLATFORM
from bot.adapters.discord.handlers import DiscordHandlers
from bot.adapters.wording import link_code_text, linked_text, plural
from bot.core.account_service import AccountService
from bot.core.errors import BotError, InvalidRequest
from bot.core.models import UserIdentity
from bot.core.prompt_questions import PromptQuestions
from bot.core.service import GenerationService
from bot.core.shop import DISCORD, Shop

log = logging.getLogger(__name__)

MAX_PACK_BUTTONS = 25  # 5 rows of 5: Discord's limit for one message


class ShopHandlers(DiscordHandlers):
    """The image commands (DiscordHandlers), /buy and /link."""

    def __init__(
        self, service: GenerationService, accounts: AccountService, questions: PromptQuestions, shop: Shop
    ) -> None:
        super().__init__(service, accounts, questions)
        self.shop = shop

    async def buy(self, interaction: discord.Interaction) -> None:
        """Privately: the packs, each with Discord's own purchase button for its SKU."""
        async with self._answering(interaction):
            packs = self.shop.packs_for(DISCORD)[:MAX_PACK_BUTTONS]
            if not packs:
                raise InvalidRequest("Credits are not for sale here.")
            view = discord.ui.View(timeout=None)
            for pack in packs:
                assert pack.discord_sku_id is not None  # packs_for(DISCORD) has an SKU each
                view.add_item(discord.ui.Button(style=discord.ButtonStyle.premium, sku_id=int(pack.discord_sku_id)))
            lines = [f"• **{pack.name}**: {plural(pack.credits, 'credit')}" for pack in packs]
            text = "Buy credits (the price is on each button):\n" + "\n".join(lines)
            await interaction.response.send_message(text, view=view, ephemeral=True)

    async def link(self, interaction: discord.Interaction, code: str | None) -> None:
        """`/link`: a code for the other platform; `/link code:…`: use one made there. Always private."""
        async with self._answering(interaction):
            await self._defer(interaction, thinking=True, ephemeral=True)
            who = UserIdentity(PLATFORM, str(interaction.user.id), interaction.user.display_name)
            if code:
                text = linked_text(await self.accounts.link(who, code))
            else:
                text = link_code_text(await self.accounts.link_code(who), "/link")
            await interaction.followup.send(text, ephemeral=True)


def register_shop_commands(tree: app_commands.CommandTree[Any], handlers: ShopHandlers) -> None:
    contexts = app_commands.AppCommandContext(guild=True, dm_channel=True, private_channel=False)
    installs = app_commands.AppInstallationType(guild=True, user=False)

    @app_commands.command(name="buy", description="Buy credits")
    async def buy(interaction: discord.Interaction) -> None:
        await handlers.buy(interaction)

    @app_commands.command(name="link", description="One account with your Telegram: get a code, or use one")
    @app_commands.describe(code="The code /link gave you on the other platform (leave empty to get one)")
    async def link(interaction: discord.Interaction, code: app_commands.Range[str, 1, 32] | None = None) -> None:
        await handlers.link(interaction, code)

    command: app_commands.Command[Any, Any, None]
    for command in (buy, link):
        command.allowed_contexts = contexts
        command.allowed_installs = installs
        tree.add_command(command)


class EntitlementSettler:
    """Credits and consumes the entitlements of packs' SKUs: as they arrive, and those missed while down."""

    def __init__(self, client: discord.Client, shop: Shop) -> None:
        self.client = client
        self.shop = shop

    async def on_entitlement_create(self, entitlement: discord.Entitlement) -> None:
        await self.settle(entitlement)

    async def on_entitlement_delete(self, entitlement: discord.Entitlement) -> None:
        """Discord refunded a purchase: take its credits back, as far as the balance allows."""
        if self.shop.pack_for_sku(str(entitlement.sku_id)) is None:
            return
        try:
            result = await self.shop.refunded(DISCORD, str(entitlement.id))
        except BotError as error:
            log.warning("discord: entitlement %s deleted, not yet taken back: %s", entitlement.id, error.user_message)
            return
        if result is None:
            log.warning("discord: entitlement %s deleted, but it was never credited", entitlement.id)
        elif result.new:
            log.info("discord: entitlement %s refunded: %d credits taken back, %d already spent",
                     entitlement.id, result.taken_back, result.shortfall)

    async def settle(self, entitlement: discord.Entitlement) -> None:
        """Credit (once per entitlement id) and consume one purchase of a pack. Consuming last: if it fails,
        the entitlement stays unconsumed and the next start-up settles it again (crediting nothing twice)."""
        pack = self.shop.pack_for_sku(str(entitlement.sku_id))
        if pack is None or entitlement.user_id is None or entitlement.deleted:
            return
        who = UserIdentity(PLATFORM, str(entitlement.user_id))
        try:
            purchased = await self.shop.entitled(who, str(entitlement.id), str(entitlement.sku_id))
        except BotError as error:
            log.warning("discord: entitlement %s not credited yet: %s", entitlement.id, error.user_message)
            return
        if purchased is not None and purchased.new:
            log.info("discord: entitlement %s: %d credits to %s", entitlement.id, purchased.credits,
                     who.platform_user_id)
        if not entitlement.consumed:
            try:
                await entitlement.consume()
            except discord.HTTPException as error:
                log.warning("discord: consuming entitlement %s failed (settled again at start-up): %s",
                            entitlement.id, error)

    async def settle_missed(self) -> int:
        """At start-up: the packs' unconsumed entitlements, bought while the bot was away. How many."""
        skus = [discord.Object(int(p.discord_sku_id)) for p in self.shop.packs_for(DISCORD) if p.discord_sku_id]
        if not skus:
            return 0
        settled = 0
        async for entitlement in self.client.entitlements(limit=None, skus=skus, exclude_ended=True):
            if not entitlement.consumed:
                await self.settle(entitlement)
                settled += 1
        if settled:
            log.info("discord: settled %d purchases made while the bot was away", settled)
        return settled
