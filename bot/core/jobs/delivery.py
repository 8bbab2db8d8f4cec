"""Showing jobs in their chats through the front ends' observers, and recording what was delivered (the
delivery mark and the front end's receipt), many jobs per statement."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from bot.core import database, generations, queue
from bot.core.batches import GroupedWriter
from bot.core.events import DeliversInParts, DeliveryReceipt, JobObserver
from bot.core.jobs.announcements import Announcements
from bot.core.jobs.receipts import RECORD_RETRY_SECONDS, Receipts
from bot.core.jobs.storing import StoredImages
from bot.core.logcontext import job_id
from bot.core.models import Generation, GenerationStatus, ImageFile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sent:
    """How showing a job in its chat went."""

    delivered: bool
    receipt: DeliveryReceipt | None = None


class Delivery:
    def __init__(
        self, pool: asyncpg.Pool, images: StoredImages, observers: Mapping[str, JobObserver],
        announcements: Announcements,
    ) -> None:
        self.pool = pool
        self.announcements = announcements
        self.images = images
        self.observers = observers  # filled in by the front ends as they register
        self.receipts = Receipts(pool)
        # Jobs delivered at about the same time are marked in one statement (see batches).
        self.marks: GroupedWriter[queue.Delivered, None] = GroupedWriter(self.write_marks)

    async def deliver(self, generation_id: str) -> bool:
        """Hand a finished job, as recorded, to its front end. True once delivered; on a platform error it
        stays undelivered and is retried when its lease runs out."""
        job_id.set(generation_id)
        async with self.pool.acquire() as conn:
            generation = await generations.get_generation(conn, generation_id)
            records = (await generations.get_images(conn, [generation_id]))[generation_id] if generation else []
        if generation is None or not generation.is_finished:
            return False
        files = await self.images.load(records) if generation.status.has_images else []
        return await self.deliver_finished(generation, files)

    async def deliver_finished(self, generation: Generation, files: Sequence[ImageFile]) -> bool:
        sent = await self.send(generation, files)
        if sent.delivered:
            await self.record(generation, sent)
        return sent.delivered

    async def send(self, generation: Generation, files: Sequence[ImageFile]) -> Sent:
        """Show a finished job in its chat. A platform error is logged, not raised: the job stays undelivered."""
        observer = self.observers.get(generation.destination.platform)
        if observer is None:
            return Sent(False)
        generation = await self.announcements.settled(generation)
        try:
            if generation.status.has_images and isinstance(observer, DeliversInParts):
                parts = await self.receipts.for_job(generation.id)
                receipt = await observer.on_completed_in_parts(generation, files, parts)
                return Sent(True, receipt or parts.receipt())
            if generation.status.has_images:
                return Sent(True, await observer.on_completed(generation, files))
            if generation.status == GenerationStatus.CANCELLED:
                await observer.on_cancelled(generation)
            else:
                await observer.on_failed(generation)
        except Exception:
            log.exception("job %s: delivery to %s failed; will retry", generation.id, generation.destination.platform)
            return Sent(False)
        return Sent(True)

    async def record(self, generation: Generation, sent: Sent) -> None:
        """Mark the job delivered, with its receipt, waiting out the database being out of reach (marking
        twice is harmless). Cancelling the wait does not stop the write."""
        delivered = queue.Delivered(generation.id, generation.destination.platform, sent.receipt)
        await database.persist(
            f"job {generation.id}: recording its delivery", lambda: self.marks.submit(delivered),
            RECORD_RETRY_SECONDS,
        )

    async def write_marks(self, delivered: Sequence[queue.Delivered]) -> list[None]:
        async with self.pool.acquire() as conn:
            await queue.mark_delivered(conn, delivered)
        return [None] * len(delivered)

    async def started(self, generation: Generation) -> None:
        observer = self.observers.get(generation.destination.platform)
        if observer is not None:
            await _best_effort(generation, "on_started", observer.on_started(generation))

    async def preview(self, generation: Generation, image: bytes, mime_type: str) -> None:
        observer = self.observers.get(generation.destination.platform)
        if observer is not None:
            await _best_effort(generation, "on_preview", observer.on_preview(generation, image, mime_type))


async def _best_effort(generation: Generation, event: str, notification: Awaitable[None]) -> None:
    """Progress events are best effort: a platform hiccup must not fail the job."""
    try:
        await notification
    except Exception:
        log.warning("job %s: %s notification failed", generation.id, event, exc_info=True)
