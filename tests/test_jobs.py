"""Durable jobs: claiming, fairness, leases and recovery, delivery retries, regenerate and vary."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from bot.core import queue
from bot.core.errors import InvalidRequest, NotFound
from bot.core.models import Destination, ImagineRequest, Request, UserIdentity, request_fields
from tests.conftest import USER_BALANCE, wait_for
from tests.fakes.core import RecordingObserver, ScriptedProvider, scripted_model

ALICE = UserIdentity("test", "alice", "Alice")
BOB = UserIdentity("test", "bob", "Bob")
CAROL = UserIdentity("test", "carol", "Carol")
HERE = Destination("test", "chat-1")
ELSEWHERE = Destination("test", "chat-2")


async def claim_one(conn, platforms, per_user_limit, owner, lease_seconds):  # type: ignore[no-untyped-def]
    jobs = await queue.claim(conn, platforms, per_user_limit, owner, lease_seconds, 1)
    return jobs[0] if jobs else None


async def test_two_workers_never_take_the_same_job(runtime_factory, pool) -> None:
    async with runtime_factory(per_user_queued_limit=1000, starting_credits=1000) as rt:
        for i in range(60):
            await rt.service.imagine(UserIdentity("test", f"u{i % 12}"), ImagineRequest(f"job {i}"), HERE)

    async def claimer(owner: str) -> list[str]:
        taken = []
        while True:
            async with pool.acquire() as conn:
                job = await claim_one(conn, ["test"], 1000, owner, 60)
            if job is None:
                return taken
            taken.append(job.id)

    results = await asyncio.gather(*(claimer(f"w{i}") for i in range(4)))
    claimed = [job for taken in results for job in taken]
    assert len(claimed) == 60 and len(set(claimed)) == 60
    assert sum(1 for taken in results if taken) >= 2  # really concurrent, not one claimer doing it all


async def test_a_newcomer_does_not_wait_behind_a_heavy_user(runtime_factory, pool) -> None:
    async with runtime_factory(per_user_queued_limit=100, starting_credits=100) as rt:
        for i in range(20):
            await rt.service.imagine(ALICE, ImagineRequest(f"alice job {i}"), HERE)
        newcomer = await rt.service.imagine(BOB, ImagineRequest("bob's only job"), HERE)
    order = []
    async with pool.acquire() as conn:
        for _ in range(3):
            order.append((await claim_one(conn, ["test"], 2, "w", 60)).id)
    # Alice's oldest runs first; with Alice now busy, Bob's job is next, ahead of her 19 others.
    assert order[1] == newcomer.generation.id
    owners = Counter([await pool.fetchval("SELECT user_id FROM image.generations WHERE id = $1", j) for j in order])
    assert sorted(owners.values()) == [1, 2]


async def test_per_user_cap_on_jobs_in_flight(runtime_factory, pool) -> None:
    async with runtime_factory(per_user_queued_limit=100) as rt:
        for i in range(4):
            await rt.service.imagine(ALICE, ImagineRequest(f"job {i}"), HERE)
    async with pool.acquire() as conn:
        claimed = [await claim_one(conn, ["test"], 2, "w", 60) for _ in range(4)]
    assert claimed[2] is None and claimed[3] is None


async def test_queued_limit_per_user(runtime_factory) -> None:
    async with runtime_factory(per_user_queued_limit=2) as rt:
        await rt.service.imagine(ALICE, ImagineRequest("one"), HERE)
        await rt.service.imagine(ALICE, ImagineRequest("two"), HERE)
        with pytest.raises(Exception, match="already have 2 generations waiting"):
            await rt.service.imagine(ALICE, ImagineRequest("three"), HERE)


async def test_a_dead_workers_job_is_taken_over_and_delivered_once(runtime_factory, pool) -> None:
    observer = RecordingObserver()
    async with runtime_factory() as rt:
        rt.register(observer)
        accepted = await rt.service.imagine(ALICE, ImagineRequest("orphaned job"), HERE)
        # Another process claimed it, then died: its lease runs out.
        async with pool.acquire() as conn:
            claimed = await claim_one(conn, ["test"], 2, "dead-worker", 60)
            assert claimed is not None and claimed.id == accepted.generation.id
            await conn.execute("UPDATE image.generations SET lease_expires_at = now() - interval '1 second'")
        await rt.start()
        job = await wait_for(lambda: observer.done.get(accepted.generation.id))
        await asyncio.sleep(0.2)
    assert job.status == "succeeded"
    assert observer.events.count(("completed", job.id)) == 1
    assert await pool.fetchval("SELECT attempts FROM image.generations WHERE id = $1", job.id) == 2


async def test_a_job_interrupted_too_often_is_refunded_and_told(runtime_factory, pool) -> None:
    observer = RecordingObserver()
    async with runtime_factory() as rt:
        rt.register(observer)
        accepted = await rt.service.imagine(ALICE, ImagineRequest("cursed job", count=2), HERE)
        await pool.execute(
            """UPDATE image.generations SET status = 'running', attempts = $1, lease_owner = 'dead',
               lease_expires_at = now() - interval '1 second'""",
            queue.MAX_ATTEMPTS,
        )
        await rt.start()
        job = await wait_for(lambda: observer.done.get(accepted.generation.id))
    assert job.status == "failed" and job.error_code == "interrupted" and job.credits_refunded == 2
    assert await pool.fetchval(f"{USER_BALANCE} WHERE platform_user_id = 'alice'") == 20


async def test_a_failed_delivery_is_retried(runtime_factory, pool) -> None:
    observer = RecordingObserver(fail_deliveries=1)
    async with runtime_factory(job_lease_seconds=5) as rt:
        rt.register(observer)
        await rt.start()
        accepted = await rt.service.imagine(ALICE, ImagineRequest("deliver me"), HERE)
        await wait_for(lambda: observer.fail_deliveries == 0)
        # Lease on the delivery runs out (as if time passed); the sweep retries it.
        await pool.execute("UPDATE image.generations SET lease_expires_at = now() - interval '1 second'")
        await rt.worker.recover()
        job = await wait_for(lambda: observer.done.get(accepted.generation.id))
        delivered = await wait_for(
            lambda: pool.fetchval("SELECT delivered_at FROM image.generations WHERE id = $1", job.id)
        )
    assert delivered is not None
    refs = await pool.fetchval(
        "SELECT array_agg(file_refs->>'test') FROM image.images WHERE generation_id = $1", job.id
    )
    assert refs == ["file-0"]


async def test_regenerate_and_vary(runtime_factory, pool) -> None:
    provider = ScriptedProvider()
    observer = RecordingObserver()
    model = scripted_model(cost=1, per_call=4)
    async with runtime_factory({"scripted": provider}, models=(model,)) as rt:
        rt.register(observer)
        await rt.start()
        first = await rt.service.imagine(ALICE, ImagineRequest("a red fox", count=2, seed=7), HERE)
        await wait_for(lambda: observer.done.get(first.generation.id))
        # Bob presses 🔄 in the same chat: he pays, the result links to Alice's generation.
        again = await rt.service.regenerate(BOB, first.generation.id, HERE)
        second_image = observer.images[first.generation.id][1].record
        varied = await rt.service.vary(BOB, second_image.id, HERE)
        await wait_for(lambda: varied.generation.id in observer.done and again.generation.id in observer.done)
        # Carol in another chat can't see it at all.
        with pytest.raises(NotFound):
            await rt.service.regenerate(CAROL, first.generation.id, ELSEWHERE)
        with pytest.raises(NotFound):
            await rt.service.vary(CAROL, second_image.id, ELSEWHERE)
        with pytest.raises(NotFound):
            await rt.service.vary(CAROL, "not-an-id!", ELSEWHERE)
    assert again.generation.kind == "regenerate" and again.generation.parent_generation_id == first.generation.id
    assert again.generation.seed != 7 and again.generation.prompt == "a red fox"
    assert varied.generation.kind == "variation" and varied.generation.parent_image_id == second_image.id
    # The regeneration runs alongside: the variation's call is the one with its seed, not the last one.
    [variation_call] = [call for call in provider.calls if call.seed == varied.generation.seed]
    assert len(variation_call.input_images) == 1
    assert variation_call.input_images[0].data == observer.images[first.generation.id][1].data
    assert await pool.fetchval(f"{USER_BALANCE} WHERE platform_user_id = 'bob'") == 20 - 4
    assert await pool.fetchval(f"{USER_BALANCE} WHERE platform_user_id = 'alice'") == 20 - 2


async def test_validation_errors_record_nothing(runtime_factory, pool) -> None:
    bad = [
        ImagineRequest(""),
        ImagineRequest("\u200b\u200b \x00 "),
        ImagineRequest("x" * 5000),
        ImagineRequest("ok prompt", count=5),
        ImagineRequest("ok prompt", count=0),
        ImagineRequest("ok prompt", aspect_ratio="5:1"),
        ImagineRequest("ok prompt", model="no-such-model"),
        ImagineRequest("ok prompt", seed=-1),
        ImagineRequest("ok prompt", seed=2**40),
    ]
    async with runtime_factory() as rt:
        for request in bad:
            with pytest.raises(InvalidRequest):
                await rt.service.imagine(ALICE, request, HERE)
    assert await pool.fetchval("SELECT count(*) FROM image.generations") == 0
    assert await pool.fetchval("SELECT count(*) FROM image.credit_ledger WHERE reason = 'reserve'") == 0


async def test_history_pages_and_isolation(runtime_factory) -> None:
    async with runtime_factory(per_user_queued_limit=100) as rt:
        for i in range(7):
            await rt.service.imagine(ALICE, ImagineRequest(f"alice {i}"), HERE)
        await rt.service.imagine(BOB, ImagineRequest("bob's secret"), HERE)
        first = await rt.service.history(ALICE, page=0, page_size=3)
        last = await rt.service.history(ALICE, page=2, page_size=3)
        beyond = await rt.service.history(ALICE, page=99, page_size=3)
        nobody = await rt.service.history(CAROL)
    assert [i.generation.prompt for i in first.items] == ["alice 6", "alice 5", "alice 4"]
    assert (first.total, first.pages, first.has_next, first.has_previous) == (7, 3, True, False)
    assert [i.generation.prompt for i in last.items] == ["alice 0"] and not last.has_next
    assert beyond.page == 2
    assert nobody.total == 0 and nobody.items == ()
    assert all(i.generation.owner.platform_user_id == "alice" for i in first.items + last.items)


async def test_delete_is_owner_only_and_hides_from_history(runtime_factory) -> None:
    observer = RecordingObserver()
    async with runtime_factory() as rt:
        rt.register(observer)
        await rt.start()
        accepted = await rt.service.imagine(ALICE, ImagineRequest("delete me"), HERE)
        await wait_for(lambda: observer.done.get(accepted.generation.id))
        with pytest.raises(Exception, match="Only the person"):
            await rt.service.delete(BOB, accepted.generation.id, HERE.chat_id)
        await rt.service.delete(ALICE, accepted.generation.id, HERE.chat_id)
        history = await rt.service.history(ALICE)
        with pytest.raises(NotFound):
            await rt.service.regenerate(ALICE, accepted.generation.id, HERE)
    assert history.total == 0


async def test_requests_per_minute_limit(runtime_factory, pool) -> None:
    async with runtime_factory(requests_per_minute=3, per_user_queued_limit=100) as rt:
        results = await asyncio.gather(
            *(rt.service.imagine(ALICE, ImagineRequest(f"fast {i}"), HERE) for i in range(8)), return_exceptions=True
        )
        other = await rt.service.imagine(BOB, ImagineRequest("bob is not limited by alice"), HERE)
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(refused) == 5
    assert all("try again in" in r.user_message for r in refused)
    assert other.generation.status == "queued"
    assert await pool.fetchval(f"{USER_BALANCE} WHERE platform_user_id = 'alice'") == 17


async def test_banned_words_are_refused_before_charging(runtime_factory, pool) -> None:
    async with runtime_factory(banned_words="gore, Forbidden Thing") as rt:
        for prompt in ["some GORE please", "a forbidden\u200b thing", "a Forbidden Thing here"]:
            with pytest.raises(InvalidRequest, match="doesn't allow"):
                await rt.service.imagine(ALICE, ImagineRequest(prompt), HERE)
        await rt.service.imagine(ALICE, ImagineRequest("gorgeous scenery"), HERE)  # whole words only
    assert await pool.fetchval("SELECT count(*) FROM image.generations") == 1


async def test_a_job_past_its_deadline_is_failed_and_refunded(runtime_factory, pool) -> None:
    provider = ScriptedProvider(steps=["block"])
    observer = RecordingObserver()
    model = scripted_model(cost=2)
    async with runtime_factory({"scripted": provider}, models=(model,), job_deadline_seconds=0.3) as rt:
        rt.register(observer)
        await rt.start()
        accepted = await rt.service.imagine(ALICE, ImagineRequest("never finishes"), HERE)
        job = await wait_for(lambda: observer.done.get(accepted.generation.id))
    assert job.status == "failed" and job.credits_refunded == 2
    assert "took too long" in job.error_message


async def test_a_request_is_recorded_and_read_back_whole(runtime_factory, pool) -> None:
    """Options travel by name: what was accepted is what the database holds, field for field."""
    async with runtime_factory() as rt:
        asked = ImagineRequest("a red fox", negative_prompt="blur", aspect_ratio="16:9", count=3, seed=42)
        accepted = await rt.service.imagine(ALICE, asked, HERE)
        item = await rt.service.generation(ALICE, accepted.generation.id, HERE.chat_id)
    assert item.generation == accepted.generation
    assert item.generation.only_request() == Request("a red fox", "blur", "offline", "16:9", 3, 42)
    columns = {r["column_name"] for r in await pool.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'image' AND table_name = 'generations'"
    )}
    assert set(request_fields(item.generation)) <= columns
