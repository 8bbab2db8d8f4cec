"""Credits: every rule about them, and the SQL that applies them.

Every change is a ledger row plus the cached balance, in one transaction, with a guarded update so a
balance never goes below zero and a unique idempotency key so the same event never counts twice. Rules
that must run inside another statement, for atomicity, are SQL functions; each is called from here only:

- the welcome grant: image.ensure_user (migrations/0005), through `ensure_user` and the accepting call;
- the reservation, with the request's limits: image.accept_job (migrations/0006), `accept`;
- refunds: image.refund (migrations/0002), in the statements `refund_sql` writes, for a finished job (the
  images not made, `refund_for_missing`) and for one ended early (all of it, `end_with_full_refund`).

Grants and revokes by admins are `adjust`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

from bot.core.catalogue import ModelSpec
from bot.core.database import Connection
from bot.core.generations import NewGeneration
from bot.core.metrics import CREDITS_REFUNDED, JOBS_FINISHED
from bot.core.models import Generation, GenerationStatus, LedgerEntry, UserIdentity

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


# --- users and the welcome grant ---------------------------------------------------------------


@dataclass(frozen=True)
class UserRow:
    id: int
    balance: int


async def ensure_user(conn: Connection, who: UserIdentity, welcome: int) -> UserRow:
    """The user's row, created (with the welcome grant) on first contact; the display name kept current."""
    row = await conn.fetchrow(
        "SELECT r_user_id, r_balance FROM image.ensure_user($1, $2, $3, $4)",
        who.platform, who.platform_user_id, who.display_name[:MAX_DISPLAY_NAME], welcome,
    )
    assert row is not None  # the function returns one row
    return UserRow(row["r_user_id"], row["r_balance"])


async def find_user(conn: Connection, platform: str, platform_user_id: str) -> UserRow | None:
    row = await conn.fetchrow(
        "SELECT id, balance FROM image.users WHERE platform = $1 AND platform_user_id = $2",
        platform, platform_user_id,
    )
    return UserRow(row["id"], row["balance"]) if row else None


async def balance(conn: Connection, user_id: int) -> int:
    value: int = await conn.fetchval("SELECT balance FROM image.users WHERE id = $1", user_id)
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


# --- admins' grants and revokes ----------------------------------------------------------------


async def adjust(
    conn: Connection, user_id: int, delta: int, *, admin_id: int | None, key: str
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
        new_balance = await conn.fetchval(
            "UPDATE image.users SET balance = balance + $2 WHERE id = $1 RETURNING balance", user_id, applied
        )
        return applied, new_balance


async def ledger(conn: Connection, user_id: int, limit: int = 50) -> list[LedgerEntry]:
    rows = await conn.fetch(
        """SELECT delta, reason, generation_id, created_at FROM image.credit_ledger
           WHERE user_id = $1 ORDER BY id DESC LIMIT $2""",
        user_id, limit,
    )
    return [LedgerEntry(r["delta"], r["reason"], r["generation_id"], r["created_at"]) for r in rows]
