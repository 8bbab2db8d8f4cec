"""The wait for a job's record across processes: two runtimes on one database, each with its own pools
(as two bot processes have). A job shown by A and not yet recorded is found by a button pressed on B."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bot.bootstrap import Runtime, bootstrap
from bot.core import database
from bot.core.events import DeliveryReceipt
from bot.core.jobs.record_barrier import RECORD_WAIT_SECONDS, RecordBarrier
from bot.core.models import Destination, Generation, ImageFile, ImagineRequest, UserIdentity
from tests.conftest import make_settings, wait_for
from tests.fakes.core import RecordingObserver, ScriptedProvider, scripted_model

ALICE = UserIdentity("test", "alice", "Alice")
BOB = UserIdentity("test", "bob", "Bob")
HERE = Destination("test", "chat-1")


@dataclass
class SlowToShow(RecordingObserver):
    """Shows a job's images only when `shown` is set: the job stays in the window before its record."""

    showing: asyncio.Event = field(default_factory=asyncio.Event)
    shown: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_completed(self, job: Generation, images: Sequence[ImageFile]) -> DeliveryReceipt | None:
        self.images[job.id] = images
        self.showing.set()
        await self.shown.wait()
        return await super().on_completed(job, images)


@asynccontextmanager
async def process(dsn: str, tmp_path: Path, name: str, provider: ScriptedProvider) -> AsyncIterator[Runtime]:
    """A runtime with pools of its own, as a separate bot process has."""
    pool = await database.create_pool(dsn, 8)
    settings = make_settings(tmp_path / name, models=(scripted_model(),))
    try:
        async with bootstrap(settings, pool=pool, extra_providers={"scripted": provider}) as runtime:
            yield runtime
    finally:
        await pool.close()


async def listening(pool: asyncpg.Pool, count: int, besides: Sequence[int] = ()) -> list[int]:
    """The server pids of `count` listening connections, none of them in `besides` (connections that were
    terminated may still be listed for a moment)."""
    query = (
        "SELECT array_agg(pid) FROM pg_stat_activity WHERE datname = current_database()"
        " AND query LIKE 'LISTEN%' AND NOT pid = ANY($1::int[])"
    )

    async def found() -> list[int] | None:
        pids = await pool.fetchval(query, list(besides))
        return pids if pids is not None and len(pids) == count else None

    return await wait_for(found)


async def test_a_button_on_process_b_finds_a_result_shown_by_process_a(db_dsn, pool, tmp_path) -> None:
    shows = SlowToShow()
    async with process(db_dsn, tmp_path, "a", ScriptedProvider()) as a, process(
        db_dsn, tmp_path, "b", ScriptedProvider()
    ) as b:
        a.register(shows)  # only A serves the chats: B is a process that only answers buttons
        await a.start()
        await b.start()
        await listening(pool, 4)  # each process: its record barrier and its job signals
        accepted = await a.service.imagine(ALICE, ImagineRequest("a red fox"), HERE)
        await asyncio.wait_for(shows.showing.wait(), 10)
        image = shows.images[accepted.generation.id][0].record
        await asyncio.sleep(0.2)  # the hold's announcement reaches B

        pressed = asyncio.create_task(b.service.vary(BOB, image.id, HERE))
        await asyncio.sleep(0.3)
        assert not pressed.done()  # waiting for the record, not "not found"
        shows.shown.set()
        varied = await asyncio.wait_for(pressed, RECORD_WAIT_SECONDS)
        assert varied.generation.parent_image_id == image.id


async def test_readers_elsewhere_wait_for_the_release_not_the_timeout(db_dsn, pool) -> None:
    pools = [await database.create_pool(db_dsn, 2) for _ in range(2)]
    shower, reader = RecordBarrier(pools[0]), RecordBarrier(pools[1])
    shower.start()
    reader.start()
    try:
        await listening(pool, 2)
        await reader.wait(["job-1"], ALICE)  # nothing held anywhere: at once
        with shower.hold("job-1", ALICE, ["image-1"]):
            await asyncio.sleep(0.2)
            by_image = asyncio.create_task(reader.wait(["image-1"]))
            by_owner = asyncio.create_task(reader.wait(owner=UserIdentity("test", "alice", "renamed")))
            unrelated = asyncio.create_task(reader.wait(["job-2"], BOB))
            await asyncio.wait_for(unrelated, 1)
            await asyncio.sleep(0.2)
            assert not by_image.done() and not by_owner.done()
            released = time.monotonic()
        await asyncio.wait_for(asyncio.gather(by_image, by_owner), 2)
        assert time.monotonic() - released < 1
    finally:
        await shower.close()
        await reader.close()
        for own in pools:
            await own.close()


async def test_the_listening_connection_comes_back_after_a_drop(db_dsn, pool) -> None:
    pools = [await database.create_pool(db_dsn, 2) for _ in range(2)]
    shower, reader = RecordBarrier(pools[0]), RecordBarrier(pools[1])
    shower.start()
    reader.start()
    try:
        first = await listening(pool, 2)
        await pool.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", first)
        await listening(pool, 2, besides=first)
        await asyncio.sleep(0.2)
        with shower.hold("job-1", ALICE, ["image-1"]):
            await asyncio.sleep(0.3)
            waiting = asyncio.create_task(reader.wait(["image-1"]))
            await asyncio.sleep(0.2)
            assert not waiting.done()
        await asyncio.wait_for(waiting, 2)
    finally:
        await shower.close()
        await reader.close()
        for own in pools:
            await own.close()
