"""Jobs storing into S3 (moto's server on 127.0.0.1) through the settings, S3 failing mid-job, and images
shown while they are being stored."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.core.batches import GroupedWriter
from bot.core.errors import ImagesUnavailable
from bot.core.models import Destination, ImagineRequest, UserIdentity
from bot.core.storage.base import StorageError
from bot.core.storage.local import LocalStore
from tests.conftest import USER_BALANCE, wait_for
from tests.fakes.core import RecordingObserver
from tests.plugins.s3 import TEST_ACCESS_KEY, TEST_SECRET_KEY

ALICE = UserIdentity("test", "alice", "Alice")
HERE = Destination("test", "chat-1")


def s3_settings(endpoint: str, bucket: str) -> dict[str, str]:
    return {
        "storage_backend": "s3",
        "s3_endpoint_url": endpoint,
        "s3_bucket": bucket,
        "s3_access_key_id": TEST_ACCESS_KEY,
        "s3_secret_access_key": TEST_SECRET_KEY,
    }


async def test_images_land_in_s3_and_come_back(runtime_factory, pool, s3_server, s3_bucket) -> None:
    observer = RecordingObserver()
    async with runtime_factory(**s3_settings(s3_server, s3_bucket)) as rt:
        rt.register(observer)
        await rt.start()
        accepted = await rt.service.imagine(ALICE, ImagineRequest("a lighthouse in s3", count=2), HERE)
        job = await wait_for(lambda: observer.done.get(accepted.generation.id))
        page = await rt.service.history(ALICE)
        files = await rt.service.load_files(page.items[0].images)
    assert job.status == "succeeded"
    assert [f.data for f in files] == [i.data for i in observer.images[job.id]]
    assert all(f.record.url.startswith(s3_server) for f in files)


async def test_s3_failing_still_shows_the_images_but_records_the_failure_and_refunds(
    runtime_factory, pool, s3_server
) -> None:
    """The images go to the chat while they are stored; when none can be kept, the user has them anyway, and
    is not charged for images their history cannot show."""
    observer = RecordingObserver()
    async with runtime_factory(**s3_settings(s3_server, "no-such-bucket")) as rt:
        rt.register(observer)
        await rt.start()
        accepted = await rt.service.imagine(ALICE, ImagineRequest("nowhere to put this", count=3), HERE)
        await wait_for(lambda: observer.done.get(accepted.generation.id))
        item = await rt.service.generation(ALICE, accepted.generation.id, HERE.chat_id)
    assert len(observer.images[accepted.generation.id]) == 3
    assert item.generation.status == "failed" and item.generation.credits_refunded == 3
    assert item.generation.error_message == "The images were made but could not be saved."
    assert item.images == ()
    assert await pool.fetchval("SELECT count(*) FROM image.images") == 0
    assert await pool.fetchval(f"{USER_BALANCE} WHERE platform_user_id = 'alice'") == 20
    # Shown once, and not shown again as a failure by recovery.
    assert await pool.fetchval("SELECT delivered_at IS NOT NULL FROM image.generations") is True


class SlowOrBrokenStore(LocalStore):
    """Real files, but writes can be held still until `open` is set (a slow S3), write number
    `fail_write` fails with an error outside the store's contract (a bug, say), and with `no_urls` no
    image gets an address (a store that cannot sign one)."""

    def __init__(self, root: Path, *, held: bool = False, fail_write: int | None = None, no_urls: bool = False) -> None:
        super().__init__(root)
        self.no_urls = no_urls
        self.open = asyncio.Event()
        if not held:
            self.open.set()
        self.fail_write = fail_write
        self.writes = 0

    async def put(self, key: str, data: bytes, mime_type: str) -> None:
        self.writes += 1
        if self.writes == self.fail_write:
            raise RuntimeError("unexpected")
        await self.open.wait()
        await super().put(key, data, mime_type)

    async def url(self, key: str) -> str:
        if self.no_urls:
            raise StorageError("cannot sign")
        return await super().url(key)


async def test_images_are_shown_before_they_are_stored_and_asking_about_them_waits_for_the_record(
    runtime_factory, pool, tmp_path
) -> None:
    observer = RecordingObserver()
    async with runtime_factory() as rt:
        store = SlowOrBrokenStore(tmp_path / "held", held=True)
        rt.worker.images.store = store
        rt.register(observer)
        await rt.start()
        accepted = await rt.service.imagine(ALICE, ImagineRequest("shown first", count=2), HERE)
        job_id = accepted.generation.id
        await wait_for(lambda: observer.done.get(job_id))
        assert store.writes == 2 and not list(store.root.rglob("*.png"))  # shown, not stored yet
        assert observer.done[job_id].status == "succeeded"

        first_image = observer.images[job_id][0].record
        vary = asyncio.create_task(rt.service.vary(ALICE, first_image.id, HERE))
        renamed = UserIdentity(ALICE.platform, ALICE.platform_user_id, "Alice (renamed)")  # the same person
        history = asyncio.create_task(rt.service.history(renamed))
        await asyncio.sleep(0.2)
        assert not vary.done() and not history.done()  # they wait for the record instead of missing it

        store.open.set()
        varied = await vary
        page = await history
    assert varied.generation.parent_image_id == first_image.id
    newest_first = {item.generation.id: item for item in page.items}
    assert newest_first[job_id].generation.status == "succeeded" and len(newest_first[job_id].images) == 2
    assert len(list(store.root.rglob("*.png"))) >= 2
    assert await pool.fetchval("SELECT delivered_at IS NOT NULL FROM image.generations WHERE id = $1", job_id)


async def test_an_unexpected_storage_error_does_not_crash_a_job_already_shown(
    runtime_factory, pool, tmp_path
) -> None:
    observer = RecordingObserver()
    async with runtime_factory() as rt:
        rt.worker.images.store = SlowOrBrokenStore(tmp_path / "broken", fail_write=2)
        rt.register(observer)
        await rt.start()
        accepted = await rt.service.imagine(ALICE, ImagineRequest("two of them", count=2), HERE)
        await wait_for(lambda: observer.done.get(accepted.generation.id))
        item = await rt.service.generation(ALICE, accepted.generation.id, HERE.chat_id)
    assert len(observer.images[accepted.generation.id]) == 2  # both shown
    assert item.generation.status == "partial" and item.generation.credits_refunded == 1
    assert len(item.images) == 1
    assert await pool.fetchval(f"{USER_BALANCE} WHERE platform_user_id = 'alice'") == 19
    assert await pool.fetchval("SELECT delivered_at IS NOT NULL FROM image.generations") is True


async def test_a_job_cancelled_while_its_record_is_written_keeps_its_files(runtime_factory, pool, tmp_path) -> None:
    """The record is written for the whole batch even when one job's wait for it is cancelled (a shutdown,
    say): the job's files must stay, or its recorded images would have none."""
    async with runtime_factory() as rt:
        lifecycle = rt.worker.lifecycle
        writing, go_on = asyncio.Event(), asyncio.Event()

        async def slow_record(runs):  # type: ignore[no-untyped-def]
            writing.set()
            await go_on.wait()
            return await lifecycle.write_finished(runs)

        lifecycle.finishes = GroupedWriter(slow_record)
        rt.register(RecordingObserver())
        await rt.start()
        accepted = await rt.service.imagine(ALICE, ImagineRequest("kept", count=2), HERE)
        await writing.wait()
        # The job's task is cancelled while its batch is being written.
        rt.worker.scheduler.abort(accepted.generation.id)
        await asyncio.sleep(0.05)
        go_on.set()
        await wait_for(lambda: pool.fetchval("SELECT count(*) = 2 FROM image.images"))
        await asyncio.sleep(0.1)  # time for a wrongful discard to happen
        keys = [r["storage_key"] for r in await pool.fetch("SELECT storage_key FROM image.images")]
        assert all(await asyncio.gather(*(rt.worker.images.store.get(k) for k in keys)))


async def test_images_without_an_address_are_not_shown_and_are_refunded(runtime_factory, pool, tmp_path) -> None:
    observer = RecordingObserver()
    async with runtime_factory() as rt:
        rt.worker.images.store = SlowOrBrokenStore(tmp_path / "unsigned", no_urls=True)
        rt.register(observer)
        await rt.start()
        accepted = await rt.service.imagine(ALICE, ImagineRequest("nowhere to point", count=2), HERE)
        job = await wait_for(lambda: observer.done.get(accepted.generation.id))
    assert ("failed", job.id) in observer.events and job.id not in observer.images
    assert job.status == "failed" and job.credits_refunded == 2
    assert job.error_message == "The images were made but could not be saved."
    assert await pool.fetchval(f"{USER_BALANCE} WHERE platform_user_id = 'alice'") == 20


async def test_a_job_read_right_after_it_is_shown_has_the_chats_file_refs(runtime_factory, pool, tmp_path) -> None:
    """/history right after a result must resend by the chat's file references, not upload again: readers
    are let through once the delivery receipt is recorded, not only the job."""
    observer = RecordingObserver()
    async with runtime_factory() as rt:
        store = SlowOrBrokenStore(tmp_path / "held", held=True)
        rt.worker.images.store = store
        delivery = rt.worker.delivery
        receipts_writing, go_on = asyncio.Event(), asyncio.Event()

        async def slow_receipts(delivered):  # type: ignore[no-untyped-def]
            receipts_writing.set()
            await go_on.wait()
            return await delivery.write_marks(delivered)

        delivery.marks = GroupedWriter(slow_receipts)
        rt.register(observer)
        await rt.start()
        accepted = await rt.service.imagine(ALICE, ImagineRequest("resend me", count=2), HERE)
        job_id = accepted.generation.id
        await wait_for(lambda: observer.done.get(job_id))  # shown; not stored, not recorded
        reading = asyncio.create_task(rt.service.generation(ALICE, job_id, HERE.chat_id))
        store.open.set()
        await receipts_writing.wait()  # the job is recorded; its receipt is on its way
        await asyncio.wait({reading}, timeout=0.2)  # a reader let through too early reads now
        go_on.set()
        item = await reading
    assert [image.file_refs for image in item.images] == [{"test": "file-0"}, {"test": "file-1"}]


async def test_files_gone_from_the_store_are_a_plain_words_error(runtime_factory, pool) -> None:
    """The service raises only BotError: a store failure reaches the front end in words it can show."""
    observer = RecordingObserver()
    async with runtime_factory() as rt:
        rt.register(observer)
        await rt.start()
        accepted = await rt.service.imagine(ALICE, ImagineRequest("soon gone"), HERE)
        await wait_for(lambda: observer.done.get(accepted.generation.id))
        item = await rt.service.generation(ALICE, accepted.generation.id, HERE.chat_id)
        await rt.worker.images.store.delete(item.images[0].storage_key)
        with pytest.raises(ImagesUnavailable, match="no longer available"):
            await rt.service.load_files(item.images)
