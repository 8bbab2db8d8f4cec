"""The parts of the jobs side, each alone: the record barrier, the job runner, delivery, the scheduler,
the stored images."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.core.errors import ProviderUnavailable
from bot.core.jobs.announcements import Announcements
from bot.core.jobs.delivery import Delivery
from bot.core.jobs.job_runner import JobRunner
from bot.core.jobs.record_barrier import RecordBarrier
from bot.core.jobs.scheduler import Lease, Scheduler, WorkerLimits
from bot.core.jobs.storing import STORAGE_FAILED_MESSAGE, StoredImages
from bot.core.models import Destination, Generation, ImageFile, ImageRecord, ImagineRequest, UserIdentity
from bot.core.providers.runner import ProviderRunner, RetryPolicy
from bot.core.storage.base import StorageError
from bot.core.storage.local import LocalStore
from tests.fakes.core import RecordingObserver, ScriptedProvider, png, scripted_model

ALICE = UserIdentity("test", "alice", "Alice")
BOB = UserIdentity("test", "bob", "Bob")
HERE = Destination("test", "chat-1")


async def settle_tasks() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_the_record_barrier_holds_readers_of_the_job_its_images_and_its_owner_only() -> None:
    barrier = RecordBarrier()
    await barrier.wait(["job-1"], ALICE)  # nothing held: at once
    with barrier.hold("job-1", ALICE, ["image-1"]):
        by_job = asyncio.create_task(barrier.wait(["job-1"]))
        by_image = asyncio.create_task(barrier.wait(["image-1"]))
        by_owner = asyncio.create_task(barrier.wait(owner=UserIdentity("test", "alice", "renamed")))
        unrelated = asyncio.create_task(barrier.wait(["job-2"], BOB))
        await settle_tasks()
        assert unrelated.done()
        assert not (by_job.done() or by_image.done() or by_owner.done())
    await asyncio.gather(by_job, by_image, by_owner)


async def first_job(rt) -> Generation:  # type: ignore[no-untyped-def]
    accepted = await rt.service.imagine(ALICE, ImagineRequest("a heron", count=2, seed=5), HERE)
    return accepted.generation


def job_runner(pool, tmp_path: Path, provider: ScriptedProvider) -> JobRunner:  # type: ignore[no-untyped-def]
    model = scripted_model()
    return JobRunner(pool, StoredImages(LocalStore(tmp_path / "images")), {"scripted": provider},
                     {model.name: model}, ProviderRunner(4, RetryPolicy(max_retries=0)), 10.0)


async def test_the_job_runner_makes_files_ready_to_store(runtime_factory, pool, tmp_path) -> None:
    provider = ScriptedProvider()
    async with runtime_factory({"scripted": provider}, models=(scripted_model(),)) as rt:
        job = await first_job(rt)
    previews: list[str] = []

    async def preview(data: bytes, mime_type: str) -> None:
        previews.append(mime_type)

    made = await job_runner(pool, tmp_path, provider).make(job, preview)
    assert made.error is None
    assert [f.record.index for f in made.files] == [0, 1]
    assert all(f.data == png() and f.record.generation_id == job.id for f in made.files)
    assert [(f.record.width, f.record.height, f.record.seed) for f in made.files] == [(64, 64, 5), (64, 64, 6)]
    assert all(f.record.url.startswith("file://") for f in made.files)


async def test_the_job_runner_reports_a_model_gone(runtime_factory, pool, tmp_path) -> None:
    provider = ScriptedProvider()
    async with runtime_factory({"scripted": provider}, models=(scripted_model(),)) as rt:
        job = await first_job(rt)
    runner = job_runner(pool, tmp_path, provider)
    runner.models = {}

    async def preview(data: bytes, mime_type: str) -> None:
        raise AssertionError("no preview expected")

    made = await runner.make(job, preview)
    assert made.files == [] and isinstance(made.error, ProviderUnavailable)
    assert provider.calls == []


async def test_delivery_tells_the_chat_and_records_the_mark(runtime_factory, pool, tmp_path) -> None:
    async with runtime_factory() as rt:
        job = await first_job(rt)
        assert await rt.worker.cancel(job.id)  # ends it with a refund; told to nobody yet (no observer)
    observer = RecordingObserver()
    delivery = Delivery(pool, StoredImages(LocalStore(tmp_path / "images")), {"test": observer}, Announcements())
    assert await delivery.deliver(job.id)
    assert observer.events == [("cancelled", job.id)]
    assert await pool.fetchval("SELECT delivered_at IS NOT NULL FROM image.generations WHERE id = $1", job.id)


async def test_delivery_leaves_a_job_undelivered_when_the_chat_fails(runtime_factory, pool, tmp_path) -> None:
    async with runtime_factory() as rt:
        job = await first_job(rt)
        assert await rt.worker.cancel(job.id)
    observer = RecordingObserver(fail_deliveries=1)
    delivery = Delivery(pool, StoredImages(LocalStore(tmp_path / "images")), {"test": observer}, Announcements())
    assert not await delivery.deliver(job.id)
    assert await pool.fetchval("SELECT delivered_at IS NULL FROM image.generations WHERE id = $1", job.id)


async def test_the_scheduler_runs_claimed_jobs_and_refunds_what_is_left_at_stop(runtime_factory, pool) -> None:
    async with runtime_factory() as rt:
        job = await first_job(rt)
    running, delivered = asyncio.Event(), []

    async def run(claimed: Generation) -> None:
        running.set()
        await asyncio.Event().wait()  # never finishes by itself

    async def deliver(generation_id: str) -> bool:
        delivered.append(generation_id)
        return True

    limits = WorkerLimits(max_jobs=2, per_user_jobs=2, lease_seconds=30, poll_seconds=0.05, job_deadline_seconds=10)
    scheduler = Scheduler(pool, ["test"], limits, Lease(30), run, deliver)
    scheduler.start()
    await running.wait()
    assert scheduler.running == 1
    await scheduler.stop(grace_seconds=0)
    row = await pool.fetchrow("SELECT status, error_code, credits_refunded FROM image.generations WHERE id = $1",
                              job.id)
    assert (row["status"], row["error_code"], row["credits_refunded"]) == ("failed", "shutdown", 2)
    assert delivered == [job.id]


async def test_stored_images_report_what_could_not_be_kept_and_discard_quietly(tmp_path) -> None:
    class FullStore(LocalStore):
        async def put(self, key: str, data: bytes, mime_type: str) -> None:
            raise StorageError("disk full")

    record = ImageRecord("image-1", "job-1", 0, "2026/12/a.png", "file:///a.png", "image/png", 1, 1, 3, None, {})
    kept = StoredImages(LocalStore(tmp_path / "ok"))
    assert await kept.keep(ImageFile(record, b"png")) is None
    assert [f.data for f in await kept.load([record])] == [b"png"]
    await kept.discard([record, record])  # the second time it is already gone: no error
    with pytest.raises(StorageError):
        await kept.load([record])
    error = await StoredImages(FullStore(tmp_path / "full")).keep(ImageFile(record, b"png"))
    assert isinstance(error, ProviderUnavailable) and error.user_message == STORAGE_FAILED_MESSAGE
