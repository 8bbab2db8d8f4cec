"""Accounts and their credits, as front ends and the operator's command line ask for them: a balance, an
admin's grant, the operator's adjustment, the ledger, and one account across platforms (/link). The credit
rules are bot.core.credits'; linking is bot.core.accounts'."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from bot.core import accounts, credits
from bot.core.credits import CreditPolicy
from bot.core.database_errors import translates_connection_errors
from bot.core.errors import Forbidden, InvalidRequest, NotFound
from bot.core.models import Balance, LedgerEntry, ModelPrice, UserIdentity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Adjustment:
    applied: int
    balance: int


class AccountService:
    def __init__(self, pool: asyncpg.Pool, credit_policy: CreditPolicy, prices: Sequence[ModelPrice]) -> None:
        self.pool = pool
        self.credit_policy = credit_policy
        self.prices = tuple(prices)  # what each model costs, shown with a balance

    @translates_connection_errors
    async def balance(self, who: UserIdentity) -> Balance:
        async with self.pool.acquire() as conn:
            user = await credits.ensure_user(conn, who, self.credit_policy.welcome)
            bought = await credits.bought(conn, user.account_id)
        return Balance(self.credit_policy.enabled, user.balance, self.prices, bought)

    # --- credits administration ----------------------------------------------------------------

    def is_admin(self, who: UserIdentity) -> bool:
        return self.credit_policy.is_admin(who)

    @translates_connection_errors
    async def grant(
        self, admin: UserIdentity, target: UserIdentity, amount: int, idempotency_key: str | None = None
    ) -> Adjustment:
        """An admin adds (amount > 0) or removes (amount < 0) credits. Removal stops at zero."""
        if not self.is_admin(admin):
            raise Forbidden("Only the bot's admins can change credits.")
        if amount == 0 or abs(amount) > 1_000_000:
            raise InvalidRequest("The amount must be a whole number between 1 and 1000000.")
        async with self.pool.acquire() as conn:
            admin_row = await credits.ensure_user(conn, admin, self.credit_policy.welcome)
            target_row = await credits.ensure_user(conn, target, self.credit_policy.welcome)
            key = f"admin:{admin.platform}:{idempotency_key or secrets.token_hex(8)}"
            applied, balance = await credits.adjust(conn, target_row.id, amount, admin_id=admin_row.id, key=key)
        log.info("credits: %s:%s changed %s:%s by %d", admin.platform, admin.platform_user_id,
                 target.platform, target.platform_user_id, applied)
        return Adjustment(applied, balance)

    @translates_connection_errors
    async def operator_adjust(self, target: UserIdentity, amount: int) -> Adjustment:
        """The same, from the operator's command line (no chat admin involved)."""
        async with self.pool.acquire() as conn:
            row = await credits.ensure_user(conn, target, self.credit_policy.welcome)
            applied, balance = await credits.adjust(
                conn, row.id, amount, admin_id=None, key=f"operator:{secrets.token_hex(8)}"
            )
        return Adjustment(applied, balance)

    @translates_connection_errors
    async def ledger(self, target: UserIdentity, limit: int = 50) -> tuple[int, list[LedgerEntry]]:
        async with self.pool.acquire() as conn:
            row = await credits.find_user(conn, target.platform, target.platform_user_id)
            if row is None:
                raise NotFound("That user")
            return row.balance, await credits.ledger(conn, row.account_id, limit)

    # --- one account across platforms ---------------------------------------------------------

    @translates_connection_errors
    async def link_code(self, who: UserIdentity) -> str:
        """A one-time code that joins another platform's identity to the caller's account."""
        async with self.pool.acquire() as conn:
            user = await credits.ensure_user(conn, who, self.credit_policy.welcome)
            return await accounts.issue_code(conn, user.id)

    @translates_connection_errors
    async def link(self, who: UserIdentity, code: str) -> accounts.Linked:
        """Join the caller to the account whose identity made `code`: balances add up, histories join."""
        async with self.pool.acquire() as conn:
            user = await credits.ensure_user(conn, who, self.credit_policy.welcome)
            linked = await accounts.use_code(conn, user.id, code)
        log.info("accounts: %s:%s linked (%s)", who.platform, who.platform_user_id, ", ".join(linked.platforms))
        return linked
