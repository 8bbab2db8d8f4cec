"""The durable job queue: a job is the work of making a generation (claimed, leased, recovered,
finished, delivered), addressed by the generation's id. Claims use FOR UPDATE SKIP LOCKED so several bot
processes can share one database; leases let a crashed process's jobs be taken over."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from bot.core import credits
from bot.core.database import Connection
from bot.core.events import DeliveryReceipt
from bot.core.generations import GENERATION_COLUMNS, IMAGE_COLUMNS, generation_from_row
from bot.core.metrics import CREDITS_REFUNDED, JOBS_FINISHED
from bot.core.models import Generation, GenerationStatus, ImageRecord

# A job interrupted this many times (crashes mid-run) is failed and refunded rather than retried again.
MAX_ATTEMPTS = 3
# Results that could not be delivered for this long are given up on (the chat is gone).
DELIVERY_WINDOW = "1 day"

INTERRUPTED_MESSAGE = "The bot restarted while making your images and could not finish them."


# Fairness, in one query for any number of jobs: each queued job's place in its user's own queue, plus
# what that user already has running, must stay within the per-user cap; of those, first the oldest job
# of each user with nothing running (a newcomer never waits behind a heavy user's backlog), then the
# rest oldest first. Taking `limit` jobs at once picks exactly what taking them one by one would.
# The ranking reads one pass over the queue; only the few chosen rows are then locked, by primary key
# (FOR UPDATE SKIP LOCKED re-checks each, so a job another worker took meanwhile is skipped, never taken
# twice; the slack of twice the limit makes up for such skipped rows).
_CLAIM = f"""
    WITH running AS (
        SELECT r.user_id, count(*) AS n FROM image.generations r WHERE r.status = 'running' GROUP BY r.user_id
    ), ranked AS (
        SELECT q.id, q.created_at, coalesce(running.n, 0) AS busy,
               row_number() OVER (PARTITION BY q.user_id ORDER BY q.created_at, q.id) AS place
        FROM image.generations q LEFT JOIN running ON running.user_id = q.user_id
        WHERE q.status = 'queued' AND q.platform = ANY($1)
    ), eligible AS MATERIALIZED (
        SELECT c.id, c.busy = 0 AND c.place = 1 AS newcomer, c.created_at FROM ranked c
        WHERE c.busy + c.place <= $2
        ORDER BY newcomer DESC, c.created_at, c.id
        LIMIT $5 * 2
    ), candidate AS (
        SELECT g.id FROM eligible e JOIN image.generations g ON g.id = e.id
        WHERE g.status = 'queued'
        ORDER BY e.newcomer DESC, e.created_at, e.id
        LIMIT $5
        FOR UPDATE OF g SKIP LOCKED
    )
    UPDATE image.generations g
    SET status = 'running', attempts = attempts + 1, lease_owner = $3,
        lease_expires_at = now() + make_interval(secs => $4), started_at = now()
    FROM candidate, image.users u WHERE g.id = candidate.id AND u.id = g.user_id
    RETURNING {GENERATION_COLUMNS}"""


async def claim(
    conn: Connection, platforms: Sequence[str], per_user_limit: int, owner: str, lease_seconds: float,
    limit: int,
) -> list[Generation]:
    """Take up to `limit` jobs fairly (see above), under leases held by `owner`, oldest first."""
    rows = await conn.fetch(_CLAIM, list(platforms), per_user_limit, owner, lease_seconds, limit)
    claimed = [generation_from_row(row) for row in rows]
    claimed.sort(key=lambda generation: (generation.created_at, generation.id))
    return claimed


async def queue_position(conn: Connection, generation_id: str) -> int:
    """How many queued jobs were accepted before this one."""
    ahead: int = await conn.fetchval(
        """SELECT count(*) FROM image.generations q, image.generations me
           WHERE me.id = $1 AND q.status = 'queued' AND (q.created_at, q.id) < (me.created_at, me.id)""",
        generation_id,
    )
    return ahead


async def renew_leases(conn: Connection, owner: str, ids: Sequence[str], lease_seconds: float) -> None:
    await conn.execute(
        """UPDATE image.generations SET lease_expires_at = now() + make_interval(secs => $3)
           WHERE lease_owner = $1 AND id = ANY($2)""",
        owner, list(ids), lease_seconds,
    )


@dataclass(frozen=True)
class Outcome:
    status: GenerationStatus  # succeeded, partial or failed
    images: Sequence[ImageRecord]
    refund: int
    error_code: str | None
    error_message: str | None


# Any number of runs' results, images and refunds in one statement (so, for each job, all of it or none).
# A job no longer ours (cancelled meanwhile, or taken over after a lost lease) is left alone, images too.
_FINISH = f"""
    WITH result AS (
        SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::integer[])
            AS r(id, status, error_code, error_message, refund)
    ), job AS (
        UPDATE image.generations g
        SET status = r.status, error_code = r.error_code, error_message = r.error_message,
            credits_refunded = r.refund, finished_at = now(), lease_expires_at = now() + make_interval(secs => $7)
        FROM result r, image.users u
        WHERE g.id = r.id AND g.status = 'running' AND g.lease_owner = $1 AND u.id = g.user_id
        RETURNING {GENERATION_COLUMNS}
    ), stored AS (
        INSERT INTO image.images ({IMAGE_COLUMNS})
        SELECT i.* FROM unnest(
            $8::text[], $9::text[], $10::smallint[], $11::text[], $12::text[], $13::text[],
            $14::integer[], $15::integer[], $16::integer[], $17::bigint[], $18::jsonb[]) AS i({IMAGE_COLUMNS})
        WHERE i.generation_id IN (SELECT job.id FROM job)
    ), locked AS (
        -- The accounts refunded, all locked before the first refund: a batch never holds one account
        -- while it waits for another.
        SELECT {credits.lock_accounts_sql("array_agg(job.user_id)")} FROM job WHERE job.credits_refunded > 0
    )
    SELECT job.*, {credits.refund_sql("job.user_id", "job.credits_refunded", "job.id")} FROM job, locked"""


@dataclass(frozen=True)
class Finished:
    """A run to record: which job, and how it ended."""

    generation_id: str
    outcome: Outcome


async def finish(
    conn: Connection, owner: str, lease_seconds: float, runs: Sequence[Finished]
) -> dict[str, Generation]:
    """Record runs' results, images and refunds in one statement. Returns the finished jobs by id; a job
    missing from it is no longer ours."""
    images = [image for run in runs for image in run.outcome.images]
    rows = await conn.fetch(
        _FINISH,
        owner,
        [r.generation_id for r in runs], [r.outcome.status for r in runs], [r.outcome.error_code for r in runs],
        [r.outcome.error_message for r in runs], [r.outcome.refund for r in runs],
        lease_seconds,
        [i.id for i in images], [i.generation_id for i in images], [i.index for i in images],
        [i.storage_key for i in images], [i.url for i in images], [i.mime_type for i in images],
        [i.width for i in images], [i.height for i in images], [i.bytes for i in images],
        [i.seed for i in images], [json.dumps(i.file_refs) for i in images],
    )
    finished = {row["id"]: generation_from_row(row) for row in rows}
    for generation in finished.values():
        JOBS_FINISHED.labels(generation.status).inc()
        CREDITS_REFUNDED.inc(generation.credits_refunded)
    return finished


async def recorded(conn: Connection, generation_id: str, owner: str, status: GenerationStatus) -> Generation | None:
    """The job if it is already recorded as `owner` ended it with `status`: a finish whose answer was lost
    to a dropped connection may have landed."""
    row = await conn.fetchrow(
        f"""SELECT {GENERATION_COLUMNS} FROM image.generations g JOIN image.users u ON u.id = g.user_id
            WHERE g.id = $1 AND g.lease_owner = $2 AND g.status = $3 AND g.finished_at IS NOT NULL""",
        generation_id, owner, status,
    )
    return generation_from_row(row) if row else None


async def cancel(
    conn: Connection, generation_id: str, message: str, owner: str, lease_seconds: float
) -> int | None:
    """Cancel a queued or running job and refund all of it (nothing was delivered): the credits refunded,
    or None if it had already ended. The canceller takes the delivery lease: it tells the user."""
    return await credits.end_with_full_refund(
        conn, generation_id, GenerationStatus.CANCELLED, "cancelled", message, owner, lease_seconds
    )


async def fail_unstarted(
    conn: Connection, generation_id: str, code: str, message: str, owner: str, lease_seconds: float
) -> int | None:
    """Fail a queued or running job with a full refund (shutdown, too many interruptions): the credits
    refunded, or None if it had already ended."""
    return await credits.end_with_full_refund(
        conn, generation_id, GenerationStatus.FAILED, code, message, owner, lease_seconds
    )


@dataclass(frozen=True)
class Delivered:
    """A job whose result reached its chat, with what the front end wants remembered about it."""

    generation_id: str
    platform: str
    receipt: DeliveryReceipt | None = None


# The receipts (the message shown, each image's platform handle) and the delivery marks of any number of
# jobs in one statement: one round trip, and no delivered job without its receipt.
_MARK_DELIVERED = """
    WITH refs AS (
        UPDATE image.images i SET file_refs = i.file_refs || jsonb_build_object(r.platform, r.ref)
        FROM unnest($3::text[], $4::text[], $5::text[]) AS r(id, platform, ref) WHERE i.id = r.id
    )
    UPDATE image.generations g
    SET delivered_at = now(), lease_owner = NULL, message_id = coalesce(d.message_id, g.message_id)
    FROM unnest($1::text[], $2::text[]) AS d(id, message_id) WHERE g.id = d.id"""


async def mark_delivered(conn: Connection, delivered: Sequence[Delivered]) -> None:
    ref_images: list[str] = []
    ref_platforms: list[str] = []
    refs: list[str] = []
    for d in delivered:
        if d.receipt is not None:
            for image_id, ref in d.receipt.file_refs.items():
                ref_images.append(image_id)
                ref_platforms.append(d.platform)
                refs.append(ref)
    await conn.execute(
        _MARK_DELIVERED,
        [d.generation_id for d in delivered], [d.receipt.message_id if d.receipt else None for d in delivered],
        ref_images, ref_platforms, refs,
    )


async def release_undelivered(conn: Connection, owner: str, ids: Sequence[str]) -> None:
    """Of these jobs, the recorded ones `owner` was still delivering when it stopped: free them for the next
    start to deliver at once, rather than after their lease runs out."""
    await conn.execute(
        """UPDATE image.generations SET lease_owner = NULL, lease_expires_at = NULL
           WHERE id = ANY($2) AND lease_owner = $1 AND delivered_at IS NULL AND finished_at IS NOT NULL""",
        owner, list(ids),
    )


async def recover_expired(
    conn: Connection, platforms: Sequence[str], owner: str, lease_seconds: float
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
    conn: Connection, platforms: Sequence[str], owner: str, lease_seconds: float, limit: int = 20
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
