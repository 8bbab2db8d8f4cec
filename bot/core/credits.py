"""Credits: every rule about them, and the SQL that applies them.

Every change is a ledger row plus the cached balance, in one transaction, with a guarded update so a
balance never goes below zero and a unique idempotency key so the same event never counts twice. Rules
that must run inside another statement, for atomicity, are SQL functions; each is called from here only:

- the welcome grant: image.ensure_user (migrations/0005), through `ensure_user` and the accepting call;
- the reservation, with the request's limits: image.accept_job (migrations/0016), `accept`;
- refunds: image.refund (migrations/0002), in the statements `refund_sql` writes, for a finished job (the
  images not made, `refund_for_missing`) and for one ended early (all of it, `end_with_full_refund`).

Grants and revokes by admins are `adjust`. Purchases are `purchase` (one ledger row, reason 'purchase', keyed by
the platform's charge or entitlement id) and taking one back is `refund_purchase` (reason 'purchase_refund',
at most the balance; what was already spent is recorded as the purchase's shortfall and logged).
Every ledger row written from Python goes through `_entry`. Every account is locked through
image.lock_accounts (migrations/0016): all a transaction needs at once, in one order, so none deadlock."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

from bot.core.catalogue import ModelSpec
from bot.core.database import Connection
from bot.core.generations import NewGeneration
from bot.core.metrics import CREDITS_REFUNDED, JOBS_FINISHED
from bot.core.models import Generation, GenerationStatus, LedgerEntry, UserIdentity

log = logging.getLogger(__name__)

MAX_DISPLAY_NAME = 100  # characters kept of a platform's display name


@dataclass(frozen=True)
class CreditPolicy:
    enabled: bool
    starting_credits: int
    admin_ids: frozenset[str]  # "platform:user_id"

    def cost(self, model: ModelSpec, count: int) -> int:
        """What a request reserves: the model's price per image (nothing when credits are off)."""
        return model.cost * count if self.enabled else 0

    @property
    def welcome(self) -> int:
        """The grant a user gets on first contact."""
        return self.starting_credits if self.enabled else 0

    def is_admin(self, who: UserIdentity) -> bool:
        return f"{who.platform}:{who.platform_user_id}" in self.admin_ids


@dataclass(frozen=True)
class CreditPack:
    """Credits sold together, priced per platform: in Telegram Stars, and as a Discord SKU (whose price is
    set in the Developer Portal). A pack without a price on a platform is not offered there."""

    name: str
    credits: int
    stars: int | None = None
    discord_sku_id: str | None = None


# --- users and the welcome grant ---------------------------------------------------------------


@dataclass(frozen=True)
class UserRow:
    id: int  # the platform identity's row
    balance: int  # its account's
    account_id: int


async def ensure_user(conn: Connection, who: UserIdentity, welcome: int) -> UserRow:
    """The user's row, created (with the welcome grant) on first contact; the display name kept current."""
    row = await conn.fetchrow(
        "SELECT r_user_id, r_balance FROM image.ensure_user($1, $2, $3, $4)",
        who.platform, who.platform_user_id, who.display_name[:MAX_DISPLAY_NAME], welcome,
    )
    assert row is not None  # the function returns one row
    account_id: int = await conn.fetchval("SELECT account_id FROM image.users WHERE id = $1", row["r_user_id"])
    return UserRow(row["r_user_id"], row["r_balance"], account_id)


async def find_user(conn: Connection, platform: str, platform_user_id: str) -> UserRow | None:
    row = await conn.fetchrow(
        """SELECT u.id, a.balance, u.account_id FROM image.users u JOIN image.accounts a ON a.id = u.account_id
           WHERE u.platform = $1 AND u.platform_user_id = $2""",
        platform, platform_user_id,
    )
    return UserRow(row["id"], row["balance"], row["account_id"]) if row else None


async def balance(conn: Connection, user_id: int) -> int:
    """The balance of the account that pays for the user."""
    value: int = await conn.fetchval(
        "SELECT a.balance FROM image.users u JOIN image.accounts a ON a.id = u.account_id WHERE u.id = $1", user_id
    )
    return value


# --- reserving, on acceptance ------------------------------------------------------------------


class AcceptOutcome(StrEnum):
    """What image.accept_job decided (its r_outcome)."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # the same platform event again: the generation already recorded under its key
    TOO_BUSY = "too_busy"  # the user has too many unfinished generations
    TOO_FAST = "too_fast"  # the user made too many requests this minute
    INSUFFICIENT = "insufficient"  # the balance does not cover the cost


@dataclass(frozen=True)
class Acceptance:
    outcome: AcceptOutcome
    user_id: int  # the asker's row, created on first contact whatever the outcome
    balance: int
    active: int  # the user's unfinished jobs
    retry_in: int  # too_fast: seconds until the oldest request of the minute leaves it
    ahead: int  # accepted: queued jobs in front of this one
    existing: str | None  # duplicate: the generation already recorded under the key
    generation: Generation | None  # accepted: the new job


_ACCEPT = "SELECT * FROM image.accept_job($1, $2, $3, $4, $5, $6, $7::jsonb)"


async def accept(
    conn: Connection, new: NewGeneration, welcome: int, queued_limit: int, per_minute: int
) -> Acceptance:
    """Find or create the user (welcome grant included), lock them, check the key, the limits and the
    balance, reserve and record the job: one round trip, one atomic statement."""
    owner = new.owner
    row = await conn.fetchrow(
        _ACCEPT,
        owner.platform, owner.platform_user_id, owner.display_name[:MAX_DISPLAY_NAME], welcome,
        queued_limit, per_minute, json.dumps(new.row()),
    )
    assert row is not None  # the function returns one row
    outcome, user_id = AcceptOutcome(row["r_outcome"]), row["r_user_id"]
    generation = new.queued(user_id, row["r_created_at"]) if outcome == AcceptOutcome.ACCEPTED else None
    return Acceptance(
        outcome, user_id, row["r_balance"], row["r_active"], row["r_retry_in"], row["r_ahead"], row["r_existing"],
        generation,
    )


# --- refunding ---------------------------------------------------------------------------------


def refund_for_missing(generation: Generation, kept: int) -> int:
    """What a finished job gives back: the images it did not deliver, at the price reserved for each;
    all of it when none were."""
    if kept == 0:
        return generation.credits_reserved
    per_image = generation.credits_reserved // generation.count if generation.count else 0
    return per_image * (generation.count - kept)


def refund_sql(user_id: str, amount: str, generation_id: str) -> str:
    """The SQL expression that refunds `amount` for a job (a ledger row keyed by the job, so never twice,
    and the balance), for statements that end jobs. Arguments are SQL expressions."""
    return f"image.refund({user_id}, {amount}, {generation_id})"


async def end_with_full_refund(
    conn: Connection, generation_id: str, status: GenerationStatus, code: str, message: str, owner: str,
    lease_seconds: float,
) -> int | None:
    """End a queued or running job (cancelled, or failed before it could finish) and refund all of it:
    nothing was delivered. The credits refunded, or None if it had already ended. `owner` takes the
    delivery lease: it tells the user."""
    refunded: int | None = await conn.fetchval(
        f"""WITH job AS (
               UPDATE image.generations
               SET status = $2, error_code = $3, error_message = $4, credits_refunded = credits_reserved,
                   finished_at = now(), lease_owner = $5, lease_expires_at = now() + make_interval(secs => $6)
               WHERE id = $1 AND status IN ('queued', 'running')
               RETURNING user_id, credits_reserved
           )
           SELECT job.credits_reserved, {refund_sql("job.user_id", "job.credits_reserved", "$1")} FROM job""",
        generation_id, status, code, message, owner, lease_seconds,
    )
    if refunded is None:
        return None
    JOBS_FINISHED.labels(status).inc()
    CREDITS_REFUNDED.inc(refunded)
    return refunded


# --- locking accounts ----------------------------------------------------------------------------


def lock_accounts_sql(user_ids: str) -> str:
    """The SQL expression that locks the accounts paying for `user_ids` (a bigint[] expression) until the
    transaction ends: all at once, in the one order every account lock follows, so none deadlock; a link
    moving one of the users meanwhile is followed (image.lock_accounts, migrations/0016)."""
    return f"image.lock_accounts({user_ids})"


async def lock_accounts(conn: Connection, user_ids: Sequence[int]) -> dict[int, int]:
    """Lock the accounts paying for these users (as `lock_accounts_sql`); each user's account, by user id."""
    await conn.execute(f"SELECT {lock_accounts_sql('$1::bigint[]')}", list(user_ids))
    # A statement of its own: its snapshot is taken after the locks, so it sees where a link moved a user.
    rows = await conn.fetch("SELECT id, account_id FROM image.users WHERE id = ANY($1::bigint[])", list(user_ids))
    return {r["id"]: r["account_id"] for r in rows}


# --- admins' grants and revokes ----------------------------------------------------------------


@dataclass(frozen=True)
class _Locked:
    account_id: int
    balance: int


async def _locked_balance(conn: Connection, user_id: int) -> _Locked:
    """The account that pays for the user and its balance, locked until the transaction ends
    (image.lock_account: a link moving the user meanwhile is followed)."""
    row = await conn.fetchrow("SELECT r_account_id, r_balance FROM image.lock_account($1)", user_id)
    assert row is not None  # the function returns one row
    return _Locked(row["r_account_id"], row["r_balance"])


async def _entry(
    conn: Connection, user_id: int, account_id: int, delta: int, reason: str, key: str, admin_id: int | None = None
) -> int | None:
    """One ledger row and the account's cached balance, inside the caller's transaction, with the account
    locked. The new balance, or None if the key was already used (nothing applied)."""
    inserted = await conn.fetchval(
        """INSERT INTO image.credit_ledger (user_id, account_id, delta, reason, admin_id, idempotency_key)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id""",
        user_id, account_id, delta, reason, admin_id, key,
    )
    if inserted is None:
        return None
    new_balance: int = await conn.fetchval(
        "UPDATE image.accounts SET balance = balance + $2 WHERE id = $1 RETURNING balance", account_id, delta
    )
    return new_balance


async def adjust(
    conn: Connection, user_id: int, delta: int, *, admin_id: int | None, key: str
) -> tuple[int, int]:
    """An admin's grant (delta > 0) or revoke (delta < 0, capped at the balance).
    Returns (applied delta, new balance); a repeated key applies nothing again."""
    async with conn.transaction():
        locked = await _locked_balance(conn, user_id)
        current = locked.balance
        applied = delta if delta >= 0 else -min(-delta, current)
        if applied == 0:
            return 0, current
        reason = "grant" if applied > 0 else "revoke"
        new_balance = await _entry(conn, user_id, locked.account_id, applied, reason, key, admin_id)
        if new_balance is None:
            return 0, current
        return applied, new_balance


# --- purchases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Purchased:
    new: bool  # False: this charge was already credited (a replayed event); nothing was added
    credits: int
    balance: int


async def purchase(
    conn: Connection, user_id: int, platform: str, charge_id: str, pack: CreditPack,
    price: int | None = None, currency: str | None = None, order_id: str | None = None,
) -> Purchased:
    """Credit a paid pack, once per (platform, charge id): the purchase row and its ledger row together."""
    async with conn.transaction():
        locked = await _locked_balance(conn, user_id)
        purchase_id = await conn.fetchval(
            """INSERT INTO image.purchases (platform, charge_id, user_id, order_id, pack, credits, price, currency)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (platform, charge_id) DO NOTHING RETURNING id""",
            platform, charge_id, user_id, order_id, pack.name, pack.credits, price, currency,
        )
        if purchase_id is None:
            return Purchased(False, 0, locked.balance)
        new_balance = await _entry(
            conn, user_id, locked.account_id, pack.credits, "purchase", f"purchase:{platform}:{charge_id}"
        )
        assert new_balance is not None  # the key is the purchase's, new just above
    log.info("credits: purchase %s:%s of %s (%d credits) by user %d", platform, charge_id, pack.name,
             pack.credits, user_id)
    return Purchased(True, pack.credits, new_balance)


@dataclass(frozen=True)
class PurchaseRefund:
    user_id: int
    credits: int  # what the purchase gave
    taken_back: int
    shortfall: int  # already spent: not taken back
    balance: int
    new: bool  # False: this purchase had already been refunded


async def refund_purchase(conn: Connection, platform: str, charge_id: str) -> PurchaseRefund | None:
    """Take a refunded purchase's credits back, as far as the balance allows, once. None: no such purchase."""
    async with conn.transaction():
        row = await conn.fetchrow(
            """SELECT user_id, credits, refunded_at, taken_back, shortfall FROM image.purchases
               WHERE platform = $1 AND charge_id = $2 FOR UPDATE""",
            platform, charge_id,
        )
        if row is None:
            return None
        user_id = row["user_id"]
        locked = await _locked_balance(conn, user_id)
        current = locked.balance
        if row["refunded_at"] is not None:
            return PurchaseRefund(user_id, row["credits"], row["taken_back"], row["shortfall"], current, False)
        taken = min(row["credits"], current)
        shortfall = row["credits"] - taken
        if taken:
            key = f"purchase_refund:{platform}:{charge_id}"
            applied = await _entry(conn, user_id, locked.account_id, -taken, "purchase_refund", key)
            current = applied if applied is not None else current
        await conn.execute(
            """UPDATE image.purchases SET refunded_at = now(), taken_back = $3, shortfall = $4
               WHERE platform = $1 AND charge_id = $2""",
            platform, charge_id, taken, shortfall,
        )
    if shortfall:
        log.warning("credits: purchase %s:%s refunded, but %d of its %d credits were already spent (user %d)",
                    platform, charge_id, shortfall, row["credits"], user_id)
    return PurchaseRefund(user_id, row["credits"], taken, shortfall, current, True)


@dataclass(frozen=True)
class PurchaseRecord:
    platform: str
    charge_id: str
    pack: str
    credits: int
    price: int | None
    currency: str | None
    created_at: datetime
    refunded_at: datetime | None
    taken_back: int
    shortfall: int


_PURCHASE_COLUMNS = (
    "p.platform, p.charge_id, p.pack, p.credits, p.price, p.currency, p.created_at, p.refunded_at, p.taken_back, "
    "p.shortfall"
)


_ACCOUNT_USERS = "SELECT id FROM image.users WHERE account_id = $1"


async def purchases(conn: Connection, account_id: int, limit: int = 50) -> list[PurchaseRecord]:
    """The account's purchases (by any of its identities), newest first."""
    rows = await conn.fetch(
        f"""SELECT {_PURCHASE_COLUMNS} FROM image.purchases p WHERE p.user_id IN ({_ACCOUNT_USERS})
            ORDER BY p.created_at DESC, p.id DESC LIMIT $2""",
        account_id, limit,
    )
    return [PurchaseRecord(**dict(r)) for r in rows]


async def bought(conn: Connection, account_id: int) -> int:
    """Credits the account bought and kept (refunds taken back subtracted)."""
    value: int = await conn.fetchval(
        f"SELECT coalesce(sum(credits - taken_back), 0) FROM image.purchases WHERE user_id IN ({_ACCOUNT_USERS})",
        account_id,
    )
    return value


# --- accounts joined (bot.core.accounts decides when) -------------------------------------------


async def join_accounts(conn: Connection, into_account: int, from_account: int, user_id: int, key: str) -> int:
    """Move one account's whole balance into another, inside the caller's transaction (both accounts locked
    by the caller): two 'link' ledger rows that say so, written even when nothing moves, by the identity
    that joined. Returns the credits moved."""
    moved: int = await conn.fetchval("SELECT balance FROM image.accounts WHERE id = $1", from_account)
    out = await _entry(conn, user_id, from_account, -moved, "link", f"{key}:out")
    came = await _entry(conn, user_id, into_account, moved, "link", f"{key}:in")
    assert out is not None and came is not None  # a link's key is used once
    return moved


@dataclass(frozen=True)
class DayTotal:
    day: date
    platform: str
    currency: str | None
    purchases: int
    credits: int
    paid: int  # in the currency's units (Stars), where known
    refunded: int  # purchases since refunded
    shortfall: int  # refunded credits that were already spent


async def daily_totals(conn: Connection, days: int) -> list[DayTotal]:
    """Purchases per day (UTC) and platform, the newest day first."""
    rows = await conn.fetch(
        """SELECT (created_at AT TIME ZONE 'UTC')::date AS day, platform, currency, count(*) AS purchases,
                  sum(credits) AS credits, coalesce(sum(price), 0) AS paid,
                  count(refunded_at) AS refunded, sum(shortfall) AS shortfall
           FROM image.purchases WHERE created_at > now() - make_interval(days => $1)
           GROUP BY 1, 2, 3 ORDER BY 1 DESC, 2, 3""",
        days,
    )
    return [DayTotal(**dict(r)) for r in rows]


async def shortfalls(conn: Connection) -> list[PurchaseRecord]:
    """Refunded purchases whose credits had already been spent: for the operator to settle."""
    rows = await conn.fetch(
        f"""SELECT {_PURCHASE_COLUMNS} FROM image.purchases p WHERE p.shortfall > 0 ORDER BY p.refunded_at DESC"""
    )
    return [PurchaseRecord(**dict(r)) for r in rows]


async def ledger(conn: Connection, account_id: int, limit: int = 50) -> list[LedgerEntry]:
    rows = await conn.fetch(
        """SELECT delta, reason, generation_id, created_at FROM image.credit_ledger
           WHERE account_id = $1 ORDER BY id DESC LIMIT $2""",
        account_id, limit,
    )
    return [LedgerEntry(r["delta"], r["reason"], r["generation_id"], r["created_at"]) for r in rows]
