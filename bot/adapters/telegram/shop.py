"""Buying credits with Telegram Stars, and /link: the commands, the pack buttons, the invoice, the
pre-checkout answer, the payment and an admin's refund. The rules (what may be bought, by whom, credited
once) are the core's (bot.core.shop); this turns updates into its calls."""

from __future__ import annotations

import asyncio
import logging

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, LabeledPrice, Update
from telegram.error import BadRequest, TelegramError
from telegram.ext import ContextTypes

from bot.adapters import wording
from bot.adapters.telegram.handlers import TelegramHandlers, identity
from bot.adapters.telegram.history import HistorySender
from bot.adapters.telegram.sending import ChatGone, Sender, answer_query
from bot.core.account_service import AccountService
from bot.core.credits import CreditPack
from bot.core.errors import BotError, Forbidden, InvalidRequest, NotFound
from bot.core.prompt_questions import PromptQuestions
from bot.core.service import GenerationService
from bot.core.shop import STARS, TELEGRAM, Shop

log = logging.getLogger(__name__)

Context = ContextTypes.DEFAULT_TYPE

BUY_PREFIX = "buy:"  # callback_data of a pack's button: this and the pack's name (≤ 32 characters)
# Telegram waits 10 seconds for the pre-checkout answer; the check gets this much of it, then the payment
# is refused with a request to try again rather than left to time out.
CHECKOUT_CHECK_SECONDS = 6.0
TRY_AGAIN = "Sorry, I couldn't check this payment just now. Nothing was charged; please try again."


def pack_label(pack: CreditPack) -> str:
    return f"{wording.plural(pack.credits, 'credit')} for {pack.stars} ⭐"


def invoice_title(pack: CreditPack) -> str:
    return f"{wording.plural(pack.credits, 'credit')}"[:32]


def invoice_description(pack: CreditPack) -> str:
    return (f"{wording.plural(pack.credits, 'credit')} for making images with this bot, added to your balance "
            "as soon as the payment goes through. /terms")[:255]


class ShopHandlers(TelegramHandlers):
    """The image commands (TelegramHandlers) and those of the shop and of linking accounts."""

    def __init__(
        self, service: GenerationService, accounts: AccountService, questions: PromptQuestions, sender: Sender,
        history: HistorySender, shop: Shop, support: str, terms: str,
    ) -> None:
        super().__init__(service, accounts, questions, sender, history)
        self.shop = shop
        self.support = support
        self.terms_text = terms

    # --- buying ---------------------------------------------------------------------------------

    async def buy(self, update: Update, context: Context) -> None:
        message = update.effective_message
        if message is None:
            return
        async with self._answering(update):
            packs = self.shop.packs_for(TELEGRAM)
            if not packs:
                raise InvalidRequest("Credits are not for sale here.")
            keyboard = InlineKeyboardMarkup(
                [[InlineKeyboardButton(pack_label(p), callback_data=BUY_PREFIX + p.name)] for p in packs]
            )
            text = "Choose a pack of credits; you pay in Telegram Stars. /terms · /paysupport"
            await self._reply(message, text, keyboard)

    async def buy_button(self, update: Update, context: Context) -> None:
        """A pack chosen: an invoice for it, in Stars (no provider token), its payload the order's id."""
        query, user = update.callback_query, update.effective_user
        if query is None or user is None or query.message is None:
            return
        await answer_query(query, None)
        pack_name = (query.data or "").removeprefix(BUY_PREFIX)
        async with self._answering(update):
            pack, order = await self.shop.order_stars(identity(user), pack_name)
            assert pack.stars is not None  # sold in Stars: order_stars checked
            await self.sender.bot.send_invoice(
                chat_id=query.message.chat.id,
                title=invoice_title(pack),
                description=invoice_description(pack),
                payload=order.id,
                # Stars: no payment provider. Left out rather than "": PTB's ExtBot mangles an empty string.
                currency=STARS,
                prices=[LabeledPrice(invoice_title(pack), pack.stars)],
            )

    async def pre_checkout(self, update: Update, context: Context) -> None:
        """Answered in every case, within Telegram's 10 seconds: yes only for an order this bot issued to
        this user, for a pack it still sells, at its price, not yet paid."""
        query = update.pre_checkout_query
        if query is None:
            return
        refusal: str | None
        try:
            checkout = await asyncio.wait_for(
                self.shop.check_checkout(identity(query.from_user), query.invoice_payload, query.currency,
                                         query.total_amount),
                CHECKOUT_CHECK_SECONDS,
            )
            refusal = checkout.refusal
        except BotError as error:
            refusal = error.user_message
        except Exception:
            log.exception("telegram: checking pre-checkout %s failed", query.id)
            refusal = TRY_AGAIN
        if refusal is not None:
            log.info("telegram: pre-checkout %s refused: %s", query.id, refusal)
        try:
            await query.answer(ok=refusal is None, error_message=refusal)
        except TelegramError:
            log.warning("telegram: answering pre-checkout %s failed", query.id, exc_info=True)

    async def paid(self, update: Update, context: Context) -> None:
        """The money moved: credit the order, once per telegram_payment_charge_id."""
        message, user = update.effective_message, update.effective_user
        if message is None or user is None or message.successful_payment is None:
            return
        payment = message.successful_payment
        async with self._answering(update):
            purchased = await self.shop.paid(
                identity(user), payment.telegram_payment_charge_id, payment.invoice_payload, payment.currency,
                payment.total_amount,
            )
            if not purchased.new:
                log.info("telegram: payment %s delivered again; credited once", payment.telegram_payment_charge_id)
                return
            await self._reply(
                message,
                f"Thank you! {wording.plural(purchased.credits, 'credit')} added. "
                f"Your balance is {purchased.balance}.",
            )

    async def paysupport(self, update: Update, context: Context) -> None:
        message, user = update.effective_message, update.effective_user
        if message is None or user is None:
            return
        async with self._answering(update):
            try:
                bought = await self.shop.purchases(identity(user), 5)
            except NotFound:  # never used the bot
                bought = []
            lines = [f"Help with a payment: {self.support}",
                     "Please include the payment's id from the list below (or from your receipt)."]
            lines += [f"• {p.created_at:%Y-%m-%d} {p.pack}: {p.charge_id}" + (" (refunded)" if p.refunded_at else "")
                      for p in bought]
            await self._reply(message, "\n".join(lines))

    async def terms(self, update: Update, context: Context) -> None:
        if update.effective_message is not None:
            async with self._answering(update):
                await self._reply(update.effective_message, self.terms_text)

    async def refund(self, update: Update, context: Context) -> None:
        """Admins: `/refund <charge id>` gives the Stars back (refundStarPayment) and takes the credits back
        as far as the balance allows."""
        message, user = update.effective_message, update.effective_user
        if message is None or user is None:
            return
        async with self._answering(update):
            if not self.accounts.is_admin(identity(user)):
                raise Forbidden("Only the bot's admins can refund payments.")
            if len(context.args or []) != 1:
                raise InvalidRequest("Usage: /refund <telegram payment charge id>")
            charge_id = (context.args or [""])[0]
            target = await self.shop.refund_target(TELEGRAM, charge_id)
            if not target.refunded:
                try:
                    await self.sender.bot.refund_star_payment(int(target.platform_user_id), charge_id)
                except BadRequest as error:
                    # Refunded some other way already (Telegram's support): still record it here.
                    if "CHARGE_ALREADY_REFUNDED" not in error.message:
                        raise InvalidRequest(f"Telegram refused the refund: {error.message}") from None
            result = await self.shop.refunded(TELEGRAM, charge_id)
            assert result is not None  # refund_target found it
            text = (f"Refunded {charge_id}: took back {wording.plural(result.taken_back, 'credit')}"
                    + (f"; {result.shortfall} had already been spent." if result.shortfall else ".")
                    + ("" if result.new else " (It had already been refunded.)"))
            await self._reply(message, text)

    # --- one account across platforms -----------------------------------------------------------

    async def link(self, update: Update, context: Context) -> None:
        """`/link` gives a code for the other platform; `/link CODE` uses one made there."""
        message, user = update.effective_message, update.effective_user
        if message is None or user is None:
            return
        async with self._answering(update):
            args = context.args or []
            if args:
                linked = await self.accounts.link(identity(user), " ".join(args))
                await self._reply(message, wording.linked_text(linked))
            else:
                # A code is as good as the account: in a group, it goes to the private chat.
                code = await self.accounts.link_code(identity(user))
                try:
                    await self.sender.text(user.id, wording.link_code_text(code))
                except ChatGone:  # never opened a private chat with the bot
                    await self._reply(message, "Please start a private chat with me first, then send /link there.")
                    return
                if message.chat.id != user.id:
                    await self._reply(message, "📬 Sent your link code to our private chat.")
