"""The durable job queue: generations are the jobs. Claims use FOR UPDATE SKIP LOCKED so several bot
processes can share one database; leases let a crashed process's jobs be taken over."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from bot.core.generations import GENERATION_COLUMNS, IMAGE_COLUMNS, generation_from_row
from bot.core.metrics import CREDITS_REFUNDED, JOBS_FINISHED
from bot.core.models import Destination, Generation, ImageRecord, UserIdentity

# A job interrupted this many times (crashes mid-run) is failed and refunded rather than retried again.
MAX_ATTEMPTS = 3
# Results that could not be delivered for this long are given up on (the chat is gone).
DELIVERY_WINDOW = "1 day"

INTERRUPTED_MESSAGE = "The bot restarted while making your images and could not finish them."


# Two tiers keep the claim an index walk in queue order, never a sort of the whole queue: first the oldest
# job of a user with nothing running (a newcomer never waits behind a heavy user's backlog), then the oldest
# job of anyone still below the per-user cap.
_CLAIM = """
    WITH candidate AS (
        SELECT g.id FROM image.generations g
        WHERE g.status = 'queued' AND g.platform = ANY($1)
          AND {tier}
        ORDER BY g.created_at, g.id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    UPDATE image.generations g
    SET status = 'running', attempts = attempts + 1, lease_owner = $3,
        lease_expires_at = now() + make_interval(secs => $4), started_at = now()
    FROM candidate, image.users u WHERE g.id = candidate.id AND u.id = g.user_id
    RETURNING {columns}"""
CLAIM_IDLE_USER = _CLAIM.format(
    tier="""$2 > 0 AND NOT EXISTS (
        SELECT 1 FROM image.generations r WHERE r.user_id = g.user_id AND r.status = 'running')""",
    columns=GENERATION_COLUMNS,
)
CLAIM_BELOW_CAP = _CLAIM.format(
    tier="""(SELECT count(*) FROM image.generations r WHERE r.user_id = g.user_id AND r.status = 'running') < $2""",
    columns=GENERATION_COLUMNS,
)


async def claim_next(
    conn: asyncpg.Connection, platforms: Sequence[str], per_user_limit: int, owner: str, lease_seconds: float
) -> Generation | None:
    """Take the next job fairly (see the tiers above), under a lease held by `owner`."""
    for query in (CLAIM_IDLE_USER, CLAIM_BELOW_CAP):
        row = await conn.fetchrow(query, list(platforms), per_user_limit, owner, lease_seconds)
        if row is not None:
            return generation_from_row(row)
    return None


async def queue_position(conn: asyncpg.Connection, generation_id: str) -> int:
    """How many queued jobs were accepted before this one."""
    return await conn.fetchval(
        """SELECT count(*) FROM image.generations q, image.generations me
           WHERE me.id = $1 AND q.status = 'queued' AND (q.created_at, q.id) < (me.created_at, me.id)""",
        generation_id,
    )


@dataclass(frozen=True)
class NewJob:
    """A job to accept: what it makes, what it costs, where its result goes."""

    id: str
    owner: UserIdentity
    user_id: int
    prompt: str
    negative_prompt: str | None
    model: str
    aspect_ratio: str
    count: int
    seed: int
    kind: str
    parent_generation_id: str | None
    parent_image_id: str | None
    warnings: tuple[str, ...]
    cost: int
    idempotency_key: str | None
    destination: Destination


@dataclass(frozen=True)
class Acceptance:
    outcome: str  # accepted | duplicate | too_busy | too_fast | insufficient
    balance: int
    active: int  # the user's unfinished jobs
    retry_in: int  # too_fast: seconds until the oldest request of the minute leaves it
    ahead: int  # accepted: queued jobs in front of this one
    existing: str | None  # duplicate: the generation already recorded under the key
    generation: Generation | None  # accepted: the new job


async def accept(
    conn: asyncpg.Connection, job: NewJob, queued_limit: int, per_minute: int
) -> Acceptance:
    """Lock the user, check the key, the limits and the balance, reserve and record the job: one round
    trip, one atomic statement (image.accept_request, migrations/0003)."""
    destination = job.destination
    row = await conn.fetchrow(
        """SELECT * FROM image.accept_request(
               $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)""",
        job.user_id, job.idempotency_key, job.cost, queued_limit, per_minute,
        job.id, job.prompt, job.negative_prompt, job.model, job.aspect_ratio, job.count, job.seed, job.kind,
        job.parent_generation_id, job.parent_image_id, list(job.warnings),
        destination.platform, destination.chat_id, destination.message_id, json.dumps(destination.context),
    )
    generation = None
    if row["r_outcome"] == "accepted":
        generation = Generation(
            id=job.id, user_id=job.user_id, owner=job.owner, prompt=job.prompt,
            negative_prompt=job.negative_prompt, model=job.model, aspect_ratio=job.aspect_ratio, count=job.count,
            seed=job.seed, kind=job.kind,  # type: ignore[arg-type]
            parent_generation_id=job.parent_generation_id, parent_image_id=job.parent_image_id, status="queued",
            error_code=None, error_message=None, warnings=job.warnings, credits_reserved=job.cost,
            credits_refunded=0, destination=destination, created_at=row["r_created_at"], started_at=None,
            finished_at=None,
        )
    return Acceptance(
        row["r_outcome"], row["r_balance"], row["r_active"], row["r_retry_in"], row["r_ahead"], row["r_existing"],
        generation,
    )


async def renew_leases(conn: asyncpg.Connection, owner: str, ids: Sequence[str], lease_seconds: float) -> None:
    await conn.execute(
        """UPDATE image.generations SET lease_expires_at = now() + make_interval(secs => $3)
           WHERE lease_owner = $1 AND id = ANY($2)""",
        owner, list(ids), lease_seconds,
    )


@dataclass(frozen=True)
class Outcome:
    status: str  # succeeded | partial | failed
    images: Sequence[ImageRecord]
    refund: int
    error_code: str | None
    error_message: str | None


_FINISH = f"""
    WITH job AS (
        UPDATE image.generations g
        SET status = $3, error_code = $4, error_message = $5, credits_refunded = $6,
            finished_at = now(), lease_expires_at = now() + make_interval(secs => $7)
        FROM image.users u
        WHERE g.id = $1 AND g.status = 'running' AND g.lease_owner = $2 AND u.id = g.user_id
        RETURNING {GENERATION_COLUMNS}
    ), stored AS (
        INSERT INTO image.images ({IMAGE_COLUMNS})
        SELECT i.* FROM unnest(
            $8::text[], $9::text[], $10::smallint[], $11::text[], $12::text[], $13::text[],
            $14::integer[], $15::integer[], $16::integer[], $17::bigint[], $18::jsonb[]) AS i
        WHERE EXISTS (SELECT 1 FROM job)
    )
    SELECT job.*, image.refund(job.user_id, $6, job.id) FROM job"""


async def finish(
    conn: asyncpg.Connection, generation_id: str, owner: str, outcome: Outcome, lease_seconds: float
) -> Generation | None:
    """Record a run's result, its images and its refund, in one statement (so all of it or none).
    Returns the finished job, or None when it is no longer ours (cancelled meanwhile, or taken over after
    a lost lease)."""
    images = outcome.images
    row = await conn.fetchrow(
        _FINISH,
        generation_id, owner, outcome.status, outcome.error_code, outcome.error_message, outcome.refund,
        lease_seconds,
        [i.id for i in images], [i.generation_id for i in images], [i.index for i in images],
        [i.storage_key for i in images], [i.url for i in images], [i.mime_type for i in images],
        [i.width for i in images], [i.height for i in images], [i.bytes for i in images],
        [i.seed for i in images], [json.dumps(i.file_refs) for i in images],
    )
    if row is None:
        return None
    JOBS_FINISHED.labels(outcome.status).inc()
    CREDITS_REFUNDED.inc(outcome.refund)
    return generation_from_row(row)


async def cancel(
    conn: asyncpg.Connection, generation_id: str, message: str, owner: str, lease_seconds: float
) -> int | None:
    """Cancel a queued or running job and refund all of it (nothing was delivered): the credits refunded,
    or None if it had already ended. The canceller takes the delivery lease: it tells the user."""
    return await _end_with_full_refund(conn, generation_id, "cancelled", "cancelled", message, owner, lease_seconds)


async def fail_unstarted(
    conn: asyncpg.Connection, generation_id: str, code: str, message: str, owner: str, lease_seconds: float
) -> int | None:
    """Fail a queued or running job with a full refund (shutdown, too many interruptions): the credits
    refunded, or None if it had already ended."""
    return await _end_with_full_refund(conn, generation_id, "failed", code, message, owner, lease_seconds)


async def _end_with_full_refund(
    conn: asyncpg.Connection, generation_id: str, status: str, code: str, message: str, owner: str,
    lease_seconds: float,
) -> int | None:
    refunded = await conn.fetchval(
        """WITH job AS (
               UPDATE image.generations
               SET status = $2, error_code = $3, error_message = $4, credits_refunded = credits_reserved,
                   finished_at = now(), lease_owner = $5, lease_expires_at = now() + make_interval(secs => $6)
               WHERE id = $1 AND status IN ('queued', 'running')
               RETURNING user_id, credits_reserved
           )
           SELECT job.credits_reserved, image.refund(job.user_id, job.credits_reserved, $1) FROM job""",
        generation_id, status, code, message, owner, lease_seconds,
    )
    if refunded is None:
        return None
    JOBS_FINISHED.labels(status).inc()
    CREDITS_REFUNDED.inc(refunded)
    return refunded


async def mark_delivered(conn: asyncpg.Connection, generation_id: str) -> None:
    await conn.execute(
        "UPDATE image.generations SET delivered_at = now(), lease_owner = NULL WHERE id = $1", generation_id
    )


async def recover_expired(
    conn: asyncpg.Connection, platforms: Sequence[str], owner: str, lease_seconds: float
) -> list[str]:
    """Jobs whose worker died: requeue them, or fail and refund those interrupted too often.
    Returns the ids that were failed (they need their failure delivered)."""
    await conn.execute(
        """UPDATE image.generations SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL
           WHERE status = 'running' AND lease_expires_at < now() AND attempts < $2 AND platform = ANY($1)""",
        list(platforms), MAX_ATTEMPTS,
    )
    ids = await conn.fetch(
        """SELECT id FROM image.generations
           WHERE status = 'running' AND lease_expires_at < now() AND attempts >= $2 AND platform = ANY($1)""",
        list(platforms), MAX_ATTEMPTS,
    )
    failed = []
    for row in ids:
        refunded = await fail_unstarted(conn, row["id"], "interrupted", INTERRUPTED_MESSAGE, owner, lease_seconds)
        if refunded is not None:
            failed.append(row["id"])
    return failed


async def claim_undelivered(
    conn: asyncpg.Connection, platforms: Sequence[str], owner: str, lease_seconds: float, limit: int = 20
) -> list[str]:
    """Finished jobs nobody is delivering (the deliverer died): take them over for delivery."""
    await conn.execute(
        f"""UPDATE image.generations SET delivered_at = now()
            WHERE delivered_at IS NULL AND finished_at < now() - interval '{DELIVERY_WINDOW}'"""
    )
    rows = await conn.fetch(
        """WITH candidate AS (
               SELECT id FROM image.generations
               WHERE delivered_at IS NULL AND status IN ('succeeded', 'partial', 'failed', 'cancelled')
                 AND platform = ANY($1) AND (lease_expires_at IS NULL OR lease_expires_at < now())
               ORDER BY finished_at LIMIT $4
               FOR UPDATE SKIP LOCKED
           )
           UPDATE image.generations g
           SET lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3)
           FROM candidate WHERE g.id = candidate.id
           RETURNING g.id""",
        list(platforms), owner, lease_seconds, limit,
    )
    return [r["id"] for r in rows]
