"""Stopped (SIGTERM's path: the runtime's stop with a short grace) while a result is being posted: a job
whose images were made is recorded (charged, images kept) and left undelivered, and the next start posts
only what the chat did not get. Never shown and refunded both."""

from __future__ import annotations

from bot.core.models import Destination, ImagineRequest, UserIdentity
from tests.conftest import USER_BALANCE, wait_for
from tests.fakes.core import PartsObserver

ALICE = UserIdentity("test", "alice", "Alice")
HERE = Destination("test", "chat-1")


async def test_stopped_mid_upload_is_charged_and_finished_by_the_next_start(runtime_factory, pool) -> None:
    slow = PartsObserver(part_delay=1.0)
    async with runtime_factory(shutdown_grace_seconds=0.2) as rt:
        rt.register(slow)
        await rt.start()
        accepted = await rt.service.imagine(ALICE, ImagineRequest("slow upload", count=3), HERE)
        job_id = accepted.generation.id
        await wait_for(lambda: slow.posted)
    # Stopped with the first part in the chat and the others not.
    assert slow.posted == [(job_id, "image-0")]
    assert ("failed", job_id) not in slow.events
    row = await pool.fetchrow(
        """SELECT status, credits_refunded, delivered_at, lease_owner,
                  (SELECT count(*) FROM image.images WHERE generation_id = $1) AS images
           FROM image.generations WHERE id = $1""",
        job_id,
    )
    assert (row["status"], row["credits_refunded"], row["images"]) == ("succeeded", 0, 3)
    assert row["delivered_at"] is None and row["lease_owner"] is None  # left for the next start, at once
    refunds = await pool.fetchval("SELECT count(*) FROM image.credit_ledger WHERE reason = 'refund'")
    assert refunds == 0

    after = PartsObserver()
    async with runtime_factory() as rt:
        rt.register(after)
        await rt.start()
        await wait_for(lambda: pool.fetchval("SELECT delivered_at FROM image.generations WHERE id = $1", job_id))
        item = await rt.service.generation(ALICE, job_id, HERE.chat_id)
    assert after.posted == [(job_id, "image-1"), (job_id, "image-2")]
    assert item.generation.status == "succeeded" and len(item.images) == 3
    assert await pool.fetchval(f"{USER_BALANCE} WHERE platform_user_id = 'alice'") == 20 - 3
