"""The credit ledger: every change is a ledger row plus the cached balance, in one transaction, with a
guarded update so a balance never goes below zero and a unique idempotency key so the same event never
counts twice. Reservations and refunds are SQL functions (image.accept_request, image.refund: migrations
0002 and 0003), called inside the statements that accept and end a job; a first request creates its user
with the welcome grant inside the accepting call too (image.accept_from_identity, migration 0004), with
the same ledger key as ensure_user here, so the grant is given once whichever comes first. Grants and
revokes are here."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from bot.core.models import LedgerEntry, UserIdentity

MAX_DISPLAY_NAME = 100  # characters kept of a platform's display name


@dataclass(frozen=True)
class UserRow:
    id: int
    balance: int


async def ensure_user(conn: asyncpg.Connection, who: UserIdentity, starting_credits: int) -> UserRow:
    """The user's row, created (with the welcome grant) on first contact."""
    name = who.display_name[:MAX_DISPLAY_NAME]
    row = await conn.fetchrow(
        "SELECT id, balance, display_name FROM image.users WHERE platform = $1 AND platform_user_id = $2",
        who.platform, who.platform_user_id,
    )
    if row is not None:
        if name and row["display_name"] != name:
            await conn.execute("UPDATE image.users SET display_name = $2 WHERE id = $1", row["id"], name)
        return UserRow(row["id"], row["balance"])
    async with conn.transaction():
        created = await conn.fetchrow(
            """INSERT INTO image.users (platform, platform_user_id, display_name)
               VALUES ($1, $2, $3)
               ON CONFLICT (platform, platform_user_id) DO NOTHING
               RETURNING id, balance""",
            who.platform, who.platform_user_id, name,
        )
        if created is None:  # created by a concurrent first request
            return await ensure_user(conn, who, starting_credits)
        balance = 0
        if starting_credits > 0:
            balance = await _apply(conn, created["id"], starting_credits, "welcome", f"welcome:{created['id']}")
        return UserRow(created["id"], balance)


async def find_user(conn: asyncpg.Connection, platform: str, platform_user_id: str) -> UserRow | None:
    row = await conn.fetchrow(
        "SELECT id, balance FROM image.users WHERE platform = $1 AND platform_user_id = $2",
        platform, platform_user_id,
    )
    return UserRow(row["id"], row["balance"]) if row else None


async def adjust(
    conn: asyncpg.Connection, user_id: int, delta: int, *, admin_id: int | None, key: str
) -> tuple[int, int]:
    """An admin's grant (delta > 0) or revoke (delta < 0, capped at the balance).
    Returns (applied delta, new balance); a repeated key applies nothing again."""
    async with conn.transaction():
        current = await conn.fetchval("SELECT balance FROM image.users WHERE id = $1 FOR UPDATE", user_id)
        applied = delta if delta >= 0 else -min(-delta, current)
        if applied == 0:
            return 0, current
        reason = "grant" if applied > 0 else "revoke"
        inserted = await conn.fetchval(
            """INSERT INTO image.credit_ledger (user_id, delta, reason, admin_id, idempotency_key)
               VALUES ($1, $2, $3, $4, $5) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id""",
            user_id, applied, reason, admin_id, key,
        )
        if inserted is None:
            return 0, current
        balance = await conn.fetchval(
            "UPDATE image.users SET balance = balance + $2 WHERE id = $1 RETURNING balance", user_id, applied
        )
        return applied, balance


async def ledger(conn: asyncpg.Connection, user_id: int, limit: int = 50) -> list[LedgerEntry]:
    rows = await conn.fetch(
        """SELECT delta, reason, generation_id, created_at FROM image.credit_ledger
           WHERE user_id = $1 ORDER BY id DESC LIMIT $2""",
        user_id, limit,
    )
    return [LedgerEntry(r["delta"], r["reason"], r["generation_id"], r["created_at"]) for r in rows]


async def _apply(conn: asyncpg.Connection, user_id: int, delta: int, reason: str, key: str) -> int:
    await conn.execute(
        "INSERT INTO image.credit_ledger (user_id, delta, reason, idempotency_key) VALUES ($1, $2, $3, $4)",
        user_id, delta, reason, key,
    )
    return await conn.fetchval(
        "UPDATE image.users SET balance = balance + $2 WHERE id = $1 RETURNING balance", user_id, delta
    )
