"""Selling credits: the packs offered on each platform, orders, payments and their refunds. Front ends
call this; every credit it moves goes through bot.core.credits (purchase, refund_purchase)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from bot.core import credits, orders
from bot.core.credits import CreditPack, CreditPolicy, DayTotal, Purchased, PurchaseRecord, PurchaseRefund
from bot.core.database_errors import translates_connection_errors
from bot.core.errors import Forbidden, InvalidRequest, NotFound
from bot.core.models import UserIdentity

log = logging.getLogger(__name__)

STARS = "XTR"  # Telegram's currency code for Stars
TELEGRAM = "telegram"
DISCORD = "discord"

NOT_SOLD_HERE = "Credits are not sold here."
UNKNOWN_ORDER = "This invoice is not one this bot issued. Please use /buy for a new one."
PACK_GONE = "That pack is no longer sold. Please use /buy to see what is."
ALREADY_PAID = "This invoice was already paid. Please use /buy for a new one."
NOT_YOURS = "This invoice was made for someone else. Please use /buy for your own."
BANNED = "Sorry, you can't buy credits here."
PRICE_CHANGED = "The price of this pack has changed. Please use /buy for a new invoice."


@dataclass(frozen=True)
class Checkout:
    """A payment about to be made: None refusal means it may go ahead."""

    refusal: str | None
    order: orders.Order | None = None


@dataclass(frozen=True)
class RefundTarget:
    """A purchase an admin asked to refund: whose (the platform's user id) and whether it already was."""

    platform_user_id: str
    credits: int
    refunded: bool


class Shop:
    def __init__(
        self, pool: asyncpg.Pool, packs: Sequence[CreditPack], policy: CreditPolicy, banned: frozenset[str]
    ) -> None:
        self.pool = pool
        self.packs = tuple(packs)
        self.policy = policy
        self.banned = banned  # "platform:user_id"

    def packs_for(self, platform: str) -> list[CreditPack]:
        """The packs sold on a platform: those with a price there (none while credits are off)."""
        if not self.policy.enabled:
            return []
        if platform == TELEGRAM:
            return [p for p in self.packs if p.stars is not None]
        if platform == DISCORD:
            return [p for p in self.packs if p.discord_sku_id is not None]
        return []

    def pack(self, platform: str, name: str) -> CreditPack | None:
        return next((p for p in self.packs_for(platform) if p.name == name), None)

    def pack_for_sku(self, sku_id: str) -> CreditPack | None:
        return next((p for p in self.packs_for(DISCORD) if p.discord_sku_id == sku_id), None)

    def is_banned(self, who: UserIdentity) -> bool:
        return f"{who.platform}:{who.platform_user_id}" in self.banned

    # --- Telegram Stars ------------------------------------------------------------------------

    @translates_connection_errors
    async def order_stars(self, who: UserIdentity, pack_name: str) -> tuple[CreditPack, orders.Order]:
        """An order for a pack, priced in Stars: its id is the invoice's payload."""
        if self.is_banned(who):
            raise Forbidden(BANNED)
        pack = self.pack(TELEGRAM, pack_name)
        if pack is None or pack.stars is None:
            raise InvalidRequest(PACK_GONE)
        async with self.pool.acquire() as conn:
            user = await credits.ensure_user(conn, who, self.policy.welcome)
            order = await orders.issue(conn, user.id, TELEGRAM, pack.name, pack.credits, pack.stars, STARS)
        return pack, order

    @translates_connection_errors
    async def check_checkout(self, who: UserIdentity, payload: str, currency: str, total: int) -> Checkout:
        """Whether a payment about to be made is for an order this bot issued to this user, for a pack still
        sold, at its price, not yet paid. Only reads: quick, to answer within Telegram's 10 seconds."""
        if self.is_banned(who):
            return Checkout(BANNED)
        async with self.pool.acquire() as conn:
            order = await orders.find(conn, payload)
            if order is None or order.platform != who.platform:
                return Checkout(UNKNOWN_ORDER)
            user = await credits.find_user(conn, who.platform, who.platform_user_id)
            if user is None or user.id != order.user_id:
                return Checkout(NOT_YOURS)
            paid = await conn.fetchval("SELECT 1 FROM image.purchases WHERE order_id = $1", order.id)
        if paid:
            return Checkout(ALREADY_PAID)
        pack = self.pack(order.platform, order.pack)
        if pack is None:
            return Checkout(PACK_GONE)
        if currency != order.currency or total != order.price:
            return Checkout(PRICE_CHANGED)
        return Checkout(None, order)

    @translates_connection_errors
    async def paid(self, who: UserIdentity, charge_id: str, payload: str, currency: str, total: int) -> Purchased:
        """A payment went through: credit the order's pack, once per charge id. Telegram took the money, so
        a pack withdrawn since the pre-checkout is still honoured as ordered."""
        async with self.pool.acquire() as conn:
            user = await credits.ensure_user(conn, who, self.policy.welcome)
            order = await orders.find(conn, payload)
            if order is None:
                # Never issued, yet paid: pre-checkout refuses these, so this is for the operator to look at.
                log.error("shop: payment %s by %s:%s names no order (%r)", charge_id, who.platform,
                          who.platform_user_id, payload[:64])
                raise InvalidRequest(
                    f"I couldn't match this payment to an order. Please send /paysupport this payment id: {charge_id}"
                )
            pack = CreditPack(order.pack, order.credits)
            return await credits.purchase(conn, user.id, who.platform, charge_id, pack, total, currency, order.id)

    # --- Discord entitlements ------------------------------------------------------------------

    @translates_connection_errors
    async def entitled(self, who: UserIdentity, entitlement_id: str, sku_id: str) -> Purchased | None:
        """A Discord purchase of a pack's SKU: credit it once per entitlement id. None: not a pack's SKU."""
        pack = self.pack_for_sku(sku_id)
        if pack is None:
            return None
        async with self.pool.acquire() as conn:
            user = await credits.ensure_user(conn, who, self.policy.welcome)
            return await credits.purchase(conn, user.id, DISCORD, entitlement_id, pack)

    # --- refunds -------------------------------------------------------------------------------

    @translates_connection_errors
    async def refund_target(self, platform: str, charge_id: str) -> RefundTarget:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                """SELECT u.platform_user_id, p.credits, p.refunded_at FROM image.purchases p
                   JOIN image.users u ON u.id = p.user_id WHERE p.platform = $1 AND p.charge_id = $2""",
                platform, charge_id,
            )
        if row is None:
            raise NotFound("That purchase")
        return RefundTarget(row["platform_user_id"], row["credits"], row["refunded_at"] is not None)

    @translates_connection_errors
    async def refunded(self, platform: str, charge_id: str) -> PurchaseRefund | None:
        """The platform gave the money back: take the credits back as far as the balance allows, once."""
        async with self.pool.acquire() as conn:
            return await credits.refund_purchase(conn, platform, charge_id)

    # --- reading -------------------------------------------------------------------------------

    @translates_connection_errors
    async def purchases(self, who: UserIdentity, limit: int = 50) -> list[PurchaseRecord]:
        async with self.pool.acquire() as conn:
            user = await credits.find_user(conn, who.platform, who.platform_user_id)
            if user is None:
                raise NotFound("That user")
            return await credits.purchases(conn, user.account_id, limit)

    @translates_connection_errors
    async def daily_totals(self, days: int) -> list[DayTotal]:
        async with self.pool.acquire() as conn:
            return await credits.daily_totals(conn, days)

    @translates_connection_errors
    async def shortfalls(self) -> list[PurchaseRecord]:
        async with self.pool.acquire() as conn:
            return await credits.shortfalls(conn)

