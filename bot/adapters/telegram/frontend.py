"""The Telegram front end: the PTB Application, its handlers (all registered here, in one readable
place), the job observer, and polling or webhook start-up.

Run inside the bot's own asyncio loop next to the other front ends, so only PTB's async lifecycle is
used (initialize → start → updater.start_polling / our webhook server; stop → shutdown), never the
blocking run_polling / run_webhook helpers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from telegram import BotCommand, BotCommandScopeAllGroupChats, BotCommandScopeAllPrivateChats, BotCommandScopeChat
from telegram.error import InvalidToken, NetworkError, TelegramError
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    Defaults,
    ExtBot,
    MessageHandler,
    PreCheckoutQueryHandler,
    filters,
)

from bot.adapters.frontend import StartFailed
from bot.adapters.telegram.context import PLATFORM
from bot.adapters.telegram.delivery import ProgressTiming, TelegramObserver
from bot.adapters.telegram.history import HistorySender
from bot.adapters.telegram.intake import OncePerUpdate, TelegramIntake
from bot.adapters.telegram.ratelimit import FloodWaitLimiter
from bot.adapters.telegram.sending import Sender
from bot.adapters.telegram.shop import BUY_PREFIX, ShopHandlers
from bot.adapters.telegram.transport import AiohttpRequest
from bot.adapters.telegram.updates import DeadlinesFirst
from bot.adapters.telegram.webhook import WebhookServer, derived_secret, webhook_path
from bot.config import Settings
from bot.core.account_service import AccountService
from bot.core.inbox import Inbox
from bot.core.prompt_questions import PromptQuestions
from bot.core.service import GenerationService
from bot.core.shop import Shop

log = logging.getLogger(__name__)

ALLOWED_UPDATES = ["message", "callback_query", "pre_checkout_query"]
# Updates other than callback and pre-checkout queries processed at once (those run at once:
# updates.DeadlinesFirst). Handlers only queue work (the worker makes the images), so this bounds the
# replies in flight, not generation. Enough that under a crowd a request's "Queued" doesn't wait for
# many others' round trips to Postgres and Telegram; few enough that the event loop still turns quickly
# for everything else (the Discord gateway above all) and the database pool isn't drained.
CONCURRENT_UPDATES = 32
# Updates asked for per getUpdates. PTB parses a whole batch in one go, holding the event loop while the
# Discord gateway and everything else wait: smaller batches than Telegram's 100 keep those pauses short.
UPDATES_PER_POLL = 20
START_ATTEMPTS = 4  # 1 + 2 + 4 s of waiting for a Bot API that is briefly unreachable

PRIVATE_COMMANDS = [
    BotCommand("imagine", "Make images: /imagine <prompt> --ar 16:9 --n 2"),
    BotCommand("history", "Your earlier images"),
    BotCommand("balance", "Your credits and the prices"),
    BotCommand("models", "The models and what each costs"),
    BotCommand("buy", "Buy credits with Telegram Stars"),
    BotCommand("link", "One account with your Discord: /link or /link <code>"),
    BotCommand("paysupport", "Help with a payment"),
    BotCommand("terms", "The terms of sale"),
    BotCommand("help", "How to use this bot"),
    BotCommand("start", "Welcome and your balance"),
]
GROUP_COMMANDS = [
    BotCommand("imagine", "Make images: /imagine <prompt> --ar 16:9 --n 2"),
    BotCommand("history", "Your earlier images (sent privately)"),
    BotCommand("balance", "Your credits and the prices"),
    BotCommand("models", "The models and what each costs"),
    BotCommand("help", "How to use this bot"),
]
ADMIN_COMMANDS = [
    *PRIVATE_COMMANDS,
    BotCommand("grant", "Admin: /grant <user id> <amount>"),
    BotCommand("revoke", "Admin: /revoke <user id> <amount>"),
    BotCommand("refund", "Admin: /refund <charge id>"),
]


class PagedBot(ExtBot[int]):
    """PTB's bot, whose long polling fetches at most UPDATES_PER_POLL updates at a time and records each
    batch in the inbox before PTB can confirm it (see intake)."""

    def __init__(self, *args: Any, intake: TelegramIntake, **kwargs: Any) -> None:
        self._intake = intake  # protected: PTB freezes the public attributes
        super().__init__(*args, **kwargs)

    async def get_updates(
        self, offset: int | None = None, limit: int | None = None, *args: Any, **kwargs: Any
    ) -> Any:
        updates = await super().get_updates(offset, limit or UPDATES_PER_POLL, *args, **kwargs)
        return await self._intake.fetched(updates)


class TelegramFrontEnd:
    def __init__(
        self,
        settings: Settings,
        service: GenerationService,
        accounts: AccountService,
        *,
        poll_timeout: int = 10,
        history_page_size: int = 3,
        timing: ProgressTiming | None = None,
        receive_updates: bool = True,
    ) -> None:
        if settings.telegram_token is None:
            raise StartFailed("TELEGRAM_TOKEN is not set")
        self.settings = settings
        self.service = service
        self.poll_timeout = poll_timeout
        self._token = settings.telegram_token.get_secret_value()
        self.webhook_url = settings.telegram_webhook_url
        # False in a process that only runs jobs (`run --only worker`): the bot sends over the Bot API but
        # neither polls nor serves the webhook (polling would take updates from the front-end processes).
        self.receive_updates = receive_updates
        self.intake = TelegramIntake(Inbox(service.pool, settings.inbox_claim_seconds))
        bot = PagedBot(
            self._token,
            intake=self.intake,
            base_url=settings.telegram_base_url,
            base_file_url=settings.telegram_base_file_url,
            # More connections than update slots, so that a button's answer never waits for a connection
            # behind the updates being handled, and deliveries have their share. Under a burst, requests
            # queue for a pooled connection longer than PTB's default allows, and a photo upload's answer
            # can take a while. A timed-out send may have gone through, and retrying it would post twice,
            # so these are generous.
            request=AiohttpRequest(
                connection_pool_size=4 * CONCURRENT_UPDATES, pool_timeout=10.0, read_timeout=15.0
            ),
            # Two connections: stopping cancels the long poll in flight and at once asks getUpdates again
            # to confirm what was fetched. PTB doesn't wait for the cancelled request to give its
            # connection back, so with one connection the confirmation can time out waiting for it (an
            # ERROR, and updates fetched twice after a restart).
            get_updates_request=AiohttpRequest(connection_pool_size=2),
            # Every reply still goes out if the message it answers was deleted meanwhile.
            defaults=Defaults(allow_sending_without_reply=True),
            # Button state lives in callback_data and Postgres; PTB's in-memory cache would die on restart.
            arbitrary_callback_data=False,
            rate_limiter=FloodWaitLimiter(),
        )
        processor = OncePerUpdate(DeadlinesFirst(CONCURRENT_UPDATES), self.intake)
        builder = Application.builder().bot(bot).concurrent_updates(processor).job_queue(None)
        if self.webhook_url or not receive_updates:
            builder = builder.updater(None)  # updates come from our webhook server instead, or not at all
        self.application = builder.build()
        self.sender = Sender(self.application.bot)
        self.observer = TelegramObserver(self.sender, service, timing)
        shop = Shop(service.pool, settings.credit_packs, service.credit_policy, frozenset(settings.banned_users))
        self.handlers = ShopHandlers(
            service, accounts, PromptQuestions(service.pool), self.sender,
            HistorySender(self.sender, service, history_page_size), shop, settings.payment_support,
            settings.terms_text,
        )
        self._webhook: WebhookServer | None = None
        self._register()
        self._started = False

    def _register(self) -> None:
        """Every handler, in one place. Order matters within the group: the first match wins, so the
        commands come before the catch-alls for unknown commands and plain text."""
        h = self.handlers
        new_messages = filters.UpdateType.MESSAGE  # an edited message is not a new request
        private = filters.ChatType.PRIVATE
        app = self.application
        # Payments first: a pre-checkout query is answered at once (see updates.DeadlinesFirst), and a
        # payment is a message that no other handler should see.
        app.add_handler(PreCheckoutQueryHandler(h.pre_checkout))
        app.add_handler(MessageHandler(filters.SUCCESSFUL_PAYMENT, h.paid))
        app.add_handler(CommandHandler("start", h.start, filters=new_messages))
        app.add_handler(CommandHandler("help", h.help, filters=new_messages))
        # CommandHandler also matches "/imagine@ThisBot" and ignores "/imagine@OtherBot" in groups.
        app.add_handler(CommandHandler("imagine", h.imagine, filters=new_messages))
        app.add_handler(CommandHandler("history", h.history, filters=new_messages))
        app.add_handler(CommandHandler("balance", h.balance, filters=new_messages))
        app.add_handler(CommandHandler("models", h.models, filters=new_messages))
        app.add_handler(CommandHandler("grant", h.grant, filters=new_messages))
        app.add_handler(CommandHandler("revoke", h.revoke, filters=new_messages))
        app.add_handler(CommandHandler("buy", h.buy, filters=new_messages))
        app.add_handler(CommandHandler("paysupport", h.paysupport, filters=new_messages))
        app.add_handler(CommandHandler("terms", h.terms, filters=new_messages))
        app.add_handler(CommandHandler("refund", h.refund, filters=new_messages))
        app.add_handler(CommandHandler("link", h.link, filters=new_messages))
        app.add_handler(MessageHandler(new_messages & private & filters.COMMAND, h.unknown_command))
        # A photo or a file: an edit when captioned (see handlers.picture), a question when not.
        app.add_handler(MessageHandler(new_messages & (filters.PHOTO | filters.Document.ALL), h.picture))
        # A reply to one of the bot's questions is its answer; in groups, replies to the bot reach it too.
        app.add_handler(MessageHandler(new_messages & filters.REPLY & filters.TEXT & ~filters.COMMAND, h.reply))
        # Privacy mode means groups only send us commands; in a private chat any text is a prompt.
        app.add_handler(MessageHandler(new_messages & private & filters.TEXT, h.prompt))
        app.add_handler(CallbackQueryHandler(h.buy_button, pattern=f"^{BUY_PREFIX}"))
        app.add_handler(CallbackQueryHandler(h.button))
        app.add_error_handler(h.on_error)

    async def start(self) -> None:
        app = self.application
        await self._initialize()
        self.handlers.bot_username = app.bot.username or ""
        if not self.receive_updates:
            log.info("telegram: @%s delivering over the Bot API (no polling, no webhook)", self.handlers.bot_username)
            return
        await self._set_commands()
        await app.start()
        await self.intake.start(app)  # what an earlier process recorded, before anything new is fetched
        if self.webhook_url:
            secret = (
                self.settings.telegram_webhook_secret.get_secret_value()
                if self.settings.telegram_webhook_secret is not None
                else derived_secret(self._token)
            )
            self._webhook = WebhookServer(
                app, app.bot, self.intake, webhook_path(self.webhook_url), secret,
                self.settings.telegram_webhook_listen, self.settings.telegram_webhook_port,
            )
            await self._webhook.start()
            await app.bot.set_webhook(self.webhook_url, secret_token=secret, allowed_updates=ALLOWED_UPDATES)
            log.info("telegram: @%s receiving updates by webhook", self.handlers.bot_username)
        else:
            assert app.updater is not None
            await app.updater.start_polling(
                timeout=self.poll_timeout,  # whole seconds: the Bot API documents an integer
                allowed_updates=ALLOWED_UPDATES,
                bootstrap_retries=3,
                error_callback=_polling_failed,
            )
            log.info("telegram: @%s polling for updates", self.handlers.bot_username)
        self._started = True

    async def _initialize(self) -> None:
        """getMe and friends. A network hiccup at start-up is retried; a wrong token is not."""
        delay = 1.0
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                await self.application.initialize()
                return
            except InvalidToken:
                raise StartFailed("Telegram rejected TELEGRAM_TOKEN (check it with @BotFather)") from None
            except NetworkError as error:  # includes TimedOut
                if attempt == START_ATTEMPTS:
                    raise StartFailed(f"Telegram's Bot API is unreachable: {error.message}") from None
                log.warning("telegram: start-up failed (%s), retrying in %.0f s", error.message, delay)
                await asyncio.sleep(delay)
                delay *= 2

    async def _set_commands(self) -> None:
        """The command menu; best effort (a menu is not worth refusing to start over)."""
        bot = self.application.bot
        try:
            await bot.set_my_commands(PRIVATE_COMMANDS, scope=BotCommandScopeAllPrivateChats())
            await bot.set_my_commands(GROUP_COMMANDS, scope=BotCommandScopeAllGroupChats())
        except TelegramError as error:
            log.warning("telegram: setting the command menu failed: %s", error)
        for admin in self.settings.admin_ids:
            platform, _, user_id = admin.partition(":")
            if platform != PLATFORM or not user_id.isdigit():
                continue
            try:
                await bot.set_my_commands(ADMIN_COMMANDS, scope=BotCommandScopeChat(int(user_id)))
            except TelegramError as error:  # an admin who never started the bot has no chat yet
                log.info("telegram: admin menu for %s not set: %s", user_id, error)

    async def stop_taking_work(self) -> None:
        """No new updates; the ones already received finish. The bot can still deliver running jobs."""
        self._started = False
        await self.intake.stop()
        if self._webhook is not None:
            await self._webhook.stop()
            self._webhook = None
        updater = self.application.updater
        if updater is not None and updater.running:
            await updater.stop()
        if self.application.running:
            await self.application.stop()

    async def close(self) -> None:
        await self.stop_taking_work()
        await self.handlers.albums.close()
        await self.observer.close()
        await self.application.shutdown()


def _polling_failed(error: TelegramError) -> None:
    # PTB retries failed polls itself; a dropped connection or a Bot API hiccup is not a bug of ours.
    log.warning("telegram: polling for updates failed, retrying: %s", error)
