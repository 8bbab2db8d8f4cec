"""Delivery receipts part by part: each part a front end posts is recorded as soon as the platform accepts
it, and delivering again (after a failed post, a crash, a restart) posts only the parts without one."""

from __future__ import annotations

from bot.core.models import Destination, ImagineRequest, UserIdentity
from tests.conftest import wait_for
from tests.fakes.core import PartsObserver

ALICE = UserIdentity("test", "alice", "Alice")
HERE = Destination("test", "chat-1")


async def test_a_redelivery_posts_only_the_parts_without_a_receipt(runtime_factory, pool) -> None:
    observer = PartsObserver(fail_after_parts=2)
    async with runtime_factory(job_lease_seconds=5) as rt:
        rt.register(observer)
        await rt.start()
        accepted = await rt.service.imagine(ALICE, ImagineRequest("in parts", count=4), HERE)
        job_id = accepted.generation.id
        await wait_for(lambda: observer.fail_after_parts is None)
        # The delivery's lease runs out (as if time passed); the sweep delivers it again.
        await wait_for(lambda: pool.fetchval("SELECT finished_at FROM image.generations WHERE id = $1", job_id))
        await pool.execute("UPDATE image.generations SET lease_expires_at = now() - interval '1 second'")
        await rt.worker.recover()
        await wait_for(lambda: pool.fetchval("SELECT delivered_at FROM image.generations WHERE id = $1", job_id))

    assert observer.posted == [(job_id, f"image-{i}") for i in range(4)], "each part posted once"
    parts = await pool.fetch(
        "SELECT part, message_id FROM image.delivery_parts WHERE generation_id = $1 ORDER BY part", job_id
    )
    expected = [(f"image-{i}", f"msg-{job_id}-image-{i}") for i in range(4)]
    assert [(p["part"], p["message_id"]) for p in parts] == expected
    # The parts' file references end up with the images, as a single receipt's did.
    refs = await pool.fetchval(
        "SELECT array_agg(file_refs->>'test' ORDER BY index) FROM image.images WHERE generation_id = $1", job_id
    )
    assert refs == [f"file-{i}" for i in range(4)]


async def test_front_ends_record_parts_directly(runtime_factory, pool) -> None:
    async with runtime_factory() as rt:
        accepted = await rt.service.imagine(ALICE, ImagineRequest("a status message"), HERE)
        job_id = accepted.generation.id
        await rt.worker.receipts.record(job_id, "status", "m-1")
        await rt.worker.receipts.record(job_id, "status", "m-2")  # recorded again: replaced
        recorded = await rt.worker.receipts.recorded(job_id)
    assert {part: r.message_id for part, r in recorded.items()} == {"status": "m-2"}
