"""Jobs storing into S3 (moto's server on 127.0.0.1) through the settings, and S3 failing mid-job."""

from __future__ import annotations

from bot.core.models import Destination, ImagineRequest, UserIdentity
from tests.conftest import wait_for
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


async def test_s3_failing_fails_the_job_cleanly_and_refunds(runtime_factory, pool, s3_server) -> None:
    observer = RecordingObserver()
    async with runtime_factory(**s3_settings(s3_server, "no-such-bucket")) as rt:
        rt.register(observer)
        await rt.start()
        accepted = await rt.service.imagine(ALICE, ImagineRequest("nowhere to put this", count=3), HERE)
        job = await wait_for(lambda: observer.done.get(accepted.generation.id))
    assert job.status == "failed" and job.credits_refunded == 3
    assert job.error_message == "The images were made but could not be saved."
    assert await pool.fetchval("SELECT count(*) FROM image.images") == 0
    assert await pool.fetchval("SELECT balance FROM image.users WHERE platform_user_id = 'alice'") == 20
