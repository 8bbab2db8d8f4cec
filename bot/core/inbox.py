"""The inbox: what the bot took from a platform, written down before the platform is told it arrived, so
that a crash loses nothing and a redelivery is handled once.

How a front end uses it:
  1. `new = await inbox.record(platform, [(event_id, payload), ...])` for each fetched batch (or webhook
     body), in one statement; only then confirm to the platform (the next offset, the 200).
  2. For each event id: `if await inbox.claim(platform, event_id):` handle it, then
     `await inbox.handled(platform, event_id)`. One claim at a time across processes; a claim left by a
     crash runs out after `claim_seconds`, and the event is handed out again (at least once: handling must
     be idempotent, as accepting a request is by its idempotency key).
  3. On start-up: `await inbox.unhandled(platform)` and go through 2 for each.
Handled entries older than a day are trimmed (the scheduler's lease loop calls trim_handled)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from bot.core.batches import GroupedWriter
from bot.core.database import Connection

# How long a claim holds before another process may handle the event (the claimer died mid-way).
CLAIM_SECONDS = 120.0
KEEP_HANDLED = "1 day"


@dataclass(frozen=True)
class InboxEvent:
    platform: str
    event_id: str
    payload: Any
    received_at: datetime


async def record(conn: Connection, platform: str, events: Sequence[tuple[str, Any]]) -> set[str]:
    """Write the events not recorded yet, all in one statement: the ids of those that were new."""
    rows = await conn.fetch(
        """INSERT INTO image.inbox (platform, event_id, payload)
           SELECT $1, e.id, e.payload FROM unnest($2::text[], $3::jsonb[]) AS e(id, payload)
           ON CONFLICT (platform, event_id) DO NOTHING
           RETURNING event_id""",
        platform, [event_id for event_id, _ in events], [json.dumps(payload) for _, payload in events],
    )
    return {row["event_id"] for row in rows}


async def record_claimed(
    conn: Connection, platform: str, events: Sequence[tuple[str, Any]], owner: str, claim_seconds: float
) -> set[str]:
    """Write events already claimed by `owner`, all in one statement: no other process can take one between
    the two. The ids of those that were new (one recorded before is left as it was: see `claim`)."""
    rows = await conn.fetch(
        """INSERT INTO image.inbox (platform, event_id, payload, claimed_by, claimed_until)
           SELECT $1, e.id, e.payload, $4, now() + make_interval(secs => $5)
           FROM unnest($2::text[], $3::jsonb[]) AS e(id, payload)
           ON CONFLICT (platform, event_id) DO NOTHING
           RETURNING event_id""",
        platform, [event_id for event_id, _ in events], [json.dumps(payload) for _, payload in events],
        owner, claim_seconds,
    )
    return {row["event_id"] for row in rows}


async def unhandled(conn: Connection, platform: str, limit: int = 1000) -> list[InboxEvent]:
    """Recorded, not handled, not claimed by anyone alive: oldest first."""
    rows = await conn.fetch(
        """SELECT platform, event_id, payload, received_at FROM image.inbox
           WHERE platform = $1 AND handled_at IS NULL AND (claimed_until IS NULL OR claimed_until < now())
           ORDER BY received_at, event_id LIMIT $2""",
        platform, limit,
    )
    return [InboxEvent(r["platform"], r["event_id"], json.loads(r["payload"]), r["received_at"]) for r in rows]


async def claim(conn: Connection, platform: str, event_id: str, owner: str, claim_seconds: float) -> bool:
    """Take the event to handle it: True for one caller at a time (the row is updated atomically), never
    once it is handled."""
    claimed = await conn.fetchval(
        """UPDATE image.inbox SET claimed_by = $3, claimed_until = now() + make_interval(secs => $4)
           WHERE platform = $1 AND event_id = $2 AND handled_at IS NULL
             AND (claimed_until IS NULL OR claimed_until < now())
           RETURNING true""",
        platform, event_id, owner, claim_seconds,
    )
    return bool(claimed)


async def mark_handled(conn: Connection, platform: str, event_id: str, owner: str) -> bool:
    """True if it was ours to mark (claimed by `owner`, not handled yet)."""
    marked = await conn.fetchval(
        """UPDATE image.inbox SET handled_at = now()
           WHERE platform = $1 AND event_id = $2 AND claimed_by = $3 AND handled_at IS NULL
           RETURNING true""",
        platform, event_id, owner,
    )
    return bool(marked)


async def trim_handled(conn: Connection) -> int:
    """Forget what was handled more than a day ago: how many entries went."""
    result = await conn.execute(
        f"DELETE FROM image.inbox WHERE handled_at < now() - interval '{KEEP_HANDLED}'"
    )
    return int(result.split()[-1])


class Inbox:
    """The inbox on a pool, under one claimant's name (this process)."""

    def __init__(self, pool: asyncpg.Pool, claim_seconds: float = CLAIM_SECONDS) -> None:
        self.pool = pool
        self.claim_seconds = claim_seconds
        self.owner = f"inbox-{secrets.token_hex(6)}"
        self._claimed: GroupedWriter[tuple[str, str, Any], bool] = GroupedWriter(self._write_claimed)

    async def record(self, platform: str, events: Sequence[tuple[str, Any]]) -> set[str]:
        async with self.pool.acquire() as conn:
            return await record(conn, platform, events)

    async def record_claimed(self, platform: str, event_id: str, payload: Any) -> bool:
        """One event, recorded claimed by this process; under a burst, many callers' events share one
        statement (see batches). False if it was recorded before."""
        return await self._claimed.submit((platform, event_id, payload))

    async def _write_claimed(self, events: Sequence[tuple[str, str, Any]]) -> list[bool]:
        new: set[tuple[str, str]] = set()
        async with self.pool.acquire() as conn:
            for platform in {platform for platform, _, _ in events}:
                mine = [(event_id, payload) for p, event_id, payload in events if p == platform]
                written = await record_claimed(conn, platform, mine, self.owner, self.claim_seconds)
                new.update((platform, event_id) for event_id in written)
        return [(platform, event_id) in new for platform, event_id, _ in events]

    async def unhandled(self, platform: str, limit: int = 1000) -> list[InboxEvent]:
        async with self.pool.acquire() as conn:
            return await unhandled(conn, platform, limit)

    async def claim(self, platform: str, event_id: str) -> bool:
        async with self.pool.acquire() as conn:
            return await claim(conn, platform, event_id, self.owner, self.claim_seconds)

    async def handled(self, platform: str, event_id: str) -> bool:
        async with self.pool.acquire() as conn:
            return await mark_handled(conn, platform, event_id, self.owner)

    async def trim(self) -> int:
        async with self.pool.acquire() as conn:
            return await trim_handled(conn)
