"""Delivery receipts, part by part: what of a job's result the platform already accepted, written as soon
as it did (apart from recording the job), so that delivering again posts only what is missing."""

from __future__ import annotations

import json
from collections.abc import Mapping

import asyncpg

from bot.core import database
from bot.core.database import Connection
from bot.core.events import DeliveryReceipt, PartReceipt

# How long what was shown waits for the database to record it (a part's receipt, the job's finish, its
# delivery mark). Giving up lets the job be shown (or run) again, so this is long: only the jobs in this
# process's slots wait, holding their images.
RECORD_RETRY_SECONDS = 30 * 60


async def record_part(
    conn: Connection, generation_id: str, part: str, message_id: str | None, file_refs: Mapping[str, str]
) -> None:
    await conn.execute(
        """INSERT INTO image.delivery_parts (generation_id, part, message_id, file_refs) VALUES ($1, $2, $3, $4)
           ON CONFLICT (generation_id, part)
           DO UPDATE SET message_id = excluded.message_id, file_refs = excluded.file_refs""",
        generation_id, part, message_id, json.dumps(dict(file_refs)),
    )


async def parts_of(conn: Connection, generation_id: str) -> dict[str, PartReceipt]:
    rows = await conn.fetch(
        "SELECT part, message_id, file_refs FROM image.delivery_parts WHERE generation_id = $1 ORDER BY created_at",
        generation_id,
    )
    return {r["part"]: PartReceipt(r["message_id"], json.loads(r["file_refs"])) for r in rows}


class Receipts:
    """The receipts of every job: what front ends call (directly, or through the DeliveredParts they are
    handed) as each part of a result is accepted by their platform."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def record(
        self, generation_id: str, part: str, message_id: str | None = None, file_refs: Mapping[str, str] | None = None
    ) -> None:
        """Remember that `part` of this job's result is in its chat (recording it again replaces it)."""

        async def attempt() -> None:
            async with self.pool.acquire() as conn:
                await record_part(conn, generation_id, part, message_id, file_refs or {})

        await database.persist(f"job {generation_id}: recording part {part!r}", attempt, RECORD_RETRY_SECONDS)

    async def recorded(self, generation_id: str) -> dict[str, PartReceipt]:
        async with self.pool.acquire() as conn:
            return await parts_of(conn, generation_id)

    async def for_job(self, generation_id: str) -> JobParts:
        return JobParts(self, generation_id, await self.recorded(generation_id))


class JobParts:
    """One job's receipts, as handed to a front end delivering it (events.DeliveredParts)."""

    def __init__(self, receipts: Receipts, generation_id: str, sent: dict[str, PartReceipt]) -> None:
        self._receipts = receipts
        self.generation_id = generation_id
        self._sent = sent

    @property
    def sent(self) -> Mapping[str, PartReceipt]:
        return self._sent

    async def record(
        self, part: str, message_id: str | None = None, file_refs: Mapping[str, str] | None = None
    ) -> None:
        await self._receipts.record(self.generation_id, part, message_id, file_refs)
        self._sent[part] = PartReceipt(message_id, dict(file_refs or {}))

    def receipt(self) -> DeliveryReceipt:
        refs = {image_id: ref for part in self._sent.values() for image_id, ref in part.file_refs.items()}
        return DeliveryReceipt(file_refs=refs)
