"""Several jobs per statement: batch claims keep the fairness of one-by-one claims, runs finished together
are each settled once, receipts land with the delivery mark, and the grouped writer itself."""

from __future__ import annotations

import asyncio

import pytest

from bot.core import queue
from bot.core.batches import GroupedWriter
from bot.core.events import DeliveryReceipt
from bot.core.models import Destination, ImageRecord, ImagineRequest, UserIdentity
from tests.conftest import USER_BALANCE

ALICE = UserIdentity("test", "alice", "Alice")
BOB = UserIdentity("test", "bob", "Bob")
HERE = Destination("test", "chat-1")


async def test_a_batch_claim_takes_what_one_by_one_claims_would(runtime_factory, pool) -> None:
    async with runtime_factory(per_user_queued_limit=100, starting_credits=100) as rt:
        alice = [(await rt.service.imagine(ALICE, ImagineRequest(f"alice job {i}"), HERE)).generation.id
                 for i in range(20)]
        bob = (await rt.service.imagine(BOB, ImagineRequest("bob's only job"), HERE)).generation.id
    async with pool.acquire() as conn:
        claimed = await queue.claim(conn, ["test"], 2, "w", 60, 10)
        # The cap holds across claims too: Alice already runs two.
        again = await queue.claim(conn, ["test"], 2, "w", 60, 10)
    # Each idle user's oldest first (Bob is not kept behind Alice's backlog), then up to the cap of 2.
    assert {job.id for job in claimed} == {alice[0], bob, alice[1]}
    assert again == []


async def test_a_batch_claim_never_exceeds_its_limit(runtime_factory, pool) -> None:
    async with runtime_factory(per_user_queued_limit=100, starting_credits=100) as rt:
        for i in range(6):
            await rt.service.imagine(UserIdentity("test", f"u{i}"), ImagineRequest(f"job {i}"), HERE)
    async with pool.acquire() as conn:
        first = await queue.claim(conn, ["test"], 2, "w", 60, 4)
        rest = await queue.claim(conn, ["test"], 2, "w", 60, 4)
    assert len(first) == 4 and len(rest) == 2
    assert not {j.id for j in first} & {j.id for j in rest}


def _image(generation_id: str, index: int) -> ImageRecord:
    return ImageRecord(
        id=f"img{index}{generation_id}"[:12], generation_id=generation_id, index=index, storage_key=f"k/{index}",
        url="file:///k", mime_type="image/png", width=1, height=1, bytes=1, seed=1, file_refs={},
    )


async def test_runs_finished_together_are_each_settled_once(runtime_factory, pool) -> None:
    async with runtime_factory(per_user_queued_limit=100, starting_credits=20) as rt:
        ids = [(await rt.service.imagine(ALICE, ImagineRequest(f"job {i}", count=2), HERE)).generation.id
               for i in range(3)]
    async with pool.acquire() as conn:
        claimed = await queue.claim(conn, ["test"], 10, "w", 60, 3)
        assert len(claimed) == 3
        # The third was taken over by another worker meanwhile: its result is not ours to record.
        await conn.execute("UPDATE image.generations SET lease_owner = 'other' WHERE id = $1", ids[2])
        runs = [
            queue.Finished(ids[0], queue.Outcome("succeeded", [_image(ids[0], 0), _image(ids[0], 1)], 0, None, None)),
            queue.Finished(ids[1], queue.Outcome("partial", [_image(ids[1], 0)], 1, "partial", "One failed.")),
            queue.Finished(ids[2], queue.Outcome("failed", [], 2, "boom", "Failed.")),
        ]
        finished = await queue.finish(conn, "w", 60, runs)
    assert set(finished) == {ids[0], ids[1]}
    assert finished[ids[1]].status == "partial" and finished[ids[1]].credits_refunded == 1
    # 20 - 3 jobs x 2 credits + the one refund; the job not ours is untouched, images and all.
    assert await pool.fetchval(f"{USER_BALANCE} WHERE platform_user_id = 'alice'") == 15
    assert await pool.fetchval("SELECT sum(delta) FROM image.credit_ledger") == 15
    assert await pool.fetchval("SELECT count(*) FROM image.images") == 3
    assert await pool.fetchval("SELECT status FROM image.generations WHERE id = $1", ids[2]) == "running"


async def test_receipts_are_recorded_with_the_delivery(runtime_factory, pool) -> None:
    async with runtime_factory() as rt:
        job = (await rt.service.imagine(ALICE, ImagineRequest("a lighthouse"), HERE)).generation.id
    async with pool.acquire() as conn:
        await queue.claim(conn, ["test"], 2, "w", 60, 1)
        run = queue.Finished(job, queue.Outcome("succeeded", [_image(job, 0)], 0, None, None))
        finished = await queue.finish(conn, "w", 60, [run])
        image_id = _image(job, 0).id
        await queue.mark_delivered(conn, [queue.Delivered(job, "test", DeliveryReceipt("msg-7", {image_id: "f-1"}))])
    assert set(finished) == {job}
    row = await pool.fetchrow("SELECT message_id, delivered_at, lease_owner FROM image.generations WHERE id = $1", job)
    assert row["message_id"] == "msg-7" and row["delivered_at"] is not None and row["lease_owner"] is None
    refs = await pool.fetchval("SELECT file_refs FROM image.images WHERE id = $1", image_id)
    assert refs == '{"test": "f-1"}'


async def test_first_contact_grants_once_and_keeps_the_name_current(runtime_factory, pool) -> None:
    async with runtime_factory(starting_credits=5) as rt:
        await rt.service.imagine(ALICE, ImagineRequest("one"), HERE)
        await rt.service.imagine(UserIdentity("test", "alice", "Alice B."), ImagineRequest("two"), HERE)
    row = await pool.fetchrow(
        "SELECT display_name, a.balance FROM image.users u JOIN image.accounts a ON a.id = u.account_id"
        " WHERE platform_user_id = 'alice'"
    )
    assert row["display_name"] == "Alice B." and row["balance"] == 3
    welcome = await pool.fetch("SELECT delta FROM image.credit_ledger WHERE reason = 'welcome'")
    assert [r["delta"] for r in welcome] == [5]


async def test_grouped_writer_gathers_what_arrives_while_writing() -> None:
    batches: list[list[int]] = []
    release = asyncio.Event()

    async def write(items: list[int]) -> list[int]:
        batches.append(list(items))
        await release.wait()
        return [item * 10 for item in items]

    writer: GroupedWriter[int, int] = GroupedWriter(write)
    first = writer.submit(1)
    await asyncio.sleep(0)  # the first batch is on its way
    later = [writer.submit(2), writer.submit(3)]
    release.set()
    assert await first == 10 and [await f for f in later] == [20, 30]
    assert batches == [[1], [2, 3]]


async def test_grouped_writer_hands_a_failure_to_everyone_in_the_batch() -> None:
    async def write(items: list[int]) -> list[int]:
        raise OSError("connection lost")

    writer: GroupedWriter[int, int] = GroupedWriter(write)
    waits = [writer.submit(1), writer.submit(2)]
    for wait in waits:
        with pytest.raises(OSError):
            await wait
    # And the next write goes out again.
    with pytest.raises(OSError):
        await writer.submit(3)
