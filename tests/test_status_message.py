"""A job's result waits for its status message's id: the worker is woken before the status message is
posted, and a job finishing first must still be shown with that message (to retire "⏳ Queued")."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from bot.core.events import DeliveryReceipt
from bot.core.models import Destination, Generation, ImageFile, ImagineRequest, UserIdentity
from tests.conftest import wait_for
from tests.fakes.core import RecordingObserver

ALICE = UserIdentity("test", "alice", "Alice")
HERE = Destination("test", "chat-1")


@dataclass
class SlowStatusObserver(RecordingObserver):
    """Its status message takes a while to post; it notes which status message each result was shown with."""

    status_delay: float = 0.5
    shown_with: dict[str, str | None] = field(default_factory=dict)

    async def on_queued(self, job: Generation, position: int) -> str | None:
        await asyncio.sleep(self.status_delay)
        return await super().on_queued(job, position)

    async def on_completed(self, job: Generation, images: Sequence[ImageFile]) -> DeliveryReceipt | None:
        self.shown_with[job.id] = job.destination.message_id
        return await super().on_completed(job, images)


async def test_a_result_is_shown_with_its_status_message_even_if_the_job_finished_first(runtime_factory, pool) -> None:
    observer = SlowStatusObserver()
    async with runtime_factory() as rt:
        rt.register(observer)
        await rt.start()
        accepted = await rt.service.imagine(ALICE, ImagineRequest("quick job"), HERE)
        job_id = accepted.generation.id
        await wait_for(lambda: job_id in observer.done)
    assert observer.events.index(("queued", job_id)) < observer.events.index(("completed", job_id))
    assert observer.shown_with[job_id] == f"msg-{job_id}"
    assert await pool.fetchval("SELECT message_id FROM image.generations WHERE id = $1", job_id) == f"msg-{job_id}"
