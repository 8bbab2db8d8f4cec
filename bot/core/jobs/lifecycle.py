"""One claimed job, from its provider call to its recorded, delivered result.

The images go to the chat while they are being stored: the user does not wait for storage (S3 takes
tens of milliseconds at best). The job is recorded once both are done, with the images that were kept
and a refund for the others; until then, and until the chat's receipt for what was shown is recorded
too, readers of the job wait at the record barrier."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence

import asyncpg

from bot.core import credits, database, queue
from bot.core.batches import GroupedWriter
from bot.core.errors import ProviderError
from bot.core.jobs.delivery import Delivery, Sent
from bot.core.jobs.job_runner import JobRunner, Made
from bot.core.jobs.receipts import RECORD_RETRY_SECONDS
from bot.core.jobs.record_barrier import RecordBarrier
from bot.core.jobs.scheduler import Lease
from bot.core.jobs.storing import StoredImages
from bot.core.logcontext import job_id
from bot.core.models import Generation, GenerationStatus, ImageFile, ImageRecord

log = logging.getLogger(__name__)


class JobLifecycle:
    def __init__(
        self,
        pool: asyncpg.Pool,
        runner: JobRunner,
        images: StoredImages,
        delivery: Delivery,
        barrier: RecordBarrier,
        lease: Lease,
    ) -> None:
        self.pool = pool
        self.runner = runner
        self.images = images
        self.delivery = delivery
        self.barrier = barrier
        self.lease = lease
        # Jobs finishing at about the same time are recorded in one statement (see batches).
        self.finishes: GroupedWriter[queue.Finished, Generation | None] = GroupedWriter(self.write_finished)
        self._sending: dict[str, asyncio.Future[Sent]] = {}  # by job id: the showing of images in progress

    async def run(self, generation: Generation) -> None:
        job_id.set(generation.id)
        log.info("job %s started: model=%s n=%d", generation.id, generation.model, generation.count)
        await self.delivery.started(generation)

        async def preview(data: bytes, mime_type: str) -> None:
            await self.delivery.preview(generation, data, mime_type)

        made = await self.runner.make(generation, preview)
        # From here the images exist. Stopping (or cancelling) stops only the showing: the images are still
        # kept and the job recorded, so it is charged for what was made and never refunded for what the
        # chat may already show; what the chat did not get is delivered by the next start (see receipts).
        recording = asyncio.ensure_future(self._show_and_record(generation, made))
        try:
            finished, sent = await asyncio.shield(recording)
        except asyncio.CancelledError:
            sending = self._sending.get(generation.id)
            if sending is not None:
                sending.cancel()
            await recording
            raise
        if finished is not None and sent is None:
            await self.delivery.deliver_finished(finished, [])
        # Shown but not delivered: it stays undelivered, and recovery delivers it from storage (or its failure).

    async def _show_and_record(self, generation: Generation, made: Made) -> tuple[Generation | None, Sent | None]:
        """Show and store the images, then record the job: the job as recorded (None: no longer ours, its
        images discarded), and how the showing went (None: nothing to show)."""
        stored: list[ImageRecord] = []
        with self.barrier.hold(generation.id, generation.owner, [f.record.id for f in made.files]):
            sent, error = await self._show_while_storing(generation, made, stored)
            outcome = settle(generation, sorted(stored, key=lambda r: r.index), error)
            finished = await self._record(generation, outcome, stored)
            if finished is not None and sent is not None and sent.delivered:
                # Inside the barrier: a reader let through must find the chat's file references, or it
                # would upload again what the chat already holds.
                if len(stored) < len(made.files):
                    log.warning("job %s: %d of %d images were delivered but could not be kept; refunded",
                                generation.id, len(made.files) - len(stored), len(made.files))
                await self.delivery.record(finished, sent)
        if finished is None:
            log.info("job %s was cancelled or taken over while running; result discarded", generation.id)
            await self.images.discard(stored)
            return None, sent
        log.info("job %s %s: %d images, refund %d", generation.id, outcome.status, len(outcome.images), outcome.refund)
        return finished, sent

    async def _show_while_storing(
        self, generation: Generation, made: Made, stored: list[ImageRecord]
    ) -> tuple[Sent | None, ProviderError | None]:
        """Show the images and store them at the same time (the showing starts first); the stored ones are
        added to `stored` as they land. Returns how the showing went (None: nothing to show; not delivered:
        it failed or was stopped) and the first error of the images that were not made or not kept."""
        if not made.files:
            return None, made.error
        as_shown = _as_finished(generation, settle(generation, [f.record for f in made.files], made.error))
        sending = asyncio.ensure_future(self.delivery.send(as_shown, made.files))
        self._sending[generation.id] = sending
        try:
            kept = await asyncio.gather(*(self._keep(file, stored) for file in made.files))
            try:
                sent = await sending
            except asyncio.CancelledError:
                if not sending.cancelled():
                    raise
                log.info("job %s: stopped while being shown; the next start shows what the chat lacks", generation.id)
                sent = Sent(False)
        except BaseException:
            # Broken before the job is recorded: nothing will ever point at these files.
            sending.cancel()
            await self.images.discard(stored)
            raise
        finally:
            self._sending.pop(generation.id, None)
        return sent, made.error or next((e for e in kept if isinstance(e, ProviderError)), None)

    async def _keep(self, file: ImageFile, stored: list[ImageRecord]) -> ProviderError | None:
        error = await self.images.keep(file)
        if error is None:
            stored.append(file.record)
        return error

    async def _record(
        self, generation: Generation, outcome: queue.Outcome, stored: Sequence[ImageRecord]
    ) -> Generation | None:
        """Record the job's outcome: the finished job, or None if it is no longer ours. While the database
        is out of reach it is retried (the images may be in the chat already: the job must not run again)."""
        attempts = 0

        async def attempt() -> Generation | None:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                async with self.pool.acquire() as conn:
                    landed = await queue.recorded(conn, generation.id, self.lease.owner, outcome.status)
                if landed is not None:
                    return landed
            return await self.finishes.submit(queue.Finished(generation.id, outcome))

        try:
            return await database.persist(f"job {generation.id}: recording its result", attempt, RECORD_RETRY_SECONDS)
        except Exception:
            # Not on cancellation (a BaseException): the batch is written regardless, and an orphaned file
            # is better than a recorded image without its file.
            await self.images.discard(stored)
            raise

    async def write_finished(self, runs: Sequence[queue.Finished]) -> list[Generation | None]:
        async with self.pool.acquire() as conn:
            finished = await queue.finish(conn, self.lease.owner, self.lease.seconds, runs)
        return [finished.get(run.generation_id) for run in runs]


def _as_finished(generation: Generation, outcome: queue.Outcome) -> Generation:
    """The job as it will be recorded with `outcome`, to show it before the record is written."""
    return dataclasses.replace(
        generation, status=outcome.status, credits_refunded=outcome.refund,
        error_code=outcome.error_code, error_message=outcome.error_message,
    )


def settle(generation: Generation, images: Sequence[ImageRecord], error: ProviderError | None) -> queue.Outcome:
    """How a run ended, given the images kept: all, some (partial) or none (failed), with the refund."""
    refund = credits.refund_for_missing(generation, len(images))
    if not images:
        assert error is not None
        return queue.Outcome(GenerationStatus.FAILED, (), refund, error.code, error.user_message)
    if len(images) < generation.count:
        message = error.user_message if error else "Some images could not be made."
        return queue.Outcome(GenerationStatus.PARTIAL, images, refund, error.code if error else "partial", message)
    return queue.Outcome(GenerationStatus.SUCCEEDED, images, 0, None, None)
