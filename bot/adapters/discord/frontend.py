"""The Discord front end: the client, the slash commands (all registered here, in one readable place),
start-up (log in, connect to the gateway as a background task, sync the commands) and a clean stop.
Built by bot.bootstrap and started by bot.launcher next to the other front ends, in one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import discord
from discord import app_commands

from bot.adapters.discord.acks import EarlyAcks
from bot.adapters.discord.buttons import ActionButton, ButtonHandler
from bot.adapters.discord.delivery import DiscordObserver
from bot.adapters.discord.handlers import MAX_PROMPT_OPTION, DiscordHandlers
from bot.adapters.discord.intake import DiscordIntake
from bot.adapters.discord.shop import EntitlementSettler, ShopHandlers, register_shop_commands
from bot.adapters.frontend import StartFailed
from bot.adapters.wording import GENERIC_ERROR
from bot.config import ASPECT_RATIOS, Settings
from bot.core.account_service import AccountService
from bot.core.inbox import Inbox
from bot.core.metrics import PLATFORM_ERRORS
from bot.core.models import ImagineRequest
from bot.core.prompt import MAX_COUNT, MAX_SEED
from bot.core.prompt_questions import PromptQuestions
from bot.core.service import GenerationService
from bot.core.shop import Shop

log = logging.getLogger(__name__)


class ImageBotClient(discord.Client):
    def __init__(self, button_handler: ButtonHandler, **options: Any) -> None:
        super().__init__(**options)
        self.button_handler = button_handler  # where ActionButton sends presses
        self.tree: app_commands.CommandTree[ImageBotClient] = app_commands.CommandTree(self)

    async def setup_hook(self) -> None:
        # Matches our buttons on every message, including those sent before a restart.
        self.add_dynamic_items(ActionButton)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        # A submitted modal, from its custom_id alone: it may have been opened before a restart.
        handler = self.button_handler
        if interaction.type is discord.InteractionType.modal_submit and isinstance(handler, DiscordHandlers):
            await handler.on_modal(interaction)


class ShardedImageBotClient(ImageBotClient, discord.AutoShardedClient):
    """The same client running the shards it is given (DISCORD_SHARD_COUNT / DISCORD_SHARD_IDS): each
    shard's connection receives the events of its share of the servers."""


def sharding(settings: Settings) -> dict[str, Any]:
    """The sharded client's options; none without DISCORD_SHARD_COUNT."""
    if settings.discord_shard_count is None:
        return {}
    return {"shard_count": settings.discord_shard_count, "shard_ids": settings.discord_shard_ids or None}


def count_http_errors() -> aiohttp.TraceConfig:
    """For discord.py (`http_trace`): counts every error answer from Discord's REST API for the operator's
    metrics, including those discord.py then retries (429s, some 5xx). The early acknowledgements, sent
    without aiohttp, count theirs themselves (acks.py)."""

    async def on_request_end(
        session: aiohttp.ClientSession, context: object, params: aiohttp.TraceRequestEndParams
    ) -> None:
        if params.response.status >= 400:
            PLATFORM_ERRORS.labels("discord", f"http_{params.response.status}").inc()

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_request_end)
    return trace


class DiscordFrontEnd:
    def __init__(
        self,
        settings: Settings,
        service: GenerationService,
        accounts: AccountService,
        *,
        guild_ready_timeout: float = 2.0,
        ready_timeout: float | None = None,
        clock: Callable[[], float] = time.time,
        receive_updates: bool = True,
    ) -> None:
        if settings.discord_token is None:
            raise StartFailed("DISCORD_TOKEN is not set")
        self._token = settings.discord_token.get_secret_value()
        self.settings = settings
        self.ready_timeout = ready_timeout or settings.discord_ready_timeout_seconds
        preview_interval = settings.discord_preview_interval_seconds
        shop = Shop(service.pool, settings.credit_packs, service.credit_policy, frozenset(settings.banned_users))
        self.handlers = ShopHandlers(service, accounts, PromptQuestions(service.pool), shop)
        shards = sharding(settings)
        self.client = (ShardedImageBotClient if shards else ImageBotClient)(
            self.handlers,
            **shards,
            # Slash commands and buttons need no intent at all; `guilds` (not privileged) keeps discord.py's
            # channel cache sound. Nothing privileged: we never read messages or member lists.
            intents=discord.Intents(guilds=True),
            # Prompts are user text: never let them ping anyone. The one deliberate ping says so explicitly.
            allowed_mentions=discord.AllowedMentions.none(),
            guild_ready_timeout=guild_ready_timeout,
            chunk_guilds_at_startup=False,
            member_cache_flags=discord.MemberCacheFlags.none(),
            # A long rate limit is better retried by the core later than waited out here.
            max_ratelimit_timeout=30.0,
            # Kept-alive connections: under a burst each request otherwise opens (in production: TLS-
            # handshakes) a connection of its own.
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=300),
            http_trace=count_http_errors(),
        )
        self.intake = self.handlers.intake = DiscordIntake(Inbox(service.pool, settings.inbox_claim_seconds))
        self.early_acks = EarlyAcks(
            self.client, self.handlers.acknowledges_early, warm=settings.discord_warm_connections,
            deferring=self.intake.deferring,
        )
        self.handlers.early_acks = self.early_acks
        register_commands(self.client.tree, self.handlers)
        register_shop_commands(self.client.tree, self.handlers)
        self.entitlements = EntitlementSettler(self.client, shop)
        self.client.event(self.entitlements.on_entitlement_create)
        self.client.event(self.entitlements.on_entitlement_delete)
        self.observer = DiscordObserver(self.client, clock=clock, preview_interval=preview_interval)
        self._gateway: asyncio.Task[None] | None = None
        # False in a process that only runs jobs (`run --only worker`): it delivers over the REST API and
        # never connects to the gateway, so no interaction reaches it.
        self.receive_updates = receive_updates

    async def start(self) -> None:
        """Log in, connect, sync commands; return once ready. Raises StartFailed with a clear reason."""
        await self._login()
        if not self.receive_updates:
            log.info("discord: delivering as %s over the REST API (no gateway)", self.client.user)
            return
        await self._connect()

    async def _login(self) -> None:
        try:
            await self.client.login(self._token)
        except discord.LoginFailure:
            await self.client.close()
            raise StartFailed("Discord rejected DISCORD_TOKEN (check the bot token in the developer portal)") from None
        except (OSError, aiohttp.ClientError, discord.HTTPException) as error:
            await self.client.close()
            raise StartFailed(f"Discord is unreachable: {error}") from None

    async def _connect(self) -> None:
        self._gateway = asyncio.create_task(self.client.connect(reconnect=True), name="discord-gateway")
        ready = asyncio.create_task(self.client.wait_until_ready())
        done, _ = await asyncio.wait(
            {ready, self._gateway}, timeout=self.ready_timeout, return_when="FIRST_COMPLETED"
        )
        if ready not in done:
            ready.cancel()
            reason = _failure(self._gateway) or f"not ready after {self.ready_timeout:.0f}s"
            await self.close()
            raise StartFailed(f"Discord gateway: {reason}")
        try:
            await self._sync_commands()
        except discord.HTTPException as error:
            await self.close()
            raise StartFailed(
                f"Discord refused the slash commands ({error.status} {error.text}). "
                "Was the bot invited with the applications.commands scope?"
            ) from None
        self.early_acks.start()
        self.intake.start(self.client)
        try:
            await self.entitlements.settle_missed()
        except discord.HTTPException as error:  # not worth refusing to start over: the next start retries
            log.warning("discord: listing entitlements failed: %s", error)
        log.info("discord: ready as %s (application %s)", self.client.user, self.client.application_id)

    async def _sync_commands(self) -> None:
        tree = self.client.tree
        if self.settings.discord_guild_ids:
            # Development: guild commands appear at once (global ones can take a while to show everywhere).
            for guild_id in self.settings.discord_guild_ids:
                guild = discord.Object(guild_id)
                tree.copy_global_to(guild=guild)
                synced = await tree.sync(guild=guild)
                log.info("discord: %d commands synced to guild %s", len(synced), guild_id)
        else:
            synced = await tree.sync()
            log.info("discord: %d commands synced globally", len(synced))

    async def stop_taking_work(self) -> None:
        """From now on every command and button answers that the bot is restarting; jobs keep running."""
        self.handlers.accepting = False

    async def close(self) -> None:
        await self.intake.stop()
        await self.early_acks.aclose()
        await self.client.close()
        if self._gateway is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._gateway
            self._gateway = None


def register_commands(tree: app_commands.CommandTree[Any], handlers: DiscordHandlers) -> None:
    """/imagine, /history, /balance, /models, /credits grant|revoke: usable in servers and in DMs with the bot."""
    contexts = app_commands.AppCommandContext(guild=True, dm_channel=True, private_channel=False)
    installs = app_commands.AppInstallationType(guild=True, user=False)

    @app_commands.command(name="imagine", description="Make images from a text prompt")
    @app_commands.describe(
        prompt="What to draw. Inline options work too: --ar 16:9 --seed 7 --no text",
        aspect_ratio="Shape of the image",
        count=f"How many images (1–{MAX_COUNT})",
        model="Which model (the cost per image is shown)",
        seed="Same seed + same prompt = similar image",
        negative="What to leave out",
        image="A picture to start from: the prompt says what to make of it",
        image2="Another picture, for models that take several",
        image3="A third picture, for models that take several",
    )
    @app_commands.choices(aspect_ratio=[app_commands.Choice(name=r, value=r) for r in ASPECT_RATIOS])
    @app_commands.autocomplete(model=handlers.model_autocomplete)
    async def imagine(
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_OPTION],
        aspect_ratio: str | None = None,
        count: app_commands.Range[int, 1, MAX_COUNT] | None = None,
        model: str | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        negative: str | None = None,
        image: discord.Attachment | None = None,
        image2: discord.Attachment | None = None,
        image3: discord.Attachment | None = None,
    ) -> None:
        attachments = [a for a in (image, image2, image3) if a is not None]
        await handlers.imagine(
            interaction, ImagineRequest(prompt, negative, model, aspect_ratio, count, seed), attachments
        )

    @app_commands.context_menu(name="Imagine from this image")
    async def imagine_from_message(interaction: discord.Interaction, message: discord.Message) -> None:
        await handlers.imagine_from_message(interaction, message)

    @app_commands.command(name="history", description="Your earlier images, sent to you in a DM")
    async def history(interaction: discord.Interaction) -> None:
        await handlers.history(interaction)

    @app_commands.command(name="balance", description="Your credits and what each model costs")
    async def balance(interaction: discord.Interaction) -> None:
        await handlers.balance(interaction)

    @app_commands.command(name="models", description="The models you can use and what each costs per image")
    async def models(interaction: discord.Interaction) -> None:
        await handlers.models(interaction)

    credits = app_commands.Group(
        name="credits",
        description="Change a user's credits (bot admins only)",
        allowed_contexts=contexts,
        allowed_installs=installs,
    )

    @credits.command(name="grant", description="Give a user credits")
    @app_commands.describe(user="Who gets them", amount="How many")
    async def grant(
        interaction: discord.Interaction, user: discord.User, amount: app_commands.Range[int, 1, 1_000_000]
    ) -> None:
        await handlers.adjust_credits(interaction, user, amount)

    @credits.command(name="revoke", description="Take credits away from a user (down to zero)")
    @app_commands.describe(user="Whose credits", amount="How many")
    async def revoke(
        interaction: discord.Interaction, user: discord.User, amount: app_commands.Range[int, 1, 1_000_000]
    ) -> None:
        await handlers.adjust_credits(interaction, user, -amount)

    command: app_commands.Command[Any, Any, None] | app_commands.ContextMenu
    for command in (imagine, history, balance, models, imagine_from_message):
        command.allowed_contexts = contexts
        command.allowed_installs = installs
        tree.add_command(command)
    tree.add_command(credits)

    @tree.error
    async def on_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        # Reached only for errors before our handlers run (e.g. an option that fails conversion).
        log.warning("command error in interaction %s: %r", interaction.id, error)
        text = (
            "One of the options isn't valid."
            if isinstance(error, app_commands.TransformerError)
            else GENERIC_ERROR
        )
        await handlers.say(interaction, text)


def _failure(task: asyncio.Task[None]) -> str | None:
    if not task.done():
        return None
    if task.cancelled():
        return "connection cancelled"
    error = task.exception()
    if isinstance(error, discord.PrivilegedIntentsRequired):
        return "privileged intents requested but not enabled"
    return f"{type(error).__name__}: {error}" if error else "connection closed"
