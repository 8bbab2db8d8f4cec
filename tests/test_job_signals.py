"""Word about jobs between processes: two runtimes on one database, each with pools of its own (as two bot
processes have). A job accepted by a front-end-only process is taken at once by a worker elsewhere (not at
its next poll); a job cancelled in one process stops in the process running it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from bot.bootstrap import Runtime, bootstrap
from bot.core import database
from bot.core.models import Destination, ImagineRequest, UserIdentity
from tests.conftest import make_settings, wait_for
from tests.fakes.core import RecordingObserver, ScriptedProvider, scripted_model

ALICE = UserIdentity("test", "alice", "Alice")
HERE = Destination("test", "chat-1")
# Far longer than the tests wait: a job found by polling would fail them.
POLL_SECONDS = 60.0


@asynccontextmanager
async def process(dsn: str, tmp_path: Path, name: str, provider: ScriptedProvider) -> AsyncIterator[Runtime]:
    pool = await database.create_pool(dsn, 8)
    settings = make_settings(tmp_path / name, models=(scripted_model(),), worker_poll_seconds=POLL_SECONDS)
    try:
        async with bootstrap(settings, pool=pool, extra_providers={"scripted": provider}) as runtime:
            runtime.register(RecordingObserver())
            yield runtime
    finally:
        await pool.close()


@asynccontextmanager
async def front_and_worker(
    dsn: str, tmp_path: Path, provider: ScriptedProvider
) -> AsyncIterator[tuple[Runtime, Runtime]]:
    """A front-end-only process and a worker process (running `provider`), both started, the worker
    hearing the signals."""
    async with process(dsn, tmp_path, "front", ScriptedProvider()) as front, process(
        dsn, tmp_path, "worker", provider
    ) as worker:
        await front.start(jobs=False)
        await worker.start()
        await wait_for(lambda: worker.worker.signals.listening)
        yield front, worker


async def test_a_job_accepted_by_a_front_end_only_process_runs_elsewhere_at_once(db_dsn, pool, tmp_path) -> None:
    provider = ScriptedProvider()
    async with front_and_worker(db_dsn, tmp_path, provider) as (front, _):
        await asyncio.sleep(0.2)  # the worker's first claim has found nothing
        accepted = await front.service.imagine(ALICE, ImagineRequest("a red fox"), HERE)
        await asyncio.wait_for(provider.started.wait(), 5)
        assert [call.prompt for call in provider.calls] == ["a red fox"]
        status = await pool.fetchval("SELECT status FROM image.generations WHERE id = $1", accepted.generation.id)
        assert status in ("running", "succeeded")


async def test_a_job_cancelled_in_one_process_stops_in_the_one_running_it(db_dsn, pool, tmp_path) -> None:
    provider = ScriptedProvider(steps=["block"])
    async with front_and_worker(db_dsn, tmp_path, provider) as (front, worker):
        accepted = await worker.service.imagine(ALICE, ImagineRequest("a slow owl"), HERE)
        job = accepted.generation.id
        await asyncio.wait_for(provider.started.wait(), 5)
        assert worker.worker.scheduler.runs(job)

        await front.service.cancel(ALICE, job, HERE.chat_id)
        await wait_for(lambda: not worker.worker.scheduler.runs(job), within=5)
        assert not provider.release.is_set()  # stopped, not finished
        status = await pool.fetchval("SELECT status FROM image.generations WHERE id = $1", job)
        assert status == "cancelled"


async def test_the_signals_are_heard_again_after_the_listening_connection_drops(db_dsn, pool, tmp_path) -> None:
    provider = ScriptedProvider()
    async with front_and_worker(db_dsn, tmp_path, provider) as (front, worker):
        dropped = await pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE 'LISTEN%image_jobs%'"
        )
        assert dropped == 1
        await wait_for(lambda: not worker.worker.signals.listening)
        await wait_for(lambda: worker.worker.signals.listening)
        await front.service.imagine(ALICE, ImagineRequest("a heron"), HERE)
        await asyncio.wait_for(provider.started.wait(), 5)
