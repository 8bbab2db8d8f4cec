"""The jobs side of the bot, built from its parts: the scheduler (when jobs run here), the lifecycle of
one job (provider, storage, record), delivery (what the chats are shown and what they gave back) and the
record barrier (readers waiting for records not yet written). The runtime starts and stops it; the
service reaches it only through the few methods below (service.JobControl)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import asyncpg

from bot.core import queue
from bot.core.catalogue import ModelSpec
from bot.core.events import JobObserver
from bot.core.jobs.announcements import Announcements
from bot.core.jobs.delivery import Delivery
from bot.core.jobs.job_runner import JobRunner
from bot.core.jobs.lifecycle import JobLifecycle
from bot.core.jobs.receipts import Receipts
from bot.core.jobs.record_barrier import RecordBarrier
from bot.core.jobs.scheduler import Lease, Scheduler, WorkerLimits
from bot.core.jobs.signals import JobSignals
from bot.core.jobs.storing import StoredImages
from bot.core.models import ImageFile, ImageRecord, UserIdentity
from bot.core.providers.base import ImageProvider
from bot.core.providers.runner import ProviderRunner
from bot.core.storage.base import ImageStore

CANCELLED_MESSAGE = "Cancelled."


class Worker:
    def __init__(
        self,
        pool: asyncpg.Pool,
        store: ImageStore,
        providers: Mapping[str, ImageProvider],
        models: Mapping[str, ModelSpec],
        runner: ProviderRunner,
        observers: Mapping[str, JobObserver],
        limits: WorkerLimits,
    ) -> None:
        self.pool = pool
        self.runner = runner
        self.lease = Lease(limits.lease_seconds)
        self.images = StoredImages(store)
        self.barrier = RecordBarrier(pool)
        self.announcements = Announcements()
        self.delivery = Delivery(pool, self.images, observers, self.announcements)
        job_runner = JobRunner(pool, self.images, providers, models, runner, limits.job_deadline_seconds)
        self.lifecycle = JobLifecycle(pool, job_runner, self.images, self.delivery, self.barrier, self.lease)
        self.scheduler = Scheduler(pool, observers, limits, self.lease, self.lifecycle.run, self.delivery.deliver)
        self.signals = JobSignals(pool)
        self._runs_jobs = False

    # --- for the runtime -----------------------------------------------------------------------

    def start(self) -> None:
        """Run jobs in this process (claims, leases) and hear of records and jobs from every process."""
        self.start_barrier()
        self.scheduler.start()
        self.signals.listen(self.scheduler.wake, self.scheduler.abort)
        self._runs_jobs = True

    def start_barrier(self) -> None:
        """Only hear of records: a process that takes requests but runs no jobs still makes its readers
        wait for records another process is writing. `stop` closes it either way."""
        self.barrier.start()

    async def recover(self) -> None:
        await self.scheduler.recover()

    async def stop(self, grace_seconds: float) -> None:
        await self.signals.close()
        await self.scheduler.stop(grace_seconds)
        await self.barrier.close()
        await self.runner.limits.close()

    # --- for the front ends ------------------------------------------------------------------

    @property
    def receipts(self) -> Receipts:
        """Where a front end records each part of a result as its platform accepts it (see receipts)."""
        return self.delivery.receipts

    # --- for the service -----------------------------------------------------------------------

    def wake(self) -> None:
        """A job was accepted: claim it now rather than at the next poll (here, or in the processes that
        run jobs when this one doesn't)."""
        if self._runs_jobs:
            self.scheduler.wake()
        else:
            self.signals.new_job()

    def announcing(self, generation_id: str) -> None:
        """A job's status message is about to be posted: its result waits for that message's id."""
        self.announcements.begin(generation_id)

    def announced(self, generation_id: str, message_id: str | None) -> None:
        self.announcements.end(generation_id, message_id)

    async def cancel(self, generation_id: str) -> bool:
        """End a queued or running job as cancelled, refunding all of it (nothing was delivered), stop it if
        it runs here and tell its chat. False if it had already ended."""
        async with self.pool.acquire() as conn:
            refunded = await queue.cancel(
                conn, generation_id, CANCELLED_MESSAGE, self.lease.owner, self.lease.seconds
            )
        if refunded is None:
            return False
        if self.scheduler.runs(generation_id):
            self.scheduler.abort(generation_id)
        else:
            self.signals.abort(generation_id)  # it may be running in another process
        await self.delivery.deliver(generation_id)
        return True

    async def wait_for_records(self, ids: Sequence[str] = (), owner: UserIdentity | None = None) -> None:
        await self.barrier.wait(ids, owner)

    async def load_files(self, records: Sequence[ImageRecord]) -> list[ImageFile]:
        return await self.images.load(records)
